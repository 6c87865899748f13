"""Benchmark: the import-back of N provider-side changes into a CRM of M contacts.

`python benchmarks/bench_import_back.py [--contacts 1000000] [--changes 100000]
[--database sqlite|postgres|both] [--postgres-url URL] [--seed 42]`

Setup (timed, not counted): the synthetic CRM (`crm.synthetic`) is generated once and loaded
into a SQLite file and/or a throwaway PostgreSQL database (created on the server at
`--postgres-url`, vacuumed and analyzed, dropped afterwards). Per database, two fresh
subprocesses follow, as two Dagster steps would:

- prepare: `read_contacts` and `classify` (the upstream assets `crm_contacts` and
  `eligible_subscribers`, timed for context, not in the budget); then, not timed, a synthetic
  reconciliation diff (columns `rules.DIFF_COLUMNS`) of `--changes` provider-side changes (50 %
  opted out with status unsubscribed, 5 % cleaned, 15 % removed, 10 % signed up with new
  addresses, 5 % re-subscribed, 15 % tags added at the provider) plus `--contacts` −
  `--changes` unchanged rows, and the provider snapshot behind it (Mailchimp audience, system
  tag "CRM"). The asset's four inputs are stored as one pickle each, as Dagster's default IO
  manager stores asset outputs;
- measure: the inputs are loaded (not in the budget), then what the `crm_import_back` asset
  does is timed by part: `CrmView.for_diff`, `plan_import_back` (allow_mass_vanish=True; the
  removals stay under the default 10 % limit anyway), `CrmWriter.apply` with the asset's
  default chunk size, and the ledger observations and per-contact outcome log written to the
  state database (a SQLite file, or the PostgreSQL database); then the same plan is applied a
  second time, which must write nothing.
  Peak RSS is this process's, the loaded inputs included.

Figures are printed beside the budget (≤ 30 s wall and ≤ 2 GiB peak RSS per database); nothing
is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from measure import (
    PeakRss,
    add_postgres_url,
    counts_text,
    fast_sqlite_writes,
    machine,
    report,
    timer,
    verdict,
)

from newsletter_pipelines.crm.loader import insert_rows
from newsletter_pipelines.crm.reader import read_contacts
from newsletter_pipelines.crm.schema import create_schema, crm_tables
from newsletter_pipelines.crm.synthetic import GERMAN_FEMALE, GERMAN_LAST, GERMAN_MALE, iter_crm
from newsletter_pipelines.crm.writer import CrmWriter, WriteSummary
from newsletter_pipelines.db import create_engine, safe_url
from newsletter_pipelines.settings import CrmSchema, CrmValues
from newsletter_pipelines.state.ledger import record
from newsletter_pipelines.state.schema import ensure_schema
from newsletter_pipelines.sync.eligibility import classify
from newsletter_pipelines.sync.identity import LedgerRow, RowState
from newsletter_pipelines.sync.import_back import (
    Audience,
    CrmView,
    observations,
    outcome_records,
    plan_import_back,
    unimported_keys,
)
from newsletter_pipelines.sync.inputs import SNAPSHOT_COLUMNS
from newsletter_pipelines.sync.rules import DIFF_COLUMNS, ProviderChange, SyncAction
from newsletter_pipelines.sync.tags import TAG_STYLES

BUDGET_WALL_S = 30.0
BUDGET_RSS_BYTES = 2 * 1024**3
URL_VARIABLE = "BENCH_IMPORT_BACK_CRM_URL"  # the child's CRM URL (kept out of its argv)
AUDIENCE = Audience("bench", "mailchimp", "CRM")
STYLE = TAG_STYLES["mailchimp"]
# share of the provider-side changes per kind; "import_tags": tags a person added there
MIX = {
    "opted_out": 0.50,
    "cleaned": 0.05,
    "removed": 0.15,
    "signed_up": 0.10,
    "resubscribed": 0.05,
    "import_tags": 0.15,
}
ADDED_TAGS = (("Webinar",), ("Messe 2025",), ("Messe 2025", "Webinar"))
SIGNUP_TAGS = ((), ("Webinar",), ("Messe 2025", "Webinar"))
SYNCED_AT = datetime(2025, 6, 1, tzinfo=UTC)  # last change of the members nobody touched
CHANGED_AT = datetime(2025, 7, 1, tzinfo=UTC)  # after every synthetic CRM updated_at
_CHUNK = 100_000
_MIB = 1024**2
_GIB = 1024**3


# --- measuring ---------------------------------------------------------------------------


# --- setup: the CRM ----------------------------------------------------------------------


def build_crms(urls: dict[str, str], contacts: int, seed: int) -> tuple[int, int]:
    """Generate `contacts` synthetic contacts once and load them into every database in `urls`;
    PostgreSQL is vacuumed and analyzed afterwards (autovacuum would otherwise start during
    the measurement). Returns (contacts, tags)."""
    schema = CrmSchema()
    engines = {name: fast_sqlite_writes(create_engine(url)) for name, url in urls.items()}
    try:
        for engine in engines.values():
            create_schema(engine, schema)
        n_contacts = n_tags = 0
        stream = iter_crm(contacts, seed)
        while chunk := list(islice(stream, _CHUNK)):
            rows = [c for c, _ in chunk]
            tags = [t for _, contact_tags in chunk for t in contact_tags]
            for engine in engines.values():
                insert_rows(engine, schema, rows, tags)
            n_contacts, n_tags = n_contacts + len(rows), n_tags + len(tags)
        for engine in engines.values():
            if engine.dialect.name == "postgresql":
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.execute(sa.text("VACUUM ANALYZE"))
    finally:
        for engine in engines.values():
            engine.dispose()
    return n_contacts, n_tags


@contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    """A fresh database on the server at `server_url`, dropped afterwards; yields its URL."""
    name = f"bench_import_back_{uuid.uuid4().hex[:12]}"
    server = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with server.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            yield sa.engine.make_url(server_url).set(database=name).render_as_string(False)
        finally:
            with server.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        server.dispose()


# --- setup: the diff and the snapshot ----------------------------------------------------


def mix_counts(changes: int) -> dict[str, int]:
    """Provider-side changes per kind; the rounding rest goes to the opt-outs."""
    counts = {kind: round(share * changes) for kind, share in MIX.items()}
    counts["opted_out"] += changes - sum(counts.values())
    return counts


class _Frames:
    """Diff rows and snapshot members, collected group by group."""

    def __init__(self) -> None:
        self.diff: list[pd.DataFrame] = []
        self.snapshot: list[pd.DataFrame] = []
        self.members = 0

    def ids(self, count: int) -> np.ndarray:
        """Provider ids for the next `count` members."""
        ids = _objects([f"m{self.members + i}" for i in range(count)])
        self.members += count
        return ids

    def add(self, ids: np.ndarray, diff: dict[str, Any], member: dict[str, Any]) -> None:
        """Diff rows (columns not given are None) and their members at the provider, `ids`."""
        count = len(ids)
        member = {"provider_id": ids, **member}
        diff = {"provider_id": ids, "match_key": member["match_key"], **diff}
        self.diff.append(pd.DataFrame({c: _column(diff.get(c), count) for c in DIFF_COLUMNS}))
        self.snapshot.append(
            pd.DataFrame({c: _column(member.get(c), count) for c in SNAPSHOT_COLUMNS})
        )


def _objects(values: Any) -> np.ndarray:
    """A 1-d object array of `values` (tuples stay elements, never a second dimension)."""
    if isinstance(values, np.ndarray) and values.dtype == object and values.ndim == 1:
        return values
    return pd.Series(list(values), dtype=object).to_numpy()


def _column(value: Any, count: int) -> np.ndarray:
    if isinstance(value, np.ndarray | list | pd.Series):
        array = _objects(value)
        if len(array) != count:
            raise ValueError(f"{len(array)} values for {count} rows")
        return array
    array = np.empty(count, dtype=object)
    array.fill(value)  # a scalar (None, a status, a tuple): the same object on every row
    return array


def _ledger(
    ids: np.ndarray, group: dict[str, np.ndarray], tags: list[Any], state: RowState
) -> list[LedgerRow]:
    """The sync's ledger rows of a group's members before the change."""
    return [
        LedgerRow(member_key=k, email=e, owner=o, provider_id=i, tags=t, state=state)
        for i, k, e, o, t in zip(
            ids, group["key"], group["email"], group["crm_id"], tags, strict=True
        )
    ]


def synthetic_inputs(
    contacts: pd.DataFrame,
    eligible: pd.DataFrame,
    excluded: pd.DataFrame,
    changes: int,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """The reconciliation diff and the snapshot of one Mailchimp audience (system tag "CRM").

    `changes` provider-side changes (`MIX`) on eligible contacts, on contacts the CRM holds as
    opted out (re-subscribed) and on new addresses (signed up); then as many unchanged rows as
    the CRM has contacts beyond `changes`: every other eligible contact in sync, the rest
    unsubscribed members the CRM does not know. The rows are what `rules.reconcile` emits for
    such members. Returns (diff, snapshot, rows per kind).
    """
    rng = np.random.default_rng(seed)
    py_rng = random.Random(seed)
    counts = mix_counts(changes)
    needed = sum(counts[k] for k in ("opted_out", "cleaned", "removed", "import_tags"))
    if needed > len(eligible):
        raise SystemExit(f"{len(eligible):,} eligible contacts are too few for {needed:,} changes")
    opted_out = excluded[(excluded["reason"] == "opted_out") & excluded["email_key"].notna()]
    if counts["resubscribed"] > len(opted_out):
        raise SystemExit(f"{len(opted_out):,} opted-out contacts are too few to re-subscribe")

    wanted_tags: dict[tuple[str, ...], frozenset[str]] = {}
    sorted_tags: dict[frozenset[str], tuple[str, ...]] = {}

    def wanted(tags: tuple[str, ...]) -> frozenset[str]:
        """The tags the sync pushed for the CRM's `tags` (shared objects)."""
        if tags not in wanted_tags:
            wanted_tags[tags] = STYLE.forms(tags) | {AUDIENCE.system_tag}
        return wanted_tags[tags]

    def as_tuple(tags: frozenset[str]) -> tuple[str, ...]:
        return sorted_tags.setdefault(tags, tuple(sorted(tags)))

    columns = ("contact_id", "email", "salutation", "first_name", "last_name", "tags")
    pool = {c: eligible[c].to_numpy() for c in columns}
    pool["key"] = _objects([e.lower() for e in pool["email"]])  # the rules' match key
    order = rng.permutation(len(eligible))
    taken = 0

    def take(count: int) -> dict[str, np.ndarray]:
        """The next `count` eligible contacts, in random order."""
        nonlocal taken
        picked = order[taken : taken + count]
        taken += count
        group = {c: values[picked] for c, values in pool.items()}
        group["crm_id"] = _objects([str(i) for i in group["contact_id"]])
        return group

    def contact(group: dict[str, np.ndarray]) -> dict[str, Any]:
        """The diff columns of an eligible contact."""
        return {
            "crm_id": group["crm_id"],
            "email": group["email"],
            "salutation": group["salutation"],
            "first_name": group["first_name"],
            "last_name": group["last_name"],
            "tags": group["tags"],
            "eligible": True,
        }

    def member(
        group: dict[str, np.ndarray], status: str, tags: Any, synced: bool = False
    ) -> dict[str, Any]:
        """The snapshot columns of the group's members: changed on CHANGED_AT's day, or unchanged
        since SYNCED_AT."""
        seconds = rng.integers(0, 86_400, 0 if synced else len(group["key"]))
        return {
            "email": group["email"],
            "match_key": group["key"],
            "status": status,
            "salutation": group["salutation"],
            "first_name": group["first_name"],
            "last_name": group["last_name"],
            "tags": tags,
            "last_changed": SYNCED_AT
            if synced
            else [CHANGED_AT + timedelta(seconds=int(s)) for s in seconds],
        }

    changed = _Frames()
    # unsubscribed or cleaned at the provider; the ledger knew them subscribed
    for kind, status in (("opted_out", "unsubscribed"), ("cleaned", "cleaned")):
        group = take(counts[kind])
        tags = [wanted(t) for t in group["tags"]]
        ids = changed.ids(len(tags))
        before = _ledger(ids, group, tags, RowState.SUBSCRIBED)
        changed.add(
            ids,
            {
                **contact(group),
                "action": SyncAction.BLOCKED_BY_PROVIDER.value,
                "detail": f"{status} at the provider: never re-subscribed",
                "provider_status": status,
                "provider_change": ProviderChange.OPTED_OUT.value,
                "ledger_before": before,
                "ledger_after": [r.moved(state=RowState.OPTED_OUT) for r in before],
            },
            member(group, status, [as_tuple(t) for t in tags]),
        )
    # archived at the provider while the sync had them subscribed
    group = take(counts["removed"])
    tags = [wanted(t) for t in group["tags"]]
    ids = changed.ids(len(tags))
    before = _ledger(ids, group, tags, RowState.SUBSCRIBED)
    changed.add(
        ids,
        {
            **contact(group),
            "action": SyncAction.IMPORT_BACK.value,
            "detail": "archived at the provider since the last sync",
            "provider_status": "archived",
            "provider_change": ProviderChange.REMOVED.value,
            "ledger_before": before,
            "ledger_after": [r.moved(state=RowState.GONE) for r in before],
        },
        member(group, "archived", [as_tuple(t) for t in tags]),
    )
    # tags a person added at the provider
    group = take(counts["import_tags"])
    tags = [wanted(t) for t in group["tags"]]
    added = [ADDED_TAGS[i] for i in rng.integers(0, len(ADDED_TAGS), len(tags))]
    now_tags = [as_tuple(t | frozenset(a)) for t, a in zip(tags, added, strict=True)]
    ids = changed.ids(len(tags))
    before = _ledger(ids, group, tags, RowState.SUBSCRIBED)
    changed.add(
        ids,
        {
            **contact(group),
            "action": SyncAction.IMPORT_BACK.value,
            "detail": [f"tags added at the provider: {', '.join(a)}" for a in added],
            "provider_status": "subscribed",
            "provider_tags": now_tags,
            "import_tags": added,
            "ledger_before": before,
            "ledger_after": before,
        },
        member(group, "subscribed", now_tags),
    )
    # subscribed again at the provider after an opt-out the CRM holds (newsletter no)
    again = opted_out.iloc[rng.permutation(len(opted_out))[: counts["resubscribed"]]]
    names = contacts.set_index("contact_id").loc[again["contact_id"]]
    group = {
        "key": again["email_key"].to_numpy(),
        "email": again["email"].to_numpy(),
        "crm_id": _objects([str(i) for i in again["contact_id"]]),
        **{c: names[c].to_numpy() for c in ("salutation", "first_name", "last_name")},
    }
    ids = changed.ids(len(again))
    before = _ledger(ids, group, [frozenset()] * len(again), RowState.OPTED_OUT)
    changed.add(
        ids,
        {
            "action": SyncAction.IMPORT_BACK.value,
            "detail": "subscribed at the provider after an opt-out (opted_out in the CRM)",
            "crm_id": group["crm_id"],
            "email": group["email"],
            "provider_status": "subscribed",
            "provider_change": ProviderChange.RESUBSCRIBED.value,
            "ledger_before": before,
            "ledger_after": [r.moved(state=RowState.RESUBSCRIBED) for r in before],
        },
        member(group, "subscribed", ()),
    )
    # signed up at the provider with an address no contact has
    signups = counts["signed_up"]
    female = [py_rng.random() < 0.5 for _ in range(signups)]
    emails = _objects([f"neu.{i}@signup.example.net" for i in range(signups)])
    group = {
        "key": emails,
        "email": emails,
        "salutation": _objects(["Frau" if f else "Herr" for f in female]),
        "first_name": _objects(
            [py_rng.choice(GERMAN_FEMALE if f else GERMAN_MALE) for f in female]
        ),
        "last_name": _objects([py_rng.choice(GERMAN_LAST) for _ in female]),
    }
    changed.add(
        changed.ids(signups),
        {
            "action": SyncAction.IMPORT_BACK.value,
            "detail": "signed up at the provider, unknown to the CRM",
            "email": emails,
            "provider_status": "subscribed",
            "provider_change": ProviderChange.SIGNED_UP.value,
        },
        member(group, "subscribed", [py_rng.choice(SIGNUP_TAGS) for _ in female]),
    )

    # unchanged: every other eligible contact in sync, then unsubscribed members nobody claims
    unchanged = _Frames()
    unchanged.members = changed.members
    target = max(0, len(contacts) - changes)
    group = take(min(target, len(eligible) - taken))
    in_sync = len(group["key"])
    unchanged.add(
        unchanged.ids(in_sync),
        {
            **contact(group),
            "action": SyncAction.UNCHANGED.value,
            "detail": "in sync",
            "provider_status": "subscribed",
        },
        member(group, "subscribed", [as_tuple(wanted(t)) for t in group["tags"]], synced=True),
    )
    unknown = target - in_sync
    emails = _objects([f"alt.{i}@old.example.net" for i in range(unknown)])
    unchanged.add(
        unchanged.ids(unknown),
        {
            "action": SyncAction.UNCHANGED.value,
            "detail": "unsubscribed at the provider, not eligible",
            "email": emails,
            "provider_status": "unsubscribed",
        },
        {
            "email": emails,
            "match_key": emails,
            "status": "unsubscribed",
            "salutation": "",
            "first_name": "",
            "last_name": "",
            "tags": (),
            "last_changed": SYNCED_AT,
        },
    )

    moved = pd.concat(changed.diff, ignore_index=True)
    moved = moved.iloc[rng.permutation(len(moved))]
    # unchanged rows first, as build_diff puts the contacts settled in bulk first
    diff = pd.concat([*unchanged.diff, moved], ignore_index=True)
    diff["eligible"] = diff["eligible"].eq(True)
    snapshot = pd.concat([*unchanged.snapshot, *changed.snapshot], ignore_index=True)
    rows = {**counts, "unchanged, in sync": in_sync, "unchanged, unknown to the CRM": unknown}
    return diff, snapshot, rows


