"""Benchmark: provider time beside its physical limit, against the served latency sandbox.

`python benchmarks/bench_provider_limits.py [--members 100000] [--latency 0.1]
[--batch-delay 1] [--process-delay 1] [--connections 5] [--rate 9.5] [--repeat 9]
[--only mailchimp,brevo] [--gc-freeze] [--keep DIR]`

One served sandbox (`python -m newsletter_pipelines.sandbox serve --latency 0.1 --batch-delay 1
--process-delay 1`: every Mailchimp and Brevo call answered 100 ms after it arrived, a `/batches`
result and a Brevo import are ready 1 s after they were submitted; state in memory), and per
provider its client configured as for a live account (production polling; Mailchimp `--connections`
of the 10 the account allows, by default 5, the share a run keeps while another run of its account
goes on beside it; `--connections 10` for a run alone; Brevo paced to `--rate` of the 10
requests/s it allows):

1. first sync of N new contacts through `upsert`, in the push's chunks (`CREATE_CHUNK_SIZE`, each
   chunk's contacts built just before it is sent, as the push does): wall time, calls by route
   (counted by the sandbox), write calls against ceil(N/500) for Mailchimp, Brevo's imports and
   process polls against its 100 requests/hour budget;
2. snapshot of the N members as the snapshot asset reads it (`snapshot_pages`, each page made
   columns as it comes in, then merged; Mailchimp: by a new client, as the next run reads it,
   the audience found with its counts, then its pages together): wall time and calls;
3. the sandbox's own speed with the latency removed (`DELETE /_sandbox/faults`), served, timed
   by this process around one keep-alive HTTP request (body read, not decoded): the median of
   `--repeat` of a 1,000-member page (the snapshot's query) and a 500-member batch subscribe
   of new members on the audience of N; for Brevo a 500-contact page of the list (the most the
   list endpoint returns), a `/contacts/batch` of 100 updates (its most) and a 500-row import
   (`POST /contacts/import` plus the `GET /processes/{id}` that runs it).

The limit of a phase is its calls × latency ÷ the concurrency allowed (Mailchimp: the client's
connections); for Brevo the pace is the bound, calls ÷ 10 requests/s, plus the process delay
once per import chunk (each chunk waits for its import). Printed per figure: measured, limit,
ratio, budget, load average (2 shared cores: timings are inflated), and the CPU seconds of
this process (the client; its cycle collector apart) and of the sandbox during the phase: near
the wall time, the phase waited for a core rather than for the provider. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
from bench_providers import people
from measure import GcTime, load, machine, report, routes_text, sandbox_calls, verdict

from newsletter_pipelines.bulk import gc_paused
from newsletter_pipelines.providers.base import Outcome, Provider, Result
from newsletter_pipelines.providers.brevo import CONTACT_PAGE, REQUESTS_PER_SECOND, BrevoClient
from newsletter_pipelines.providers.mailchimp import BATCH_SUBSCRIBE_MAX, MailchimpClient
from newsletter_pipelines.providers.resources import SANDBOX_AUDIENCE
from newsletter_pipelines.sandbox import (
    BREVO_PREFIX,
    MAILCHIMP_PREFIX,
    SANDBOX_BREVO_KEY,
    SANDBOX_MAILCHIMP_KEY,
)
from newsletter_pipelines.sync.push import CREATE_CHUNK_SIZE, CREATES_IN_FLIGHT
from newsletter_pipelines.sync.snapshot_columns import merged, page_columns
from newsletter_pipelines_tests.live import serve_sandbox

AUDIENCE = "Provider limits"
RATIO_BUDGET = 1.2
WRITES_BUDGET = 1.05
BREVO_ALLOWED_RATE = 10.0  # contact requests a second
BREVO_PROCESS_BUDGET = 100  # imports and process polls an hour
SANDBOX_BUDGET_S = 0.020
PICK = random.Random(0)  # page offsets of the speed figures
MAILCHIMP_FIELDS = (
    "total_items,members.id,members.contact_id,members.email_address,members.status,"
    "members.merge_fields,members.tags,members.last_changed"
)


@dataclass(frozen=True)
class Served:
    """The served sandbox: its root URL and its process (for its CPU time)."""

    url: str
    process: psutil.Process

    def cpu(self) -> float:
        """CPU seconds the sandbox process has used so far."""
        times = self.process.cpu_times()
        return times.user + times.system


@dataclass
class Phase:
    """One timed phase: wall time, the calls the sandbox answered, its limit, and the CPU
    seconds of this process (the client) and of the sandbox during it."""

    wall: float
    calls: Counter[tuple[str, str, int]]
    limit: float
    load: str
    client_cpu: float
    client_gc: float
    sandbox_cpu: float

    @property
    def total(self) -> int:
        """Every call of the phase."""
        return sum(self.calls.values())

    def count(self, method: str | None = None, route: str | None = None) -> int:
        """Calls of this method (any but GET when "write") and route."""
        return sum(
            n
            for (m, r, _), n in self.calls.items()
            if (method is None or m == method or (method == "write" and m != "GET"))
            and route in (None, r)
        )

    def rows(self, figure: str, *details: tuple[str, str]) -> list[tuple[str, str]]:
        """The phase's figure, its `details`, its calls by route and its CPU time."""
        return [
            self.row(figure),
            *details,
            ("  calls by route", routes_text(self.calls)),
            self.cpu_row(),
        ]

    def row(self, figure: str) -> tuple[str, str]:
        """The phase's wall time beside its limit, ratio and budget."""
        ratio = self.wall / self.limit if self.limit else math.inf
        return (
            figure,
            f"{self.wall:7.2f} s  limit {self.limit:6.2f} s  ratio {ratio:5.2f}  "
            f"budget ≤ {RATIO_BUDGET:g}: {verdict(ratio <= RATIO_BUDGET)}  ({self.load})",
        )

    def cpu_row(self) -> tuple[str, str]:
        """CPU seconds beside the wall time: near it, the phase waited for a core, not calls."""
        return (
            "  CPU",
            f"client {self.client_cpu:.2f} s (cycle collector {self.client_gc:.2f} s), "
            f"sandbox {self.sandbox_cpu:.2f} s "
            f"({(self.client_cpu + self.sandbox_cpu) / self.wall:.0%} of the wall time)",
        )


