"""Benchmark: the webhook receiver under load, and the application of 100,000 inbox events.

`python benchmarks/bench_webhooks.py [--rate 1000] [--seconds 30] [--events 100000]
[--contacts 100000] [--database sqlite|postgres|both] [--postgres-url URL] [--seed 42]`

1. Receiver load, per database: the real receiver (`python -m newsletter_pipelines.webhooks
   serve`: uvicorn, one process, default log level) on a free loopback port, its inbox
   `provider_events` in a SQLite file or in a throwaway PostgreSQL database (created on the
   server at `--postgres-url`, dropped afterwards). Its rate limit is raised through its
   settings NEWSLETTER_WEBHOOK_RATE_PER_SECOND/_BURST far above the offered load (every
   delivery comes from 127.0.0.1); 429s are counted apart all the same. A fresh process offers
   `--rate` events/s for `--seconds` s on uvloop over up to 256 keep-alive HTTP/1.1
   connections written and read on the sockets directly (an HTTP client library costs as much
   CPU per request as the receiver), open loop: each delivery is sent at its planned time
   whatever became of the earlier ones (waiting for a free connection when all 256 are busy),
   its latency runs from that planned time to the answer, and it is given up (no answer, the
   connection dropped) 10 s after its planned time, as Mailchimp gives up on a webhook.
   Deliveries: Mailchimp form-encoded events (unsubscribe, profile, subscribe; bracket keys,
   encoded as the sandbox encodes them) and Brevo JSON (single events and batched arrays of
   5-50), every event distinct, plus ~1 % redeliveries of earlier ones (the same body, or a
   Brevo event through a second webhook). The receiver is stopped gracefully, then its inbox
   is compared with the dedupe keys of what was acknowledged (computed with the receiver's own
   `parse`).
2. Application, per database. Once, not timed: a CRM of `--contacts` synthetic contacts
   (`crm.synthetic`, SQLite) and its first real `full_sync_job` into the embedded sandbox's
   Mailchimp audience (the sandbox kept in memory meanwhile, its state file written at the
   end); then people act there (`sandbox.people`; of `--events`: 62 % unsubscribe, 15 % of
   those re-subscribe, 2 % are archived, 1 % deleted, 20 % new addresses sign up), and the
   sandbox's webhook deliveries for it are recorded and parsed by the receiver's `parse`. Per
   database, not timed: the CRM and the sync's ledger (SQLite: the files copied; PostgreSQL:
   the same CRM loaded and the ledger rows copied into a throwaway database), a copy of the
   sandbox state, and the events stored unprocessed through `state.events.store_events`. Then
   a fresh process times the real `provider_events_job` (`execute_in_process` on an ephemeral
   instance, the resources of `build_resources`, run config as the sensor submits it), checks
   that every event is marked processed and the CRM values of a sample of addresses, and
   prints the op's own log lines by time (where its time went). A failed run is reported with
   its error, not raised.

Figures are printed beside their budgets (no acknowledged event lost; the job ≤ 30 s); nothing
is asserted. Both parts share the machine with whatever else runs on it: the load part prints
the CPU the receiver, the load generator and everything else used.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import pickle
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unicodedata
import warnings
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

import httpx
import psutil
import sqlalchemy as sa
from bench_import_back import _unreachable, postgres_database
from measure import (
    PeakRss,
    add_postgres_url,
    counts_text,
    fast_sqlite_writes,
    machine,
    report,
    verdict,
)

from newsletter_pipelines.crm.loader import insert_rows
from newsletter_pipelines.crm.reader import read_contacts_at
from newsletter_pipelines.crm.schema import create_schema, crm_tables
from newsletter_pipelines.crm.synthetic import GERMAN_FEMALE, GERMAN_LAST, GERMAN_MALE, iter_crm
from newsletter_pipelines.db import create_engine, safe_url
from newsletter_pipelines.sandbox.webhooks import form_fields
from newsletter_pipelines.settings import CrmSchema
from newsletter_pipelines.state.events import provider_events, store_events
from newsletter_pipelines.state.ledger import ledger
from newsletter_pipelines.state.schema import ensure_schema
from newsletter_pipelines.sync.email_address import raw_match_key
from newsletter_pipelines.webhooks.parse import brevo_events, mailchimp_events

BUDGET_LOST = 0
BUDGET_JOB_S = 30.0
URL_VARIABLE = "BENCH_WEBHOOKS_DATABASE_URL"  # the child's database URL (kept out of its argv)
SECRET = "bench-webhooks-secret-0123456789"
AUDIENCE = "mailchimp"  # the sandbox audience of the application part (default audiences)
AUDIENCES = json.dumps(
    [{"key": "mailchimp", "provider": "mailchimp"}, {"key": "brevo", "provider": "brevo"}]
)
RECEIVER_RATE = 1_000_000  # NEWSLETTER_WEBHOOK_RATE_PER_SECOND/_BURST for the load run
# share of the load's events by delivery kind (Brevo batches hold 5-50 events)
LOAD_MIX = {
    "mailchimp unsubscribe": 0.25,
    "mailchimp profile": 0.10,
    "mailchimp subscribe": 0.10,
    "brevo single": 0.30,
    "brevo batch": 0.25,
}
BATCH_SIZES = (5, 50)
DUPLICATE_SHARE = 0.01
BREVO_TYPES = (
    ("unsubscribed", 5),
    ("hard_bounce", 2),
    ("list_addition", 2),
    ("contact_deleted", 1),
)
# share of the application's events by what the person did at the sandbox
APPLY_MIX = {"unsubscribe": 0.62, "resubscribe": 0.15, "archive": 0.02, "delete": 0.01}
DELIVERY_TIMEOUT_S = 10.0  # a provider's patience per delivery (Mailchimp's: 10 s)
CONNECTIONS = 256  # keep-alive connections of the load generator (at most in flight at once)
SAMPLE = 100  # addresses checked per kind
STORE_CHUNK = 5_000
QUIET: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
DOMAINS = ("example.de", "example.com", "beispiel.de", "example.org", "mail.example.net")
_ASCII = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", " ": "", "-": ""})
_MIB = 1024**2


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text.lower().translate(_ASCII))
    return folded.encode("ascii", "ignore").decode()


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


# --- 1. receiver load: the deliveries --------------------------------------------------------


@dataclass
class Delivery:
    """One POST to the receiver, due `offset` seconds after the start."""

    offset: float
    provider: str
    kind: str
    body: bytes
    keys: tuple[str, ...]  # dedupe keys of its events, as the receiver computes them
    duplicate: bool = False


@dataclass
class Answer:
    """What became of one delivery."""

    status: int | None  # None: no answer (error)
    latency: float  # planned send time → answer (or error)
    lag: float  # planned send time → actually handed to the client
    stored: int | None = None
    error: str | None = None


class _People:
    """Distinct synthetic people for the load's events."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.count = 0

    def next(self) -> tuple[str, str, str]:
        self.count += 1
        female = self.rng.random() < 0.5
        first = self.rng.choice(GERMAN_FEMALE if female else GERMAN_MALE)
        last = self.rng.choice(GERMAN_LAST)
        domain = self.rng.choice(DOMAINS)
        return first, last, f"{_ascii(first)}.{_ascii(last)}.{self.count}@{domain}"