# --- the measured part (one database, in a fresh process) ---------------------------------


def _first_line(exc: Exception) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return text if len(text) <= 300 else text[:300] + " …"


def _written(summary: WriteSummary) -> int:
    """Rows the apply wrote or changed, by its summary."""
    return (
        summary.newsletter_set.total()
        + summary.tags_added
        + summary.tags_removed
        + summary.activities
        + summary.contacts_created
    )


def _crm_rows(engine: sa.Engine) -> tuple[int, int, int]:
    """(contacts, tag rows, activity rows) in the CRM."""
    tables = crm_tables(CrmSchema())
    with engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            for t in (tables.contacts, tables.tags, tables.activities)
        )


INPUTS = ("eligible_subscribers", "excluded_contacts", "diff", "snapshot")


def prepare(url: str, folder: Path, changes: int, seed: int) -> None:
    """Read and classify the CRM (context), build the diff and snapshot (setup); store the
    asset's four inputs as separate pickles, as Dagster's default IO manager does, and the
    figures beside them in `facts.json`."""
    engine = create_engine(url)
    schema = CrmSchema()
    context: dict[str, float] = {}
    with timer(context, "read_contacts"):
        contacts = read_contacts(engine, schema)
    with timer(context, "classify"):
        result = classify(contacts)
    eligible, excluded = result.eligible, result.excluded
    start = time.perf_counter()
    diff, snapshot, rows = synthetic_inputs(contacts, eligible, excluded, changes, seed)
    setup_s = time.perf_counter() - start
    for name, frame in zip(INPUTS, (eligible, excluded, diff, snapshot), strict=True):
        with (folder / f"{name}.pickle").open("wb") as handle:
            pickle.dump(frame, handle, protocol=pickle.HIGHEST_PROTOCOL)
    facts = {
        "context": context,
        "setup_s": setup_s,
        "rows": rows,
        "crm": _crm_rows(engine),
        "eligible": len(eligible),
        "excluded": len(excluded),
    }
    (folder / "facts.json").write_text(json.dumps(facts))
    engine.dispose()


