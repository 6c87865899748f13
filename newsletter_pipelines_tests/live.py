"""Real processes, as `make dev` runs them, for `test_live.py`,
`benchmarks/bench_webhook_latency.py` and `benchmarks/bench_incremental.py`.

`live_stack(root, home)` builds the embedded demo CRM in `home` (NEWSLETTER_HOME) and has
`make` write the demo instance's `dagster.yaml` into `root/dagster_home` (SQLite storage, the
production concurrency block: one run per audience partition and two per provider account at a
time), then starts two process groups on free loopback ports:

- the webhook receiver: `python -m newsletter_pipelines.webhooks serve`;
- `dagster dev -w workspace.yaml` (webserver, daemon with its default intervals, code server),
  with NEWSLETTER_WEBHOOK_PUBLIC_URL pointing at the receiver.

It waits until the receiver answers, the code location is loaded and the daemon's sensor and
run-queue threads report healthy. A person acts in this process through the embedded
sandbox's state file (`embedded_sandbox` and the person actions, as the tests and the demo
do); the sandbox delivers the webhook over HTTP to the receiver before the action returns.
On the way out both groups get SIGINT (Ctrl+C), then SIGKILL; when the block raised, the tail
of each process's log is printed. Every wait polls through tenacity, with a deadline.

The caller's environment should hold no NEWSLETTER_* settings (the tests' `isolated_home`
fixture and the benchmarks clear them): the processes get none but those set here and those
the caller passes as `live_stack(..., env=...)`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import sqlalchemy as sa
from dagster_graphql import DagsterGraphQLClient
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_result,
    stop_after_delay,
    wait_fixed,
)

from newsletter_pipelines.crm.embedded import ensure_demo_crm
from newsletter_pipelines.crm.schema import crm_tables
from newsletter_pipelines.defs.providers.accounts import ACCOUNT_TAG, account_name
from newsletter_pipelines.defs.providers.clients import audience_client
from newsletter_pipelines.defs.resources import build_resources
from newsletter_pipelines.providers.base import MemberStatus, Provider
from newsletter_pipelines.providers.resources import embedded_sandbox
from newsletter_pipelines.sandbox import PersonEvent
from newsletter_pipelines.sandbox.people import brevo_person, mailchimp_person
from newsletter_pipelines.settings import PROJECT_ROOT, Settings
from newsletter_pipelines.state.events import provider_events
from newsletter_pipelines.sync.email_address import raw_match_key

T = TypeVar("T")

AUDIENCES = ("mailchimp", "brevo")
LOCATION = "newsletter_pipelines"
SENSOR = "provider_events_sensor"
EVENTS_JOB = "provider_events_job"
FULL_SYNC_JOB = "full_sync_job"
UNSUBSCRIBED_KIND = "newsletter_unsubscribed"
FINISHED = frozenset({"SUCCESS", "FAILURE", "CANCELED"})
ACTIVE = ["QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"]
STARTUP_S = 180.0
STOP_GRACE_S = 10.0
LOG_TAIL_LINES = 150


class ProcessDiedError(RuntimeError):
    """A process of the stack exited while it should be serving."""


# --- waiting --------------------------------------------------------------------------------


def wait_for(
    check: Callable[[], T],
    *,
    what: str,
    timeout: float,
    every: float = 0.5,
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """Call `check` every `every` s until it returns a truthy value, which is returned; an
    exception of `retry_on` counts as not yet. After `timeout` s: TimeoutError naming `what`
    and the last answer. Any other exception, and `ProcessDiedError` whatever `retry_on` says,
    ends the wait at once."""

    def not_yet(exc: BaseException) -> bool:
        return isinstance(exc, retry_on) and not isinstance(exc, ProcessDiedError)

    def give_up(state: RetryCallState) -> T:
        outcome = state.outcome
        last = "no answer" if outcome is None else repr(outcome.exception() or outcome.result())
        raise TimeoutError(f"{what}: not within {timeout:.0f} s (last: {last})")

    retrying = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(every),
        retry=retry_if_result(lambda answer: not answer) | retry_if_exception(not_yet),
        retry_error_callback=give_up,
    )
    return retrying(check)


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports nobody listens on right now."""
    with ExitStack() as probes:
        ports = []
        for _ in range(count):
            probe = probes.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            probe.bind(("127.0.0.1", 0))
            ports.append(int(probe.getsockname()[1]))
        return ports