def _mailchimp_body(kind: str, people: _People, when: datetime, rng: random.Random) -> bytes:
    """A Mailchimp delivery as Mailchimp (and the sandbox) form-encodes it."""
    first, last, email = people.next()
    data: dict[str, Any] = {
        "id": f"{rng.getrandbits(40):010x}",
        "list_id": "a6b5da1054",
        "email": email,
        "email_type": "html",
        "ip_opt": f"198.51.100.{rng.randrange(1, 255)}",
        "web_id": str(rng.randrange(10**8, 10**9)),
        "merges": {
            "EMAIL": email,
            "FNAME": first,
            "LNAME": last,
            "SALUTATION": "",
            "INTERESTS": rng.choice(["", "Webinar", "Messe 2025, Webinar"]),
        },
    }
    if kind == "unsubscribe":
        data |= {
            "action": "unsub",
            "reason": "manual",
            "campaign_id": f"{rng.getrandbits(40):010x}",
        }
    elif kind == "subscribe":
        data["ip_signup"] = data["ip_opt"]
    fields = {"type": kind, "fired_at": when.strftime("%Y-%m-%d %H:%M:%S"), "data": data}
    return str(httpx.QueryParams(form_fields("", fields))).encode()


def _brevo_event(people: _People, when: datetime, rng: random.Random, hook: int) -> dict:
    """One Brevo marketing event as the sandbox sends it."""
    kinds, weights = zip(*BREVO_TYPES, strict=True)
    kind = rng.choices(kinds, weights)[0]
    _, _, email = people.next()
    stamp, ts = when.strftime("%Y-%m-%d %H:%M:%S"), int(when.timestamp())
    event: dict[str, Any] = {"id": hook, "event": kind, "email": email, "key": "", "date": stamp}
    event["ts"] = ts
    if kind == "unsubscribed":
        event |= {"camp_id": rng.randrange(1, 500), "date_event": stamp, "ts_event": ts}
        event |= {"list_id": [7], "tag": "", "sending_ip": f"185.41.28.{rng.randrange(1, 255)}"}
    elif kind == "hard_bounce":
        event |= {"reason": "unknown user", "camp_id": rng.randrange(1, 500), "ts_event": ts}
    else:
        event["list_id"] = [7]
    return event


def plan_deliveries(rate: float, seconds: float, seed: int) -> list[Delivery]:
    """The deliveries of the run: `rate` × `seconds` events paced evenly (a batch of n events
    takes n event slots), ~`DUPLICATE_SHARE` of the slots redeliveries of earlier ones."""
    rng = random.Random(seed)
    people = _People(rng)
    total = int(rate * seconds)
    start = datetime(2025, 7, 1, 8, tzinfo=UTC)
    kinds, weights = zip(*LOAD_MIX.items(), strict=True)
    mean_batch = sum(BATCH_SIZES) / 2
    # per delivery: the event shares divided by events per delivery
    weights = tuple(
        w / (mean_batch if k == "brevo batch" else 1) for k, w in zip(kinds, weights, strict=True)
    )
    deliveries: list[Delivery] = []
    singles: list[int] = []  # indexes of single-event, first deliveries
    sent = 0
    while sent < total:
        offset = sent / rate
        when = start + timedelta(seconds=offset)
        older = [i for i in singles[-2000:] if deliveries[i].offset <= offset - 0.5]
        if older and rng.random() < DUPLICATE_SHARE:
            original = deliveries[rng.choice(older)]
            body = original.body
            if original.provider == "brevo" and rng.random() < 0.5:
                event = json.loads(body)
                body = json.dumps({**event, "id": event["id"] + 1}).encode()  # another webhook
            deliveries.append(
                Delivery(offset, original.provider, original.kind, body, original.keys, True)
            )
            sent += 1
            continue
        kind = rng.choices(kinds, weights)[0]
        if kind.startswith("mailchimp"):
            body = _mailchimp_body(kind.split()[1], people, when, rng)
            keys = tuple(e.dedupe_key for e in mailchimp_events(body, "mailchimp"))
            provider = "mailchimp"
        else:
            size = rng.randint(*BATCH_SIZES) if kind == "brevo batch" else 1
            events = [_brevo_event(people, when, rng, 41) for _ in range(size)]
            body = json.dumps(events if kind == "brevo batch" else events[0]).encode()
            keys = tuple(e.dedupe_key for e in brevo_events(body, "brevo"))
            provider = "brevo"
        if len(keys) == 1:
            singles.append(len(deliveries))
        deliveries.append(Delivery(offset, provider, kind, body, keys))
        sent += len(keys)
    return deliveries


# --- 1. receiver load: driving it ------------------------------------------------------------


def _request(delivery: Delivery, host: str) -> bytes:
    """The whole HTTP/1.1 request of `delivery` (built before the clock starts)."""
    if delivery.provider == "mailchimp":
        target = f"/webhooks/mailchimp/mailchimp?secret={SECRET}"
        headers = "content-type: application/x-www-form-urlencoded\r\nuser-agent: MailChimp.com\r\n"
    else:
        target = "/webhooks/brevo/brevo"
        headers = f"content-type: application/json\r\nauthorization: Bearer {SECRET}\r\n"
    head = (
        f"POST {target} HTTP/1.1\r\nhost: {host}\r\n{headers}"
        f"content-length: {len(delivery.body)}\r\n\r\n"
    )
    return head.encode("ascii") + delivery.body