def measured(
    served: Served,
    provider: str,
    work: Callable[[], Any],
    limit: Callable[[int], float],
) -> tuple[Any, Phase]:
    """Run `work`, counting the sandbox's calls; `limit` turns the call count into seconds."""
    before = sandbox_calls(served.url, provider)
    cpu, sandbox_cpu = time.process_time(), served.cpu()
    start = time.perf_counter()
    with GcTime() as collector:
        result = work()
    wall = time.perf_counter() - start
    cpu, sandbox_cpu = time.process_time() - cpu, served.cpu() - sandbox_cpu
    calls = sandbox_calls(served.url, provider) - before
    phase = Phase(
        wall, calls, limit(sum(calls.values())), load(), cpu, collector.seconds, sandbox_cpu
    )
    return result, phase


def first_sync(client: Provider, count: int) -> str:
    """Upsert `count` new contacts as the push sends creates: `CREATE_CHUNK_SIZE` contacts a client
    call, `CREATES_IN_FLIGHT` calls at once (the client's connections bound the requests), each
    chunk's contacts built just before (as the push builds them from its rows), the
    cyclic garbage collector paused (as `push_diff` pauses it); `created 100,000`: the outcomes
    counted."""
    outcomes: Counter[Result] = Counter()
    size = CREATE_CHUNK_SIZE[client.name]

    def send(start: int) -> list[Outcome]:
        return client.upsert(people(min(size, count - start), start))

    # as many chunks in flight as the push keeps
    with gc_paused(), ThreadPoolExecutor(CREATES_IN_FLIGHT[client.name]) as pool:
        for found in pool.map(send, range(0, count, size)):
            outcomes.update(o.outcome for o in found)
    return ", ".join(f"{r.value} {n:,}" for r, n in outcomes.items())


