"""Benchmark: CRM edit → the provider holds it, through `crm_changes_sensor` and
`incremental_sync_job`, with real processes against the served sandbox.

`python benchmarks/bench_incremental.py [--changes 1,100,10000] [--repeat 10] [--latency 0.1]
[--contacts 30000] [--pause 15] [--bulk-at 10000] [--seed 42] [--keep DIR]`

The promise (README, `crm_changes_sensor`): a CRM user's change reaches the providers within a
minute, and many changes go out in batches, not contact by contact.

Setup (not measured), as `benchmarks/bench_webhook_latency.py` and `test_live.py` do it with
the same helpers (`newsletter_pipelines_tests/live.py`): a throwaway NEWSLETTER_HOME and
DAGSTER_HOME; a synthetic CRM of `--contacts` contacts (`crm.synthetic`, SQLite) in place of
the demo CRM; the sandbox served as its own process
(`python -m newsletter_pipelines.sandbox serve --latency 0.1`: every Mailchimp and Brevo API call
answered 100 ms after it arrived, state in memory) with NEWSLETTER_MAILCHIMP_API_KEY / _BASE_URL
and NEWSLETTER_BREVO_API_KEY / _BASE_URL pointing the provider resources at it (so the clients
use their production polling and pacing); the webhook receiver and `dagster dev` (webserver,
daemon with default intervals: crm_changes_sensor every 15 s) as subprocesses on free ports;
`full_sync_job` of both audiences through the GraphQL API (the sensor's first tick only set the
watermark; the full sync covers what came before), then wait until the echo is applied and no
run is active. The people who change are CRM contacts alone with their address (no other
contact shares its match key), newsletter `yes`, a plain address, subscribed at both
providers (read from both snapshots), each used once.

Changes, through `crm.editor.edit_contact` (the code path of `python -m newsletter_pipelines.crm
edit`: the columns and tags set, `updated_at` bumped), in a realistic mix, one change per
contact, shuffled with the seed: 40 % names (first and last name), 30 % a tag added, 15 %
newsletter yes → no, 15 % a new address (for the 1-contact case, the mix over its
repetitions). Cases, in order:

- 1 contact, `--repeat` times, each after a random pause uniform in [0, --pause] s (so the
  edits fall at every phase of the sensor's interval), waiting until both providers hold it
  and no run is active before the next;
- 100 contacts (and any other count below `--bulk-at`), edited one after the other, each edit
  its own transaction, as fast as they go;
- 10,000 contacts (counts of at least `--bulk-at`): one bulk edit, every contact's edit in one
  transaction (a CRM mass update), so the sensor finds them at once.

Measurement:

- latency (cases below `--bulk-at`): from the commit of the contact's edit (this process's
  clock when `edit_contact` returned) to the first poll whose answer shows the provider holding
  the change (new names; the tag; Mailchimp `unsubscribed` / Brevo `emailBlacklisted`; a
  subscribed member at the new address). Polled cheaply through the provider APIs of the
  served sandbox, one call per provider and round, a round at most every second: Mailchimp
  `GET /lists/{id}/members?since_last_changed=<first commit − 2 s>` (1,000 a page) and Brevo
  `GET /contacts/lists/{id}/contacts?modifiedSince=<first commit − 2 s>` (500 a page), so a
  round costs the same for 1 or 100 contacts and Brevo's 10 requests/s stay free for the
  sync's 8/s. The figure is an upper bound by at most one round (its length is printed).
  Per provider and "both" (the later of the two), p50/p95/max (inclusive percentiles).
- write calls: every call but GET the served sandbox counted (`GET /_sandbox/stats`, by
  provider, method, route, status) from right before the case's first edit until its runs are
  done (no run active, then one more sensor interval and no run active), compared with the
  batch minimum: the fewest write calls that can carry the changes given each provider's
  batch size for the kind of write: Mailchimp: a member operation per changed contact (PATCH
  merge fields, POST tags, PATCH status, PATCH email_address), up to 1,000 operations per
  `POST /batches` (creates would be batch subscribe, 500 a call: none here); Brevo: one
  `POST /contacts/batch` entry per changed contact (attributes, EMAIL or emailBlacklisted), 100
  per call; summed over the repetitions of the 1-contact case (each is its own run). Beside it
  the minimum when address changes, updates (names, tags) and opt-outs each take their own
  calls (Brevo's client sends them so; Mailchimp's packs them into shared batches). The 10,000
  case is then checked on both providers' snapshots (every change held?), and the call counts,
  polled every second, tell when its last write call came.

Budgets (the issue): p50 and p95 ≤ 60 s for 1 and 100 contacts; write calls for 10,000
changes ≤ 1.05 × the batch minimum. Nothing is asserted. The load average is printed beside the
figures (2 cores, shared with other work).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from bench_webhook_latency import percentile, spread
from measure import counts_text, fast_sqlite_writes, machine, report, verdict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' package: live.py
from newsletter_pipelines.crm.editor import edit_contact
from newsletter_pipelines.crm.loader import insert_rows
from newsletter_pipelines.crm.schema import create_schema, crm_tables
from newsletter_pipelines.crm.synthetic import (
    ENGLISH_FEMALE,
    ENGLISH_LAST,
    GERMAN_FEMALE,
    GERMAN_LAST,
    GERMAN_MALE,
    iter_crm,
)
from newsletter_pipelines.providers.base import Member, MemberStatus
from newsletter_pipelines.providers.brevo import BrevoClient
from newsletter_pipelines.providers.mailchimp import MailchimpClient
from newsletter_pipelines.providers.resources import SANDBOX_AUDIENCE
from newsletter_pipelines.sandbox import (
    BREVO_PREFIX,
    MAILCHIMP_PREFIX,
    SANDBOX_BREVO_KEY,
    SANDBOX_MAILCHIMP_KEY,
)
from newsletter_pipelines.settings import CrmSchema, Settings
from newsletter_pipelines.sync.email_address import raw_match_key
from newsletter_pipelines_tests.live import (
    AUDIENCES,
    LiveStack,
    live_stack,
    process_env,
    serve_sandbox,
)

INCREMENTAL_JOB = "incremental_sync_job"
BUDGET_S = 60.0
BUDGET_WRITES = 1.05
MIX = {"names": 0.40, "tags": 0.30, "newsletter": 0.15, "email": 0.15}
MC_OPERATIONS_PER_BATCH = 1000  # mailchimp_batches.OperationRunner batch_size
BREVO_BATCH_MAX = 100  # brevo.BATCH_UPDATE_MAX: POST /contacts/batch
MC_PAGE, BREVO_PAGE = 1000, 500
POLL_EVERY_S = 1.0
SINCE_MARGIN_S = 2.0
HELD_TIMEOUT_S = 300.0
QUIET_TIMEOUT_S = 1800.0
WEBHOOK_SECRET = "bench-incremental-webhook-secret"
LIST_NAME = "CRM Newsletter"
PLAIN = re.compile(r"[a-z0-9._+-]+@[a-z0-9-]+(\.[a-z0-9-]+)+")  # fullmatch: no spaces
FIRST_NAMES = (*GERMAN_FEMALE, *GERMAN_MALE, *ENGLISH_FEMALE)
LAST_NAMES = (*GERMAN_LAST, *ENGLISH_LAST)


# --- the CRM ----------------------------------------------------------------------------------


def build_crm(path: Path, contacts: int, seed: int) -> int:
    """`contacts` synthetic contacts into a new SQLite CRM at `path` (the demo CRM's schema)."""
    schema = CrmSchema()
    engine = fast_sqlite_writes(sa.create_engine(f"sqlite:///{path}"))
    try:
        create_schema(engine, schema)
        stream, count = iter_crm(contacts, seed), 0
        while chunk := list(islice(stream, 50_000)):
            insert_rows(engine, schema, [c for c, _ in chunk], [t for _, ts in chunk for t in ts])
            count += len(chunk)
    finally:
        engine.dispose()
    return count


@dataclass(frozen=True)
class Person:
    """A CRM contact alone with its plain address, subscribed at both providers."""

    contact_id: int
    email: str
    first_name: str
    last_name: str
    tags: frozenset[str]


@dataclass(frozen=True, eq=False)
class Change:
    """One contact's edit and what each provider must then hold."""

    person: Person
    kind: str
    fields: dict[str, Any]
    tags: frozenset[str] | None = None
    tag: str | None = None

    @property
    def email(self) -> str:
        """The address the provider holds the contact at afterwards."""
        return str(self.fields.get("email", self.person.email))

    def held(self, view: View | None) -> bool:
        """Does this member view (at `email`) show the change?"""
        if view is None:
            return False
        if self.kind == "newsletter":
            return view.opted_out
        if not view.subscribed:
            return False
        if self.kind == "names":
            return (view.first_name, view.last_name) == (
                self.fields["first_name"],
                self.fields["last_name"],
            )
        if self.kind == "tags":
            return (self.tag or "").casefold() in view.tags
        return True  # email: a subscribed member at the new address


@dataclass(frozen=True)
class View:
    """What a provider holds at an address, in one shape for both providers."""

    email: str
    subscribed: bool
    opted_out: bool
    first_name: str
    last_name: str
    tags: frozenset[str]  # casefolded

    @classmethod
    def of(cls, member: Member) -> View:
        return cls(
            email=member.email.lower(),
            subscribed=member.status is MemberStatus.SUBSCRIBED,
            opted_out=member.status in (MemberStatus.UNSUBSCRIBED, MemberStatus.BLACKLISTED),
            first_name=member.first_name,
            last_name=member.last_name,
            tags=frozenset(t.casefold() for t in member.tags),
        )


def crm_people(engine: sa.Engine, schema: CrmSchema) -> dict[str, Person]:
    """CRM contacts alone with their plain address, newsletter `yes`, not private; by key."""
    tables = crm_tables(schema)
    c = tables.contacts.c
    query = sa.select(
        c[schema.id],
        c[schema.email],
        c[schema.first_name],
        c[schema.last_name],
        c[schema.newsletter],
        c[schema.is_private],
    )
    tag_query = sa.select(tables.tags.c[schema.tag_contact_id], tables.tags.c[schema.tag])
    with engine.connect() as conn:
        rows = conn.execute(query).all()
        tags: dict[int, set[str]] = {}
        for owner, tag in conn.execute(tag_query):
            tags.setdefault(int(owner), set()).add(str(tag))
    owners: dict[str, list[Any]] = {}
    for row in rows:
        key = raw_match_key(row[1])
        if key is not None:
            owners.setdefault(key, []).append(row)
    found = {}
    for key, group in owners.items():
        cid, email, first, last, newsletter, private = group[0]
        if len(group) == 1 and newsletter == "yes" and not private and PLAIN.fullmatch(email or ""):
            found[key] = Person(
                int(cid), email, first or "", last or "", frozenset(tags.get(int(cid), ()))
            )
    return found


def plan_kinds(count: int, rng: random.Random) -> list[str]:
    """`count` kinds of change in the proportions of `MIX` (largest remainders), shuffled."""
    exact = {k: share * count for k, share in MIX.items()}
    kinds = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - kinds[k], reverse=True)[
        : count - sum(kinds.values())
    ]:
        kinds[k] += 1
    planned = [k for k, n in kinds.items() for _ in range(n)]
    rng.shuffle(planned)
    return planned