class _Connection(asyncio.Protocol):
    """One keep-alive connection of the pool: one request at a time, its response read by
    Content-Length (what uvicorn sends for starlette's responses)."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.index: int | None = None  # the delivery in flight
        self.buffer = bytearray()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.index is None:
            return
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        fields = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        try:
            status = int(head[0].split(" ", 2)[1])
            length = int(fields["content-length"])
        except (IndexError, KeyError, ValueError):
            self.fail("unreadable response")
            return
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        index, self.index = self.index, None
        keep = fields.get("connection", "").lower() != "close"
        if not keep:
            self.close()
        self.pool.answered(self, index, status, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.lost(self)
        if self.index is not None:
            index, self.index = self.index, None
            self.pool.failed(index, "connection closed" if exc is None else type(exc).__name__)

    def fail(self, error: str) -> None:
        index, self.index = self.index, None
        self.close()
        if index is not None:
            self.pool.failed(index, error)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()


class _Pool:
    """Up to `size` keep-alive connections to the receiver; a delivery that finds none free
    waits in one queue (first come, first served) and is given up `DELIVERY_TIMEOUT_S` after
    its planned time, waiting included (a request in flight then loses its connection)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        port: int,
        requests: list[bytes],
        dues: list[float],
        size: int,
    ) -> None:
        self.loop, self.port, self.size = loop, port, size
        self.requests, self.dues = requests, dues
        self.answers: list[Answer | None] = [None] * len(requests)
        self.handed: list[float] = [0.0] * len(requests)
        self.free: list[_Connection] = []
        self.opened = 0  # connections open or opening
        self.waiting: collections.deque[int] = collections.deque()
        self.running: dict[int, _Connection] = {}
        self.left = len(requests)
        self.finished = loop.create_future()
        self.last = loop.time()

    def submit(self, index: int) -> None:
        """Hand delivery `index` over at (about) its planned time."""
        self.handed[index] = self.loop.time()
        self.loop.call_at(self.dues[index] + DELIVERY_TIMEOUT_S, self.give_up, index)
        self.waiting.append(index)
        self.dispatch()

    def dispatch(self) -> None:
        while self.waiting:
            if self.answers[self.waiting[0]] is not None:  # given up while waiting
                self.waiting.popleft()
                continue
            while self.free and self.free[-1].closed:
                self.free.pop()
            if self.free:
                self.send(self.free.pop(), self.waiting.popleft())
            elif self.opened < self.size:
                self.opened += 1
                self.loop.create_task(self.open(self.waiting.popleft()))
            else:
                return

    async def open(self, index: int) -> None:
        try:
            _, connection = await self.loop.create_connection(
                lambda: _Connection(self), "127.0.0.1", self.port
            )
        except OSError as exc:
            self.opened -= 1
            self.finish(index, None, None, type(exc).__name__)
            self.dispatch()
            return
        if self.answers[index] is not None:  # given up while connecting
            self.release(connection)
        else:
            self.send(connection, index)

    def send(self, connection: _Connection, index: int) -> None:
        connection.index = index
        self.running[index] = connection
        assert connection.transport is not None
        connection.transport.write(self.requests[index])

    def release(self, connection: _Connection) -> None:
        if not connection.closed:
            self.free.append(connection)
        self.dispatch()

    def answered(self, connection: _Connection, index: int, status: int, body: bytes) -> None:
        self.running.pop(index, None)
        stored = None
        if 200 <= status < 300:
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                stored = int(json.loads(body).get("stored"))
        self.finish(index, status, stored, None)
        self.release(connection)

    def failed(self, index: int, error: str) -> None:
        self.running.pop(index, None)
        self.finish(index, None, None, error)

    def lost(self, connection: _Connection) -> None:
        self.opened -= 1
        self.dispatch()

    def give_up(self, index: int) -> None:
        if self.answers[index] is not None:
            return
        self.finish(index, None, None, f"no answer within {DELIVERY_TIMEOUT_S:.0f} s")
        connection = self.running.pop(index, None)
        if connection is not None:
            connection.index = None
            connection.close()  # as a provider gives up: the connection is dropped

    def finish(self, index: int, status: int | None, stored: int | None, error: str | None) -> None:
        if self.answers[index] is not None:
            return
        now = self.loop.time()
        due = self.dues[index]
        self.answers[index] = Answer(status, now - due, self.handed[index] - due, stored, error)
        self.last = now
        self.left -= 1
        if self.left == 0 and not self.finished.done():
            self.finished.set_result(None)


async def drive(base_url: str, deliveries: list[Delivery]) -> tuple[list[Answer], float]:
    """Send every delivery at its planned time (open loop); (answers, seconds until the last
    answer). HTTP/1.1 over up to `CONNECTIONS` keep-alive loopback connections, written and
    read on the event loop's sockets directly (requests built before the clock starts): an
    HTTP client library costs ~2 ms of CPU per request, as much as the receiver, which on two
    shared cores made the generator the bottleneck it was meant to measure."""
    loop = asyncio.get_running_loop()
    port = int(base_url.rsplit(":", 1)[1])
    host = base_url.split("://", 1)[1]
    requests = [_request(d, host) for d in deliveries]
    start = loop.time() + 0.2
    dues = [start + d.offset for d in deliveries]
    pool = _Pool(loop, port, requests, dues, CONNECTIONS)
    if not deliveries:
        return [], 0.0
    for index, due in enumerate(dues):
        if (wait := due - loop.time()) > 0:
            await asyncio.sleep(wait)
        pool.submit(index)
    await pool.finished
    for connection in pool.free:
        connection.close()
    for connection in list(pool.running.values()):
        connection.close()
    return [a for a in pool.answers if a is not None], pool.last - start


def _run(coroutine: Any) -> Any:
    """Run on uvloop where installed (uvicorn's own loop; halves the client's CPU per request)."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _child_env(**variables: str) -> dict[str, str]:
    """This environment without any NEWSLETTER_* variable (no API key may reach a provider),
    plus `variables`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    return env | variables


