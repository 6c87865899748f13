"""Benchmark: full syncs of N contacts per provider, and the reconciliation of 1M.

`python benchmarks/bench_full_sync.py [--contacts 100000] [--reconcile-rows 1000000]
[--provider mailchimp|brevo|both]`

Each provider runs in a fresh subprocess (so its peak RSS is its own) against the in-process
sandbox, through the real client and the plain modules the assets use: snapshot → ledger →
`build_diff` → `push_diff`, with a SQLite state database. Per provider: a first full sync, a
re-sync with nothing changed, a re-sync with 1 % of the last names changed. Then, once, the
reconciliation step alone over `--reconcile-rows` contacts. Figures are printed beside the
budget; nothing is asserted.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import math
import multiprocessing
import pickle
import random
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from measure import PeakRss, counts_text, machine, report, timer, verdict

from newsletter_pipelines.crm.synthetic import GERMAN_FEMALE, GERMAN_LAST, GERMAN_MALE
from newsletter_pipelines.providers.base import MemberStatus, Provider
from newsletter_pipelines.providers.brevo import (
    BATCH_UPDATE_MAX,
    IMPORT_MAX_BYTES,
    REQUESTS_PER_SECOND,
    BrevoClient,
)
from newsletter_pipelines.providers.brevo_attributes import AttributeMap
from newsletter_pipelines.providers.mailchimp import (
    BATCH_SUBSCRIBE_MAX,
    MailchimpClient,
)
from newsletter_pipelines.providers.resources import SANDBOX_AUDIENCE, SANDBOX_POLL
from newsletter_pipelines.sandbox import (
    BREVO_PREFIX,
    MAILCHIMP_PREFIX,
    SANDBOX_BREVO_KEY,
    SANDBOX_MAILCHIMP_KEY,
    SANDBOX_ORIGIN,
    Sandbox,
    SandboxTransport,
)
from newsletter_pipelines.state.ledger import ledger_rows, load_ledger_frame, record
from newsletter_pipelines.state.schema import ensure_schema
from newsletter_pipelines.storage.frames import read_frame, write_frame
from newsletter_pipelines.sync.created import split_created
from newsletter_pipelines.sync.eligibility import ELIGIBLE_COLUMNS, EXCLUDED_COLUMNS
from newsletter_pipelines.sync.email_address import match_key
from newsletter_pipelines.sync.identity import LedgerRow, RowState
from newsletter_pipelines.sync.inputs import (
    SNAPSHOT_COLUMNS,
    actual_members,
    build_diff,
    crm_exclusions,
    desired_contacts,
    members_by_key,
    snapshot_frame_of_rows,
)
from newsletter_pipelines.sync.push import CHUNK_SIZE, PushContext, push_diff
from newsletter_pipelines.sync.rules import Context, SyncAction, reconcile
from newsletter_pipelines.sync.settled import split_settled
from newsletter_pipelines.sync.tags import TAG_STYLES

MAILCHIMP_FACTOR = 1.05
RECONCILE_BUDGET_S = 5.0
RECONCILE_BUDGET_RSS_MIB = 1536
MAILCHIMP_OPS_PER_BATCH = 1000  # the batch size of mailchimp_batches.OperationRunner
BREVO_RPS = REQUESTS_PER_SECOND  # the client's default pacing; the sandbox enforces Brevo's 10/s
SYSTEM_TAG = {"mailchimp": "CRM", "brevo": None}
TAG_SETS: tuple[tuple[str, ...], ...] = ((), ("Käufer",), ("Käufer", "Stammkunde"), ("Messe",))
DOMAINS = ("example.de", "example.com", "beispiel.de", "example.org")
_ASCII = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", " ": "", "-": ""})
_MIB = 1024**2


# --- measuring ---------------------------------------------------------------------------


# --- the CRM side --------------------------------------------------------------------------


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text.lower().translate(_ASCII))
    return folded.encode("ascii", "ignore").decode()


def crm_frames(count: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`count` eligible subscribers (columns `ELIGIBLE_COLUMNS`) and an empty excluded frame."""
    rng = random.Random(seed)
    columns: dict[str, list[Any]] = {c: [] for c in ELIGIBLE_COLUMNS}
    for i in range(1, count + 1):
        female = rng.random() < 0.5
        first = rng.choice(GERMAN_FEMALE if female else GERMAN_MALE)
        last = rng.choice(GERMAN_LAST)
        email = f"{_ascii(first)}.{_ascii(last)}.{i}@{rng.choice(DOMAINS)}"
        columns["contact_id"].append(i)
        columns["email"].append(email)
        columns["email_key"].append(email)
        columns["salutation"].append("Frau" if female else "Herr")
        columns["first_name"].append(first)
        columns["last_name"].append(last)
        columns["tags"].append(rng.choice(TAG_SETS))
        columns["updated_at"].append(None)
    frame = pd.DataFrame({c: v for c, v in columns.items() if c != "tags"})
    frame["tags"] = pd.Series(columns["tags"], dtype=object)
    frame["updated_at"] = pd.Timestamp("2025-06-01", tz="UTC")
    excluded = pd.DataFrame({c: pd.Series(dtype=object) for c in EXCLUDED_COLUMNS})
    return frame[list(ELIGIBLE_COLUMNS)], excluded