def both_phases(
    served: Served,
    client: MailchimpClient | BrevoClient,
    count: int,
    limits: tuple[Callable[[int], float], Callable[[int], float]],
    reader: Callable[[], MailchimpClient] | None = None,
) -> tuple[str, Phase, int, Phase]:
    """First sync, then snapshot, through `client` (closed afterwards), each beside its limit:
    (outcomes, first sync, members in the snapshot, snapshot). With `reader`, the snapshot
    is read by a new client, as the next run reads it: the audience found with its counts,
    then its pages together (the first sync's client knows the counts from before it)."""
    client.ensure_audience()
    work = lambda: first_sync(client, count)  # noqa: E731
    outcomes, sync = measured(served, client.name, work, limits[0])
    snapshot_client = client if reader is None else reader()
    read = lambda: merged(snapshot_client.snapshot_pages(page_columns))  # noqa: E731
    members, snap = measured(served, client.name, read, limits[1])
    client.close()
    snapshot_client.close()
    return outcomes, sync, len(members), snap


# --- Mailchimp ------------------------------------------------------------------------------


def bench_mailchimp(served: Served, args: argparse.Namespace) -> None:
    """First sync and snapshot of N members with the client, beside their limits."""
    live = {"base_url": served.url + MAILCHIMP_PREFIX, "max_connections": args.connections}

    def client() -> MailchimpClient:
        return MailchimpClient(
            SANDBOX_MAILCHIMP_KEY, AUDIENCE, audience_defaults=SANDBOX_AUDIENCE, **live
        )

    limit = lambda calls: calls * args.latency / args.connections  # noqa: E731
    n = args.members
    outcomes, sync, members, snap = both_phases(served, client(), n, (limit, limit), client)
    minimum = math.ceil(n / BATCH_SUBSCRIBE_MAX)
    writes = sync.count("write")
    report(
        f"mailchimp, {n:,} members: served sandbox {args.latency * 1000:.0f} ms a call, "
        f"{args.connections} client connections; limit = calls × latency ÷ {args.connections}",
        [
            *sync.rows(
                f"first sync of {n:,} new contacts",
                ("  outcomes", outcomes),
                (
                    "  write calls",
                    f"{writes:,}  minimum ceil(N/500) = {minimum:,}  ratio "
                    f"{writes / minimum:.3f}  budget ≤ {WRITES_BUDGET:g}: "
                    f"{verdict(writes <= WRITES_BUDGET * minimum)}",
                ),
            ),
            *snap.rows(f"snapshot of {members:,} members"),
        ],
    )


# --- Brevo ----------------------------------------------------------------------------------


def bench_brevo(served: Served, args: argparse.Namespace) -> None:
    """First sync and snapshot of N contacts with the client, beside the 10 requests/s bound."""
    live = {"base_url": served.url + BREVO_PREFIX, "max_connections": args.connections}
    client = BrevoClient(SANDBOX_BREVO_KEY, AUDIENCE, requests_per_second=args.rate, **live)
    n = args.members
    chunks = math.ceil(n / CREATE_CHUNK_SIZE["brevo"])
    paced = lambda calls: calls / BREVO_ALLOWED_RATE  # noqa: E731
    imported = lambda calls: paced(calls) + chunks * args.process_delay  # noqa: E731
    outcomes, sync, members, snap = both_phases(served, client, n, (imported, paced))
    process_calls = sync.count("POST", "/contacts/import") + sync.count(
        "GET", "/processes/{processId}"
    )
    report(
        f"brevo, {n:,} contacts: served sandbox {args.latency * 1000:.0f} ms a call, client paced "
        f"to {args.rate:g} requests/s; limit = calls ÷ {BREVO_ALLOWED_RATE:g}/s "
        f"(+ {args.process_delay:g} s a chunk's import)",
        [
            *sync.rows(
                f"first sync of {n:,} new contacts ({chunks} chunks)",
                ("  outcomes", outcomes),
                ("  write calls", f"{sync.count('write'):,}"),
                (
                    "  imports + process polls",
                    f"{process_calls}  budget ≤ {BREVO_PROCESS_BUDGET} an hour: "
                    f"{verdict(process_calls <= BREVO_PROCESS_BUDGET)}",
                ),
            ),
            *snap.rows(
                f"snapshot of {members:,} contacts",
                (
                    "  request rate",
                    f"{snap.total / snap.wall:.1f}/s  budget ≤ {BREVO_ALLOWED_RATE:g}/s: "
                    f"{verdict(snap.total / snap.wall <= BREVO_ALLOWED_RATE)}",
                ),
            ),
        ],
    )


