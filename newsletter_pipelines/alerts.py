"""Alerts on failed runs, failed blocking checks and stalled sensors: short texts for the log
and a Slack-compatible webhook (`NEWSLETTER_ALERT_WEBHOOK_URL`).

A text names jobs, runs, partitions, checks and sensors, and at most the first line of an
error with email addresses, URLs, API-key-like tokens and the configured secrets masked.
Pure logic; `defs/alerts` wires it into Dagster.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from newsletter_pipelines.settings import Settings

log = logging.getLogger("newsletter_pipelines.alerts")
# httpx logs every request's URL at INFO; the alert URL is a secret
logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger("httpx").level))

PREFIX = "[newsletter_pipelines]"
ERROR_WIDTH = 200
ATTEMPTS = 4
RETRY_WAIT = wait_exponential(multiplier=0.25, max=2.0)
"""Backoff between attempts (0.25 s, 0.5 s, 1 s); tests shrink it."""
TIMEOUT_SECONDS = 10.0
FAILED_TICKS = 3
"""A sensor whose last this many ticks failed is stalled."""
STALL_FACTOR = 10
MIN_STALL_SECONDS = 600.0
"""A sensor without a tick for max(STALL_FACTOR × its interval, this) is stalled."""

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>`]+")
_EMAIL = re.compile(r"[\w.!#$%&*+/=?^{|}~-]+@[\w-]+(?:\.[\w-]+)+")
_KEY = re.compile(r"\bxkeysib-[\w-]+|\b[0-9a-fA-F]{32,}(?:-[a-z]{2}\d+)?\b")
_TRANSIENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with the given secrets, URLs (scheme and host kept), API-key-like tokens and email
    addresses masked."""
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, "•••")
    text = _URL.sub(_host_only, text)
    text = _KEY.sub("•••", text)
    return _EMAIL.sub("[email]", text)


def _host_only(match: re.Match[str]) -> str:
    try:
        parts = urlsplit(match.group())
        host = parts.hostname or "•••"
    except ValueError:
        return "[url]"
    return f"{parts.scheme}://{host}"


def secret_values(settings: Settings) -> list[str]:
    """The values of every secret setting (API keys, webhook secrets, the alert URL)."""
    return [
        value.get_secret_value()
        for value in vars(settings).values()
        if isinstance(value, SecretStr) and value.get_secret_value()
    ]


def error_line(cls_name: str | None, message: str | None) -> str:
    """`Class: first line of the message`, shortened to ERROR_WIDTH characters."""
    first = next((line.strip() for line in (message or "").splitlines() if line.strip()), "")
    head, sep, rest = first.partition(": ")
    if cls_name and sep and head.rsplit(".", 1)[-1] == cls_name:
        first = f"{cls_name}: {rest}"  # the class named with its module
    elif cls_name and not first.startswith(cls_name):
        first = f"{cls_name}: {first}" if first else cls_name
    return first if len(first) <= ERROR_WIDTH else first[: ERROR_WIDTH - 1] + "…"


def _where(job: str | None, partition: str | None, run_id: str) -> str:
    parts = [f"job {job}"] if job else []
    parts += [f"partition {partition}"] if partition else []
    return ", ".join([*parts, f"run {run_id}"])


def run_failure_text(job: str, run_id: str, partition: str | None, error: str) -> str:
    """The alert on a failed run; `error` as `error_line` gives it."""
    text = f"{PREFIX} run failed: {_where(job, partition, run_id)}"
    return redact(f"{text}: {error}" if error else text)


def check_failure_text(
    check: str, asset: str, job: str | None, run_id: str, partition: str | None
) -> str:
    """The alert on a failed blocking check: downstream assets of this run were not sent."""
    return redact(
        f"{PREFIX} blocking check {check} on {asset} failed: {_where(job, partition, run_id)}; "
        "its downstream assets did not run"
    )


def stalled_sensor_text(sensor: str, reason: str) -> str:
    """The alert on a stalled sensor."""
    return redact(f"{PREFIX} sensor {sensor} looks stalled: {reason}")


def is_alerting_check_failure(passed: bool, blocking: bool | None, severity: str) -> bool:
    """A failed blocking check; when the evaluation does not say whether its check blocks,
    a failed one of severity ERROR."""
    return not passed and (blocking if blocking is not None else severity == "ERROR")


@dataclass(frozen=True)
class CheckExecution:
    """What the failed-check alert needs of an asset check execution."""

    id: int
    alerting: bool
    """Evaluated and failed, and its check blocks (`is_alerting_check_failure`)."""
    final: bool
    """Evaluated, or its run finished without evaluating it: it will not change any more."""