@contextlib.contextmanager
def receiver(state_url: str, log_file: Path) -> Any:
    """The receiver as its own process on a free loopback port; yields (base URL, process)."""
    port = _free_port()
    env = _child_env(
        NEWSLETTER_HOME=str(log_file.parent / "home"),
        NEWSLETTER_STATE_DATABASE_URL=state_url,
        NEWSLETTER_WEBHOOK_SECRET=SECRET,
        NEWSLETTER_AUDIENCES=AUDIENCES,
        NEWSLETTER_WEBHOOK_RATE_PER_SECOND=str(RECEIVER_RATE),
        NEWSLETTER_WEBHOOK_RATE_BURST=str(RECEIVER_RATE),
    )
    command = [sys.executable, "-m", "newsletter_pipelines.webhooks", "serve"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with log_file.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the receiver exited ({process.returncode}):\n{_tail(log_file)}")
            with contextlib.suppress(httpx.HTTPError):
                probe = httpx.get(f"{base}/webhooks/mailchimp/mailchimp?secret={SECRET}")
                if probe.status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"the receiver did not answer within 60 s:\n{_tail(log_file)}")
            time.sleep(0.1)
        yield base, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _busy(times: Any) -> float:
    """CPU seconds the whole machine was busy (all but idle and I/O wait)."""
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _hwm(pid: int) -> int:
    """VmHWM (peak RSS) of process `pid` in bytes, 0 when unknown."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def measure_load(database: str, state_url: str, folder: Path, args: argparse.Namespace) -> None:
    """Start the receiver on `state_url`, drive the planned deliveries, compare the inbox."""
    rate, seconds = args.rate, args.seconds
    start = time.perf_counter()
    plan = folder.parent / "deliveries.pickle"  # the same deliveries for every database
    if plan.exists():
        with plan.open("rb") as handle:
            deliveries = pickle.load(handle)
    else:
        deliveries = plan_deliveries(rate, seconds, args.seed)
        with plan.open("wb") as handle:
            pickle.dump(deliveries, handle, protocol=pickle.HIGHEST_PROTOCOL)
    plan_s = time.perf_counter() - start
    n_events = sum(len(d.keys) for d in deliveries)
    by_kind = Counter(d.kind for d in deliveries if not d.duplicate)
    events_by_kind = Counter()
    for d in deliveries:
        if not d.duplicate:
            events_by_kind[d.kind] += len(d.keys)
    duplicates = [d for d in deliveries if d.duplicate]
    distinct = {k for d in deliveries for k in d.keys}
    log_file = folder / f"receiver-{database}.log"
    with receiver(state_url, log_file) as (base, process):
        proc = psutil.Process(process.pid)
        cpu_before = proc.cpu_times()
        own_before = psutil.Process().cpu_times()
        machine_before = psutil.cpu_times()
        answers, wall = _run(drive(base, deliveries))
        cpu_after = proc.cpu_times()
        own_after = psutil.Process().cpu_times()
        machine_after = psutil.cpu_times()
        receiver_peak = _hwm(process.pid)
    engine = create_engine(state_url)  # after the shutdown: what was still in flight is in
    with engine.connect() as conn:
        rows = conn.execute(sa.select(provider_events.c.dedupe_key)).scalars().all()
    engine.dispose()
    log_text = log_file.read_text(errors="replace")
    stored = set(rows)
    twice = sum(1 for n in Counter(rows).values() if n > 1)
    statuses = Counter(a.status for a in answers)
    errors = Counter(a.error for a in answers if a.error)
    acked = {k for d, a in zip(deliveries, answers, strict=True) if a.status and a.status < 300
             for k in d.keys}  # fmt: skip
    acked_deliveries = sum(1 for a in answers if a.status and a.status < 300)
    acked_events = sum(
        len(d.keys) for d, a in zip(deliveries, answers, strict=True) if a.status and a.status < 300
    )
    lost = acked - stored
    unacked_stored = stored - acked
    latencies = [a.latency for a in answers if a.status is not None]
    lags = [a.lag for a in answers]
    dup_answers = [a for d, a in zip(deliveries, answers, strict=True) if d.duplicate]
    dup_keys = {k for d in duplicates for k in d.keys}
    dup_as_dup = sum(1 for a in dup_answers if a.status == 200 and a.stored == 0)
    dup_acked = sum(1 for a in dup_answers if a.status == 200)
    too_many = statuses.get(429, 0)
    server_errors = sum(n for s, n in statuses.items() if s is not None and s >= 500)
    other = {s: n for s, n in statuses.items() if s is not None and not 200 <= s < 300}
    cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    own = (own_after.user + own_after.system) - (own_before.user + own_before.system)
    machine = _busy(machine_after) - _busy(machine_before)
    cores = psutil.cpu_count() or 1
    sending = max([1 / rate, *(d.offset for d in deliveries)])
    refusals = Counter(
        line.split(": ", 1)[1].split(" ", 1)[1] if ": " in line else line
        for line in log_text.splitlines()
        if " WARNING " in line and " from " in line
    )
    report(
        f"=== {database}: receiver load, {rate:,.0f} events/s for {seconds:,.0f} s "
        f"(inbox {safe_url(state_url)}) ===",
        [
            (
                "deliveries",
                f"{len(deliveries):,} POSTs ({len(duplicates):,} of them redeliveries), planned "
                f"in {plan_s:.1f} s (not timed); {counts_text(by_kind)}",
            ),
            (
                "  events",
                f"{n_events:,} sent, {len(distinct):,} distinct; by kind "
                f"{counts_text(events_by_kind)}; batches of {BATCH_SIZES[0]}-{BATCH_SIZES[1]}",
            ),
            (
                "rate limit",
                f"NEWSLETTER_WEBHOOK_RATE_PER_SECOND and _BURST = {RECEIVER_RATE:,} (default "
                "50/s, burst 500, per client address and provider: every delivery here comes "
                "from 127.0.0.1)",
            ),
        ],
    )
    report(
        "1. receiver load",
        [
            ("events sent", f"{n_events:,} in {len(deliveries):,} deliveries"),
            (
                "acknowledged (2xx)",
                f"{acked_events:,} events, {sum(n for s, n in statuses.items() if s and s < 300):,}"
                f" deliveries; {len(acked):,} distinct events",
            ),
            (
                "stored in provider_events",
                f"{len(stored):,} rows (distinct events acknowledged: {len(acked):,}; stored "
                f"without an acknowledgement: {len(unacked_stored):,})",
            ),
            (
                "events lost",
                f"{len(lost):,}   budget {BUDGET_LOST}   {verdict(len(lost) <= BUDGET_LOST)} "
                "(distinct events acknowledged but not stored)",
            ),
            (
                "duplicates",
                f"{len(duplicates):,} redeliveries of {len(dup_keys):,} events: {dup_acked:,} "
                f"acknowledged, {dup_as_dup:,} of them with stored 0 (already in the inbox); "
                f"{len(dup_keys & stored):,} of these events in the inbox, events stored more "
                f"than once: {twice:,}   {'stored once' if twice == 0 else 'STORED TWICE'}",
            ),
            (
                "latency (planned send → answer)",
                f"p50 {_ms(_quantile(latencies, 0.5))}, p99 {_ms(_quantile(latencies, 0.99))}, "
                f"max {_ms(max(latencies, default=float('nan')))}   no budget set",
            ),
            (
                "  client lag",
                f"p99 {_ms(_quantile(lags, 0.99))}, max {_ms(max(lags, default=0.0))} (planned "
                "send → handed to the connection pool: how far the load generator itself fell "
                "behind)",
            ),
            (
                "achieved rate",
                f"{acked_events / wall:,.0f} events/s acknowledged, {n_events / sending:,.0f} "
                f"events/s sent (target {rate:,.0f}; sending took {sending:.1f} s, the last "
                f"answer came {wall:.1f} s after the start)",
            ),
            ("429 (rate limited)", f"{too_many:,}"),
            (
                "other refusals",
                f"5xx {server_errors:,}; all non-2xx by status: "
                f"{counts_text({str(s): n for s, n in other.items()})}; no answer: "
                f"{counts_text(errors)}",
            ),
            (
                "receiver process",
                f"CPU {cpu:.1f} s over {wall:.1f} s ({cpu / wall:.0%} of one core; "
                f"{cpu / max(acked_deliveries, 1) * 1000:.1f} ms per acknowledged delivery), "
                f"peak RSS {receiver_peak / _MIB:,.0f} MiB; log: {log_text.count(' ERROR '):,} "
                "errors, "
                f"refusals logged: {counts_text(refusals)}",
            ),
            ("load generator", f"CPU {own:.1f} s ({own / wall:.0%} of one core)"),
            (
                "machine",
                f"CPU busy {machine / wall:.0%} of one core, {cores} cores (of it other "
                f"processes, PostgreSQL included: {(machine - cpu - own) / wall:.0%}); load "
                f"average {os.getloadavg()[0]:.2f} at the end",
            ),
        ],
    )
    for line in [
        line for line in log_text.splitlines() if " ERROR " in line or "Traceback" in line
    ][:5]:
        print(f"    receiver log: {line[:200]}", flush=True)


# --- 2. application: setup -------------------------------------------------------------------


def _load_crm(url: str, contacts: int, seed: int) -> int:
    """The synthetic CRM into `url` (schema created first); PostgreSQL vacuumed and analyzed."""
    schema = CrmSchema()
    engine = fast_sqlite_writes(create_engine(url))
    create_schema(engine, schema)
    count = 0
    stream = iter_crm(contacts, seed)
    while chunk := list(islice(stream, 50_000)):
        rows = [c for c, _ in chunk]
        insert_rows(engine, schema, rows, [t for _, tags in chunk for t in tags])
        count += len(rows)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
    engine.dispose()
    return count


def _silence_dagster() -> None:
    import dagster as dg  # noqa: PLC0415 (only the Dagster parts need it)

    for category in (dg.BetaWarning, dg.PreviewWarning):
        warnings.filterwarnings("ignore", category=category)


class _Recorder:
    """Stands in for the sandbox's `WebhookSender` while the people act: keeps each Mailchimp
    delivery's body, encoded as `WebhookSender.post_form` encodes it, without an HTTP call."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def post_form(self, url: str, fields: dict[str, Any]) -> None:
        self.bodies.append(str(httpx.QueryParams(form_fields("", fields))).encode())

    def post_json(self, url: str, payload: Any, headers: Any) -> None:
        raise AssertionError("the benchmark's people act at Mailchimp only")

    def close(self) -> None:
        pass