# --- the sandbox's own speed ----------------------------------------------------------------


def median_ms(samples: Sequence[float]) -> str:
    """`12.3 ms (min 10.1, max 15.0)` beside the 20 ms budget."""
    middle = statistics.median(samples)
    return (
        f"{middle * 1000:6.1f} ms (min {min(samples) * 1000:.1f}, max {max(samples) * 1000:.1f}, "
        f"{len(samples)} runs)  budget ≤ {SANDBOX_BUDGET_S * 1000:.0f} ms: "
        f"{verdict(middle <= SANDBOX_BUDGET_S)}  ({load()})"
    )


def timed_request(http: httpx.Client, method: str, path: str, **kwargs: Any) -> float:
    """Seconds from sending one request to its whole body read (a 4xx/5xx raises)."""
    start = time.perf_counter()
    http.request(method, path, **kwargs).raise_for_status()
    return time.perf_counter() - start


def subscribe_body(start: int) -> dict[str, Any]:
    """A batch subscribe of 500 new members, as the client sends it."""
    return {
        "members": [
            {
                "email_address": f"speed{i}@example.com",
                "status": "subscribed",
                "merge_fields": {"FNAME": f"First{i}", "LNAME": f"Last{i}", "SALUTATION": "Frau"},
                "tags": ["crm"],
            }
            for i in range(start, start + BATCH_SUBSCRIBE_MAX)
        ],
        "update_existing": False,
    }


def mailchimp_speed(url: str, members: int, repeat: int) -> list[tuple[str, str]]:
    """Median time of a 1,000-member page and of a 500-member batch subscribe."""
    http = httpx.Client(base_url=url + MAILCHIMP_PREFIX, auth=("bench", SANDBOX_MAILCHIMP_KEY))
    list_id = next(
        lst["id"] for lst in http.get("/lists").json()["lists"] if lst["name"] == AUDIENCE
    )
    path = f"/lists/{list_id}/members"
    pages = [
        timed_request(
            http,
            "GET",
            path,
            params={
                "count": 1000,
                "offset": PICK.randrange(members - 1000),
                "fields": MAILCHIMP_FIELDS,
            },
        )
        for _ in range(repeat)
    ]
    bodies = [subscribe_body(i * BATCH_SUBSCRIBE_MAX) for i in range(repeat)]
    subscribes = [timed_request(http, "POST", f"/lists/{list_id}", json=b) for b in bodies]
    http.close()
    return [
        ("mailchimp: GET a page of 1,000 members", median_ms(pages)),
        ("mailchimp: batch subscribe of 500 new members", median_ms(subscribes)),
    ]


def brevo_speed(url: str, members: int, args: argparse.Namespace) -> list[tuple[str, str]]:
    """Median time of a 500-contact list page, a 100-contact batch update and a 500-row
    import (submitted, then run by the poll that finds it due); paced under 10/s."""
    http = httpx.Client(base_url=url + BREVO_PREFIX, headers={"api-key": SANDBOX_BREVO_KEY})
    lists = http.get("/contacts/lists", params={"limit": 50}).json()["lists"]
    list_id = next(lst["id"] for lst in lists if lst["name"] == AUDIENCE)
    path = f"/contacts/lists/{list_id}/contacts"
    pace = lambda: time.sleep(1.5 / BREVO_ALLOWED_RATE)  # noqa: E731
    pages, batches, imports = [], [], []
    for i in range(args.repeat):
        params = {"limit": CONTACT_PAGE, "offset": PICK.randrange(members - 500), "sort": "asc"}
        pages.append(timed_request(http, "GET", path, params=params))
        pace()
        listed = http.get(path, params={"limit": 100, "offset": i * 100}).json()["contacts"]
        pace()
        body = {"contacts": [{"id": c["id"], "attributes": {"FIRSTNAME": f"B{i}"}} for c in listed]}
        batches.append(timed_request(http, "POST", "/contacts/batch", json=body))
        pace()
        imports.append(import_seconds(http, list_id, i * BATCH_SUBSCRIBE_MAX, args.process_delay))
        pace()
    http.close()
    return [
        ("brevo: GET a list page of 500 contacts", median_ms(pages)),
        ("brevo: /contacts/batch of 100 updates", median_ms(batches)),
        ("brevo: import of 500 new contacts (POST + run)", median_ms(imports)),
    ]