def plan_change(person: Person, kind: str, label: str, rng: random.Random) -> Change:
    """What a CRM user changes on the contact for `kind`."""
    if kind == "names":
        first = rng.choice([n for n in FIRST_NAMES if n != person.first_name])
        last = rng.choice([n for n in LAST_NAMES if n != person.last_name])
        return Change(person, kind, {"first_name": first, "last_name": last})
    if kind == "tags":
        tag = f"Webinar {label}"
        return Change(person, kind, {}, tags=person.tags | {tag}, tag=tag)
    if kind == "newsletter":
        return Change(person, kind, {"newsletter": "no"})
    local = person.email.split("@", 1)[0]
    return Change(person, kind, {"email": f"{local}.{person.contact_id}@example.net"})


class _OneTransaction:
    """Stands in for the engine in `edit_contact`: every edit joins one open transaction."""

    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn

    @contextmanager
    def begin(self) -> Iterator[sa.Connection]:
        yield self._conn


def apply_one(engine: sa.Engine, schema: CrmSchema, change: Change) -> float:
    """The edit in its own transaction; the time its commit returned (epoch s)."""
    edit_contact(engine, schema, str(change.person.contact_id), change.fields, tags=change.tags)
    return time.time()


def apply_bulk(engine: sa.Engine, schema: CrmSchema, changes: Sequence[Change]) -> float:
    """Every edit in one transaction (a CRM mass update); the time the commit returned."""
    with engine.begin() as conn:
        joined: Any = _OneTransaction(conn)
        for change in changes:
            cid = str(change.person.contact_id)
            edit_contact(joined, schema, cid, change.fields, tags=change.tags)
    return time.time()


