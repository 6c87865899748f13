"""Runs Mailchimp member operations one by one or through batch operations (`/batches`),
whichever is estimated to finish sooner (`Route`).

One by one, the operations take ceil(n / connections) round trips; a batch takes what the last
one this client ran took (before any: the first poll's wait and three round trips, its least),
whatever its size. A batch answers asynchronously; its results arrive as a gzipped tar of JSON
files, each an array of `{"status_code", "operation_id", "response"}` with `response` a JSON
string. Operations that come back with 429/5xx (or not at all) are resubmitted; every other
answer is final.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from more_itertools import chunked
from tenacity import Retrying, retry_if_result, stop_after_attempt, wait_exponential

from newsletter_pipelines.providers.errors import ApiError, UnavailableError
from newsletter_pipelines.providers.http import ApiClient, PollPolicy
from newsletter_pipelines.providers.mailchimp_models import BatchStatus

log = logging.getLogger("newsletter_pipelines.providers")


@dataclass(frozen=True)
class Operation:
    """One member write, addressed relative to the API root."""

    operation_id: str
    method: str
    path: str
    body: dict[str, Any] | None = None


@dataclass(frozen=True)
class OpResult:
    """The answer to one operation: HTTP status and decoded body (None when empty)."""

    status: int
    body: Any = None

    @property
    def ok(self) -> bool:
        """True for a 2xx answer."""
        return 200 <= self.status < 300

    @property
    def transient(self) -> bool:
        """True when resubmitting may succeed (rate limit, server error, no answer)."""
        return self.status in (0, 425, 429) or self.status >= 500

    @property
    def title(self) -> str:
        """Mailchimp's error title."""
        return str(self.body.get("title", "")) if isinstance(self.body, dict) else ""

    @property
    def detail(self) -> str:
        """Mailchimp's error detail, with field errors appended."""
        if not isinstance(self.body, dict):
            return ""
        fields = "; ".join(
            f"{e.get('field')}: {e.get('message')}" for e in self.body.get("errors") or []
        )
        detail = str(self.body.get("detail", ""))
        return f"{detail} ({fields})" if fields else detail


DIRECT_CONNECTIONS = 5
"""The connections a one-by-one send is planned on: a run's share of its account's 10 while
another run of the account goes on beside it (runs share them call by call). A run alone may
open more, but the choice does not count on them: one by one costs a call per member, a batch
three calls."""