def change_last_names(eligible: pd.DataFrame, every: int = 100) -> tuple[pd.DataFrame, int]:
    """A copy with the last name of every `every`-th contact changed, and how many changed."""
    changed = eligible.copy()
    mask = changed.index % every == 0
    changed.loc[mask, "last_name"] = changed.loc[mask, "last_name"] + "-Neu"
    return changed, int(mask.sum())


# --- one provider ---------------------------------------------------------------------------


@dataclass
class SyncRun:
    """The figures of one sync (snapshot → diff → push) against one provider."""

    seconds: dict[str, float]
    actions: Counter[str]
    results: Counter[str]
    calls: Counter[tuple[str, str, int]]
    rss: PeakRss

    @property
    def wall(self) -> float:
        """Seconds of the whole sync."""
        return sum(self.seconds.values())

    @property
    def writes(self) -> int:
        """Calls by every method but GET (429 answers included: they reached the API)."""
        return sum(n for (method, _, _), n in self.calls.items() if method != "GET")

    @property
    def reads(self) -> int:
        """GET calls."""
        return sum(n for (method, _, _), n in self.calls.items() if method == "GET")

    @property
    def throttled(self) -> int:
        """Calls answered 429."""
        return sum(n for (_, _, status), n in self.calls.items() if status == 429)

    def routes(self) -> str:
        """Write calls by route template."""
        by_route: Counter[str] = Counter()
        for (method, template, _), n in self.calls.items():
            if method != "GET":
                by_route[f"{method} {template}"] += n
        return ", ".join(f"{route} ×{n:,}" for route, n in sorted(by_route.items())) or "none"

    def timing(self) -> str:
        """Wall time with its parts."""
        parts = ", ".join(f"{name} {s:.1f} s" for name, s in self.seconds.items())
        return f"{self.wall:.1f} s ({parts})"