# --- the served sandbox -----------------------------------------------------------------------


@dataclass
class Served:
    """The served sandbox: its control API and cheap reads of both audiences."""

    root: str
    mc_list: str = ""
    bv_list: int = 0
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=60))

    def stats(self) -> Counter[tuple[str, str, str, int]]:
        rows = self.http.get(f"{self.root}/_sandbox/stats").raise_for_status().json()["calls"]
        return Counter(
            {(r["provider"], r["method"], r["route"], r["status"]): r["count"] for r in rows}
        )

    def mailchimp(self) -> MailchimpClient:
        return MailchimpClient(
            SANDBOX_MAILCHIMP_KEY, LIST_NAME, base_url=self.root + MAILCHIMP_PREFIX
        )

    def brevo(self) -> BrevoClient:
        return BrevoClient(SANDBOX_BREVO_KEY, LIST_NAME, base_url=self.root + BREVO_PREFIX)

    def snapshots(self) -> dict[str, dict[str, View]]:
        """Both audiences as their clients read them, by lower-cased address."""
        found = {}
        for audience, client in (("mailchimp", self.mailchimp()), ("brevo", self.brevo())):
            try:
                audience_id = client.ensure_audience().id
                if audience == "mailchimp":
                    self.mc_list = audience_id
                else:
                    self.bv_list = int(audience_id)
                found[audience] = {m.email.lower(): View.of(m) for m in client.snapshot()}
            finally:
                client.close()
        return found

    def changed_since(self, since: float) -> dict[str, dict[str, View]]:
        """The members each audience changed at or after `since` (one call a provider while
        they fit a page)."""
        return {"mailchimp": self._mailchimp_since(since), "brevo": self._brevo_since(since)}

    def _mailchimp_since(self, since: float) -> dict[str, View]:
        stamp = datetime.fromtimestamp(since, UTC).isoformat(timespec="seconds")
        fields = (
            "total_items,members.email_address,members.status,members.merge_fields,members.tags"
        )
        found: dict[str, View] = {}
        offset = 0
        while True:
            page = (
                self.http.get(
                    f"{self.root}{MAILCHIMP_PREFIX}/lists/{self.mc_list}/members",
                    params={
                        "since_last_changed": stamp,
                        "count": MC_PAGE,
                        "offset": offset,
                        "fields": fields,
                    },
                    auth=("bench", SANDBOX_MAILCHIMP_KEY),
                )
                .raise_for_status()
                .json()
            )
            for m in page["members"]:
                merge = m.get("merge_fields") or {}
                found[m["email_address"].lower()] = View(
                    email=m["email_address"].lower(),
                    subscribed=m["status"] == "subscribed",
                    opted_out=m["status"] in ("unsubscribed", "cleaned"),
                    first_name=str(merge.get("FNAME") or ""),
                    last_name=str(merge.get("LNAME") or ""),
                    tags=frozenset(t["name"].casefold() for t in m.get("tags") or []),
                )
            offset += MC_PAGE
            if offset >= page["total_items"]:
                return found

    def _brevo_since(self, since: float) -> dict[str, View]:
        stamp = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        found: dict[str, View] = {}
        offset = 0
        while True:
            page = (
                self.http.get(
                    f"{self.root}{BREVO_PREFIX}/contacts/lists/{self.bv_list}/contacts",
                    params={
                        "modifiedSince": stamp,
                        "limit": BREVO_PAGE,
                        "offset": offset,
                        "sort": "asc",
                    },
                    headers={"api-key": SANDBOX_BREVO_KEY},
                )
                .raise_for_status()
                .json()
            )
            for c in page["contacts"]:
                attributes = c.get("attributes") or {}
                tags = str(attributes.get("NEWSLETTER_TAGS") or "")
                unsubscribed = self.bv_list in (c.get("listUnsubscribed") or [])
                found[c["email"].lower()] = View(
                    email=c["email"].lower(),
                    subscribed=not c["emailBlacklisted"] and not unsubscribed,
                    opted_out=bool(c["emailBlacklisted"]) or unsubscribed,
                    first_name=str(attributes.get("FIRSTNAME") or ""),
                    last_name=str(attributes.get("LASTNAME") or ""),
                    tags=frozenset(t.strip().casefold() for t in tags.split(",") if t.strip()),
                )
            offset += BREVO_PAGE
            if offset >= page["count"]:
                return found