@dataclass(frozen=True)
class Route:
    """The estimated seconds of some operations sent one by one and through `/batches`."""

    direct: float
    batches: float

    @classmethod
    def of(cls, count: int, connections: int, latency: float | None, batch_seconds: float) -> Route:
        """For `count` operations on `connections` connections with calls of `latency`
        seconds (None: unknown, then only what one round of calls takes goes direct) and a
        batch taking `batch_seconds`."""
        rounds = -(-count // connections)
        if latency is None:
            return cls(0.0 if rounds <= 1 else float("inf"), batch_seconds)
        return cls(rounds * latency, batch_seconds)

    @property
    def direct_is_sooner(self) -> bool:
        """True when sending one by one is estimated to finish no later than a batch."""
        return self.direct <= self.batches


class OperationRunner:
    """Executes operations the way estimated to finish sooner (`Route`); `direct_max` fixes
    the choice instead: up to that many one by one, more through batches."""

    def __init__(
        self,
        api: ApiClient,
        *,
        poll: PollPolicy,
        direct_max: int | None = None,
        batch_size: int = 1000,
        rounds: int = 5,
    ) -> None:
        self._api = api
        self._poll = poll
        self._direct_max = direct_max
        self._batch_size = batch_size
        self._rounds = rounds
        self._batch_seconds: float | None = None  # what the last batch round took

    def route(self, count: int) -> Route:
        """The estimated seconds of `count` operations either way, from this client's recent
        round trips (one by one on at most `DIRECT_CONNECTIONS`) and the last batch it ran
        (before any: the least a batch takes, the submit, the first poll after
        `PollPolicy.initial` and the download)."""
        latency = self._api.latency()
        batch = self._batch_seconds
        if batch is None:
            batch = self._poll.initial + 3 * (latency or 0.0)
        return Route.of(count, min(self._api.max_connections, DIRECT_CONNECTIONS), latency, batch)

    def run(self, operations: Sequence[Operation]) -> dict[str, OpResult]:
        """The result of every operation, keyed by `operation_id`."""
        if not operations:
            return {}
        if self._direct_max is not None:
            direct = len(operations) <= self._direct_max
        else:
            route = self.route(len(operations))
            direct = route.direct_is_sooner
            log.info(
                "mailchimp: %d member operations %s (estimated: one by one %.2f s, "
                "through /batches %.2f s)",
                len(operations),
                "one by one" if direct else "through /batches",
                route.direct,
                route.batches,
            )
        if direct:
            return dict(self._api.parallel(self._direct, list(operations)))
        results: dict[str, OpResult] = {}
        pending = list(operations)

        def submit_pending() -> list[Operation]:
            """Submit what is pending; answer what is still pending (a transient answer)."""
            nonlocal pending
            answers = self._batched(pending)
            results.update(answers)
            pending = [op for op in pending if answers[op.operation_id].transient]
            return pending

        Retrying(
            stop=stop_after_attempt(self._rounds),
            wait=wait_exponential(multiplier=self._poll.initial),
            retry=retry_if_result(bool),
            retry_error_callback=lambda _: None,  # what is still transient then stays so
        )(submit_pending)
        return results

    def _direct(self, op: Operation) -> tuple[str, OpResult]:
        try:
            response = self._api.request(op.method, op.path, json=op.body)
        except ApiError as exc:
            return op.operation_id, OpResult(exc.status, {"title": exc.code, "detail": exc.detail})
        return op.operation_id, OpResult(
            response.status_code, response.json() if response.content else None
        )

    def _batched(self, operations: Sequence[Operation]) -> dict[str, OpResult]:
        """Submit `operations` in batches and wait for all their results; what that took is
        remembered for the next `route`."""
        began = time.perf_counter()
        batch_ids = self._api.parallel(self._submit, list(chunked(operations, self._batch_size)))
        results = {op.operation_id: OpResult(0) for op in operations}
        waiting = set(batch_ids)

        def all_finished() -> bool:
            for status in self._api.parallel(self._status, sorted(waiting)):
                if status.status == "finished":
                    results.update(self._results(status))
                    waiting.discard(status.id)
            return not waiting

        if not self._poll.until(all_finished):
            raise UnavailableError(
                "mailchimp",
                f"batches {sorted(waiting)} not finished within {self._poll.deadline} s",
            )
        self._batch_seconds = time.perf_counter() - began
        return results

    def _submit(self, chunk: Sequence[Operation]) -> str:
        payload = {
            "operations": [
                {
                    "method": op.method,
                    "path": op.path,
                    "operation_id": op.operation_id,
                    **({"body": json.dumps(op.body)} if op.body is not None else {}),
                }
                for op in chunk
            ]
        }
        return BatchStatus.model_validate(self._api.call("POST", "/batches", json=payload)).id

    def _status(self, batch_id: str) -> BatchStatus:
        return BatchStatus.model_validate(self._api.call("GET", f"/batches/{batch_id}"))

    def _results(self, status: BatchStatus) -> dict[str, OpResult]:
        data = io.BytesIO(self._api.download(status.response_body_url))
        results: dict[str, OpResult] = {}
        with tarfile.open(fileobj=data) as archive:
            for member in archive.getmembers():
                handle = archive.extractfile(member)
                if handle is None or not member.name.endswith(".json"):
                    continue
                for entry in json.load(handle):
                    text = entry.get("response") or ""
                    body = json.loads(text) if text.strip() else None
                    results[str(entry.get("operation_id"))] = OpResult(
                        int(entry.get("status_code", 0)), body
                    )
        return results
