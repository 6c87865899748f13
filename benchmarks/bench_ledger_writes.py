"""Benchmark: the ledger's writes (`state.ledger.record`) on PostgreSQL as the ledger grows.

`python benchmarks/bench_ledger_writes.py [--chunks 400] [--chunk-size 2500] [--reruns 4]
[--postgres-url URL] [--seed 42]`

In a throwaway database on the server at `--postgres-url` (created with the state schema,
dropped afterwards; autovacuum as the server has it), `record` is called as a first sync's
push calls it: per chunk of `--chunk-size` new contacts, once with their intents (every key
new to the ledger, `fresh`), once with their outcomes (every key replaced, one outcome logged each);
`--chunks` chunks make the ledger (400 × 2,500: a million rows). After each tenth of them,
`--reruns` chunks of a later run are recorded: one `record` of `--chunk-size` rows, 2 % of
them members moved to a new address (`moved_from` their old key, same stable id), the rest
replacing existing rows, 2 % more existing keys `deleted`, an outcome logged per row.

Printed per tenth: the ledger's rows, the median milliseconds per chunk of each pattern and
the write-ahead log a re-run chunk wrote (the server's, so run it alone on the server); then
the totals, and the verdict beside the budget: flat, the last tenth's chunks within 1.5× the
first tenth's; the ledger's size beside the server's buffer cache (`shared_buffers`), which
the re-run's random keys outgrow. The end state is checked (row count, every moved and deleted
key). Run it with
`PYTHONPATH` at another checkout to measure that checkout's `record` with the same harness.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import sqlalchemy as sa
from bench_import_back import postgres_database
from measure import add_postgres_url, load, machine, report, verdict

from newsletter_pipelines.db import safe_url
from newsletter_pipelines.state.ledger import OutcomeRecord, ledger, load_ledger_frame_at, record
from newsletter_pipelines.state.schema import ensure_schema
from newsletter_pipelines.sync.identity import Intent, LedgerRow, RowState

AUDIENCE = "bench"
BUDGET_GROWTH = 1.5  # the last tenth's ms per chunk over the first tenth's
MOVED_SHARE = 0.02
DELETED_SHARE = 0.02
TAGS = frozenset({"CRM", "Käufer"})


def key(n: int) -> str:
    return f"contact{n:08d}@example.de"


def member(n: int, **changes: object) -> LedgerRow:
    """The ledger row of synthetic contact `n`, as its outcome stores it."""
    row = LedgerRow(
        member_key=key(n),
        email=key(n),
        owner=str(n),
        provider_id=f"id{n:08d}",
        tags=TAGS,
        state=RowState.SUBSCRIBED,
        stable_id=f"s{n:08d}",
    )
    return row.moved(**changes) if changes else row


def logged(rows: list[LedgerRow], action: str, outcome: str) -> list[OutcomeRecord]:
    return [OutcomeRecord(r.owner, r.email, action, outcome, r.provider_id) for r in rows]


def first_sync_chunk(engine: sa.Engine, numbers: range) -> tuple[float, float]:
    """Record a chunk of creates as the push does; seconds of its intents and outcomes."""
    intents = [member(n, intent=Intent.CREATE, intent_key=key(n)) for n in numbers]
    settled = [member(n) for n in numbers]
    start = time.perf_counter()
    record(engine, AUDIENCE, "first", intents, fresh=True)  # as `_FreshCreates` has them written
    middle = time.perf_counter()
    record(engine, AUDIENCE, "first", settled, logged=logged(settled, "create", "created"))
    return middle - start, time.perf_counter() - middle


class Rerun:
    """Chunks of a later run over the contacts recorded so far (see the module docstring)."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.gone: set[int] = set()  # contacts moved away or deleted: not picked again
        self.moved: list[tuple[int, str]] = []
        self.next_address = 0

    def chunk(self, engine: sa.Engine, size: int, stored: int) -> tuple[float, int]:
        numbers = self._pick(stored, size + round(size * DELETED_SHARE))
        kept, deleted = numbers[:size], numbers[size:]
        moving = round(size * MOVED_SHARE)
        rows = [self._moved(n) for n in kept[:moving]]
        rows += [member(n, tags=TAGS | {"Newsletter"}) for n in kept[moving:]]
        self.gone.update(deleted)
        self.gone.update(kept[:moving])
        gone = [key(n) for n in deleted]
        before = wal_position(engine)
        start = time.perf_counter()
        record(
            engine, AUDIENCE, "rerun", rows, deleted=gone, logged=logged(rows, "update", "updated")
        )
        took = time.perf_counter() - start
        return took, wal_since(engine, before)

    def _pick(self, stored: int, count: int) -> list[int]:
        """Up to `count` distinct contacts of the first `stored`, none moved or deleted."""
        available = [n for n in range(stored) if n not in self.gone]
        return self.random.sample(available, min(count, len(available)))

    def _moved(self, n: int) -> LedgerRow:
        self.next_address += 1
        address = f"moved{self.next_address:08d}@example.de"
        self.moved.append((n, address))
        return member(n).moved(member_key=address, email=address, moved_from=key(n))


def wal_position(engine: sa.Engine) -> str:
    """The server's current write-ahead log position."""
    with engine.connect() as conn:
        return str(conn.execute(sa.text("SELECT pg_current_wal_lsn()")).scalar_one())


