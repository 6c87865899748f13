"""The sandbox: both emulated APIs, their accounts, faults, call statistics and persistence.

`Sandbox.exchange` is the one entry point the in-process transport and the HTTP server share.
"""

from __future__ import annotations

import fcntl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from more_itertools import chunked
from pydantic import BaseModel, Field

from newsletter_pipelines.sandbox.brevo_api import BrevoApi
from newsletter_pipelines.sandbox.brevo_rules import BrevoError, error
from newsletter_pipelines.sandbox.brevo_state import BvAccount, BvAttribute, default_attributes
from newsletter_pipelines.sandbox.control import ControlApi
from newsletter_pipelines.sandbox.core import Request, Response
from newsletter_pipelines.sandbox.faults import Fault, Faults
from newsletter_pipelines.sandbox.mailchimp_api import MailchimpApi, account_key, problem
from newsletter_pipelines.sandbox.mailchimp_members import ProblemError
from newsletter_pipelines.sandbox.mailchimp_state import McAccount, McList
from newsletter_pipelines.sandbox.webhooks import WebhookSender

MAILCHIMP_PREFIX = "/mailchimp/3.0"
BREVO_PREFIX = "/brevo/v3"
CONTROL_PREFIX = "/_sandbox"
BREVO_BATCH_MAX = 500  # events per delivery of a batched Brevo webhook
SANDBOX_MAILCHIMP_KEY = "0123456789abcdef0123456789abcdef-sandbox"
SANDBOX_BREVO_KEY = "xkeysib-sandbox"
MAILCHIMP_MAX_CONNECTIONS = 10


class ConnectionDroppedError(Exception):
    """The connection is dropped without an answer."""


class AnswerTimeoutError(Exception):
    """The answer would arrive after the client's timeout."""


class SandboxState(BaseModel):
    """Everything the sandbox persists."""

    mailchimp: dict[str, McAccount] = Field(default_factory=dict)
    brevo: dict[str, BvAccount] = Field(default_factory=dict)