# --- one case ---------------------------------------------------------------------------------


@dataclass
class Case:
    """The figures of one case (all its repetitions)."""

    count: int
    bulk: bool
    groups: list[list[Change]] = field(default_factory=list)  # one per edit (repetition)
    latency: dict[str, list[float]] = field(
        default_factory=lambda: {a: [] for a in (*AUDIENCES, "both")}
    )
    missing: dict[str, int] = field(default_factory=Counter)
    writes: Counter[tuple[str, str, str, int]] = field(default_factory=Counter)
    rounds: list[float] = field(default_factory=list)
    throttled: int = 0
    runs: Counter[str] = field(default_factory=Counter)
    run_statuses: Counter[str] = field(default_factory=Counter)
    other_runs: Counter[str] = field(default_factory=Counter)
    commit_spread: float = 0.0
    last_write_s: float | None = None
    runs_done_s: float | None = None
    held_after: dict[str, int] = field(default_factory=dict)
    not_held: list[str] = field(default_factory=list)
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)


def wait_held(
    served: Served, stack: LiveStack, commits: Mapping[Change, float], case: Case
) -> None:
    """Poll both providers (a round at most every POLL_EVERY_S) until each change is held."""
    since = min(commits.values()) - SINCE_MARGIN_S
    seen: dict[str, dict[Change, float]] = {a: {} for a in AUDIENCES}
    deadline = max(commits.values()) + HELD_TIMEOUT_S
    while time.time() < deadline:
        began = time.time()
        stack.check_alive()
        try:
            views = served.changed_since(since)
        except httpx.HTTPStatusError as exc:  # 429: the sync's calls come first
            if exc.response.status_code != 429:
                raise
            case.throttled += 1
            time.sleep(POLL_EVERY_S)
            continue
        now = time.time()
        for audience in AUDIENCES:
            for change in commits:
                if change not in seen[audience] and change.held(
                    views[audience].get(change.email.lower())
                ):
                    seen[audience][change] = now
        case.rounds.append(now - began)
        if all(len(seen[a]) == len(commits) for a in AUDIENCES):
            break
        time.sleep(max(0.0, POLL_EVERY_S - (time.time() - began)))
    for change, committed in commits.items():
        times = [seen[a].get(change) for a in AUDIENCES]
        for audience, at in zip(AUDIENCES, times, strict=True):
            if at is None:
                case.missing[audience] += 1
            else:
                case.latency[audience].append(at - committed)
        if None not in times:
            case.latency["both"].append(max(t for t in times if t is not None) - committed)
        else:
            case.missing["both"] += 1