def import_seconds(http: httpx.Client, list_id: int, start: int, delay: float) -> float:
    """Seconds the sandbox spends on a 500-row import: the POST, and the poll after the
    process delay that runs it."""
    rows = [
        {"email": f"speed{i}@example.com", "attributes": {"FIRSTNAME": f"First{i}"}}
        for i in range(start, start + BATCH_SUBSCRIBE_MAX)
    ]
    body = {"jsonBody": rows, "listIds": [list_id], "updateExistingContacts": False}
    posted = time.perf_counter()
    answer = http.post("/contacts/import", json=body).raise_for_status().json()
    seconds = time.perf_counter() - posted
    time.sleep(delay + 1.5 / BREVO_ALLOWED_RATE)
    return seconds + timed_request(http, "GET", f"/processes/{answer['processId']}")


# --- main -----------------------------------------------------------------------------------


def run(args: argparse.Namespace, root: Path) -> None:
    """Serve the sandbox, run each provider's phases, then time the sandbox without latency."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    sandbox, url = serve_sandbox(root, env, args.latency, args.batch_delay, args.process_delay)
    served = Served(url, psutil.Process(sandbox.popen.pid))
    try:
        benches = {"mailchimp": bench_mailchimp, "brevo": bench_brevo}
        for name in args.only:
            benches[name](served, args)
        httpx.delete(f"{url}/_sandbox/faults").raise_for_status()
        rows = []
        if "mailchimp" in args.only:
            rows += mailchimp_speed(url, args.members, args.repeat)
        if "brevo" in args.only:
            rows += brevo_speed(url, args.members, args)
        report(
            f"the sandbox's own speed, served, no latency, on audiences of {args.members:,} "
            "(round trip over loopback from this process, body read)",
            rows,
        )
    finally:
        sandbox.stop()


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per provider call")
    parser.add_argument(
        "--batch-delay", type=float, default=1.0, help="seconds until a /batches result is ready"
    )
    parser.add_argument(
        "--process-delay", type=float, default=1.0, help="seconds until a Brevo import runs"
    )
    parser.add_argument("--connections", type=int, default=5, help="client connections")
    parser.add_argument(
        "--rate", type=float, default=REQUESTS_PER_SECOND, help="Brevo client requests/s"
    )
    parser.add_argument("--repeat", type=int, default=9, help="runs per sandbox speed figure")
    parser.add_argument("--only", default="mailchimp,brevo", help="providers to measure")
    parser.add_argument("--keep", type=Path, help="run in this folder (sandbox log) and keep it")
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() once everything is imported, as a run process could after start-up: "
        "the client's cycle collector then no longer traverses the modules' objects",
    )
    args = parser.parse_args(argv)
    args.only = [p.strip() for p in args.only.split(",") if p.strip()]
    if args.members < 1000 or not set(args.only) <= {"mailchimp", "brevo"}:
        parser.error("--members must be at least 1000; --only takes mailchimp,brevo")
    print(
        f"bench_provider_limits: {machine()} at the start; latency "
        f"{args.latency:g} s a call, /batches after {args.batch_delay:g} s, imports after "
        f"{args.process_delay:g} s{'; gc.freeze() after the imports' if args.gc_freeze else ''}",
        flush=True,
    )
    if args.gc_freeze:
        gc.freeze()
    with tempfile.TemporaryDirectory(prefix="bench_provider_limits_") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        run(args, root)


if __name__ == "__main__":
    main()