@dataclass(frozen=True)
class CheckCursor:
    """Executions up to `upto` are handled, and so are those in `done` above it (the ones
    after an execution still pending)."""

    upto: int = 0
    done: frozenset[int] = frozenset()

    def dumps(self) -> str:
        return json.dumps({"upto": self.upto, "done": sorted(self.done)})

    @classmethod
    def loads(cls, text: str) -> CheckCursor:
        data = json.loads(text)
        return cls(int(data["upto"]), frozenset(int(i) for i in data["done"]))


def new_check_failures(
    executions: Iterable[CheckExecution], cursor: CheckCursor
) -> tuple[list[CheckExecution], CheckCursor]:
    """The executions to alert now, each once, and the next cursor; a pending execution (its
    run still going) holds `upto` below it until it is final."""
    fresh = [e for e in executions if e.id > cursor.upto and e.id not in cursor.done]
    due = sorted((e for e in fresh if e.final and e.alerting), key=lambda e: e.id)
    pending = [e.id for e in fresh if not e.final]
    handled = cursor.done | {e.id for e in fresh if e.final}
    upto = min(pending) - 1 if pending else max(handled | {cursor.upto})
    return due, CheckCursor(upto, frozenset(i for i in handled if i > upto))


@dataclass(frozen=True)
class Tick:
    """What the stall detection needs of a sensor tick."""

    timestamp: float
    failed: bool


def stall_reason(
    ticks: Sequence[Tick], interval_seconds: float, now: float, started: float | None = None
) -> str | None:
    """Why a running sensor looks stalled, or None. `ticks`: its latest, newest first;
    `started`: when it was last started (a restart counts as a sign of life)."""
    if len(ticks) >= FAILED_TICKS and all(t.failed for t in ticks[:FAILED_TICKS]):
        return f"its last {FAILED_TICKS} ticks failed"
    signs = [t.timestamp for t in ticks[:1]] + ([started] if started is not None else [])
    if not signs:
        return None
    limit = max(STALL_FACTOR * interval_seconds, MIN_STALL_SECONDS)
    silent = now - max(signs)
    if silent <= limit:
        return None
    return f"no tick for {silent / 60:.0f} min (limit {limit / 60:.0f} min)"


def due_stall_alerts(
    reasons: Mapping[str, str | None], alerted: Collection[str]
) -> tuple[dict[str, str], list[str]]:
    """The stalls to alert now (not alerted yet) and the sensors stalled now (the next
    `alerted`): one alert per stall, again after the sensor recovered and stalled anew."""
    stalled = {name: reason for name, reason in reasons.items() if reason}
    due = {name: reason for name, reason in stalled.items() if name not in alerted}
    return due, sorted(stalled)


class _RetryableStatusError(Exception):
    """The webhook answered 429 or 5xx."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def post_alert(url: str, text: str, *, transport: httpx.BaseTransport | None = None) -> bool:
    """POST `{"text": text}` to `url`; connection errors, 429 and 5xx are retried briefly.
    Never raises: False (and a warning without the URL) when it was not delivered."""
    try:
        with httpx.Client(transport=transport, timeout=TIMEOUT_SECONDS) as client:
            for attempt in Retrying(
                stop=stop_after_attempt(ATTEMPTS),
                wait=RETRY_WAIT,
                retry=retry_if_exception_type((*_TRANSIENT, _RetryableStatusError)),
                reraise=True,
            ):
                with attempt:
                    response = client.post(url, json={"text": text})
                    if response.status_code == 429 or response.status_code >= 500:
                        raise _RetryableStatusError(response.status_code)
    except (httpx.HTTPError, httpx.InvalidURL, _RetryableStatusError) as exc:
        reason = str(exc) if isinstance(exc, _RetryableStatusError) else type(exc).__name__
        log.warning("alert not delivered to the alert webhook: %s", reason)
        return False
    if response.is_error:
        log.warning("alert not delivered: the alert webhook answered %d", response.status_code)
        return False
    return True


def send_alert(text: str, logger: logging.Logger, settings: Settings | None = None) -> bool:
    """Log the alert as an error and post it to NEWSLETTER_ALERT_WEBHOOK_URL when that is set
    (configured secrets masked). True when the webhook took it."""
    settings = settings or Settings()
    text = redact(text, secret_values(settings))
    logger.error(text)
    url = settings.alert_webhook_url.get_secret_value() if settings.alert_webhook_url else ""
    return post_alert(url, text) if url else False