def settle(stack: LiveStack, extra_tick: bool) -> None:
    """No run active; with `extra_tick`, again after one more sensor interval (a run an echo
    of the case's runs starts is counted with the case)."""
    stack.wait_until_quiet(timeout=QUIET_TIMEOUT_S)
    if extra_tick:
        time.sleep(Settings().change_sensor_seconds + 10)
        stack.wait_until_quiet(timeout=QUIET_TIMEOUT_S)


def count_runs(stack: LiveStack, case: Case, started_at: float) -> None:
    for run in stack.runs():
        if run.created < started_at:
            continue
        if run.job == INCREMENTAL_JOB:
            case.runs[run.tags.get("dagster/partition", "?")] += 1
            case.run_statuses[run.status] += 1
        else:
            case.other_runs[run.job] += 1


def run_case(
    count: int,
    *,
    repeat: int,
    args: argparse.Namespace,
    stack: LiveStack,
    served: Served,
    crm: sa.Engine,
    people: list[Person],
    rng: random.Random,
) -> Case:
    """Edit, wait for the providers, count the write calls; `repeat` times for one contact."""
    schema = CrmSchema()
    bulk = count >= args.bulk_at
    case = Case(count, bulk)
    started_at = time.time()
    before = served.stats()
    edits = repeat if count == 1 else 1
    kinds = plan_kinds(count * edits, rng)  # the mix over all repetitions of one contact
    for rep in range(edits):
        label = f"{count}-{rep + 1}" if count == 1 else f"{count}"
        chosen = [people.pop() for _ in range(count)]
        changes = [
            plan_change(p, k, label, rng)
            for p, k in zip(chosen, kinds[rep * count : (rep + 1) * count], strict=True)
        ]
        case.groups.append(changes)
        if count == 1:
            time.sleep(rng.uniform(0, args.pause))
        if bulk:
            first = time.time()
            committed = apply_bulk(crm, schema, changes)
            case.commit_spread = committed - first
            watched = _watch_writes(served, stack, before, committed)
            case.last_write_s, case.runs_done_s = watched
            settle(stack, extra_tick=True)
            snapshots = served.snapshots()
            case.held_after = {
                a: sum(c.held(snapshots[a].get(c.email.lower())) for c in changes)
                for a in AUDIENCES
            }
            case.not_held = [
                f"{a} contact {c.person.contact_id} ({c.kind})"
                for a in AUDIENCES
                for c in changes
                if not c.held(snapshots[a].get(c.email.lower()))
            ]
        else:
            commits = {c: apply_one(crm, schema, c) for c in changes}
            case.commit_spread = max(commits.values()) - min(commits.values())
            held = {a: len(case.latency[a]) for a in AUDIENCES}
            wait_held(served, stack, commits, case)
            if count == 1:
                figures = [
                    f"{a} {case.latency[a][-1]:.1f} s"
                    if len(case.latency[a]) > held[a]
                    else f"{a} NOT HELD"
                    for a in AUDIENCES
                ]
                print(f"  {rep + 1}/{repeat} {changes[0].kind}: {', '.join(figures)}", flush=True)
            settle(stack, extra_tick=count > 1 or rep == repeat - 1)
    case.writes = _writes(served.stats() - before)
    count_runs(stack, case, started_at)
    case.load = os.getloadavg()
    return case