def measure(database: str, url: str, folder: Path, changes: int) -> None:
    """Load the asset's inputs (fresh process, as a Dagster step), then time what the
    `crm_import_back` asset does, and apply the same plan once more; printed."""
    facts = json.loads((folder / "facts.json").read_text())
    engine = create_engine(url)
    schema = CrmSchema()
    start = time.perf_counter()
    loaded = []
    for name in INPUTS:
        with (folder / f"{name}.pickle").open("rb") as handle:
            loaded.append(pickle.load(handle))
    eligible, excluded, diff, snapshot = loaded
    del loaded
    load_s = time.perf_counter() - start
    pickled = sum((folder / f"{name}.pickle").stat().st_size for name in INPUTS)
    before = tuple(facts["crm"])
    context, setup_s, rows = facts["context"], facts["setup_s"], facts["rows"]
    gc.collect()

    # the state database: its own SQLite file, or the PostgreSQL database beside the CRM tables
    state = create_engine(url if database == "postgres" else f"sqlite:///{folder / 'state.db'}")
    ensure_schema(state, upgrade=True)
    seconds: dict[str, float] = {}
    writer = CrmWriter(engine, schema, CrmValues())
    with PeakRss() as rss:
        with timer(seconds, "CrmView.for_diff"):
            view = CrmView.for_diff(diff, eligible, excluded)
        with timer(seconds, "plan_import_back"):
            plan = plan_import_back(diff, snapshot, view, AUDIENCE, allow_mass_vanish=True)
        with timer(seconds, "CrmWriter.apply"):
            first = writer.apply(plan.changes, plan.new_contacts)
        with timer(seconds, "ledger + outcome log"):
            unimported = unimported_keys(diff, plan, written=True)
            advanced = observations(diff, unimported)
            logged = outcome_records(plan, first, "write")
            record(state, AUDIENCE.key, "bench", advanced, logged=logged)
    after = _crm_rows(engine)
    again: dict[str, float] = {}
    with PeakRss() as rss_again, timer(again, "apply"):
        second = CrmWriter(engine, schema, CrmValues()).apply(plan.changes, plan.new_contacts)
    final = _crm_rows(engine)
    engine.dispose()
    state.dispose()

    total = sum(seconds.values())
    acting = int(
        (
            diff["provider_change"].notna()
            | diff["import_tags"].notna()
            | diff["import_untags"].notna()
        ).sum()
    )
    vanish = plan.vanish.message if plan.vanish else "not checked"
    report(
        f"=== {database}: import-back of {changes:,} provider changes into a CRM of "
        f"{before[0]:,} contacts ({safe_url(url)}) ===",
        [
            (
                "inputs",
                f"diff {len(diff):,} rows ({acting:,} the planner acts on), snapshot "
                f"{len(snapshot):,} members; built in {setup_s:.1f} s, not timed",
            ),
            ("  diff rows", counts_text(rows)),
            (
                "  CRM",
                f"{before[0]:,} contacts, {before[1]:,} tag rows, {before[2]:,} activities; "
                f"{len(eligible):,} eligible, {len(excluded):,} excluded",
            ),
            (
                "context",
                f"read_contacts {context['read_contacts']:.2f} s, classify "
                f"{context['classify']:.2f} s (upstream assets, another process; not in the "
                "budget)",
            ),
            (
                "  inputs loaded",
                f"{len(INPUTS)} pickles ({pickled / _MIB:,.0f} MiB, one per asset as Dagster's "
                f"default IO manager stores them) in {load_s:.2f} s (not in the budget)",
            ),
            ("vanish guard", f"{vanish} (allow_mass_vanish=True)"),
            (
                "plan",
                f"{len(plan.changes):,} contact changes + {len(plan.new_contacts):,} new "
                f"contacts, {len(plan.held):,} held; {counts_text(plan.counts)}",
            ),
        ],
    )
    counts = {
        "CrmView.for_diff": (len(eligible) + len(excluded), "contacts"),
        "plan_import_back": (len(diff), "diff rows"),
        "CrmWriter.apply": (len(plan), "items"),
        "ledger + outcome log": (len(advanced) + len(logged), "rows"),
    }
    timing = [
        (
            f"  {name}",
            f"{s:6.2f} s   {counts[name][0]:,} {counts[name][1]}, {counts[name][0] / s:,.0f}/s",
        )
        for name, s in seconds.items()
    ]
    report(
        "1. import-back (CrmView + plan + apply)",
        [
            *timing,
            (
                "total wall",
                f"{total:6.2f} s   budget ≤ {BUDGET_WALL_S:.0f} s   "
                f"{verdict(total <= BUDGET_WALL_S)}",
            ),
            (
                "peak RSS",
                f"{rss.peak / _GIB:6.2f} GiB budget ≤ {BUDGET_RSS_BYTES / _GIB:.0f} GiB  "
                f"{verdict(rss.peak <= BUDGET_RSS_BYTES)} (process at start "
                f"{rss.start / _MIB:,.0f} MiB: the four inputs loaded; {rss.how})",
            ),
            (
                "throughput",
                f"{changes / total:,.0f} provider changes/s, {len(diff) / total:,.0f} "
                "diff rows/s end to end",
            ),
            (
                "written",
                f"newsletter set {first.newsletter_set.total():,} "
                f"({counts_text(first.newsletter_set)}); tags added {first.tags_added:,}, removed "
                f"{first.tags_removed:,}; activities {first.activities:,}; contacts created "
                f"{first.contacts_created:,}",
            ),
            (
                "  summary",
                f"applied {first.applied:,}, skipped: already applied "
                f"{first.skipped_already_applied:,}, missing contact "
                f"{first.skipped_missing_contact:,}, existing address "
                f"{first.skipped_existing_address:,}; {first.chunks:,} chunks of "
                f"{writer.chunk_size:,}",
            ),
            (
                "  CRM after",
                f"{after[0]:,} contacts (+{after[0] - before[0]:,}), {after[1]:,} tag rows "
                f"({after[1] - before[1]:+,}), {after[2]:,} activities "
                f"(+{after[2] - before[2]:,})",
            ),
        ],
    )
    wrote = _written(second)
    unchanged = final == after
    report(
        "2. the same plan applied again",
        [
            (
                "written",
                f"{wrote:,} (newsletter {second.newsletter_set.total():,}, tags "
                f"{second.tags_added + second.tags_removed:,}, activities "
                f"{second.activities:,}, contacts created {second.contacts_created:,}); CRM "
                f"row counts {'unchanged' if unchanged else 'CHANGED'}   expected 0   "
                f"{'idempotent' if wrote == 0 and unchanged else 'NOT IDEMPOTENT'}",
            ),
            (
                "skipped",
                f"already applied {second.skipped_already_applied:,} of {len(plan):,}",
            ),
            ("wall time", f"{again['apply']:6.2f} s   no budget set"),
            ("peak RSS", f"{rss_again.peak / _GIB:6.2f} GiB"),
        ],
    )