def sync_once(folder: Path, contacts: int, events: int, seed: int) -> None:
    """Once, in NEWSLETTER_HOME=`folder` (the child's environment): the CRM (SQLite), its first
    `full_sync_job` into the sandbox's Mailchimp audience, then the people's actions there; the
    events their webhook deliveries carry are parsed by the receiver's `parse` and pickled."""
    _silence_dagster()
    import dagster as dg  # noqa: PLC0415

    from newsletter_pipelines.definitions import defs  # noqa: PLC0415 (reads the settings)
    from newsletter_pipelines.defs.resources import build_resources  # noqa: PLC0415
    from newsletter_pipelines.providers.resources import embedded_sandbox  # noqa: PLC0415
    from newsletter_pipelines.sandbox import PersonEvent  # noqa: PLC0415
    from newsletter_pipelines.sandbox.mailchimp_state import McWebhook  # noqa: PLC0415
    from newsletter_pipelines.sandbox.people import mailchimp_person  # noqa: PLC0415
    from newsletter_pipelines.settings import Settings  # noqa: PLC0415

    settings = Settings()
    start = time.perf_counter()
    count = _load_crm(settings.resolved_crm_database_url(), contacts, seed)
    loaded = time.perf_counter() - start
    # the process's sandbox, which the job's clients use, kept in memory until the end (the
    # state file would be rewritten, 40 MB, on every write call of the sync)
    state_file = settings.home / "sandbox.json"
    sandbox = embedded_sandbox(state_file)
    sandbox.state_file = None
    start = time.perf_counter()
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("full_sync_job").execute_in_process(
            instance=instance,
            partition_key=AUDIENCE,
            run_config=QUIET,
            resources=build_resources(settings),
            raise_on_error=False,
        )
        created = next(
            (
                e.materialization.metadata["created"].value
                for e in result.get_asset_materialization_events()
                if e.asset_key == dg.AssetKey("audience_sync")
            ),
            0,
        )
    if not result.success:
        raise SystemExit("the first full_sync_job failed")
    synced_s = time.perf_counter() - start

    start = time.perf_counter()
    recorder = _Recorder()
    sender, sandbox.webhooks = sandbox.webhooks, recorder
    with sandbox.transaction() as state:
        (account,) = state.mailchimp.values()
        (lst,) = [x for x in account.lists.values() if x.name == "CRM Newsletter"]
        hook = McWebhook(
            id="benchrecorder",
            url=f"http://127.0.0.1/webhooks/mailchimp/{AUDIENCE}",
            events=dict.fromkeys(("subscribe", "unsubscribe", "profile", "cleaned", "upemail"), 1),
            sources={"user": True, "admin": True, "api": False},
        )
        lst.webhooks.append(hook)
        actors = _actors(list(lst.members.values()), events, seed)
        rng = random.Random(seed)
        order = [(a, e) for a in ("unsubscribe", "archive", "delete", "signup") for e in actors[a]]
        rng.shuffle(order)
        again = list(actors["resubscribe"])  # each after its unsubscription
        rng.shuffle(again)
        order += [("resubscribe", e) for e in again]
        for action, email in order:
            names = {}
            if action == "signup":
                names = {
                    "first_name": rng.choice(GERMAN_FEMALE + GERMAN_MALE),
                    "last_name": rng.choice(GERMAN_LAST),
                }
            mailchimp_person(
                sandbox, PersonEvent(list_id=lst.id, email=email, action=action, **names)
            )
        lst.webhooks.remove(hook)
    sandbox.webhooks = sender
    sandbox.state_file = state_file.resolve()
    sandbox.save()
    acted_s = time.perf_counter() - start
    start = time.perf_counter()
    parsed = [e for body in recorder.bodies for e in mailchimp_events(body, AUDIENCE)]
    with (folder / "events.pickle").open("wb") as handle:
        pickle.dump(parsed, handle, protocol=pickle.HIGHEST_PROTOCOL)
    (folder / "actors.json").write_text(json.dumps(actors))
    print(
        f"setup: {count:,} synthetic contacts loaded in {loaded:.1f} s; the first full_sync_job "
        f"created {created:,} members in the sandbox's Mailchimp audience in {synced_s:.1f} s; "
        f"then people acted there ({counts_text(Counter(a for a, _ in order))}) in "
        f"{acted_s:.1f} s, their {len(recorder.bodies):,} webhook deliveries parsed in "
        f"{time.perf_counter() - start:.1f} s (none of it counted)",
        flush=True,
    )