def _writes(delta: Counter[tuple[str, str, str, int]]) -> Counter[tuple[str, str, str, int]]:
    return Counter({k: n for k, n in delta.items() if k[1] != "GET" and n > 0})


def _watch_writes(
    served: Served, stack: LiveStack, before: Counter[tuple[str, str, str, int]], committed: float
) -> tuple[float | None, float]:
    """Poll the sandbox's call counts every second until no run is active any more (after the
    runs began): when the last write call was seen and when the runs were done (s after the
    commit)."""
    last_total, last_write = 0, None
    began = False
    deadline = committed + QUIET_TIMEOUT_S
    while time.time() < deadline:
        stack.check_alive()
        total = sum(_writes(served.stats() - before).values())
        if total != last_total:
            last_total, last_write = total, time.time() - committed
        active = stack.runs(statuses=["QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"])
        began = began or bool(active) or total > 0
        if began and not active and time.time() - committed > 30:
            return last_write, time.time() - committed
        time.sleep(1.0)
    raise TimeoutError(f"the runs of the bulk edit were not done within {QUIET_TIMEOUT_S:.0f} s")


# --- the batch minimum ------------------------------------------------------------------------


def minimum(groups: Sequence[Sequence[Change]]) -> dict[str, tuple[int, int, str]]:
    """Per provider: (batch minimum, minimum per kind of write, how it is computed), summed over
    the edits that reached the sensor apart (each repetition of the 1-contact case)."""
    mc = mc_kinds = bv = bv_kinds = 0
    for changes in groups:
        kinds = Counter(c.kind for c in changes)
        # address changes, updates (names, tags) and opt-outs each in calls of their own
        by_call = [kinds["email"], kinds["names"] + kinds["tags"], kinds["newsletter"]]
        mc += math.ceil(len(changes) / MC_OPERATIONS_PER_BATCH)  # one operation per contact
        mc_kinds += sum(math.ceil(n / MC_OPERATIONS_PER_BATCH) for n in by_call)
        bv += math.ceil(len(changes) / BREVO_BATCH_MAX)
        bv_kinds += sum(math.ceil(n / BREVO_BATCH_MAX) for n in by_call)
    kinds = Counter(c.kind for changes in groups for c in changes)
    mix = " + ".join(f"{kinds[k]:,} {k}" for k in MIX if kinds[k])
    times = f"{len(groups)} × " if len(groups) > 1 else ""
    size = len(groups[0]) if groups else 0
    return {
        "mailchimp": (
            mc,
            mc_kinds,
            f"{times}ceil({size:,} member operation{'s' if size != 1 else ''} ({mix}) / "
            f"{MC_OPERATIONS_PER_BATCH:,} per POST /batches)",
        ),
        "brevo": (
            bv,
            bv_kinds,
            f"{times}ceil({size:,} contact{'s' if size != 1 else ''} / {BREVO_BATCH_MAX} per "
            "POST /contacts/batch)",
        ),
    }


# --- the report -------------------------------------------------------------------------------


def writes_text(writes: Counter[tuple[str, str, str, int]], provider: str) -> str:
    routes = Counter()
    for (p, method, route, status), n in writes.items():
        if p == provider:
            routes[f"{method} {route}{'' if status < 300 else f' → {status}'}"] += n
    return counts_text(routes)


