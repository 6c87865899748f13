"""Benchmark: webhook receipt → CRM write of a person's unsubscribe, with real processes.

`python benchmarks/bench_webhook_latency.py [--people 20] [--mean-gap 7.5] [--seed 42]
[--keep DIR]`

The promise (README, `make dev`): a person's unsubscribe at the provider reaches the CRM within
a minute, through the webhook receiver, `provider_events_sensor` and `provider_events_job`
under the real Dagster daemon with its default intervals.

Setup (not measured), as `newsletter_pipelines_tests/test_live.py` does it with the same
helpers (`newsletter_pipelines_tests/live.py`): a throwaway NEWSLETTER_HOME (demo CRM, SQLite
state database, sandbox state file) and DAGSTER_HOME (the demo instance's SQLite storage); the
webhook receiver and `dagster dev` as subprocesses on free loopback ports; `full_sync_job` of
both audiences launched through the webserver's GraphQL API (registers the webhooks at the
receiver); then wait until the Brevo sync's own list additions, which come back by webhook,
are applied and no run is active.

Then `--people` distinct people (CRM contacts alone with their address, subscribed at the
audience, named by no inbox event) unsubscribe at the embedded sandbox, half at each audience
in random order, at random moments: the pause before each is uniform in [0, 2 × --mean-gap]
s, so the events fall at every phase of the sensor's 15 s interval, some in one tick, some
while a run of the same audience is under way.

Measurement, per unsubscribe (every clock is this machine's):

- receipt: `received_at` of its event in the inbox `provider_events`, set by the receiver when
  it stores the event, before it answers 200. (The sandbox's delivery in this process returns
  milliseconds later; `ack − receipt` is printed as a cross-check.)
- CRM write: `updated_at` the import-back set on the contact: the CRM writer's `now`, taken in
  the run's step process right before it writes (the commit of one contact follows within
  milliseconds). It is read once the contact says `no` and has the activity
  `newsletter_unsubscribed`; the CRM is polled every 0.25 s after the last unsubscribe only to
  find the rows, so polling does not enter the figure.
- latency = CRM write − receipt.
- breakdown, from the `provider_events_job` run that applied the event (of its audience, its
  run key's id the smallest at or above the event's id; times from the GraphQL API): sensor =
  receipt → run created (the sensor's 15 s interval, the daemon's 5 s loop), launch = created
  → run started (the run queue, dequeued every 5 s; one run per audience partition at a time,
  so it waits for a run of the same audience, e.g. the `incremental_sync_job` the CRM change
  sensor starts after each write; then the run's process), step = started → CRM write (the
  step's process and the op).

Percentiles: `statistics.quantiles(..., method="inclusive")`. Budget: p95 ≤ 60 s; nothing is
asserted. The load average is printed beside the figures (2 cores; other work may be running).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from measure import counts_text, machine, report, verdict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' package: live.py
from newsletter_pipelines_tests.live import (
    AUDIENCES,
    EVENTS_JOB,
    Ack,
    LiveStack,
    Person,
    live_stack,
)

BUDGET_P95_S = 60.0
PER_EVENT_ROWS = 40
POLL_AFTER_S = 180.0
"""How long after the last unsubscribe the CRM may take before a write counts as missing."""


@dataclass(frozen=True)
class Measured:
    """One unsubscribe's timings (seconds)."""

    person: Person
    latency: float
    sensor: float
    launch: float
    step: float
    ack_after_receipt: float


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (inclusive method); the value itself for a single one."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def spread(values: list[float]) -> str:
    """`p50 / p95 / max` in seconds."""
    if not values:
        return "none"
    return f"{percentile(values, 50):5.1f} / {percentile(values, 95):5.1f} / {max(values):5.1f} s"


def act(stack: LiveStack, people: list[Person], mean_gap: float, rng: random.Random) -> list[Ack]:
    """Each person unsubscribes after a random pause (a schedule, not a wait for anything)."""
    acks = []
    for person in people:
        time.sleep(rng.uniform(0, 2 * mean_gap))
        acks.append(stack.unsubscribe(person))
        print(f"  {len(acks):3}/{len(people)} {person.audience} unsubscribed", flush=True)
    return acks


def measure(stack: LiveStack, acks: list[Ack], seen: dict[Person, float]) -> list[Measured]:
    """The timings of every unsubscribe whose CRM write was seen."""
    found = []
    for ack in acks:
        if ack.person not in seen:
            continue
        row = stack.crm_row(ack.person)
        event = stack.inbox_event(ack.person)
        assert row.updated_at is not None and event is not None
        run = stack.run_for(event)
        received = event.received_at.timestamp()
        written = row.updated_at.timestamp()
        if run is None or run.started is None:
            raise RuntimeError(f"no started {EVENTS_JOB} run covers {event}")
        found.append(
            Measured(
                person=ack.person,
                latency=written - received,
                sensor=run.created - received,
                launch=run.started - run.created,
                step=written - run.started,
                ack_after_receipt=ack.acked_at - received,
            )
        )
    return found