# --- entry point -----------------------------------------------------------------------------


def _unreachable(server_url: str) -> str | None:
    """Why the PostgreSQL server cannot be used, or None."""
    engine = sa.create_engine(server_url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        return f"not reachable at {safe_url(server_url)}: {_first_line(exc)}"
    finally:
        engine.dispose()
    return None


def run_part(args: argparse.Namespace, part: str, database: str, url: str, folder: Path) -> None:
    """Run `part` (prepare, measure) for one database in a fresh subprocess, output passed
    through."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--part",
        part,
        "--database",
        database,
        "--folder",
        str(folder),
        "--changes",
        str(args.changes),
        "--seed",
        str(args.seed),
    ]
    code = subprocess.run(command, check=False, env={**os.environ, URL_VARIABLE: url}).returncode
    if code:
        raise SystemExit(f"{part} of {database!r} failed with exit code {code}")


def main(argv: list[str] | None = None) -> None:
    """Parse arguments; build the CRMs; measure each database in its own process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000, help="CRM contacts")
    parser.add_argument("--changes", type=int, default=100_000, help="provider-side changes")
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    add_postgres_url(parser, "to create the throwaway database on")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--part", choices=["prepare", "measure"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part == "prepare":
        prepare(os.environ[URL_VARIABLE], args.folder, args.changes, args.seed)
        return
    if args.part == "measure":
        measure(args.database, os.environ[URL_VARIABLE], args.folder, args.changes)
        return
    chosen = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    skipped = _unreachable(args.postgres_url) if args.database == "both" else None
    if skipped:
        chosen.remove("postgres")
    print(
        f"import-back benchmark — {args.changes:,} provider changes into a CRM of "
        f"{args.contacts:,} contacts on {', '.join(chosen)}; budget per database ≤ "
        f"{BUDGET_WALL_S:.0f} s wall and ≤ {BUDGET_RSS_BYTES / _GIB:.0f} GiB peak RSS; each "
        f"database measured in a fresh process (machine: {machine()})",
        flush=True,
    )
    if skipped:
        print(f"PostgreSQL skipped: {skipped}", flush=True)
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_ib_")))
        urls: dict[str, str] = {}
        if "sqlite" in chosen:
            urls["sqlite"] = f"sqlite:///{folder / 'crm.sqlite3'}"
        if "postgres" in chosen:
            urls["postgres"] = stack.enter_context(postgres_database(args.postgres_url))
        start = time.perf_counter()
        n_contacts, n_tags = build_crms(urls, args.contacts, args.seed)
        print(
            f"setup: {n_contacts:,} synthetic contacts and {n_tags:,} tag rows generated once and "
            f"loaded into {', '.join(urls)} in {time.perf_counter() - start:.1f} s (not counted"
            + ("; PostgreSQL vacuumed and analyzed after the load)" if "postgres" in urls else ")"),
            flush=True,
        )
        for database in chosen:
            inputs = folder / database
            inputs.mkdir()
            run_part(args, "prepare", database, urls[database], inputs)
            run_part(args, "measure", database, urls[database], inputs)
            shutil.rmtree(inputs)


if __name__ == "__main__":
    main()