def wal_since(engine: sa.Engine, position: str) -> int:
    """Bytes of write-ahead log the server wrote since `position` (by anyone: this benchmark
    is meant to be the server's only writer)."""
    query = sa.text("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), CAST(:at AS pg_lsn))")
    with engine.connect() as conn:
        return int(conn.execute(query, {"at": position}).scalar_one())


def buffer_cache(engine: sa.Engine) -> str:
    """The ledger's size with its indexes beside the server's buffer cache (`shared_buffers`):
    a re-run's keys are random, so a ledger larger than the cache reads pages from outside it."""
    with engine.connect() as conn:
        size = conn.execute(
            sa.text("SELECT pg_total_relation_size(CAST(:name AS regclass))"),
            {"name": ledger.fullname},
        ).scalar_one()
        cache = conn.execute(
            sa.text("SELECT pg_size_bytes(current_setting('shared_buffers'))")
        ).scalar_one()
    fits = "fits in it" if size <= cache else "does not fit: re-run chunks read pages from outside"
    return f"ledger {size / 2**20:,.0f} MiB, shared_buffers {cache / 2**20:,.0f} MiB: {fits}"


def check(engine: sa.Engine, created: int, rerun: Rerun) -> str:
    """What the ledger holds against what was recorded ('ok' or the discrepancies)."""
    with engine.connect() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(ledger)).scalar_one()
    expected = created - len(rerun.gone) + len(rerun.moved)
    problems = [] if count == expected else [f"{count:,} rows, expected {expected:,}"]
    moved_to = dict(rerun.moved)
    looked_up = {key(n) for n in rerun.gone} | set(moved_to.values())
    found = set(load_ledger_frame_at(engine, AUDIENCE, looked_up, ())["member_key"])
    if found != set(moved_to.values()):
        problems.append(f"{len(found ^ set(moved_to.values())):,} moved or deleted keys wrong")
    return "; ".join(problems) or "ok"


def run(url: str, chunks: int, size: int, reruns: int, seed: int) -> None:
    engine = sa.create_engine(url)
    ensure_schema(engine, upgrade=True)
    print(f"median ms per chunk, per tenth, in {safe_url(url)}:", flush=True)
    rerun = Rerun(seed)
    tenth = max(1, chunks // 10)
    tenths: list[tuple[float, float]] = []
    total = {"intents": 0.0, "outcomes": 0.0, "rerun": 0.0}
    for first in range(0, chunks, tenth):
        intents, outcomes = [], []
        for chunk in range(first, min(chunks, first + tenth)):
            took = first_sync_chunk(engine, range(chunk * size, (chunk + 1) * size))
            intents.append(took[0])
            outcomes.append(took[1])
        stored = min(chunks, first + tenth) * size
        measured = [rerun.chunk(engine, size, stored) for _ in range(reruns)]
        later = [took for took, _ in measured]
        wal = statistics.median(written for _, written in measured) if measured else 0
        total["intents"] += sum(intents)
        total["outcomes"] += sum(outcomes)
        total["rerun"] += sum(later)
        created = statistics.median(intents) + statistics.median(outcomes)
        tenths.append((created, statistics.median(later) if later else 0.0))
        print(  # as it goes: the whole run takes minutes
            f"  chunks {first + 1:>4}–{first + len(intents):<4} ({stored:>9,} rows): first sync "
            f"{1000 * statistics.median(intents):6.1f} + {1000 * statistics.median(outcomes):6.1f}"
            f" ms/chunk (intents + outcomes), re-run {1000 * tenths[-1][1]:6.1f} ms/chunk "
            f"({wal / 2**20:4.1f} MiB of WAL)   {load()}",
            flush=True,
        )
    (created_first, rerun_first), (created_last, rerun_last) = tenths[0], tenths[-1]
    growth = {"first sync": created_last / created_first}
    if reruns:
        growth["re-run"] = rerun_last / rerun_first
    rows = [
        (
            "total",
            f"first sync {total['intents']:.1f} s intents + {total['outcomes']:.1f} s outcomes "
            f"= {total['intents'] + total['outcomes']:.1f} s; re-run {total['rerun']:.1f} s "
            f"({reruns * len(tenths)} chunks)",
        ),
        (
            f"last tenth / first (≤ {BUDGET_GROWTH}×)",
            ", ".join(f"{name} {g:.2f}×" for name, g in growth.items())
            + f": {verdict(max(growth.values()) <= BUDGET_GROWTH)}",
        ),
        ("buffer cache", buffer_cache(engine)),
        ("end state", check(engine, chunks * size, rerun)),
    ]
    engine.dispose()
    report("totals", rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=400, help="first-sync chunks")
    parser.add_argument("--chunk-size", type=int, default=2500, help="rows per chunk")
    parser.add_argument("--reruns", type=int, default=4, help="re-run chunks per tenth")
    add_postgres_url(parser, "to create the throwaway database on")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    print(
        f"ledger write benchmark — {args.chunks} chunks of {args.chunk_size:,} "
        f"({args.chunks * args.chunk_size:,} rows); budget: flat, the last tenth's chunks "
        f"≤ {BUDGET_GROWTH}× the first tenth's (machine: {machine()})",
        flush=True,
    )
    with postgres_database(args.postgres_url) as url:
        run(url, args.chunks, args.chunk_size, args.reruns, args.seed)


if __name__ == "__main__":
    main()