class Stats:
    """Calls served, by provider, method, route template and status."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[tuple[str, str, str, int]] = Counter()

    def record(self, provider: str, method: str, template: str, status: int) -> None:
        """Count one call."""
        with self._lock:
            self.calls[(provider, method, template, status)] += 1

    def count(
        self,
        provider: str,
        *,
        method: str | None = None,
        template: str | None = None,
        writes: bool = False,
    ) -> int:
        """Calls matching the filters; `writes` counts every method but GET."""
        with self._lock:
            return sum(
                n
                for (p, m, t, _), n in self.calls.items()
                if p == provider
                and method in (None, m)
                and template in (None, t)
                and (not writes or m != "GET")
            )

    def reset(self) -> None:
        """Forget every count."""
        with self._lock:
            self.calls.clear()


class Sandbox:
    """Emulated Mailchimp and Brevo accounts behind one thread-safe entry point."""

    def __init__(
        self,
        *,
        state_file: Path | None = None,
        webhook_transport: httpx.BaseTransport | None = None,
        batch_delay: float = 0.0,
        process_delay: float = 0.0,
        seed: int = 0,
        default_accounts: bool = True,
    ) -> None:
        self.lock = threading.RLock()
        self.state = SandboxState()
        self.faults = Faults(seed)
        self.stats = Stats()
        self.webhooks = WebhookSender(webhook_transport)
        self.state_file = state_file
        self.batch_delay_seconds = batch_delay
        self.process_delay_seconds = process_delay
        self.mailchimp = MailchimpApi(self)
        self.brevo = BrevoApi(self)
        self.control = ControlApi(self)
        self._outbox: list[Callable[[], object]] = []
        self._batches: dict[int, tuple[str, dict[str, str], list[dict[str, Any]]]] = {}
        self._in_flight: Counter[str] = Counter()
        self._flight_lock = threading.Lock()
        self._depth = 0
        self._seen_version: int | None = None
        lacking = lambda: default_accounts and not self.state.mailchimp and not self.state.brevo  # noqa: E731
        # the state file is written back only when it is new or gets the default accounts
        # (rewriting an unchanged one costs as much as reading it)
        with self.transaction(write=False):
            settled = (self.state_file is None or self.state_file.exists()) and not lacking()
        if not settled:
            with self.transaction():  # another process may have added them meanwhile
                if lacking():
                    self._add_default_accounts()

    # --- hooks used by the APIs ---------------------------------------------------------

    def now(self) -> float:
        """Wall-clock time (epoch seconds)."""
        return time.time()

    def batch_delay(self) -> float:
        """Seconds a Mailchimp batch waits before it runs."""
        return self.batch_delay_seconds

    def process_delay(self) -> float:
        """Seconds a Brevo import waits before it runs."""
        return self.process_delay_seconds

    def validate_webhook_url(self, url: str) -> bool:
        """Mailchimp checks a webhook URL with a GET before accepting it."""
        return self.webhooks.validate(url)

    def mailchimp_event(self, lst: McList, kind: str, data: dict[str, Any], source: str) -> None:
        """Queue a form-encoded event for every webhook that wants `kind` from `source`
        (`cleaned` and `campaign` events go out whatever the webhook's sources)."""
        fired = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        for hook in lst.webhooks:
            wanted = hook.events.get(kind, False)
            by_source = kind in ("cleaned", "campaign") or hook.sources.get(source, False)
            if wanted and by_source:
                payload = {"type": kind, "fired_at": fired, "data": data}
                self._outbox.append(lambda url=hook.url, p=payload: self.webhooks.post_form(url, p))

    def brevo_event(self, account: BvAccount, event: str, payload: dict[str, Any]) -> None:
        """Queue a JSON event for every marketing webhook subscribed to `event`."""
        for hook in account.webhooks.values():
            if hook.type != "marketing" or event not in hook.events:
                continue
            headers = {h["key"]: h["value"] for h in hook.headers if "key" in h and "value" in h}
            if hook.auth and hook.auth.get("type") == "bearer":
                headers["authorization"] = f"Bearer {hook.auth.get('token', '')}"
            body = {"id": hook.id, **payload}
            if hook.batched:  # delivered at the flush, in arrays (Brevo waits up to 5 minutes)
                self._batches.setdefault(hook.id, (hook.url, headers, []))[2].append(body)
            else:
                self._outbox.append(
                    lambda url=hook.url, b=body, h=headers: self.webhooks.post_json(url, b, h)
                )

    # --- accounts -----------------------------------------------------------------------

    def add_mailchimp_account(self, api_key: str, *, max_lists: int = 5) -> McAccount:
        """Create (or replace) a Mailchimp user with this key."""
        with self.transaction():
            account = McAccount(api_key=api_key, max_lists=max_lists)
            self.state.mailchimp[api_key] = account
            return account

    def add_brevo_account(
        self,
        api_key: str,
        *,
        language: str = "en",
        extra_attributes: list[BvAttribute] | None = None,
        contacts_per_second: int = 10,
        other_per_hour: int = 100,
        key_name: str = "sandbox-key",
    ) -> BvAccount:
        """Create (or replace) a Brevo account whose default attributes follow `language`."""
        with self.transaction():
            account = BvAccount(
                api_key=api_key,
                language=language,
                key_name=key_name,
                contacts_per_second=contacts_per_second,
                other_per_hour=other_per_hour,
                attributes=default_attributes(language, extra_attributes),
            )
            self.state.brevo[api_key] = account
            return account

    def _add_default_accounts(self) -> None:
        self.add_mailchimp_account(SANDBOX_MAILCHIMP_KEY)
        extra = [BvAttribute(name="SALUTATION"), BvAttribute(name="NEWSLETTER_TAGS")]
        self.add_brevo_account(SANDBOX_BREVO_KEY, extra_attributes=extra)

    def reset(self) -> None:
        """Back to a fresh sandbox with the default accounts."""
        with self.transaction():
            self.state = SandboxState()
            self._add_default_accounts()
        self.faults.clear()
        self.stats.reset()

    def save(self) -> None:
        """Write the state to `state_file` now."""
        with self.transaction():
            pass

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[SandboxState]:
        """Exclusive access to the state. With a state file, the state is shared with other
        processes: reloaded when another one changed it, written back afterwards."""
        with self.lock:
            if self.state_file is None or self._depth:
                self._depth += 1
                try:
                    yield self.state
                finally:
                    self._depth -= 1
                return
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            with self.state_file.with_suffix(".lock").open("a") as guard:
                fcntl.flock(guard, fcntl.LOCK_EX)
                self._depth += 1
                try:
                    self._reload()
                    yield self.state
                    if write:
                        self._write()
                finally:
                    self._depth -= 1
                    fcntl.flock(guard, fcntl.LOCK_UN)

    def _reload(self) -> None:
        assert self.state_file is not None
        if not self.state_file.exists():
            return
        version = self.state_file.stat().st_mtime_ns
        if version != self._seen_version:
            self.state = SandboxState.model_validate_json(self.state_file.read_bytes())
            self._seen_version = version

    def _write(self) -> None:
        assert self.state_file is not None
        temporary = self.state_file.with_suffix(".tmp")
        temporary.write_text(self.state.model_dump_json())
        temporary.replace(self.state_file)
        self._seen_version = self.state_file.stat().st_mtime_ns

    # --- serving ------------------------------------------------------------------------

    def exchange(
        self, request: Request, *, timeout: float | None = None, arrived: float | None = None
    ) -> Response:
        """Serve one request: faults, connection limits, auth, the API, then webhooks.

        `arrived` is the `time.monotonic()` the request arrived at (default: now); a
        round-trip latency answers that long after it (see `faults`)."""
        arrived = time.monotonic() if arrived is None else arrived
        provider, relative = self._split(request.path)
        if provider == "control":
            request.path = relative
            response = self.control.handle(request)
            self.flush_webhooks()
            return response
        if provider is None:
            return Response(404, b"Not Found", {"content-type": "text/plain"})
        request.path = relative
        fault = self.faults.draw(provider, request.method, relative)
        with self._connection(provider) as crowded:
            delay = fault.latency + fault.round_trip
            if timeout is not None and delay and delay >= timeout:
                time.sleep(timeout)
                raise AnswerTimeoutError(f"no answer within {timeout} s")
            if fault.latency:
                time.sleep(fault.latency)  # held: no lock is taken yet
            try:
                response = self._answer(provider, request, fault, crowded)
            finally:
                # a round trip: the answer (or the drop) leaves `delay` after the arrival,
                # this request's processing and its wait for the state lock counted inside
                _sleep_until(arrived + delay)
        self.flush_webhooks()
        return response

    def _answer(self, provider: str, request: Request, fault: Fault, crowded: bool) -> Response:
        if fault.drop:
            raise ConnectionDroppedError("connection dropped by fault injection")
        if fault.status is not None:
            return self._fault_response(provider, fault)
        if crowded:
            return problem(
                ProblemError(
                    429,
                    "TooManyRequests",
                    "You have exceeded the limit of 10 simultaneous connections.",
                )
            )
        return self._serve(provider, request)

    def _split(self, path: str) -> tuple[str | None, str]:
        for name, prefix in (
            ("mailchimp", MAILCHIMP_PREFIX),
            ("brevo", BREVO_PREFIX),
            ("control", CONTROL_PREFIX),
        ):
            if path == prefix or path.startswith(prefix + "/"):
                return name, path[len(prefix) :] or "/"
        return None, path

    @contextmanager
    def _connection(self, provider: str) -> Iterator[bool]:
        with self._flight_lock:
            self._in_flight[provider] += 1
            crowded = provider == "mailchimp" and (
                self._in_flight[provider] > MAILCHIMP_MAX_CONNECTIONS
            )
        try:
            yield crowded
        finally:
            with self._flight_lock:
                self._in_flight[provider] -= 1

    def _fault_response(self, provider: str, fault: Fault) -> Response:
        status = fault.status or 500
        self.stats.record(provider, "*", "fault", status)
        if provider == "mailchimp":
            title, detail = (
                ("TooManyRequests", "You have exceeded the limit of 10 simultaneous connections.")
                if status == 429
                else (
                    "Internal Server Error",
                    "An unexpected internal error has occurred. Please contact Support.",
                )
            )
            return problem(ProblemError(status, title, detail))
        headers = {}
        if status == 429:
            headers = {
                "x-sib-ratelimit-limit": "10",
                "x-sib-ratelimit-remaining": "0",
                "x-sib-ratelimit-reset": f"{fault.reset:g}",
            }
            return error(
                BrevoError(429, "too_many_requests", "The rate limit has been exceeded", headers)
            )
        return error(BrevoError(status, "internal_error", "Internal server error"))

    def _serve(self, provider: str, request: Request) -> Response:
        lazy_work = request.path.startswith(("/batches/", "/processes/"))
        with self.transaction(write=request.method != "GET" or lazy_work):
            if provider == "mailchimp":
                mc_account = self.state.mailchimp.get(account_key(request) or "")
                if mc_account is None:
                    template, response = (
                        request.path,
                        problem(
                            ProblemError(
                                401,
                                "API Key Invalid",
                                "Your API key may be invalid, or you've attempted to access the "
                                "wrong datacenter.",
                            )
                        ),
                    )
                else:
                    template, response = self.mailchimp.handle(mc_account, request)
            else:
                bv_account = self.state.brevo.get(request.headers.get("api-key", ""))
                if bv_account is None:
                    template, response = (
                        request.path,
                        error(BrevoError(401, "unauthorized", "Key not found")),
                    )
                else:
                    template, response = self.brevo.handle(bv_account, request)
            self.stats.record(provider, request.method, template, response.status)
        return response

    def flush_webhooks(self) -> None:
        """Deliver the webhook calls queued while serving (outside the state lock)."""
        if not self._outbox and not self._batches:
            # Nothing queued: return without waiting for the state lock another request holds
            # (this read needs no lock: whoever queues an event flushes after it).
            return
        with self.lock:
            pending, self._outbox = self._outbox, []
            batches, self._batches = self._batches, {}
        for deliver in pending:
            deliver()
        for url, headers, events in batches.values():
            for batch in chunked(events, BREVO_BATCH_MAX):
                self.webhooks.post_json(url, batch, headers)

    def close(self) -> None:
        """Release the webhook client."""
        self.webhooks.close()


def _sleep_until(deadline: float) -> None:
    """Sleep until `time.monotonic()` reaches `deadline` (not at all if it has)."""
    remaining = deadline - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
