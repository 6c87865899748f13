"""Benchmark: this project's full sync beside official-SDK scripts, on the latency sandbox.

Side by side with what a user writes with the official Mailchimp SDK (`mailchimp-marketing`),
against the served sandbox with provider-like latency.

`python benchmarks/bench_vs_baselines.py [--contacts 10000,100000] [--sample 2000]
[--thread-sample 10000] [--threads 10] [--latency 0.1] [--batch-delay 1] [--connections N]
[--only project,loop,batch,threads] [--executor in_process|execute_job]
[--storage postgres|sqlite] [--postgres-url URL] [--seed 42] [--keep DIR]`

Per contact count N, in one process on one machine, against one served sandbox
(`python -m newsletter_pipelines.sandbox serve --latency 0.1 --batch-delay 1`: every Mailchimp call
answered 100 ms after it arrived, a `/batches` result is ready 1 s after it was submitted; state in
memory): a synthetic CRM (SQLite) of N contacts, all eligible (newsletter `yes`, plain unique
addresses, German names, 0–2 tags), then

1. this project: `full_sync_job` for the Mailchimp partition, executed in-process
   (`execute_in_process`, the in-process executor) on a persistent temporary Dagster instance,
   with NEWSLETTER_MAILCHIMP_API_KEY / _BASE_URL pointing the resources at the served sandbox
   (so the client runs with its production polling and up to 10 connections: a run alone on
   its account; with the PostgreSQL state database its calls hold the account's connection
   slots); the instance's storage and the state database are on PostgreSQL as deployed
   (`--storage postgres`, throwaway databases), or SQLite files as in the embedded demo
   (`--storage sqlite`: Dagster then opens, commits and closes a SQLite file for each of the
   run's events);
2. the loop a user writes with `mailchimp-marketing`: `lists.set_list_member` per contact
   (`status_if_new: subscribed`, merge fields; tags left out, which would cost one more call a
   tagged contact), sequential; for N above `--sample`, the first `--sample` contacts are sent
   and the wall time is extrapolated linearly (printed as such);
3. a careful SDK script: `lists.batch_list_members`, 500 members a call (merge fields and tags,
   `update_existing: true`), sequential;
4. one `set_list_member` per contact on `--threads` threads; for N above `--thread-sample`
   (default 10,000: 100 s at 100 ms a call), extrapolated from that many contacts likewise.

Each baseline reads the contacts from the CRM with one SQL query (timed), writes into its own
audience (created with the SDK beforehand, not timed), and keeps no state: the re-run after 1 %
of the last names changed (every 100th contact, `updated_at` bumped) re-sends everything; the
project's re-run is `full_sync_job` again. Calls are counted by the sandbox (`GET
/_sandbox/stats`, every provider call, reads included) plus, for (1), the `/batches` result
downloads (a file URL outside the API, counted by the client's transport hook). Printed: wall
time, calls, the ratio of each to (1), the goals (at 10,000 never slower than (3); at 100,000
(1) ≥ 3× faster than (3) on the first sync and ≥ 5× on the re-run; (2) ≥ 100× the calls of
(1)), and where (1)'s time goes: Dagster steps (from the run's event log), HTTP calls by route
(count, summed and longest time, from a hook on `httpx.Client.send`), the `/batches`
timeline, the run's time outside steps, and the CPU seconds of this process, the sandbox and
the rest of the machine during the run beside the core-seconds it offered (how close to bound
by CPU the run was). Nothing is asserted. The load average (2 cores,
shared) is printed beside each figure.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import random
import re
import sys
import tempfile
import threading
import time
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import yaml
from bench_import_back import _unreachable, postgres_database
from measure import (
    CpuTime,
    PeakRss,
    add_postgres_url,
    fast_sqlite_writes,
    load,
    machine,
    report,
    routes_text,
    sandbox_calls,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' package: live.py
from newsletter_pipelines.crm.loader import insert_rows
from newsletter_pipelines.crm.schema import create_schema
from newsletter_pipelines.crm.synthetic import GERMAN_FEMALE, GERMAN_LAST, GERMAN_MALE
from newsletter_pipelines.providers.mailchimp import audience_body, subscriber_hash
from newsletter_pipelines.providers.resources import SANDBOX_AUDIENCE
from newsletter_pipelines.sandbox import MAILCHIMP_PREFIX, SANDBOX_MAILCHIMP_KEY
from newsletter_pipelines.settings import PROJECT_ROOT, CrmSchema
from newsletter_pipelines_tests.live import serve_sandbox

BATCH_MAX = 500  # members per batch_list_members call
PROJECT_AUDIENCE = "CRM Newsletter"
TAG_SETS: tuple[tuple[str, ...], ...] = ((), ("Käufer",), ("Käufer", "Stammkunde"), ("Messe",))
DOMAINS = ("example.de", "example.com", "beispiel.de", "example.org")
_ASCII = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", " ": "", "-": ""})
GOAL_FIRST_100K = 3.0  # (1) at least 3× faster than (3) at 100,000, first sync
GOAL_RERUN_100K = 5.0  # … and 5× on the 1 % re-run
GOAL_CALLS = 100.0  # (2) makes at least 100× the calls of (1)
LARGE = 100_000
HUGE = 1_000_000  # the full sync's peak memory budget is set for this many contacts
PEAK_BUDGET = 2 * 1024**3
APPROACHES = {
    "project": "(1) this project: full_sync_job",
    "loop": "(2) SDK loop: set_list_member per contact",
    "batch": "(3) SDK batch_list_members, 500 a call",
    "threads": "(4) SDK set_list_member on threads",
}


# --- the CRM ----------------------------------------------------------------------------------


def build_crm(path: Path, count: int, seed: int) -> None:
    """`count` contacts, all eligible, into a new SQLite CRM (the demo CRM's schema)."""
    rng = random.Random(seed)
    contacts, tags = [], []
    for i in range(1, count + 1):
        female = rng.random() < 0.5
        first = rng.choice(GERMAN_FEMALE if female else GERMAN_MALE)
        last = rng.choice(GERMAN_LAST)
        local = f"{first.lower().translate(_ASCII)}.{last.lower().translate(_ASCII)}"
        email = f"{local.encode('ascii', 'ignore').decode()}.{i}@{rng.choice(DOMAINS)}"
        contacts.append(
            {
                "id": i,
                "salutation": "Frau" if female else "Herr",
                "first_name": first,
                "last_name": last,
                "email": email,
                "newsletter": "yes",
                "is_private": False,
                "updated_at": "2025-06-01 12:00:00",
                "created_at": "2025-01-01 12:00:00",
            }
        )
        tags += [{"contact_id": i, "tag": t} for t in rng.choice(TAG_SETS)]
    engine = fast_sqlite_writes(sa.create_engine(f"sqlite:///{path}"))
    try:
        create_schema(engine, CrmSchema())
        insert_rows(engine, CrmSchema(), contacts, tags)
    finally:
        engine.dispose()


def change_last_names(path: Path, every: int = 100) -> int:
    """Every `every`-th contact's last name gets `-Neu`, `updated_at` now; how many changed."""
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            done = conn.execute(
                sa.text(
                    "UPDATE contacts SET last_name = last_name || '-Neu', "
                    "updated_at = CURRENT_TIMESTAMP WHERE id % :every = 0"
                ),
                {"every": every},
            )
            return int(done.rowcount)
    finally:
        engine.dispose()


def read_contacts(path: Path) -> list[dict[str, Any]]:
    """What a user's script reads: the subscribed contacts with their tags, one query."""
    engine = sa.create_engine(f"sqlite:///{path}")
    query = sa.text(
        "SELECT c.email, c.first_name, c.last_name, c.salutation, group_concat(t.tag, '|') "
        "FROM contacts c LEFT JOIN contact_tags t ON t.contact_id = c.id "
        "WHERE c.newsletter = 'yes' AND NOT c.is_private GROUP BY c.id ORDER BY c.id"
    )
    try:
        with engine.connect() as conn:
            rows = conn.execute(query).all()
    finally:
        engine.dispose()
    return [
        {
            "email": email,
            "merge_fields": {"FNAME": first, "LNAME": last, "SALUTATION": salutation},
            "tags": sorted(tags.split("|")) if tags else [],
        }
        for email, first, last, salutation, tags in rows
    ]


def stats(url: str) -> Counter[tuple[str, str, int]]:
    """Mailchimp calls served so far, by (method, route template, status)."""
    return sandbox_calls(url, "mailchimp")


# --- one measured run -------------------------------------------------------------------------


@dataclass
class Measured:
    """Wall time and calls of one approach on one run (first sync or re-run)."""

    wall: float
    calls: int
    by_route: Counter[tuple[str, str, int]]
    load: str
    sent: int  # contacts actually sent (the sample when extrapolated)
    total: int  # contacts the figure stands for
    errors: int = 0
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def extrapolated(self) -> bool:
        return self.sent < self.total

    @property
    def wall_total(self) -> float:
        return self.wall * self.total / self.sent if self.sent else self.wall

    @property
    def calls_total(self) -> int:
        if not self.extrapolated:
            return self.calls
        return math.ceil(self.calls * self.total / self.sent)


# --- the baselines (official SDK) -------------------------------------------------------------


def sdk_client(url: str) -> Any:
    """`mailchimp_marketing.Client` talking to the served sandbox.

    `set_config` derives the host `https://<dc>.api.mailchimp.com/3.0` from the key's `-<dc>`
    (here `sandbox`); the API root is the client's `host` attribute, so it is set to the
    sandbox's Mailchimp root (`call_api` then replaces the word `server` in the URL with the
    data center, which the sandbox URL does not contain).
    """
    import mailchimp_marketing  # noqa: PLC0415  (a dev dependency of this benchmark only)

    client = mailchimp_marketing.Client()
    client.set_config({"api_key": SANDBOX_MAILCHIMP_KEY, "server": "sandbox"})
    client.api_client.host = url + MAILCHIMP_PREFIX
    return client


def sdk_audience(client: Any, name: str) -> str:
    """Create the baseline's audience with a SALUTATION merge field (setup, not measured)."""
    created = client.lists.create_list(audience_body(name, SANDBOX_AUDIENCE))
    list_id = created["id"]
    client.lists.add_list_merge_field(
        list_id, {"tag": "SALUTATION", "name": "Salutation", "type": "text"}
    )
    return str(list_id)


def _put(client: Any, list_id: str, contact: dict[str, Any]) -> bool:
    """One `set_list_member`; False when the API refused it (the script goes on)."""
    from mailchimp_marketing.api_client import ApiClientError  # noqa: PLC0415

    body = {
        "email_address": contact["email"],
        "status_if_new": "subscribed",
        "merge_fields": contact["merge_fields"],
    }
    try:
        client.lists.set_list_member(list_id, subscriber_hash(contact["email"]), body)
    except ApiClientError:
        return False
    return True


def run_loop(client: Any, list_id: str, crm: Path, sample: int) -> tuple[int, int]:
    contacts = read_contacts(crm)
    chosen = contacts[:sample] if 0 < sample < len(contacts) else contacts
    errors = sum(not _put(client, list_id, c) for c in chosen)
    return len(chosen), errors


def run_threads(client: Any, list_id: str, crm: Path, sample: int, threads: int) -> tuple[int, int]:
    contacts = read_contacts(crm)
    chosen = contacts[:sample] if 0 < sample < len(contacts) else contacts
    with ThreadPoolExecutor(max_workers=threads) as pool:
        done = list(pool.map(lambda c: _put(client, list_id, c), chosen))
    return len(chosen), done.count(False)


def run_batch(client: Any, list_id: str, crm: Path) -> tuple[int, int]:
    from mailchimp_marketing.api_client import ApiClientError  # noqa: PLC0415

    contacts = read_contacts(crm)
    errors = 0
    for i in range(0, len(contacts), BATCH_MAX):
        members = [
            {
                "email_address": c["email"],
                "status": "subscribed",
                "merge_fields": c["merge_fields"],
                "tags": c["tags"],
            }
            for c in contacts[i : i + BATCH_MAX]
        ]
        try:
            answer = client.lists.batch_list_members(
                list_id, {"members": members, "update_existing": True}
            )
        except ApiClientError:
            errors += len(members)
            continue
        errors += int(answer.get("error_count") or 0)
    return len(contacts), errors


# --- this project, with a look inside ---------------------------------------------------------


@dataclass
class Call:
    method: str
    route: str
    status: int
    start: float
    end: float
    thread: str


_ID = re.compile(r"/[0-9a-f]{10,32}(?=/|$)")


def _route(url: httpx.URL) -> str:
    path = url.path
    if "/_sandbox/files/" in path:
        return "GET batch result file"
    path = path.split(MAILCHIMP_PREFIX, 1)[-1]
    return _ID.sub("/{id}", path)


@contextmanager
def http_calls() -> Iterator[list[Call]]:
    """Every `httpx.Client.send` of this process while open: route, status, start, end (the
    list filled when the block ends).

    Recorded as numbers in arrays (method, route and thread as the index of their distinct
    combination): a `Call` kept per call, made among the objects of a step of a million rows,
    would keep that step's memory from the system once it ends (Python frees an arena only
    when all of it is free): ~0.5 GiB after the snapshot of a million members."""
    calls: list[Call] = []
    lock = threading.Lock()
    original = httpx.Client.send
    kinds: dict[tuple[str, str, str], int] = {}  # (method, route, thread): its index
    kind_at, status_at, times = array("i"), array("i"), array("d")  # times: start, end, ...

    def send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        began = time.perf_counter()
        status = 0
        try:
            response = original(self, request, **kwargs)
            status = response.status_code
            return response
        finally:
            kind = (request.method, _route(request.url), threading.current_thread().name)
            with lock:
                kind_at.append(kinds.setdefault(kind, len(kinds)))
                status_at.append(status)
                times.extend((began, time.perf_counter()))

    httpx.Client.send = send  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        httpx.Client.send = original  # type: ignore[method-assign]
        named = list(kinds)
        for at, (kind, status) in enumerate(zip(kind_at, status_at, strict=True)):
            method, route, thread = named[kind]
            calls.append(Call(method, route, status, times[2 * at], times[2 * at + 1], thread))


@dataclass
class Step:
    name: str
    start: float
    end: float
    inputs_loaded: float | None = None  # the last LOADED_INPUT
    first_output: float | None = None  # the first STEP_OUTPUT
    outputs_handled: float | None = None  # the last HANDLED_OUTPUT

    def parts(self) -> str:
        """Input loading, compute, output storing (from the step's events), where known."""
        if self.first_output is None:
            return ""
        loaded = self.inputs_loaded or self.start
        handled = self.outputs_handled or self.first_output
        return (
            f"load inputs {loaded - self.start:.2f} s, compute {self.first_output - loaded:.2f} s, "
            f"store outputs and checks {self.end - self.first_output:.2f} s "
            f"(outputs stored at +{handled - self.first_output:.2f} s)"
        )


def step_times(instance: Any, run_id: str) -> tuple[list[Step], float, float]:
    """The run's steps (epoch times from its event log), its start and its end."""
    from dagster import DagsterEventType  # noqa: PLC0415

    starts: dict[str, float] = {}
    marks: dict[str, dict[str, float]] = defaultdict(dict)
    steps: list[Step] = []
    run_start = run_end = None
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            continue
        kind = event.event_type
        if kind == DagsterEventType.RUN_START:
            run_start = entry.timestamp
        elif kind in (DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE):
            run_end = entry.timestamp
        elif kind == DagsterEventType.STEP_START:
            starts[event.step_key] = entry.timestamp
        elif kind == DagsterEventType.LOADED_INPUT:
            marks[event.step_key]["loaded"] = entry.timestamp
        elif kind == DagsterEventType.STEP_OUTPUT:
            marks[event.step_key].setdefault("output", entry.timestamp)
        elif kind == DagsterEventType.HANDLED_OUTPUT:
            marks[event.step_key]["handled"] = entry.timestamp
        elif kind in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            key = event.step_key
            steps.append(
                Step(
                    key,
                    starts.get(key, entry.timestamp),
                    entry.timestamp,
                    marks[key].get("loaded"),
                    marks[key].get("output"),
                    marks[key].get("handled"),
                )
            )
    steps.sort(key=lambda s: s.start)
    return steps, run_start or 0.0, run_end or 0.0


def full_sync_job_def() -> Any:
    """`full_sync_job` of the project's Definitions (reconstructable: for `execute_job`)."""
    from newsletter_pipelines.definitions import defs  # noqa: PLC0415

    return defs.resolve_job_def("full_sync_job")


def run_project(
    instance: Any,
    job: Any,
    resources: dict[str, Any],
    url: str,
    executor: str,
    *,
    sandbox_pid: int,
) -> Measured:
    """`full_sync_job` for the Mailchimp partition; with steps, HTTP calls and batches.

    `in_process`: `execute_in_process` with the benchmark's resources (HTTP calls seen by the
    hook); `execute_job`: as the daemon's run worker runs it, from the code location with its
    executor and resources."""
    import dagster as dg  # noqa: PLC0415

    from newsletter_pipelines.defs.providers.accounts import account_tags  # noqa: PLC0415

    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    before = stats(url)
    epoch0, perf0 = time.time(), time.perf_counter()
    with (
        PeakRss() as rss,
        http_calls() as calls,
        CpuTime({"the sandbox": sandbox_pid}) as cpu,
    ):
        if executor == "execute_job":
            result = dg.execute_job(
                dg.reconstructable(full_sync_job_def),
                instance,
                run_config=quiet,
                # the partition's tags, as a run the daemon launches for it carries them
                tags={"dagster/partition": "mailchimp", **account_tags("mailchimp")},
            )
        else:
            result = job.execute_in_process(
                instance=instance,
                partition_key="mailchimp",
                run_config=quiet,
                resources=resources,
                raise_on_error=False,
            )
    wall = time.perf_counter() - perf0
    served = stats(url) - before
    steps, run_start, run_end = step_times(instance, result.run_id)
    mc_calls = [c for c in calls if c.route != "/_sandbox/stats"]
    files = sum(1 for c in mc_calls if c.route == "GET batch result file")
    note = "" if result.success else "RUN FAILED"
    return Measured(
        wall,
        sum(served.values()) + files,
        served,
        load(),
        0,
        0,
        note=note,
        detail={
            "rss": rss,  # this process's memory while the run executed in it
            "cpu": cpu,
            "steps": steps,
            "calls": mc_calls,
            "epoch0": epoch0,
            "perf0": perf0,
            "run": (run_start, run_end),
            "files": files,
        },
    )


def project_breakdown(m: Measured) -> list[tuple[str, str]]:
    """Where (1)'s time went: steps, CPU by process, HTTP calls per step and route, the
    batches' timeline."""
    d = m.detail
    epoch0, perf0 = d["epoch0"], d["perf0"]
    steps: list[Step] = d["steps"]
    calls: list[Call] = d["calls"]
    rows: list[tuple[str, str]] = []
    in_steps = sum(s.end - s.start for s in steps)
    run_start, run_end = d["run"]
    rows.append(
        (
            "whole run",
            f"{m.wall:.2f} s: before RUN_START {run_start - epoch0:.2f} s (job and run set-up), "
            f"steps {in_steps:.2f} s, between steps {run_end - run_start - in_steps:.2f} s, "
            f"after RUN_SUCCESS {m.wall - (run_end - epoch0):.2f} s",
        )
    )
    cpu: CpuTime = d["cpu"]
    rows.append(("CPU during the run", cpu.text()))
    rss: PeakRss = d["rss"]
    peak = f"{rss.peak / 1024**3:.2f} GiB (this process, {rss.how})"
    if m.total >= HUGE:
        peak += f"   budget ≤ {PEAK_BUDGET / 1024**3:g} GiB at {HUGE:,}: "
        peak += "met" if rss.peak <= PEAK_BUDGET else "NOT MET"
    rows.append(("peak RSS of the run", peak))
    for step in steps:
        a, b = step.start - epoch0 + perf0, step.end - epoch0 + perf0
        inside = [c for c in calls if a - 0.05 <= c.start <= b]
        # a client's call may outlive the step that started it (Mailchimp's merge fields'
        # check after the snapshot's pages): counted up to the step's end
        busy = _union([(c.start, min(c.end, b)) for c in inside])
        by_route: dict[str, list[float]] = defaultdict(list)
        for c in inside:
            by_route[f"{c.method} {c.route}"].append(c.end - c.start)
        parts = "; ".join(
            f"{r} ×{len(v)} sum {sum(v):.2f} s max {max(v):.2f} s"
            for r, v in sorted(by_route.items())
        )
        edges = (
            f" (first call sent at +{min(c.start for c in inside) - a:.2f} s, "
            f"last answer {b - max(min(c.end, b) for c in inside):.2f} s before the end)"
            if inside
            else ""
        )
        rows.append(
            (
                f"  {step.name}",
                f"{step.end - step.start:6.2f} s (t={step.start - epoch0:.2f}); "
                f"HTTP in flight {busy:.2f} s, "
                f"no call in flight {step.end - step.start - busy:.2f} s{edges}; "
                f"peak RSS {rss.peak_between(a, b) / 1024**3:.2f} GiB"
                + (f"; {step.parts()}" if step.parts() else "")
                + (f"; {parts}" if parts else ""),
            )
        )
    batch_calls = [c for c in calls if "batch" in c.route]
    if batch_calls:
        line = ", ".join(
            f"{c.method} {c.route.replace('/batches', 'B')} "
            f"t={c.start - perf0:.2f}+{c.end - c.start:.2f}"
            for c in sorted(batch_calls, key=lambda c: c.start)[:24]
        )
        rows.append(("  /batches timeline", line + (" …" if len(batch_calls) > 24 else "")))
    return rows


def provider_floor(
    m: Measured, latency: float, batch_delay: float, connections: int
) -> tuple[str, str]:
    """The least time (1)'s calls to the provider take one after the other, its own work
    aside: the audience's lookup and creation, the member pages and the batch subscribes in
    rounds of `connections` calls, and a `/batches` round (submit, the result's delay, the
    status); the merge fields' calls are left out (they may overlap other work)."""
    count = Counter(f"{c.method} {c.route}" for c in m.detail["calls"])
    setup = count["GET /lists"] + count["POST /lists"]
    pages = count["GET /lists/{id}/members"]
    writes = count["POST /lists/{id}"]
    page_rounds, write_rounds = -(-pages // connections), -(-writes // connections)
    batches = 2 * latency + batch_delay if count["POST /batches"] else 0.0
    floor = latency * (setup + page_rounds + write_rounds) + batches
    parts = [_counted(setup, "audience call")]
    if pages:
        parts.append(f"{_counted(pages, 'member page')} in {_counted(page_rounds, 'round')}")
    if writes:
        parts.append(f"{_counted(writes, 'batch subscribe')} in {_counted(write_rounds, 'round')}")
    if batches:
        parts.append(f"a /batches round {batches:.2f} s")
    return (
        "provider floor of (1)",
        f"{floor:.2f} s ({', '.join(parts)}; {connections} connections, "
        f"{latency * 1000:.0f} ms a call): (1) took {m.wall_total / floor:.2f}× it, "
        f"{m.wall_total - floor:.2f} s more",
    )


def _counted(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'s' * (n != 1)}"


def _union(spans: Sequence[tuple[float, float]]) -> float:
    total, end = 0.0, -math.inf
    for a, b in sorted(spans):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


# --- one contact count ------------------------------------------------------------------------


def instance_yaml(stack: ExitStack, args: argparse.Namespace) -> str:
    """The storage blocks of (1)'s Dagster instance; with `--storage postgres` the production
    `dagster.yaml`'s as they are (DAGSTER_POSTGRES_URL a throwaway database), and the state
    database (NEWSLETTER_STATE_DATABASE_URL) on a throwaway database of its own."""
    if args.storage == "sqlite":
        return ""  # the embedded instance's default: SQLite files in its folder
    dagster = stack.enter_context(postgres_database(args.postgres_url))
    state = stack.enter_context(postgres_database(args.postgres_url))
    os.environ["NEWSLETTER_STATE_DATABASE_URL"] = _with_driver(state, "psycopg")
    os.environ["DAGSTER_POSTGRES_URL"] = _with_driver(dagster, "psycopg2")
    production = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    blocks = ("storage", "run_storage", "event_log_storage", "schedule_storage")
    return yaml.safe_dump({k: production[k] for k in blocks if k in production}, sort_keys=False)


def _with_driver(url: str, driver: str) -> str:
    return sa.engine.make_url(url).set(drivername=f"postgresql+{driver}").render_as_string(False)


def bench_count(count: int, args: argparse.Namespace, root: Path) -> dict[str, list[Measured]]:
    """Both runs of every approach at `count` contacts; printed as they come."""
    root.mkdir(parents=True, exist_ok=True)
    home = root / "home"
    home.mkdir(exist_ok=True)
    crm = home / "crm.sqlite3"
    began = time.perf_counter()
    # in a process of its own: its million dicts would stay in this process's RSS, which the
    # run's peak memory is measured on
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as builder:
        builder.submit(build_crm, crm, count, args.seed).result()
    print(f"\n=== {count:,} contacts: CRM built in {time.perf_counter() - began:.1f} s", flush=True)
    results: dict[str, list[Measured]] = defaultdict(list)
    with ExitStack() as stack:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
        sandbox, url = serve_sandbox(
            root, {**env, "PYTHONUNBUFFERED": "1"}, args.latency, args.batch_delay
        )
        stack.callback(sandbox.stop)
        for name in list(os.environ):
            if name.startswith("NEWSLETTER_"):
                del os.environ[name]
        os.environ.update(
            {
                "NEWSLETTER_HOME": str(home),
                "NEWSLETTER_CRM_DATABASE_URL": f"sqlite:///{crm}",
                "NEWSLETTER_MAILCHIMP_API_KEY": SANDBOX_MAILCHIMP_KEY,
                "NEWSLETTER_MAILCHIMP_BASE_URL": url + MAILCHIMP_PREFIX,
                "NEWSLETTER_MAILCHIMP_AUDIENCE_DEFAULTS": SANDBOX_AUDIENCE.model_dump_json(),
            }
        )
        if args.connections:
            os.environ["NEWSLETTER_MAILCHIMP_MAX_CONNECTIONS"] = str(args.connections)
        # the storage settings first: the Definitions' resources read the environment when
        # they are imported (`execute_job` runs with those, not with `build_resources` below)
        (root / "dagster_home").mkdir(exist_ok=True)
        (root / "dagster_home" / "dagster.yaml").write_text(
            instance_yaml(stack, args) + "telemetry:\n  enabled: false\n"
        )
        import dagster as dg  # noqa: PLC0415  (after the settings are in the environment)

        from newsletter_pipelines.definitions import defs  # noqa: PLC0415
        from newsletter_pipelines.defs.resources import build_resources  # noqa: PLC0415
        from newsletter_pipelines.settings import Settings  # noqa: PLC0415

        instance = stack.enter_context(dg.DagsterInstance.local_temp(str(root / "dagster_home")))
        job = defs.resolve_job_def("full_sync_job")
        resources = build_resources(Settings())
        client = sdk_client(url)
        lists = {
            key: sdk_audience(client, f"Baseline {key}")
            for key in ("loop", "batch", "threads")
            if key in args.only
        }

        def measure(action: Callable[[], tuple[int, int]]) -> Measured:
            before = stats(url)
            started = time.perf_counter()
            sent, errors = action()
            wall = time.perf_counter() - started
            calls = stats(url) - before
            m = Measured(wall, sum(calls.values()), calls, load(), sent, count, errors)
            if m.extrapolated:
                m.note = f"extrapolated from {sent:,} contacts ({wall:.1f} s measured)"
            return m

        changed = 0
        for run in ("first sync", "re-run, 1 % changed"):
            if run != "first sync":
                changed = change_last_names(crm)
            for key, label in APPROACHES.items():
                if key not in args.only:
                    continue
                if key == "project":
                    m = run_project(
                        instance, job, resources, url, args.executor, sandbox_pid=sandbox.popen.pid
                    )
                    m.sent = m.total = count
                elif key == "loop":
                    m = measure(lambda: run_loop(client, lists["loop"], crm, args.sample))
                elif key == "batch":
                    m = measure(lambda: run_batch(client, lists["batch"], crm))
                else:
                    m = measure(
                        lambda: run_threads(
                            client, lists["threads"], crm, args.thread_sample, args.threads
                        )
                    )
                results[key].append(m)
                print(
                    f"  {run}: {label}: {m.wall_total:.1f} s, {m.calls_total:,} calls"
                    f"{', ' + m.note if m.note else ''}; {load()}",
                    flush=True,
                )
        print_count(count, changed, results, args)
    return results


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}×" if reference else "n/a"


def print_count(
    count: int, changed: int, results: dict[str, list[Measured]], args: argparse.Namespace
) -> None:
    runs = ("first sync", f"re-run, {changed:,} last names changed (1 %), baselines re-send all")
    for index, run in enumerate(runs):
        rows: list[tuple[str, str]] = []
        project = results["project"][index] if "project" in results else None
        for key, label in APPROACHES.items():
            if key not in results:
                continue
            m = results[key][index]
            ratio = (
                f"; time {_ratio(m.wall_total, project.wall_total)} of (1), "
                f"calls {_ratio(m.calls_total, project.calls_total)} of (1)"
                if project is not None and key != "project"
                else ""
            )
            extra = f"; {m.errors:,} refused" if m.errors else ""
            rows.append(
                (
                    label,
                    f"{m.wall_total:8.1f} s  {m.calls_total:9,} calls{ratio}{extra}"
                    f"{'; ' + m.note if m.note else ''}  ({m.load})",
                )
            )
            rows.append(("  calls by route", routes_text(m.by_route)))
        rows += goals(count, index, results)
        if project is not None:
            from newsletter_pipelines.settings import Settings  # noqa: PLC0415

            connections = args.connections or Settings().mailchimp_max_connections
            rows.append(provider_floor(project, args.latency, args.batch_delay, connections))
            rows += project_breakdown(project)
        report(
            f"{count:,} contacts, {run}: served sandbox {args.latency * 1000:.0f} ms a call, "
            f"/batches results after {args.batch_delay:g} s",
            rows,
        )


def goals(count: int, index: int, results: dict[str, list[Measured]]) -> list[tuple[str, str]]:
    if "project" not in results:
        return []
    project = results["project"][index]
    rows = []
    if "batch" in results:
        speedup = results["batch"][index].wall_total / project.wall_total
        if count >= LARGE:
            goal = GOAL_FIRST_100K if index == 0 else GOAL_RERUN_100K
            text = f"(3) / (1) = {speedup:.2f}   goal ≥ {goal:g} at {LARGE:,}"
            ok = speedup >= goal
        else:
            text = f"(3) / (1) = {speedup:.2f}   goal ≥ 1 (never slower than (3))"
            ok = speedup >= 1
        rows.append(("goal: time vs (3)", f"{text}   {'met' if ok else 'NOT MET'}"))
    if "loop" in results:
        fewer = results["loop"][index].calls_total / max(project.calls_total, 1)
        rows.append(
            (
                "goal: calls vs (2)",
                f"(2) / (1) = {fewer:,.0f}   goal ≥ {GOAL_CALLS:g}   "
                f"{'met' if fewer >= GOAL_CALLS else 'NOT MET'}",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", default="10000,100000", help="comma-separated counts")
    parser.add_argument(
        "--sample", type=int, default=2000, help="contacts the loop (2) sends; 0: all"
    )
    parser.add_argument(
        "--thread-sample", type=int, default=10_000, help="contacts (4) sends; 0: all"
    )
    parser.add_argument("--threads", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per provider call")
    parser.add_argument(
        "--batch-delay", type=float, default=1.0, help="seconds until a /batches result is ready"
    )
    parser.add_argument(
        "--only", default=",".join(APPROACHES), help="approaches to run: project,loop,batch,threads"
    )
    parser.add_argument(
        "--connections",
        type=int,
        help="NEWSLETTER_MAILCHIMP_MAX_CONNECTIONS for (1) (default: the project's, 5)",
    )
    parser.add_argument(
        "--executor",
        choices=["in_process", "execute_job"],
        default="in_process",
        help="how (1) runs: execute_in_process, or execute_job as the daemon's run worker does "
        "(the code location's executor)",
    )
    parser.add_argument(
        "--storage",
        choices=["postgres", "sqlite"],
        default="postgres",
        help="(1)'s Dagster instance storage and state database: postgres as deployed "
        "(throwaway databases on --postgres-url, dropped afterwards) or sqlite as the embedded "
        "demo instance",
    )
    add_postgres_url(parser, "for --storage postgres")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it")
    args = parser.parse_args(argv)
    try:
        counts = [int(c.replace("_", "")) for c in args.contacts.split(",") if c.strip()]
    except ValueError:
        parser.error("--contacts must be comma-separated counts")
    args.only = {a.strip() for a in args.only.split(",") if a.strip()}
    if not counts or min(counts) < 1 or not args.only <= set(APPROACHES):
        parser.error("counts must be at least 1; --only takes project,loop,batch,threads")
    if args.storage == "postgres" and (why := _unreachable(args.postgres_url)):
        parser.error(f"--storage postgres: PostgreSQL {why} (or use --storage sqlite)")
    print(
        f"bench_vs_baselines: {machine()} at the start; "
        f"latency {args.latency:g} s a call, /batches results after {args.batch_delay:g} s; "
        f"(1)'s Dagster storage and state database: {args.storage}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench_vs_baselines_") as tmp:
        base = args.keep or Path(tmp)
        benchmarks = str(Path(__file__).resolve().parent)  # execute_job's job points at us
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (benchmarks, os.environ.get("PYTHONPATH")) if p
        )
        for count in counts:
            bench_count(count, args, base / f"n{count}")


if __name__ == "__main__":
    main()