def utc(value: datetime | str) -> datetime:
    """A database timestamp (naive values are UTC, as the project writes them) as aware UTC."""
    stamp = datetime.fromisoformat(value) if isinstance(value, str) else value
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


# --- processes ------------------------------------------------------------------------------


@dataclass
class Process:
    """One started process group and its log file (stdout and stderr)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def check_alive(self) -> None:
        """Raise `ProcessDiedError` when the group's leader has exited."""
        code = self.popen.poll()
        if code is not None:
            raise ProcessDiedError(f"{self.name} exited with {code}:\n{self.tail()}")

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of its log."""
        if not self.log.exists():
            return "(no log)"
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def kill(self) -> None:
        """SIGKILL to the whole group at once (a crash: no clean-up of any kind)."""
        with suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=STOP_GRACE_S)

    def stop(self) -> None:
        """Ctrl+C to the whole group, then SIGKILL to whatever of the group is left."""
        group = self.popen.pid  # start_new_session: the leader's pid is the group id
        with suppress(ProcessLookupError):
            os.killpg(group, signal.SIGINT)
        with suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=STOP_GRACE_S)
        with suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.popen.wait(timeout=STOP_GRACE_S)


def start(name: str, argv: Sequence[str], *, env: dict[str, str], cwd: Path) -> Process:
    """Start `argv` as the leader of a new process group, its output into `cwd/<name>.log`."""
    log = cwd / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Process(name, popen, log)


def process_env(home: Path, dagster_home: Path) -> dict[str, str]:
    """The environment of the stack's processes: this one's without NEWSLETTER_* settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NEWSLETTER_") or k == "NEWSLETTER_TEST_POSTGRES_URL"
    }
    # the checkout first: a shared virtualenv's editable install may point at another one
    path = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    env |= {
        "NEWSLETTER_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": path,
    }
    return env