@dataclass
class World:
    """One sandbox, one client on it, one state database: the sync of one audience."""

    name: str
    sandbox: Sandbox
    provider: Provider
    engine: sa.Engine
    runs: int = 0

    def sync(self, eligible: pd.DataFrame, excluded: pd.DataFrame) -> SyncRun:
        """One sync as the assets do it, timed by part, with the calls it made."""
        self.runs += 1
        seconds: dict[str, float] = {}
        self.sandbox.stats.reset()
        system_tag = SYSTEM_TAG[self.name]
        with PeakRss() as rss:
            with timer(seconds, "snapshot"):
                snapshot = snapshot_frame_of_rows(self.provider.snapshot_rows())
            with timer(seconds, "ledger + diff"):
                ledger = load_ledger_frame(self.engine, self.name)
                diff = build_diff(
                    eligible,
                    excluded,
                    snapshot,
                    ledger,
                    provider=self.name,
                    system_tag=system_tag,
                )
            with timer(seconds, "push"):
                updated = diff.loc[diff["action"] == SyncAction.UPDATE, "match_key"].tolist()
                moved = diff["old_email"].dropna().map(match_key).tolist()
                summary = push_diff(
                    self.provider,
                    diff,
                    members_by_key(snapshot, updated + moved),
                    PushContext(
                        self.engine,
                        self.name,
                        f"bench-{self.runs}",
                        chunk_size=CHUNK_SIZE[self.name],
                        log=lambda _: None,
                    ),
                )
        calls: Counter[tuple[str, str, int]] = Counter()
        for (provider, method, template, status), n in self.sandbox.stats.calls.items():
            if provider == self.name:
                calls[(method, template, status)] += n
        return SyncRun(
            seconds,
            Counter(diff["action"].value_counts().to_dict()),
            Counter(summary.results),
            calls,
            rss,
        )


def make_world(name: str, sandbox: Sandbox, folder: Path) -> World:
    """The client for `name` on the sandbox and a fresh SQLite state database."""
    transport = SandboxTransport(sandbox)
    provider: Provider
    if name == "mailchimp":
        provider = MailchimpClient(
            SANDBOX_MAILCHIMP_KEY,
            "Bench",
            base_url=SANDBOX_ORIGIN + MAILCHIMP_PREFIX,
            audience_defaults=SANDBOX_AUDIENCE,
            poll=SANDBOX_POLL,
            transport=transport,
        )
    else:
        provider = BrevoClient(
            SANDBOX_BREVO_KEY,
            "Bench",
            base_url=SANDBOX_ORIGIN + BREVO_PREFIX,
            poll=SANDBOX_POLL,
            requests_per_second=BREVO_RPS,
            transport=transport,
        )
    engine = sa.create_engine(f"sqlite:///{folder / f'state_{name}.sqlite3'}")
    ensure_schema(engine, upgrade=True)
    return World(name, sandbox, provider, engine)


def brevo_import_minimum(eligible: pd.DataFrame) -> tuple[int, int]:
    """(fewest imports, total bytes): the jsonBody rows, measured as the client measures them,
    packed into 8 MB bodies."""
    names = AttributeMap()
    total = 0
    columns = ["email", "first_name", "last_name", "salutation", "tags"]
    for email, first, last, salutation, tags in eligible[columns].itertuples(index=False):
        attributes = {
            names.first_name: first,
            names.last_name: last,
            names.salutation: salutation,
            str(names.tags): ",".join(sorted(tags)),
        }
        total += len(json.dumps({"email": email, "attributes": attributes}).encode()) + 2
    return max(1, math.ceil(total / IMPORT_MAX_BYTES)), total


def _first_sync_rows(name: str, run: SyncRun, eligible: pd.DataFrame) -> list[tuple[str, str]]:
    count = len(eligible)
    if name == "mailchimp":
        minimum = math.ceil(count / BATCH_SUBSCRIBE_MAX)
        budget = MAILCHIMP_FACTOR * minimum
        writes = (
            f"{run.writes:,}   minimum {minimum:,} = ceil(N/500); budget ≤ {budget:,.1f} "
            f"(1.05 × ceil(N/500))   {verdict(run.writes <= budget)}"
        )
    else:
        minimum, size = brevo_import_minimum(eligible)
        writes = (
            f"{run.writes:,}   minimum {minimum:,} import(s) of ≤ 8 MB jsonBody "
            f"({size / _MIB:,.1f} MiB of rows), {run.writes / minimum:.1f}× the minimum; "
            "no budget set (Mailchimp only)"
        )
    return [
        ("write calls", writes),
        ("  by route", run.routes()),
        (
            "read calls",
            f"{run.reads:,} (snapshot pages, polls, read-back); {run.throttled:,} answered 429",
        ),
        ("wall time", f"{run.timing()}   no budget set"),
        ("throughput", f"{count / run.wall:,.0f} contacts/s"),
        (
            "peak RSS",
            f"{run.rss.peak / _MIB:,.0f} MiB (process at start {run.rss.start / _MIB:,.0f} MiB; "
            "client, sandbox and state together)   no budget set",
        ),
        ("diff", counts_text(run.actions)),
        ("outcomes", counts_text(run.results)),
    ]