def _copy_ledger(source: Path, url: str) -> int:
    """The sync's ledger rows from the SQLite state file into the state database at `url`."""
    reading = create_engine(f"sqlite:///{source}")
    writing = create_engine(url)
    ensure_schema(writing, upgrade=True)
    copied = 0
    with reading.connect() as conn, writing.begin() as out:
        result = conn.execute(sa.select(ledger)).mappings()
        while rows := result.fetchmany(20_000):
            out.execute(sa.insert(ledger), [dict(r) for r in rows])
            copied += len(rows)
    reading.dispose()
    writing.dispose()
    return copied


def _actors(members: list[Any], events: int, seed: int) -> dict[str, list[str]]:
    """Addresses per action: subscribed members unsubscribe (some re-subscribe), are archived
    or deleted; the rest of the events are sign-ups of new addresses."""
    rng = random.Random(seed)
    subscribed = sorted(m.email_address for m in members if m.status == "subscribed")
    counts = {kind: round(share * events) for kind, share in APPLY_MIX.items()}
    counts["signup"] = events - sum(counts.values())
    needed = counts["unsubscribe"] + counts["archive"] + counts["delete"]
    if needed > len(subscribed):
        raise SystemExit(
            f"{len(subscribed):,} subscribed members are too few for {events:,} events: "
            "raise --contacts"
        )
    rng.shuffle(subscribed)
    unsubscribing = subscribed[: counts["unsubscribe"]]
    rest = iter(subscribed[counts["unsubscribe"] :])
    return {
        "unsubscribe": unsubscribing,
        "resubscribe": unsubscribing[: counts["resubscribe"]],
        "archive": list(islice(rest, counts["archive"])),
        "delete": list(islice(rest, counts["delete"])),
        "signup": [f"neu.{i}@signup.example.net" for i in range(counts["signup"])],
    }


def prepare_database(
    database: str, url: str | None, folder: Path, *, synced: Path, contacts: int, seed: int
) -> None:
    """For one database: the CRM and ledger as the sync left them, a copy of the sandbox after
    the people's actions, and their events stored unprocessed; the sample of addresses to
    check and its CRM values before, in `facts.json`."""
    home = folder / "home"
    home.mkdir(parents=True)
    shutil.copy(synced / "sandbox.json", home / "sandbox.json")
    start = time.perf_counter()
    if url is None:  # SQLite: the synced files themselves
        shutil.copy(synced / "crm.sqlite3", folder / "crm.sqlite3")
        shutil.copy(synced / "state.sqlite3", folder / "state.sqlite3")
        crm_url = f"sqlite:///{folder / 'crm.sqlite3'}"
        state_url = f"sqlite:///{folder / 'state.sqlite3'}"
        how = "the synced SQLite files copied"
    else:
        _load_crm(url, contacts, seed)
        copied = _copy_ledger(synced / "state.sqlite3", url)
        crm_url = state_url = url
        how = f"the same CRM loaded, the sync's {copied:,} ledger rows copied"
    crm_s = time.perf_counter() - start

    start = time.perf_counter()
    with (synced / "events.pickle").open("rb") as handle:
        parsed = pickle.load(handle)
    state = create_engine(state_url)
    ensure_schema(state, upgrade=True)
    stored = sum(
        store_events(state, parsed[i : i + STORE_CHUNK]) for i in range(0, len(parsed), STORE_CHUNK)
    )
    if state.dialect.name == "postgresql":  # as autovacuum would have by then
        with state.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
    store_s = time.perf_counter() - start
    types = Counter(
        f"{e.type} ({e.payload['data'].get('action')})" if e.type == "unsubscribe" else e.type
        for e in parsed
    )

    actors = json.loads((synced / "actors.json").read_text())
    rng = random.Random(seed + 1)
    kinds = {
        "unsubscribed": sorted(set(actors["unsubscribe"]) - set(actors["resubscribe"])),
        "unsubscribed, then re-subscribed": actors["resubscribe"],
        "archived": actors["archive"],
        "deleted": actors["delete"],
        "signed up (new address)": actors["signup"],
    }
    sample = {
        kind: sorted({raw_match_key(e) for e in rng.sample(found, min(SAMPLE, len(found)))})
        for kind, found in kinds.items()
    }
    crm = create_engine(crm_url)
    before = _newsletter_at(crm, [k for keys in sample.values() for k in keys])
    crm.dispose()
    state.dispose()
    facts = {
        "crm_url": crm_url,
        "state_url": state_url,
        "events": len(parsed),
        "types": types,
        "actors": {k: len(v) for k, v in kinds.items()},
        "sample": sample,
        "before": before,
    }
    (folder / "facts.json").write_text(json.dumps(facts))
    print(
        f"\nsetup ({database}): CRM and ledger as synced ({how}) in {crm_s:.1f} s; "
        f"{stored:,} events stored unprocessed in {store_s:.1f} s; not counted",
        flush=True,
    )


def _newsletter_at(engine: sa.Engine, keys: list[str]) -> dict[str, dict[str, Any]]:
    """{match key: {contact id: newsletter}} of the CRM contacts at these addresses."""
    frame = read_contacts_at(engine, CrmSchema(), frozenset(keys), frozenset())
    found: dict[str, dict[str, Any]] = {k: {} for k in keys}
    for contact_id, email, newsletter in frame[["contact_id", "email", "newsletter"]].itertuples(
        index=False
    ):
        key = raw_match_key(email)
        if key in found:
            found[key][str(contact_id)] = newsletter
    return found


# --- 2. application: the measured job --------------------------------------------------------


