"""A provider account's simultaneous connections, shared by every process that calls it.

Mailchimp allows an account 10 simultaneous connections, whichever process opens them. With a
PostgreSQL state database the processes share them through `AccountSlots`: a counting semaphore
of session advisory locks (`pg_try_advisory_lock(space, slot)`, one lock per connection slot,
`space` fixed per account). A call holds a slot while it is in flight: a run alone on its
account has every slot, two runs at once share them call by call, and all of them together
never hold more than the account's total. A process holds its slots on one connection of its
own; a process that ends lets its slots go with it. A process that loses that connection
lost its slots with it: the call that finds out fails, and the next one opens a new session.
"""

from __future__ import annotations

import logging
import random
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_random_exponential

from newsletter_pipelines.db import create_engine

_TRY = sa.text("SELECT pg_try_advisory_lock(:space, :slot)")
_UNLOCK = sa.text("SELECT pg_advisory_unlock(:space, :slot)")
_NAMESPACE = "newsletter_pipelines.connections:"
_WAIT = wait_random_exponential(multiplier=0.005, max=0.1)
"""Between tries while every slot is taken: a call takes 0.1 s to seconds."""
WAIT_MAX_S = 600.0
"""The longest a call waits for a slot: longer, other processes hold them all as if stuck."""
log = logging.getLogger("newsletter_pipelines.state")


class AccountSlots:
    """The `total` connection slots of one provider account, in the PostgreSQL database at
    `engine` (`slot()` around each call). Thread-safe; one per process and account
    (`account_slots`)."""

    def __init__(
        self, engine: sa.Engine, account: str, total: int, wait_max: float = WAIT_MAX_S
    ) -> None:
        if engine.dialect.name != "postgresql":
            raise ValueError(f"connection slots need PostgreSQL, not {engine.dialect.name}")
        self.account = account
        self.total = total
        self.wait_max = wait_max
        self._engine = engine
        self._space = _space(account)
        self._held: set[int] = set()  # slots this process holds
        self._lock = threading.Lock()  # the session runs one statement at a time
        self._session: sa.Connection | None = None

    @contextmanager
    def slot(self) -> Iterator[int]:
        """Hold one of the account's slots (waiting while all are taken, at most `wait_max`
        seconds, then `TimeoutError`) for the block."""
        retrying = Retrying(
            retry=retry_if_result(lambda slot: slot is None),
            wait=_WAIT,
            stop=stop_after_delay(self.wait_max),
            retry_error_callback=self._waited_too_long,
        )
        slot = retrying(self._try_one)
        try:
            yield slot
        finally:
            self._release(slot)

    def held(self) -> int:
        """How many slots this process holds now."""
        with self._lock:
            return len(self._held)

    def close(self) -> None:
        """Let every slot of this process go (closing its session)."""
        with self._lock:
            if self._session is not None:
                self._session.close()
            self._session, self._held = None, set()

    def _try_one(self) -> int | None:
        """A free slot, now locked by this process; None when every slot is taken."""
        with self._lock:
            if self._session is None:
                session = self._engine.connect()
                self._session = session.execution_options(isolation_level="AUTOCOMMIT")
            start = random.randrange(self.total)  # processes spread over the slots
            for offset in range(self.total):
                slot = (start + offset) % self.total
                if slot in self._held:  # a session's lock is re-entrant: skip its own
                    continue
                if self._run(_TRY, slot):
                    self._held.add(slot)
                    return slot
        return None

    def _waited_too_long(self, _: object) -> int:
        raise TimeoutError(
            f"no connection slot of the {self.account} account came free in {self.wait_max:.0f} "
            f"s: other processes hold all {self.total} (state database, advisory locks)"
        )

    def _release(self, slot: int) -> None:
        with self._lock:
            if slot in self._held and self._session is not None:
                self._held.discard(slot)
                try:
                    self._run(_UNLOCK, slot)
                except sa.exc.DBAPIError as exc:  # the session's locks went with it
                    log.warning("%s: connection slots' session lost (%s)", self.account, exc)

    def _run(self, statement: sa.TextClause, slot: int) -> bool:
        """`statement` for `slot` on the session; a failed session is dropped (its locks went
        with it) and the error raised."""
        assert self._session is not None
        try:
            answer = self._session.execute(statement, {"space": self._space, "slot": slot})
            return bool(answer.scalar_one())
        except sa.exc.DBAPIError:
            self._session.invalidate()
            self._session, self._held = None, set()
            raise


def _space(account: str) -> int:
    """The advisory lock space of an account's slots: a stable signed 32-bit number."""
    return zlib.crc32((_NAMESPACE + account).encode()) - 2**31


_process_slots: dict[tuple[str, str, int], AccountSlots] = {}
_process_lock = threading.Lock()


def account_slots(url: str, account: str, total: int) -> AccountSlots | None:
    """The process's slots of `account` in the state database at `url`; None when it is not
    PostgreSQL (then each run keeps to a fixed share of the account's connections)."""
    if sa.engine.make_url(url).get_backend_name() != "postgresql":
        return None
    with _process_lock:
        found = _process_slots.get((url, account, total))
        if found is None:
            found = AccountSlots(create_engine(url), account, total)
            _process_slots[url, account, total] = found
        return found