def serve_sandbox(
    root: Path,
    env: dict[str, str],
    latency: float = 0.0,
    batch_delay: float = 0.0,
    process_delay: float = 0.0,
) -> tuple[Process, str]:
    """`python -m newsletter_pipelines.sandbox serve [--latency] [--batch-delay]
    [--process-delay]` on a free port, in memory (no state file), answering; returns the
    process and its root URL."""
    (port,) = free_ports(1)
    argv = [
        *(sys.executable, "-m", "newsletter_pipelines.sandbox", "serve"),
        *("--host", "127.0.0.1", "--port", str(port), "--latency", f"{latency:g}"),
        *("--batch-delay", f"{batch_delay:g}", "--process-delay", f"{process_delay:g}"),
    ]
    process = start("sandbox", argv, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    wait_answering(process, f"{url}/_sandbox/health", what="the served sandbox answers")
    return process, url


def wait_answering(process: Process, url: str, *, what: str, timeout: float = 60) -> None:
    """Wait until a GET of `url` gets any HTTP answer from `process`'s server; on failure
    `process` is stopped and its log printed."""

    def answering() -> bool:
        process.check_alive()
        httpx.get(url, timeout=5)
        return True

    try:
        wait_for(answering, what=what, timeout=timeout, every=0.2, retry_on=(httpx.TransportError,))
    except BaseException:
        process.stop()
        print(process.tail(), file=sys.stderr)
        raise


class AlertCatcher:
    """A Slack-compatible incoming webhook on a free loopback port, served by a thread of this
    process: answers each POST with the next of `statuses` (then 200) and keeps the `text` of
    every JSON body it answered 200, in `texts`. Use it as a context manager."""

    def __init__(self, path: str = "/alerts") -> None:
        self.statuses: list[int] = []
        self.texts: list[str] = []
        catcher = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
                status = catcher.statuses.pop(0) if catcher.statuses else 200
                if status == 200:
                    catcher.texts.append(body["text"])
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the test reads what was received."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{path}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> AlertCatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class Phases:
    """How long each phase of a live test took: `phases("name")` ends the phase running since
    the previous call (or the start) and prints it with the time so far."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.times: dict[str, float] = {}

    def __call__(self, name: str) -> float:
        total = time.monotonic() - self.start
        took = self.times[name] = round(total - sum(self.times.values()), 1)
        print(f"[{total:6.1f} s] {name}: {took} s", flush=True)
        return took


# --- the stack ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    """A CRM contact alone with its address, subscribed at the audience by the full sync."""

    audience: str
    contact_id: int
    email: str


@dataclass(frozen=True)
class Ack:
    """A person's unsubscribe: when it was done and the receiver's 200 came back (epoch s)."""

    person: Person
    acted_at: float
    acked_at: float


@dataclass(frozen=True)
class CrmRow:
    """The person's CRM contact now: newsletter value, `updated_at`, activity kinds."""

    newsletter: str | None
    updated_at: datetime | None
    kinds: tuple[str, ...]

    @property
    def unsubscribed(self) -> bool:
        return self.newsletter == "no" and UNSUBSCRIBED_KIND in self.kinds


@dataclass(frozen=True)
class InboxEvent:
    """A stored webhook event (receiver's clock)."""

    id: int
    audience: str
    type: str
    received_at: datetime
    processed_at: datetime | None


@dataclass(frozen=True)
class Run:
    """A Dagster run as the webserver's GraphQL API shows it (times in epoch s)."""

    run_id: str
    job: str
    status: str
    created: float
    started: float | None
    ended: float | None
    tags: dict[str, str]


RUNS_QUERY = """
query Runs($filter: RunsFilter!) {
  runsOrError(filter: $filter, limit: 1000) {
    __typename
    ... on Runs { results { runId jobName status creationTime startTime endTime
                            tags { key value } } }
    ... on PythonError { message }
  }
}"""
LOGS_QUERY = """
query Logs($runId: ID!, $after: String) {
  logsForRun(runId: $runId, afterCursor: $after) {
    __typename
    ... on EventConnection { events { __typename ... on MessageEvent { message } }
                             cursor hasMore }
    ... on PythonError { message }
  }
}"""
READY_QUERY = """
query Ready($sensor: SensorSelector!) {
  workspaceOrError {
    __typename
    ... on Workspace { locationEntries { name locationOrLoadError {
      __typename ... on PythonError { message } } } }
  }
  instance { daemonHealth {
    sensor: daemonStatus(daemonType: "SENSOR") { healthy }
    queue: daemonStatus(daemonType: "QUEUED_RUN_COORDINATOR") { healthy }
  } }
  sensorOrError(sensorSelector: $sensor) {
    __typename
    ... on Sensor { minIntervalSeconds sensorState { status ticks(limit: 1) { status } } }
  }
}"""


@dataclass
class LiveStack:
    """The running processes (the receiver and Dagster's: `dagster dev`, or the production
    ones), and what the tests and benchmarks do with them. `processes` are those that must
    be serving (a test may replace one, e.g. a daemon it killed and started again);
    `sandbox_url`: the served sandbox the providers' base URLs point at (None: the embedded
    sandbox in NEWSLETTER_HOME)."""

    root: Path
    settings: Settings
    processes: dict[str, Process]
    receiver_url: str
    webserver_port: int
    sandbox_url: str | None = None
    _list_ids: dict[str, str] = field(default_factory=dict, init=False)

    # --- processes and GraphQL

    def check_alive(self) -> None:
        for process in self.processes.values():
            process.check_alive()

    def logs(self) -> str:
        """The tail of every process's log."""
        return "\n".join(
            f"----- {p.name} ({p.log}), last {LOG_TAIL_LINES} lines -----\n{p.tail()}"
            for p in self.processes.values()
        )

    def client(self) -> DagsterGraphQLClient:
        return DagsterGraphQLClient("127.0.0.1", port_number=self.webserver_port)

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """The `data` of a query to the webserver's GraphQL endpoint."""
        answer = httpx.post(
            f"http://127.0.0.1:{self.webserver_port}/graphql",
            json={"query": query, "variables": variables or {}},
            timeout=30,
        )
        answer.raise_for_status()
        body = answer.json()
        if body.get("errors"):
            raise RuntimeError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def sensor(self, name: str = SENSOR) -> dict[str, Any]:
        """A sensor as the webserver shows it (minIntervalSeconds, state, its last tick)."""
        return self._ready(name)["sensorOrError"]

    def _ready(self, sensor: str = SENSOR) -> dict[str, Any]:
        selector = {
            "repositoryLocationName": LOCATION,
            "repositoryName": "__repository__",
            "sensorName": sensor,
        }
        return self.graphql(READY_QUERY, {"sensor": selector})

    def wait_until_ready(self, timeout: float = STARTUP_S) -> None:
        """Receiver answering, code location loaded, sensor and run queue daemons healthy."""

        def receiver_up() -> bool:
            self.check_alive()
            # any answer will do: the GET without the secret is refused
            httpx.get(f"{self.receiver_url}/webhooks/mailchimp/mailchimp", timeout=5)
            return True

        def dagster_up() -> bool:
            self.check_alive()
            data = self._ready()
            entries = data["workspaceOrError"].get("locationEntries") or []
            loaded = [e["locationOrLoadError"] for e in entries if e["locationOrLoadError"]]
            errors = [e.get("message") for e in loaded if e["__typename"] == "PythonError"]
            if errors:  # also while a code server is still starting: retried until the end
                raise RuntimeError(f"the code location failed to load: {errors}")
            health = data["instance"]["daemonHealth"]
            return (
                any(e["__typename"] == "RepositoryLocation" for e in loaded)
                and health["sensor"]["healthy"]
                and health["queue"]["healthy"]
            )

        started = time.monotonic()
        transient = (httpx.TransportError, httpx.HTTPStatusError)
        wait_for(
            receiver_up,
            what="the webhook receiver answers",
            timeout=timeout,
            every=0.25,
            retry_on=transient,
        )
        left = timeout - (time.monotonic() - started)
        wait_for(
            dagster_up,
            what="Dagster (webserver, code location, daemon) is ready",
            timeout=left,
            every=0.5,
            retry_on=(*transient, RuntimeError),
        )

    def run_messages(self, run_id: str) -> list[str]:
        """The messages of every event of the run's log, in order."""
        messages: list[str] = []
        cursor = None
        while True:
            found = self.graphql(LOGS_QUERY, {"runId": run_id, "after": cursor})["logsForRun"]
            if found["__typename"] != "EventConnection":
                raise RuntimeError(f"logs of run {run_id}: {found}")
            messages += [e["message"] for e in found["events"] if e.get("message") is not None]
            cursor = found["cursor"]
            if not found["hasMore"]:
                return messages

    def runs(self, job: str | None = None, *, statuses: Sequence[str] = ()) -> list[Run]:
        """Runs of `job` (of every job when None; newest first), optionally only those in
        `statuses`."""
        run_filter: dict[str, Any] = {"pipelineName": job} if job else {}
        if statuses:
            run_filter["statuses"] = list(statuses)
        found = self.graphql(RUNS_QUERY, {"filter": run_filter})["runsOrError"]
        if found["__typename"] != "Runs":
            raise RuntimeError(f"runs of {job}: {found}")
        return [
            Run(
                run_id=r["runId"],
                job=r["jobName"],
                status=r["status"],
                created=r["creationTime"],
                started=r["startTime"],
                ended=r["endTime"],
                tags={t["key"]: t["value"] for t in r["tags"]},
            )
            for r in found["results"]
        ]

    def run_for(self, event: InboxEvent) -> Run | None:
        """The `provider_events_job` run that applied the event: of its audience's partition,
        launched by the sensor, with the smallest run key id (`<audience>:<last event id>`) at
        or above the event's id (the first run whose events include it)."""
        covering = [
            (int(run.tags["dagster/run_key"].rpartition(":")[2]), run)
            for run in self.runs(EVENTS_JOB)
            if run.tags.get("dagster/partition") == event.audience
            and run.tags.get("dagster/sensor_name") == SENSOR
            and run.tags.get("dagster/run_key", "").startswith(f"{event.audience}:")
        ]
        eligible = [(last, run) for last, run in covering if last >= event.id]
        return min(eligible, key=lambda found: found[0])[1] if eligible else None

    # --- Dagster runs

    def full_sync(self, audiences: Sequence[str] = AUDIENCES, timeout: float = 400) -> None:
        """Launch `full_sync_job` for each audience partition through the GraphQL client (all
        at once, as the UI's "Materialize all" with both partitions would), wait for success.
        Registers the audiences' webhooks at the receiver (NEWSLETTER_WEBHOOK_PUBLIC_URL). An
        API launch carries only the tags it names: the partition and its provider account (the
        instance limits runs per account, and a run without the tag never calls the provider)."""
        client = self.client()
        launched = {
            audience: client.submit_job_execution(
                FULL_SYNC_JOB,
                tags={
                    "dagster/partition": audience,
                    ACCOUNT_TAG: account_name(self.settings.audience(audience)),
                },
            )
            for audience in audiences
        }

        def statuses() -> dict[str, str] | None:
            self.check_alive()
            now = {a: client.get_run_status(r).value for a, r in launched.items()}
            return now if set(now.values()) <= FINISHED else None

        done = wait_for(statuses, what=f"{FULL_SYNC_JOB} runs finish", timeout=timeout, every=1)
        if set(done.values()) != {"SUCCESS"}:
            raise RuntimeError(f"{FULL_SYNC_JOB} runs: {done} (run ids {launched})")

    def wait_until_quiet(self, timeout: float = 300) -> None:
        """No unprocessed event in the inbox and no run queued or under way (the Brevo full
        sync's own list additions come back by webhook and are applied first)."""

        def quiet() -> bool:
            self.check_alive()
            return not self.unprocessed() and not self.runs(statuses=ACTIVE)

        wait_for(quiet, what="the inbox is applied and no run is active", timeout=timeout, every=1)

    # --- databases

    def state_engine(self) -> sa.Engine:
        return sa.create_engine(self.settings.resolved_state_database_url())

    def crm_engine(self) -> sa.Engine:
        return sa.create_engine(self.settings.resolved_crm_database_url())

    def unprocessed(self) -> int:
        """Events in the inbox not processed yet."""
        query = sa.select(sa.func.count()).where(provider_events.c.processed_at.is_(None))
        engine = self.state_engine()
        try:
            with engine.connect() as conn:
                return int(conn.execute(query).scalar_one())
        finally:
            engine.dispose()

    def inbox_event(self, person: Person) -> InboxEvent | None:
        """The newest stored event of the person's audience at its address."""
        events = provider_events.c
        query = (
            sa.select(
                events.id, events.audience, events.type, events.received_at, events.processed_at
            )
            .where(events.audience == person.audience, events.email == person.email)
            .order_by(events.id.desc())
            .limit(1)
        )
        engine = self.state_engine()
        try:
            with engine.connect() as conn:
                row = conn.execute(query).first()
        finally:
            engine.dispose()
        if row is None:
            return None
        return InboxEvent(
            id=int(row.id),
            audience=row.audience,
            type=row.type,
            received_at=utc(row.received_at),
            processed_at=utc(row.processed_at) if row.processed_at is not None else None,
        )

    def crm_row(self, person: Person, engine: sa.Engine | None = None) -> CrmRow:
        """The person's contact in the CRM now."""
        schema = self.settings.crm_schema
        tables = crm_tables(schema)
        contacts, activities = tables.contacts, tables.activities
        contact = sa.select(contacts.c[schema.newsletter], contacts.c[schema.updated_at]).where(
            contacts.c[schema.id] == person.contact_id
        )
        kinds = sa.select(activities.c[schema.activities_kind]).where(
            activities.c[schema.activities_contact_id] == person.contact_id,
            activities.c[schema.activities_audience] == person.audience,
        )
        own = engine is None
        engine = engine or self.crm_engine()
        try:
            with engine.connect() as conn:
                newsletter, updated_at = conn.execute(contact).one()
                found = tuple(conn.execute(kinds).scalars())
        finally:
            if own:
                engine.dispose()
        return CrmRow(newsletter, utc(updated_at) if updated_at is not None else None, found)

    # --- people at the sandbox

    def people(self, audience: str, count: int, *, exclude: Sequence[Person] = ()) -> list[Person]:
        """`count` CRM contacts alone with their address (no other contact shares its match
        key), newsletter `yes`, that the audience holds as subscribed and no unprocessed inbox
        event of the audience names (so no other run's scope includes them; the events of the
        sync's own writes, applied already, may); in contact id order."""
        schema = self.settings.crm_schema
        contacts = crm_tables(schema).contacts
        query = sa.select(
            contacts.c[schema.id], contacts.c[schema.email], contacts.c[schema.newsletter]
        )
        engine = self.crm_engine()
        try:
            with engine.connect() as conn:
                rows = conn.execute(query).all()
        finally:
            engine.dispose()
        state = self.state_engine()
        try:
            with state.connect() as conn:
                pending = sa.select(provider_events.c.email).where(
                    provider_events.c.audience == audience,
                    provider_events.c.processed_at.is_(None),
                )
                emails = conn.execute(pending).scalars()
                named = {raw_match_key(e) for e in emails}
        finally:
            state.dispose()
        by_key: dict[str, list[tuple[int, str | None]]] = {}
        for contact_id, email, newsletter in rows:
            key = raw_match_key(email)
            if key is not None:
                by_key.setdefault(key, []).append((int(contact_id), newsletter))
        taken = {p.contact_id for p in exclude}
        alone = {
            key: owners[0][0]
            for key, owners in by_key.items()
            if len(owners) == 1
            and owners[0][1] == "yes"
            and owners[0][0] not in taken
            and key not in named
        }
        client = self.provider_client(audience)
        try:
            members = client.snapshot()
        finally:
            client.close()
        found = sorted(
            (
                Person(audience, alone[m.email], m.email)
                for m in members
                if m.status == MemberStatus.SUBSCRIBED and m.email in alone
            ),
            key=lambda p: p.contact_id,
        )
        if len(found) < count:
            raise RuntimeError(f"{audience}: only {len(found)} people can act, {count} asked")
        return found[:count]

    def wait_for_crm(
        self, acks: Sequence[Ack], *, timeout: float, strict: bool = True
    ) -> dict[Person, float]:
        """Poll the CRM (every 0.25 s) until every acked person's contact says `no` and has the
        activity `newsletter_unsubscribed`; when each was first seen so (epoch s). `timeout`
        counts from the earliest acknowledgement; then TimeoutError, or with `strict=False`
        the people seen so far."""
        seen: dict[Person, float] = {}
        engine = self.crm_engine()

        def arrived() -> bool:
            self.check_alive()
            for ack in acks:
                if ack.person not in seen and self.crm_row(ack.person, engine).unsubscribed:
                    seen[ack.person] = time.time()
            return len(seen) == len(acks)

        left = timeout - (time.time() - min(a.acked_at for a in acks))
        try:
            wait_for(
                arrived,
                what="the CRM says no",
                timeout=max(left, 0.0),
                every=0.25,
                retry_on=(sa.exc.OperationalError,),
            )
        except TimeoutError as exc:
            missing = [a.person for a in acks if a.person not in seen]
            if not strict:
                return seen
            raise TimeoutError(f"{exc}; {len(missing)} people still missing: {missing}") from exc
        finally:
            engine.dispose()
        return seen

    def provider_client(self, audience: str) -> Provider:
        """The audience's client as a run builds it, with the API keys of the settings (close
        it when done)."""
        resources = build_resources(self.settings)
        mailchimp, brevo = resources["mailchimp"], resources["brevo"]
        for provider, key in (
            ("mailchimp", self.settings.mailchimp_api_key),
            ("brevo", self.settings.brevo_api_key),
        ):
            if not self.settings.uses_sandbox(provider) and key is not None:
                # the resource names the key's variable (EnvVar), resolved only in a run
                live = resources[provider].model_copy(update={"api_key": key.get_secret_value()})
                mailchimp, brevo = (live, brevo) if provider == "mailchimp" else (mailchimp, live)
        return audience_client(self.settings.audience(audience), mailchimp, brevo)

    def list_id(self, audience: str) -> str:
        """The provider's id of the audience (its Mailchimp audience or Brevo list)."""
        if audience not in self._list_ids:
            client = self.provider_client(audience)
            try:
                self._list_ids[audience] = client.ensure_audience().id
            finally:
                client.close()
        return self._list_ids[audience]

    def act(self, audience: str, email: str, action: str) -> None:
        """A person acts at the served sandbox (control API `POST /_sandbox/<provider>/people`),
        which calls the audience's webhooks before it answers."""
        if self.sandbox_url is None:
            raise RuntimeError("no served sandbox: act at the embedded one")
        provider = self.settings.audience(audience).provider
        key = (
            self.settings.mailchimp_api_key
            if provider == "mailchimp"
            else self.settings.brevo_api_key
        )
        body = {"list_id": self.list_id(audience), "email": email, "action": action}
        if key is not None:  # the account (the sandbox has its default ones too)
            body["api_key"] = key.get_secret_value()
        answer = httpx.post(f"{self.sandbox_url}/_sandbox/{provider}/people", json=body, timeout=30)
        if answer.status_code != 200:
            raise RuntimeError(f"{audience}: {action} of {email} refused: {answer.text}")

    def unsubscribe(self, person: Person) -> Ack:
        """The person unsubscribes at the sandbox (campaign link); the sandbox delivers the
        webhook to the receiver before this returns. The embedded sandbox: the receiver must
        have answered 200; the served one: the receiver must have stored the event."""
        if self.sandbox_url is not None:
            before = self.inbox_event(person)
            acted_at = time.time()
            self.act(person.audience, person.email, "unsubscribe")
            acked_at = time.time()
            stored = self.inbox_event(person)
            if stored is None or (before is not None and stored.id == before.id):
                raise RuntimeError(f"{person}: the receiver stored no event for the unsubscribe")
            return Ack(person, acted_at, acked_at)
        sandbox = embedded_sandbox(self.settings.home / "sandbox.json")
        provider = self.settings.audience(person.audience).provider
        apply = mailchimp_person if provider == "mailchimp" else brevo_person
        event = PersonEvent(
            list_id=self.list_id(person.audience), email=person.email, action="unsubscribe"
        )
        before = len(sandbox.webhooks.calls)
        acted_at = time.time()
        apply(sandbox, event)
        acked_at = time.time()
        deliveries = sandbox.webhooks.calls[before:]
        answers = [(c.url, c.status, c.error) for c in deliveries]
        if len(deliveries) != 1 or deliveries[0].status != 200:
            raise RuntimeError(f"{person}: expected one delivery answered 200, got {answers}")
        return Ack(person, acted_at, acked_at)


@contextmanager
def live_stack(
    root: Path, home: Path, *, env: Mapping[str, str] | None = None
) -> Iterator[LiveStack]:
    """Receiver and `dagster dev` on free ports, NEWSLETTER_HOME `home`, DAGSTER_HOME
    `root/dagster_home`; ready when yielded, stopped afterwards (see the module docstring).
    `env`: further variables of both processes (e.g. NEWSLETTER_* settings pointing the
    providers at a served sandbox); the CRM in `home` is built only when it does not exist."""
    root.mkdir(parents=True, exist_ok=True)
    settings = Settings(home=home)
    ensure_demo_crm(settings.resolved_crm_database_url(), settings.demo_data_dir)
    dagster_home = root / "dagster_home"
    make_instance = ["make", "-s", "-C", str(PROJECT_ROOT), f"DAGSTER_HOME={dagster_home}"]
    subprocess.run([*make_instance, f"{dagster_home}/dagster.yaml"], check=True)
    env = process_env(home, dagster_home) | dict(env or {})
    receiver_port, webserver_port = free_ports(2)
    receiver_url = f"http://127.0.0.1:{receiver_port}"
    with ExitStack() as stack:
        receiver = start(
            "receiver",
            [
                sys.executable,
                "-m",
                "newsletter_pipelines.webhooks",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(receiver_port),
            ],
            env=env,
            cwd=root,
        )
        stack.callback(receiver.stop)
        dagster = start(
            "dagster-dev",
            [
                sys.executable,
                "-m",
                "dagster",
                "dev",
                "-w",
                str(PROJECT_ROOT / "workspace.yaml"),
                "-h",
                "127.0.0.1",
                "-p",
                str(webserver_port),
            ],
            env=env | {"NEWSLETTER_WEBHOOK_PUBLIC_URL": receiver_url},
            cwd=root,
        )
        stack.callback(dagster.stop)
        processes = {"receiver": receiver, "dagster dev": dagster}
        live = LiveStack(root, settings, processes, receiver_url, webserver_port)
        try:
            live.wait_until_ready()
            yield live
        except BaseException:
            print(live.logs(), file=sys.stderr, flush=True)
            raise