def _crm_counts(engine: sa.Engine) -> tuple[int, int, dict[str, int]]:
    """(contacts, activities, contacts by newsletter value)."""
    tables = crm_tables(CrmSchema())
    contacts = tables.contacts
    with engine.connect() as conn:
        n_contacts = conn.execute(sa.select(sa.func.count()).select_from(contacts)).scalar_one()
        n_activities = conn.execute(
            sa.select(sa.func.count()).select_from(tables.activities)
        ).scalar_one()
        values = dict(
            conn.execute(
                sa.select(contacts.c.newsletter, sa.func.count()).group_by(contacts.c.newsletter)
            ).all()
        )
    return n_contacts, n_activities, {repr(k): int(v) for k, v in values.items()}


def _inbox_counts(engine: sa.Engine) -> tuple[int, int]:
    """(processed, unprocessed) events of the audience."""
    processed = provider_events.c.processed_at.is_not(None)
    query = (
        sa.select(processed, sa.func.count())
        .where(provider_events.c.audience == AUDIENCE)
        .group_by(processed)
    )
    with engine.connect() as conn:
        found = {bool(done): int(n) for done, n in conn.execute(query)}
    return found.get(True, 0), found.get(False, 0)


def _check(kind: str, before: dict[str, Any], after: dict[str, Any]) -> tuple[bool, str]:
    """Whether the CRM values at one address are what the action calls for; (ok, what)."""
    values = set(after.values())
    if kind == "unsubscribed":
        return bool(after) and values == {"no"}, "every contact at the address: no"
    if kind == "unsubscribed, then re-subscribed":
        return after == before, "unchanged (the member is subscribed again, as the sync left it)"
    if kind in ("archived", "deleted"):
        expected = {c: "unspecified" if v == "yes" else v for c, v in before.items()}
        return after == expected, "yes → unspecified, other values unchanged"
    return (not before and list(values) == ["yes"]), "one new contact, newsletter yes"


def apply_events(database: str, folder: Path) -> None:
    """Time `provider_events_job` over the stored events (fresh process); check the inbox and
    the sample; print."""
    _silence_dagster()
    import dagster as dg  # noqa: PLC0415

    from newsletter_pipelines.definitions import defs  # noqa: PLC0415 (reads the settings)
    from newsletter_pipelines.defs.resources import build_resources  # noqa: PLC0415
    from newsletter_pipelines.settings import Settings  # noqa: PLC0415
    from newsletter_pipelines.state.events import pending_by_audience  # noqa: PLC0415

    facts = json.loads((folder / "facts.json").read_text())
    crm = create_engine(facts["crm_url"])
    state = create_engine(facts["state_url"])
    last = pending_by_audience(state)[AUDIENCE]
    crm_before = _crm_counts(crm)
    inbox_before = _inbox_counts(state)
    job = defs.resolve_job_def("provider_events_job")
    run_config = {  # the failure is printed below, without its SQL and stack
        "loggers": {"console": {"config": {"log_level": "CRITICAL"}}},
        "ops": {"apply_provider_events": {"config": {"up_to_event_id": last}}},
    }
    with dg.instance_for_test() as instance:
        resources = build_resources(Settings())
        with PeakRss() as rss:
            start = time.perf_counter()
            result = job.execute_in_process(
                instance=instance,
                run_config=run_config,
                resources=resources,
                partition_key=AUDIENCE,
                raise_on_error=False,
            )
            wall = time.perf_counter() - start
        step, timeline = _step_timeline(instance, result.run_id)
    failure = None if result.success else _failure(result)
    processed = result.output_for_node("apply_provider_events") if result.success else 0
    metadata = _op_metadata(result)
    inbox_after = _inbox_counts(state)
    crm_after = _crm_counts(crm)
    after = _newsletter_at(crm, [k for keys in facts["sample"].values() for k in keys])
    crm.dispose()
    state.dispose()

    events = facts["events"]
    all_done = inbox_after[1] == 0 and inbox_after[0] == events
    planned = {k[len("planned_") :]: v for k, v in metadata.items() if k.startswith("planned_")}
    written = {k: metadata.get(k, 0) for k in ("applied", "contacts_created", "activities")}
    report(
        f"=== {database}: provider_events_job over {events:,} stored events "
        f"({safe_url(facts['state_url'])}) ===",
        [
            ("events", f"{counts_text(Counter(facts['types']))}"),
            ("  addresses acted on", counts_text(facts["actors"])),
            (
                "  CRM before",
                f"{crm_before[0]:,} contacts ({counts_text(crm_before[2])}), "
                f"{crm_before[1]:,} activities",
            ),
            (
                "  inbox before",
                f"{inbox_before[1]:,} unprocessed, {inbox_before[0]:,} processed; run config "
                f"up_to_event_id {last:,} (as the sensor submits it)",
            ),
        ],
    )
    report(
        "2. application",
        [
            (
                "wall time",
                f"{wall:6.2f} s   budget ≤ {BUDGET_JOB_S:.0f} s   "
                f"{'RUN FAILED' if failure else verdict(wall <= BUDGET_JOB_S)} "
                f"(execute_in_process; the op's step {step:.2f} s)",
            ),
            ("events/s", "— (the op failed)" if failure else f"{events / wall:,.0f}"),
            (
                "processed",
                f"{processed:,} (op output); inbox after: {inbox_after[1]:,} unprocessed, "
                f"{inbox_after[0]:,} processed   {'all processed' if all_done else 'NOT ALL'}",
            ),
            (
                "scope",
                "— (the op failed)"
                if failure
                else f"{metadata.get('addresses', 0):,} addresses named, "
                f"{metadata.get('addresses_read', 0):,} read; planned {counts_text(planned)}; "
                f"held {metadata.get('held', 0):,}; left for the next run "
                f"{metadata.get('left_for_the_next_run', 0):,}",
            ),
            (
                "CRM rows written",
                f"{counts_text(written)}; ledger rows advanced "
                f"{metadata.get('ledger_rows_advanced', 0):,}",
            ),
            (
                "  CRM after",
                f"{crm_after[0]:,} contacts (+{crm_after[0] - crm_before[0]:,}; "
                f"{counts_text(crm_after[2])}), {crm_after[1]:,} activities "
                f"(+{crm_after[1] - crm_before[1]:,})",
            ),
            (
                "peak RSS",
                f"{rss.peak / _MIB:,.0f} MiB (process at start {rss.start / _MIB:,.0f} MiB; "
                f"{rss.how})   no budget set",
            ),
        ],
    )
    rows = []
    for kind, keys in facts["sample"].items() if not failure else ():
        checks = [_check(kind, facts["before"][k], after[k]) for k in keys]
        bad = [k for k, (ok, _) in zip(keys, checks, strict=True) if not ok]
        what = checks[0][1] if checks else ""
        shown = "; ".join(f"{k}: {facts['before'][k]} → {after[k]}" for k in bad[:3])
        rows.append(
            (
                f"  {kind}",
                f"{len(keys) - len(bad):,}/{len(keys):,} as expected ({what})"
                + (f"   MISMATCH e.g. {shown}" if bad else ""),
            )
        )
    if failure:
        report("  provider_events_job FAILED (the sample is not checked)", [("  error", failure)])
    else:
        report("  sample of the CRM afterwards (addresses per kind)", rows)
    chunks = [i for i, (_, message) in enumerate(timeline) if message.startswith("CRM write chunk")]
    shown = [line for i, line in enumerate(timeline) if i not in chunks[1:-1]]  # first and last
    report(
        "  the op's log, seconds after its step started (of the CRM write chunks the first and "
        "last)",
        [(f"  {at:6.2f} s", _short(message)) for at, message in shown] or [("  -", "no lines")],
    )


