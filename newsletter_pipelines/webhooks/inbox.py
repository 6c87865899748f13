"""The receiver's writes into the inbox: a group commit.

Each delivery is acknowledged only after the transaction holding its events committed. While
one transaction runs, the deliveries arriving meanwhile wait, and the next transaction takes
them all: under load one commit serves many deliveries (SQLite manages only some dozens of
commits a second), alone a delivery is committed at once.
"""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool

from newsletter_pipelines.state.events import NewEvent, store_deliveries


class InboxWriter:
    """Stores deliveries' events in shared transactions; `store` returns a delivery's new
    events once they are committed, or raises the database's error."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._waiting: list[tuple[list[NewEvent], asyncio.Future[int]]] = []
        self._writing = asyncio.Lock()
        self.transactions = 0  # how many commits served the deliveries (for tests, logs)

    async def store(self, events: list[NewEvent]) -> int:
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append((events, done))
        async with self._writing:
            if not done.done():  # nobody took it along: this holder writes everything waiting
                group, self._waiting = self._waiting, []
                try:
                    counts = await run_in_threadpool(
                        store_deliveries, self.engine, [e for e, _ in group]
                    )
                except sa.exc.SQLAlchemyError as exc:
                    for _, waiter in group:
                        waiter.set_exception(exc)
                else:
                    self.transactions += 1
                    for (_, waiter), count in zip(group, counts, strict=True):
                        waiter.set_result(count)
        return await done