def print_case(case: Case, args: argparse.Namespace) -> None:
    mins = minimum(case.groups)
    kinds = Counter(c.kind for g in case.groups for c in g)
    n = sum(len(g) for g in case.groups)
    title = (
        f"{case.count:,} contact{'s' if case.count > 1 else ''} changed"
        + (f", {args.repeat} times" if case.count == 1 else "")
        + f" ({counts_text(kinds)}); "
        + (
            f"one bulk edit (one transaction, {case.commit_spread:.1f} s)"
            if case.bulk
            else (
                f"edited one after the other in {case.commit_spread:.1f} s"
                if case.count > 1
                else f"pauses uniform 0–{args.pause:g} s"
            )
        )
    )
    rows: list[tuple[str, str]] = []
    if not case.bulk:
        for audience in (*AUDIENCES, "both"):
            values = case.latency[audience]
            ok = (
                bool(values)
                and not case.missing[audience]
                and percentile(values, 50) <= BUDGET_S
                and percentile(values, 95) <= BUDGET_S
            )
            label = "both (the later)" if audience == "both" else audience
            missing = (
                f"   {case.missing[audience]} NOT HELD within {HELD_TIMEOUT_S:.0f} s"
                if case.missing[audience]
                else ""
            )
            rows.append(
                (
                    f"commit → {label} holds it, p50 / p95 / max",
                    f"{spread(values)}   budget p50, p95 ≤ {BUDGET_S:.0f} s   "
                    f"{verdict(ok)}{missing}",
                )
            )
        rows.append(
            (
                "polling",
                f"{len(case.rounds)} rounds, one call per provider each, "
                f"mean round {sum(case.rounds) / max(len(case.rounds), 1):.2f} s, "
                f"at most every {POLL_EVERY_S:g} s (a figure is late by at most one round); "
                f"{case.throttled} rounds answered 429",
            )
        )
    else:
        for audience in AUDIENCES:
            rows.append(
                (
                    f"{audience} holds the changes",
                    f"{case.held_after.get(audience, 0):,} of {n:,} (its snapshot after the runs)",
                )
            )
        if case.not_held:
            rows.append(("  NOT HELD, first 10", ", ".join(case.not_held[:10])))
        rows.append(
            (
                "commit → last write call seen",
                f"{case.last_write_s:.1f} s (call counts polled every 1 s); runs done after "
                f"{case.runs_done_s:.1f} s"
                if case.last_write_s is not None and case.runs_done_s is not None
                else "no write call seen",
            )
        )
    total = total_min = 0
    for audience in AUDIENCES:
        made = sum(k for (p, *_), k in case.writes.items() if p == audience)
        least, per_kind, how = mins[audience]
        total, total_min = total + made, total_min + least
        budget = (
            f"   budget ≤ {BUDGET_WRITES:g} × {least:,} = {BUDGET_WRITES * least:,.0f}   "
            f"{verdict(made <= BUDGET_WRITES * least)}"
            if case.bulk
            else ""
        )
        rows.append(
            (
                f"{audience} write calls",
                f"{made:,} = {made / least:.2f} × the batch minimum {least:,} = {how}; "
                f"per kind of write (address changes, updates, opt-outs apart) {per_kind:,}"
                f"{budget}",
            )
        )
        rows.append((f"  {audience} by route", writes_text(case.writes, audience)))
    rows.append(
        (
            "write calls, both providers",
            f"{total:,} against the batch minimum {total_min:,} ({total / total_min:.2f} ×)"
            + (
                f"   budget ≤ {BUDGET_WRITES:g} ×   {verdict(total <= BUDGET_WRITES * total_min)}"
                if case.bulk
                else ""
            ),
        )
    )
    rows.append(
        (
            f"{INCREMENTAL_JOB} runs",
            f"{counts_text(case.runs)} ({counts_text(case.run_statuses)}); other runs "
            f"meanwhile: {counts_text(case.other_runs)}",
        )
    )
    rows.append(
        (
            "load average",
            f"{case.load[0]:.2f} {case.load[1]:.2f} {case.load[2]:.2f} (1/5/15 min) on "
            f"{os.cpu_count()} cores, at the end of the case",
        )
    )
    report(title, rows)


def summary_label(case: Case, args: argparse.Namespace) -> str:
    times = f" × {args.repeat}" if case.count == 1 else ""
    return f"{case.count:,} contact{'s' if case.count > 1 else ''}{times}"


def summary(case: Case) -> str:
    """One line: latency (both providers) or held counts, write calls against the minimum."""
    made = sum(case.writes.values())
    least = sum(m[0] for m in minimum(case.groups).values())
    writes = f"write calls {made:,} = {made / least:.2f} × the batch minimum {least:,}"
    if case.bulk:
        held = ", ".join(f"{a} {case.held_after.get(a, 0):,}" for a in AUDIENCES)
        ok = made <= BUDGET_WRITES * least
        return f"{writes} (budget ≤ {BUDGET_WRITES:g} ×, {verdict(ok)}); held: {held}"
    both = case.latency["both"]
    ok = (
        bool(both)
        and not case.missing["both"]
        and max(percentile(both, 50), percentile(both, 95)) <= BUDGET_S
    )
    return f"both providers hold it p50 / p95 / max {spread(both)} ({verdict(ok)}); {writes}"