def bench_provider(name: str, contacts: int, seed: int) -> None:
    """First sync, re-sync with nothing changed, re-sync with 1 % changed; printed."""
    eligible, excluded = crm_frames(contacts, seed)
    sandbox = Sandbox()
    with tempfile.TemporaryDirectory(prefix="bench_full_sync_") as tmp:
        world = make_world(name, sandbox, Path(tmp))
        try:
            setup_start = time.perf_counter()
            world.provider.ensure_audience()
            setup_writes = sandbox.stats.count(name, writes=True)
            setup_s = time.perf_counter() - setup_start
            if name == "mailchimp":
                limits = "client: 5 connections (10 allowed), /batches polled every ≤ 1 s"
            else:
                limits = (
                    f"account metered at Brevo's 10 requests/s (contacts) and 100/h (others); "
                    f"client paced at {BREVO_RPS:g}/s, imports polled every ≤ 1 s"
                )
            print(
                f"\n=== {name}: {contacts:,} contacts through {type(world.provider).__name__} "
                f"on the in-process sandbox ===\n{limits}; push chunks of {CHUNK_SIZE[name]:,}, "
                f"system tag {SYSTEM_TAG[name]!r}; setup (audience, fields) {setup_writes} "
                f"write call(s) in {setup_s:.1f} s, not counted below",
                flush=True,
            )

            first = world.sync(eligible, excluded)
            report(
                f"1. first full sync of {contacts:,} contacts",
                _first_sync_rows(name, first, eligible),
            )

            again = world.sync(eligible, excluded)
            report(
                "2. re-sync, nothing changed",
                [
                    (
                        "write calls",
                        f"{again.writes:,}   budget 0   {verdict(again.writes == 0)}",
                    ),
                    ("wall time", f"{again.timing()}   no budget set"),
                    ("read calls", f"{again.reads:,}"),
                    ("diff", counts_text(again.actions)),
                ],
            )

            changed_frame, changed = change_last_names(eligible)
            moved = world.sync(changed_frame, excluded)
            if name == "mailchimp":
                minimum = math.ceil(changed / MAILCHIMP_OPS_PER_BATCH)
                why = f"POST /batches, {MAILCHIMP_OPS_PER_BATCH:,} PATCH operations a call"
            else:
                minimum = math.ceil(changed / BATCH_UPDATE_MAX)
                why = f"POST /contacts/batch, {BATCH_UPDATE_MAX} contacts a call"
            report(
                f"3. re-sync, {changed:,} last names changed ({100 * changed / contacts:.0f} %)",
                [
                    (
                        "write calls",
                        f"{moved.writes:,}   minimum {minimum:,} ({why}); "
                        f"{moved.writes / minimum:.1f}× the minimum; no budget set "
                        "for a batch (one CRM change: 1 write call)",
                    ),
                    ("  by route", moved.routes()),
                    ("wall time", f"{moved.timing()}   no budget set"),
                    ("read calls", f"{moved.reads:,}"),
                    ("diff", counts_text(moved.actions)),
                    ("outcomes", counts_text(moved.results)),
                ],
            )
        finally:
            world.provider.close()
            world.engine.dispose()
            sandbox.close()


# --- reconciliation alone --------------------------------------------------------------------