def _short(text: str, width: int = 140) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 2] + " …"


def _failure(result: Any) -> str:
    """The op's error and its innermost cause, first lines only (the SQL of a failed statement
    can run to megabytes)."""
    data = result.failure_data_for_node("apply_provider_events")
    if data is None or data.error is None:
        return "the run failed outside the op"
    error, parts = data.error, []
    while error is not None:
        parts.append(_short(error.message, 300))
        error = error.cause
    return " ← caused by: ".join(dict.fromkeys(parts))


def _op_metadata(result: Any) -> dict[str, Any]:
    """The op's output metadata and that of its observation of `crm_import_back`, as values."""
    found: dict[str, Any] = {}
    for event in result.events_for_node("apply_provider_events"):
        if event.event_type_value == "STEP_OUTPUT":
            found |= {k: v.value for k, v in event.event_specific_data.metadata.items()}
    for observation in result.asset_observations_for_node("apply_provider_events"):
        found |= {k: v.value for k, v in observation.metadata.items()}
    return found


def _step_timeline(instance: Any, run_id: str) -> tuple[float, list[tuple[float, str]]]:
    """Seconds from the op's STEP_START to its end, and the op's own log lines by seconds since
    the step started (where its time went, without touching the op)."""
    start = end = None
    lines: list[tuple[float, str]] = []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            lines.append((entry.timestamp, entry.user_message))
        elif event.event_type_value == "STEP_START":
            start = entry.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
            end = entry.timestamp
    if start is None or end is None:
        return float("nan"), []
    return end - start, [(t - start, m) for t, m in lines if start <= t <= end]


# --- entry point -----------------------------------------------------------------------------


def run_part(
    args: argparse.Namespace,
    part: str,
    database: str,
    folder: Path,
    *,
    url: str | None = None,
    env: dict[str, str] | None = None,
) -> None:
    """Run `part` in a fresh subprocess, output passed through."""
    command = [sys.executable, str(Path(__file__).resolve()), "--part", part]
    command += ["--database", database, "--folder", str(folder)]
    for option in ("rate", "seconds", "events", "contacts", "seed"):
        command += [f"--{option}", str(getattr(args, option))]
    variables = env or _child_env()
    if url:
        variables = variables | {URL_VARIABLE: url}
    code = subprocess.run(command, check=False, env=variables).returncode
    if code:
        raise SystemExit(f"{part} of {database!r} failed with exit code {code}")


def _home_env(home: Path, crm_url: str, state_url: str) -> dict[str, str]:
    return _child_env(
        NEWSLETTER_HOME=str(home),
        NEWSLETTER_CRM_DATABASE_URL=crm_url,
        NEWSLETTER_STATE_DATABASE_URL=state_url,
        NEWSLETTER_AUDIENCES=AUDIENCES,
    )


def main(argv: list[str] | None = None) -> None:
    """Parse arguments; sync the CRM once; per database the load and the application, each in
    fresh processes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s offered")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the load")
    parser.add_argument("--events", type=int, default=100_000, help="events applied")
    parser.add_argument("--contacts", type=int, default=100_000, help="CRM contacts")
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    add_postgres_url(parser, "to create the throwaway databases on")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--part", choices=["load", "sync", "prepare", "apply"], help=argparse.SUPPRESS
    )
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part == "load":
        measure_load(args.database, os.environ[URL_VARIABLE], args.folder, args)
        return
    if args.part == "sync":
        sync_once(args.folder, args.contacts, args.events, args.seed)
        return
    if args.part == "prepare":
        prepare_database(
            args.database,
            os.environ.get(URL_VARIABLE),
            args.folder,
            synced=args.folder.parent / "synced",
            contacts=args.contacts,
            seed=args.seed,
        )
        return
    if args.part == "apply":
        apply_events(args.database, args.folder)
        return
    chosen = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    skipped = _unreachable(args.postgres_url) if "postgres" in chosen else None
    if skipped and args.database == "both":
        chosen.remove("postgres")
    elif skipped:
        raise SystemExit(f"PostgreSQL {skipped}")
    print(
        f"webhook benchmark — receiver load {args.rate:,.0f} events/s for {args.seconds:,.0f} s, "
        f"then {args.events:,} events applied to a CRM of {args.contacts:,} contacts; on "
        f"{', '.join(chosen)}; budget: no event lost, job ≤ {BUDGET_JOB_S:.0f} s; each part in "
        f"a fresh process (machine: {machine()})",
        flush=True,
    )
    if skipped:
        print(f"PostgreSQL skipped: {skipped}", flush=True)
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_wh_")))
        synced = folder / "synced"
        synced.mkdir()
        run_part(
            args,
            "sync",
            "sqlite",
            synced,
            env=_home_env(
                synced,
                f"sqlite:///{synced / 'crm.sqlite3'}",
                f"sqlite:///{synced / 'state.sqlite3'}",
            ),
        )
        for database in chosen:
            work = folder / database
            work.mkdir()
            with contextlib.ExitStack() as databases:
                if database == "sqlite":
                    inbox = f"sqlite:///{work / 'inbox.sqlite3'}"
                    app_url = None
                    crm_url = f"sqlite:///{work / 'crm.sqlite3'}"
                    state_url = f"sqlite:///{work / 'state.sqlite3'}"
                else:
                    inbox = databases.enter_context(postgres_database(args.postgres_url))
                    app_url = databases.enter_context(postgres_database(args.postgres_url))
                    crm_url = state_url = app_url
                run_part(args, "load", database, work, url=inbox)
                env = _home_env(work / "home", crm_url, state_url)
                run_part(args, "prepare", database, work, url=app_url, env=env)
                run_part(args, "apply", database, work, env=env)
            shutil.rmtree(work)


if __name__ == "__main__":
    main()
