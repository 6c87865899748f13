"""Benchmark: a first full sync of N contacts into each sandbox provider, through the clients.

`python benchmarks/bench_providers.py [--contacts 100000] [--tagged 10000]`

Both providers run in-process against the sandbox with their real limits (Mailchimp: 5 client
connections, 10 allowed; Brevo: 8 requests/s from the client, 10/s enforced). Printed per
provider: calls made (writes and reads), the minimum possible, wall time and contacts/s, with
the budget beside them; then a re-sync with nothing changed; then the two ways of
changing tags on existing Mailchimp members. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from typing import Any

import httpx
from measure import machine

from newsletter_pipelines.providers.base import Contact, Member, Provider, Result
from newsletter_pipelines.providers.brevo import IMPORT_MAX_BYTES, BrevoClient
from newsletter_pipelines.providers.http import PollPolicy
from newsletter_pipelines.providers.mailchimp import MailchimpClient
from newsletter_pipelines.providers.resources import SANDBOX_AUDIENCE
from newsletter_pipelines.sandbox import (
    BREVO_PREFIX,
    MAILCHIMP_PREFIX,
    SANDBOX_BREVO_KEY,
    SANDBOX_MAILCHIMP_KEY,
    SANDBOX_ORIGIN,
    Sandbox,
    SandboxTransport,
)

POLL = PollPolicy(initial=0.5, maximum=5.0, deadline=3600.0)


def people(count: int, start: int = 0) -> list[Contact]:
    """`count` distinct contacts with names, a salutation and one tag (numbered from `start`)."""
    return [
        Contact(
            crm_id=str(i),
            email=f"person{i}@example.com",
            first_name=f"First{i}",
            last_name=f"Last{i}",
            salutation="Frau" if i % 2 else "Herr",
            tags=frozenset({"crm"}),
        )
        for i in range(start, start + count)
    ]


def timed(work: Callable[[], Any]) -> tuple[Any, float]:
    """(result, seconds) of `work()`."""
    start = time.perf_counter()
    result = work()
    return result, time.perf_counter() - start


def report(title: str, rows: list[tuple[str, str]]) -> None:
    """Print a small aligned table."""
    print(f"\n{title}")
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


def first_sync(
    name: str,
    sandbox: Sandbox,
    client: Provider,
    contacts: list[Contact],
    *,
    minimum: int,
    budget: str,
) -> dict[str, Member]:
    """Upsert everything, print the figures, and return the snapshot afterwards."""
    client.ensure_audience()
    setup = sandbox.stats.count(name)
    sandbox.stats.reset()
    outcomes, seconds = timed(lambda: client.upsert(contacts))
    created = sum(1 for o in outcomes if o.outcome is Result.CREATED)
    writes = sandbox.stats.count(name, writes=True)
    reads = sandbox.stats.count(name) - writes
    report(
        f"{name}: first full sync of {len(contacts):,} contacts",
        [
            ("created", f"{created:,} of {len(contacts):,}"),
            ("setup calls", f"{setup} (find or create the audience and its fields, once)"),
            ("write calls", f"{writes:,} (minimum possible {minimum:,}; budget {budget})"),
            ("read calls", f"{reads:,} (polls, read-back)"),
            ("wall time", f"{seconds:.1f} s"),
            ("throughput", f"{len(contacts) / seconds:,.0f} contacts/s"),
        ],
    )
    return {m.key: m for m in client.snapshot()}


def resync(
    name: str,
    sandbox: Sandbox,
    client: Provider,
    contacts: list[Contact],
    current: dict[str, Member],
) -> None:
    """Upsert the same contacts again with the snapshot: nothing should be written."""
    before = sandbox.stats.count(name, writes=True)
    outcomes, seconds = timed(lambda: client.upsert(contacts, current))
    unchanged = sum(1 for o in outcomes if o.outcome is Result.UNCHANGED)
    report(
        f"{name}: re-sync with nothing changed",
        [
            ("unchanged", f"{unchanged:,} of {len(contacts):,}"),
            ("write calls", f"{sandbox.stats.count(name, writes=True) - before} (budget 0)"),
            ("wall time", f"{seconds:.1f} s"),
        ],
    )


def bench_mailchimp(contacts: list[Contact], tagged: int) -> None:
    """First sync, re-sync and the tag measurement on the Mailchimp sandbox."""
    sandbox = Sandbox()
    client = MailchimpClient(
        SANDBOX_MAILCHIMP_KEY,
        "Bench",
        base_url=SANDBOX_ORIGIN + MAILCHIMP_PREFIX,
        audience_defaults=SANDBOX_AUDIENCE,
        poll=POLL,
        transport=SandboxTransport(sandbox),
    )
    minimum = math.ceil(len(contacts) / 500)
    budget = f"≤ {math.floor(1.05 * minimum):,} = 1.05 × ceil(N/500)"
    current = first_sync("mailchimp", sandbox, client, contacts, minimum=minimum, budget=budget)
    resync("mailchimp", sandbox, client, contacts, current)
    bench_tags(sandbox, client, contacts[:tagged], current)


def bench_tags(
    sandbox: Sandbox, client: MailchimpClient, contacts: list[Contact], current: dict[str, Member]
) -> None:
    """Tag changes on existing members: per-member tag operations inside /batches (what the
    client does) against the segment endpoint (500 members a call, per tag)."""
    new_tags = ["spring", "summer", "autumn"]
    changed = [
        c.model_copy(update={"tags": c.tags | {new_tags[i % 3]}}) for i, c in enumerate(contacts)
    ]
    sandbox.stats.reset()
    _, per_member_s = timed(lambda: client.upsert(changed, current))
    per_member = sandbox.stats.count("mailchimp", writes=True)
    per_member_reads = sandbox.stats.count("mailchimp") - per_member

    sandbox.stats.reset()
    list_id = client.ensure_audience().id
    http = httpx.Client(
        transport=SandboxTransport(sandbox),
        base_url=SANDBOX_ORIGIN + MAILCHIMP_PREFIX,
        auth=("bench", SANDBOX_MAILCHIMP_KEY),
    )

    def by_segment() -> None:
        for index, tag in enumerate(["winter", "rain", "snow"]):
            emails = [c.email for i, c in enumerate(contacts) if i % 3 == index]
            created = http.post(
                f"/lists/{list_id}/segments", json={"name": tag, "static_segment": []}
            )
            segment = created.json()["id"]
            for start in range(0, len(emails), 500):
                body = {"members_to_add": emails[start : start + 500]}
                http.post(f"/lists/{list_id}/segments/{segment}", json=body).raise_for_status()

    _, segment_s = timed(by_segment)
    segment_calls = sandbox.stats.count("mailchimp", writes=True)
    report(
        f"mailchimp: one new tag on each of {len(contacts):,} existing members (3 distinct tags)",
        [
            (
                "per member, in /batches",
                f"{per_member} write call(s) + {per_member_reads} reads (polls, results), "
                f"{len(contacts):,} operations, {per_member_s:.1f} s",
            ),
            (
                "segment endpoint",
                f"{segment_calls} write calls (per tag: 1 + ceil(members/500)), {segment_s:.1f} s",
            ),
        ],
    )


def bench_brevo(contacts: list[Contact]) -> None:
    """First sync and re-sync on the Brevo sandbox at its real rate limit."""
    sandbox = Sandbox()
    client = BrevoClient(
        SANDBOX_BREVO_KEY,
        "Bench",
        base_url=SANDBOX_ORIGIN + BREVO_PREFIX,
        poll=POLL,
        transport=SandboxTransport(sandbox),
    )
    row_bytes = (
        sum(
            len(json.dumps({"email": c.email, "attributes": {"FIRSTNAME": c.first_name}}).encode())
            + 60
            for c in contacts[:1000]
        )
        / 1000
    )
    minimum = math.ceil(len(contacts) * row_bytes / IMPORT_MAX_BYTES)
    budget = "none set (10 requests/s on contact endpoints)"
    current = first_sync("brevo", sandbox, client, contacts, minimum=minimum, budget=budget)
    resync("brevo", sandbox, client, contacts, current)


def main() -> None:
    """Parse arguments and run both benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--tagged", type=int, default=10_000)
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    contacts = people(args.contacts)
    bench_mailchimp(contacts, min(args.tagged, args.contacts))
    bench_brevo(contacts)


if __name__ == "__main__":
    main()