def reconcile_inputs(
    rows: int, seed: int, engine: sa.Engine
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, int, Counter[str]]:
    """`rows` eligible contacts; a snapshot frame of as many members (as the diff's asset reads
    it): 98 % equal, 1 % with another last name, 1 % extra (in the ledger, gone from the CRM);
    1 % of the contacts not at the provider yet; a ledger row for every member, stored in the
    state database at `engine`."""
    eligible, excluded = crm_frames(rows, seed)
    snapshot: list[tuple[Any, ...]] = []
    ledger: list[LedgerRow] = []
    planned: Counter[str] = Counter()
    columns = ["contact_id", "email", "salutation", "first_name", "last_name", "tags"]
    extras = [
        (rows + 1 + i, f"extra.{i}@example.net", "Frau", "Ex", "Tra", ())
        for i in range(rows // 100)
    ]
    for crm_id, email, salutation, first, last, tags in [
        *eligible[columns].itertuples(index=False, name=None),
        *extras,
    ]:
        kind = "extra" if crm_id > rows else {0: "differs", 1: "absent"}.get(crm_id % 100, "equal")
        planned[kind] += 1
        if kind == "absent":
            continue
        pushed = f"{last}-Alt" if kind == "differs" else last
        provider_id, stable_id = f"id{crm_id}", f"c{crm_id}"
        wanted_tags = tuple(sorted({*tags, "CRM"}))
        status = MemberStatus.SUBSCRIBED.value
        fields = (salutation, first, pushed, wanted_tags, None)
        snapshot.append((provider_id, email, email, status, *fields, stable_id, None))
        ledger.append(
            LedgerRow(
                member_key=email,
                email=email,
                owner=str(crm_id),
                provider_id=provider_id,
                tags=frozenset(wanted_tags),
                state=RowState.SUBSCRIBED,
                stable_id=stable_id,
            )
        )
    ensure_schema(engine, upgrade=True)
    for start in range(0, len(ledger), 50_000):
        record(engine, "bench", "setup", ledger[start : start + 50_000])
    frame = pd.DataFrame(snapshot, columns=list(SNAPSHOT_COLUMNS))
    return eligible, excluded, as_the_diff_reads_it(frame), len(ledger), planned


def as_the_diff_reads_it(snapshot: pd.DataFrame) -> pd.DataFrame:
    """The snapshot frame stored and read back as `reconciliation_diff` reads it (its text
    columns Arrow-backed)."""
    buffer = io.BytesIO()
    write_frame(snapshot, buffer)
    buffer.seek(0)
    return read_frame(buffer, list(SNAPSHOT_COLUMNS), arrow_text=True)


def _build_inputs(rows: int, seed: int, folder: Path) -> None:
    """`reconcile_inputs` into the state database in `folder`, the frames pickled there."""
    engine = sa.create_engine(f"sqlite:///{folder / 'state.sqlite3'}")
    built = reconcile_inputs(rows, seed, engine)
    engine.dispose()
    with (folder / "inputs.pickle").open("wb") as file:
        pickle.dump(built, file, protocol=pickle.HIGHEST_PROTOCOL)


def loaded_inputs(
    rows: int, seed: int, folder: Path
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, int, Counter[str]]:
    """`reconcile_inputs`, built in a child process and loaded here, as an asset run loads its
    inputs: this process holds them, not what building them left behind (about 0.7 GiB)."""
    child = multiprocessing.get_context("fork").Process(
        target=_build_inputs, args=(rows, seed, folder)
    )
    child.start()
    child.join()
    if child.exitcode:
        raise SystemExit(f"building the inputs failed with exit code {child.exitcode}")
    with (folder / "inputs.pickle").open("rb") as file:
        return pickle.load(file)


def bench_reconcile(rows: int, seed: int) -> None:
    """Time loading the ledger and `build_diff` over `rows` contacts, then the parts apart."""
    folder = Path(tempfile.mkdtemp(prefix="bench-reconcile-"))
    engine = sa.create_engine(f"sqlite:///{folder / 'state.sqlite3'}")
    start = time.perf_counter()
    eligible, excluded, snapshot, ledger_rows_stored, planned = loaded_inputs(rows, seed, folder)
    setup_s = time.perf_counter() - start
    gc.collect()
    whole: dict[str, float] = {}
    with PeakRss() as rss:
        with timer(whole, "load_ledger"):
            ledger = load_ledger_frame(engine, "bench")
        with timer(whole, "build_diff"):
            diff = build_diff(
                eligible, excluded, snapshot, ledger, provider="mailchimp", system_tag="CRM"
            )
    actions = Counter(diff["action"].value_counts().to_dict())
    del diff
    gc.collect()
    parts: dict[str, float] = {}
    with timer(parts, "bulk pass (CRM, ledger and provider agree)"):
        split = split_settled(eligible, snapshot, ledger, TAG_STYLES["mailchimp"], "CRM")
    with timer(parts, "bulk creates (new contacts)"):
        created = split_created(split.eligible, snapshot, ledger, TAG_STYLES["mailchimp"], "CRM")
    with timer(parts, f"rules on the other {len(created.eligible):,} contacts"):
        reconcile(
            desired_contacts(created.eligible),
            actual_members(split.snapshot),
            ledger_rows(split.ledger),
            crm_exclusions(excluded),
            Context(TAG_STYLES["mailchimp"], "CRM", settled=frozenset(split.settled["match_key"])),
        )
    total = whole["load_ledger"] + whole["build_diff"]
    report(
        f"=== 4. reconciliation alone over {rows:,} contacts (provider-independent) ===",
        [
            (
                "inputs",
                f"{rows:,} eligible, {len(snapshot):,} members, {ledger_rows_stored:,} ledger "
                f"rows in SQLite, 0 excluded; {counts_text(planned)} (built in {setup_s:.1f} s, "
                "not timed)",
            ),
            (
                "load_ledger + build_diff",
                f"{total:.2f} s   budget ≤ {RECONCILE_BUDGET_S:.0f} s   "
                f"{verdict(total <= RECONCILE_BUDGET_S)}",
            ),
            ("  of which", ", ".join(f"{k} {v:.2f} s" for k, v in whole.items())),
            ("  parts, timed apart", ", ".join(f"{k} {v:.2f} s" for k, v in parts.items())),
            (
                "peak RSS",
                f"{rss.peak / _MIB:,.0f} MiB (inputs included: process at start "
                f"{rss.start / _MIB:,.0f} MiB)   budget ≤ "
                f"{RECONCILE_BUDGET_RSS_MIB:,} MiB   "
                f"{verdict(rss.peak / _MIB <= RECONCILE_BUDGET_RSS_MIB)}",
            ),
            ("diff", counts_text(actions)),
        ],
    )
    engine.dispose()


# --- entry point -----------------------------------------------------------------------------


def run_parts(args: argparse.Namespace, parts: list[str]) -> None:
    """Run each part in a fresh subprocess, output passed through."""
    for part in parts:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--part",
            part,
            "--contacts",
            str(args.contacts),
            "--reconcile-rows",
            str(args.reconcile_rows),
            "--seed",
            str(args.seed),
        ]
        code = subprocess.run(command, check=False).returncode
        if code:
            raise SystemExit(f"part {part!r} failed with exit code {code}")


def main(argv: list[str] | None = None) -> None:
    """Parse arguments; run the parts (each in its own process)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--reconcile-rows", type=int, default=1_000_000, help="0 skips it")
    parser.add_argument("--provider", choices=["mailchimp", "brevo", "both"], default="both")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--part", choices=["mailchimp", "brevo", "reconcile"], help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    parts: dict[str, Callable[[], None]] = {
        "mailchimp": lambda: bench_provider("mailchimp", args.contacts, args.seed),
        "brevo": lambda: bench_provider("brevo", args.contacts, args.seed),
        "reconcile": lambda: bench_reconcile(args.reconcile_rows, args.seed),
    }
    if args.part:
        parts[args.part]()
        return
    chosen = ["mailchimp", "brevo"] if args.provider == "both" else [args.provider]
    print(
        f"full-sync benchmark — {args.contacts:,} contacts, reconciliation over "
        f"{args.reconcile_rows:,}; each part in a fresh process (machine: {machine()})",
        flush=True,
    )
    run_parts(args, chosen + (["reconcile"] if args.reconcile_rows > 0 else []))


if __name__ == "__main__":
    main()