def main(argv: list[str] | None = None) -> None:
    """Serve the sandbox, start the stack, sync, change the CRM, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--changes", default="1,100,10000", help="contacts per case, comma-separated"
    )
    parser.add_argument("--repeat", type=int, default=10, help="repetitions of the 1-contact case")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per provider call")
    parser.add_argument("--contacts", type=int, default=30_000, help="synthetic CRM contacts")
    parser.add_argument(
        "--pause", type=float, default=15.0, help="largest pause before a 1-contact edit (s)"
    )
    parser.add_argument(
        "--bulk-at",
        type=int,
        default=10_000,
        help="cases of at least this many contacts are one bulk edit",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (logs)")
    args = parser.parse_args(argv)
    try:
        counts = [int(c) for c in args.changes.split(",") if c.strip()]
    except ValueError:
        parser.error("--changes must be comma-separated counts")
    if not counts or min(counts) < 1 or args.repeat < 1 or args.latency < 0:
        parser.error("counts and --repeat must be at least 1, --latency not negative")
    print(f"machine: {machine()}", flush=True)
    for name in list(os.environ):  # nothing of the caller's settings (no live provider keys)
        if name.startswith("NEWSLETTER_") and name != "NEWSLETTER_TEST_POSTGRES_URL":
            del os.environ[name]
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench_incremental_") as tmp, ExitStack() as stack_of:
        root = args.keep or Path(tmp)
        home = root / "home"
        home.mkdir(parents=True, exist_ok=True)
        os.environ["NEWSLETTER_HOME"] = str(home)
        settings = Settings(home=home)
        setup: dict[str, float] = {}
        begin = time.monotonic()
        crm_path = home / "crm.sqlite3"
        crm_path.unlink(missing_ok=True)
        build_crm(crm_path, args.contacts, args.seed)
        setup["CRM"] = time.monotonic() - begin
        sandbox, url = serve_sandbox(root, process_env(home, root / "dagster_home"), args.latency)
        stack_of.callback(sandbox.stop)
        served = Served(url)
        env = {
            "NEWSLETTER_MAILCHIMP_API_KEY": SANDBOX_MAILCHIMP_KEY,
            "NEWSLETTER_MAILCHIMP_BASE_URL": url + MAILCHIMP_PREFIX,
            "NEWSLETTER_MAILCHIMP_AUDIENCE_DEFAULTS": SANDBOX_AUDIENCE.model_dump_json(),
            "NEWSLETTER_BREVO_API_KEY": SANDBOX_BREVO_KEY,
            "NEWSLETTER_BREVO_BASE_URL": url + BREVO_PREFIX,
            "NEWSLETTER_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }
        with live_stack(root, home, env=env) as stack:
            setup["stack ready"] = time.monotonic() - begin - sum(setup.values())
            stack.full_sync(AUDIENCES, timeout=QUIET_TIMEOUT_S)
            setup["full syncs"] = time.monotonic() - begin - sum(setup.values())
            settle(stack, extra_tick=True)
            setup["echo applied"] = time.monotonic() - begin - sum(setup.values())
            crm = sa.create_engine(settings.resolved_crm_database_url())
            snapshots = served.snapshots()
            candidates = crm_people(crm, CrmSchema())
            people = [
                p
                for key, p in sorted(candidates.items(), key=lambda kv: kv[1].contact_id)
                if all(
                    snapshots[a].get(key) is not None and snapshots[a][key].subscribed
                    for a in AUDIENCES
                )
            ]
            rng.shuffle(people)
            needed = sum(args.repeat if c == 1 else c for c in counts)
            if len(people) < needed:
                raise SystemExit(
                    f"only {len(people):,} contacts can change, {needed:,} needed: raise --contacts"
                )
            print(
                f"setup: {', '.join(f'{k} {v:.0f} s' for k, v in setup.items())}; "
                f"{len(people):,} contacts can change; load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
            cases = []
            for count in counts:
                print(f"case: {count:,} contact{'s' if count > 1 else ''}", flush=True)
                case = run_case(
                    count,
                    repeat=args.repeat,
                    args=args,
                    stack=stack,
                    served=served,
                    crm=crm,
                    people=people,
                    rng=rng,
                )
                print_case(case, args)
                cases.append(case)
            crm.dispose()
        report(
            f"incremental sync (crm_changes_sensor → {INCREMENTAL_JOB}) against the served "
            f"sandbox, {args.latency * 1000:.0f} ms per provider call; dagster dev with default "
            f"intervals (sensor every {settings.change_sensor_seconds} s), SQLite; "
            f"{args.contacts:,} CRM contacts",
            [
                ("setup (not measured)", ", ".join(f"{k} {v:.0f} s" for k, v in setup.items())),
                *[(summary_label(c, args), summary(c)) for c in cases],
                ("load average", " ".join(f"{x:.2f}" for x in os.getloadavg()) + " at the end"),
            ],
        )


if __name__ == "__main__":
    main()