def print_report(
    args: argparse.Namespace,
    stack: LiveStack,
    *,
    acks: list[Ack],
    found: list[Measured],
    setup: dict[str, float],
    started_at: float,
) -> None:
    latencies = [m.latency for m in found]
    p95 = percentile(latencies, 95) if latencies else float("inf")
    complete = len(found) == len(acks)
    during = [r for r in stack.runs() if r.created >= started_at]
    runs = [r for r in during if r.job == EVENTS_JOB]
    others = Counter(r.job for r in during if r.job != EVENTS_JOB)
    retried = sum(1 for r in runs if "dagster/retry_number" in r.tags)
    load = os.getloadavg()
    span = acks[-1].acked_at - acks[0].acked_at if acks else 0.0
    audiences = Counter(a.person.audience for a in acks)
    sensor = stack.sensor()
    report(
        f"webhook receipt → CRM write: {len(acks)} unsubscribes ({counts_text(audiences)}) "
        f"over {span:.0f} s, pauses uniform 0–{2 * args.mean_gap:g} s; webhook receiver and "
        f"dagster dev as processes, sensor {sensor['sensorState']['status'].lower()} every "
        f"{sensor['minIntervalSeconds']} s (default), SQLite",
        [
            (
                "latency p50 / p95 / max",
                f"{spread(latencies)}   budget p95 ≤ {BUDGET_P95_S:.0f} s   "
                f"{verdict(complete and p95 <= BUDGET_P95_S)}",
            ),
            *[
                (f"  {a}", spread([m.latency for m in found if m.person.audience == a]))
                for a in AUDIENCES
            ],
            ("  sensor: receipt → run created", spread([m.sensor for m in found])),
            ("  launch: created → run started", spread([m.launch for m in found])),
            ("  step: run started → CRM write", spread([m.step for m in found])),
            (
                "written",
                f"{len(found)} of {len(acks)} within {POLL_AFTER_S:.0f} s of the last "
                f"unsubscribe{'' if complete else '   MISSING WRITES'}",
            ),
            (
                "cross-check",
                "ack − receipt max "
                f"{max((m.ack_after_receipt for m in found), default=0) * 1000:.0f} ms (the "
                "sandbox's delivery returns after the receiver stored the event)",
            ),
            (
                f"{EVENTS_JOB} runs",
                f"{len(runs)} ({counts_text(Counter(r.status for r in runs))}), {retried} "
                "retries; other runs meanwhile (one run per audience at a time): "
                f"{counts_text(others)}",
            ),
            (
                "setup (not measured)",
                ", ".join(f"{k} {v:.0f} s" for k, v in setup.items()),
            ),
            (
                "load average",
                f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min) on "
                f"{os.cpu_count()} cores, at the end",
            ),
        ],
    )
    report(
        "per unsubscribe (s): latency = sensor + launch + step",
        [
            (
                f"{i:3} {m.person.audience:<9}",
                f"{m.latency:5.1f} = {m.sensor:5.1f} + {m.launch:5.1f} + {m.step:5.1f}",
            )
            for i, m in enumerate(found[:PER_EVENT_ROWS], start=1)
        ],
    )
    if len(found) > PER_EVENT_ROWS:
        print(f"  (first {PER_EVENT_ROWS} of {len(found)})", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Start the stack, sync, let people unsubscribe, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=20, help="unsubscribes, both audiences")
    parser.add_argument(
        "--mean-gap", type=float, default=7.5, help="mean pause before each unsubscribe (s)"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (logs)")
    args = parser.parse_args(argv)
    if args.people < 1:
        parser.error("--people must be at least 1")
    print(f"machine: {machine()}", flush=True)
    for name in list(os.environ):  # nothing of the caller's settings (no live provider keys)
        if name.startswith("NEWSLETTER_") and name != "NEWSLETTER_TEST_POSTGRES_URL":
            del os.environ[name]
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench_webhook_latency_") as tmp:
        root = args.keep or Path(tmp)
        home = root / "home"
        os.environ["NEWSLETTER_HOME"] = str(home)
        setup: dict[str, float] = {}
        start = time.monotonic()
        with live_stack(root, home) as stack:
            setup["stack ready"] = time.monotonic() - start
            stack.full_sync(AUDIENCES)
            setup["full syncs"] = time.monotonic() - start - sum(setup.values())
            stack.wait_until_quiet()
            setup["echo applied"] = time.monotonic() - start - sum(setup.values())
            audiences = [AUDIENCES[i % len(AUDIENCES)] for i in range(args.people)]
            rng.shuffle(audiences)
            people: list[Person] = []
            for audience in AUDIENCES:
                people += stack.people(audience, audiences.count(audience), exclude=people)
            by_audience = {a: [p for p in people if p.audience == a] for a in AUDIENCES}
            ordered = [by_audience[a].pop(0) for a in audiences]
            print(f"{len(ordered)} unsubscribes at random moments", flush=True)
            started_at = time.time()
            acks = act(stack, ordered, args.mean_gap, rng)
            timeout = acks[-1].acked_at - acks[0].acked_at + POLL_AFTER_S
            seen = stack.wait_for_crm(acks, timeout=timeout, strict=False)
            found = measure(stack, acks, seen)
            try:
                stack.wait_until_quiet()  # the runs' final statuses for the report
            except TimeoutError as exc:
                print(f"(runs' statuses as they are: {exc})", flush=True)
            print_report(args, stack, acks=acks, found=found, setup=setup, started_at=started_at)


if __name__ == "__main__":
    main()
