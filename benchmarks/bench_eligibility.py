"""Benchmark: read N CRM contacts from SQLite and classify eligibility.

`python benchmarks/bench_eligibility.py [--rows 1000000] [--seed 42] [--keep DIR] [--url URL]`

The synthetic CRM is written to a fresh SQLite file first (or, with `--url`, an existing CRM
database is read, e.g. PostgreSQL loaded beforehand); a fresh subprocess, pinned to two cores,
then times `read_contacts` and `classify`, so its peak RSS is that work alone. Figures are
printed beside the budget; nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa
from measure import fast_sqlite_writes, machine, verdict

from newsletter_pipelines.crm import arrow_reader
from newsletter_pipelines.crm.loader import insert_rows
from newsletter_pipelines.crm.reader import read_contacts
from newsletter_pipelines.crm.schema import create_schema
from newsletter_pipelines.crm.synthetic import iter_crm
from newsletter_pipelines.settings import CrmSchema
from newsletter_pipelines.sync.eligibility import classify

BUDGET_WALL_S = 10.0
BUDGET_RSS_BYTES = 1024**3
BUDGET_CORES = 2
BUDGET_TEXT = "≤ 10 s wall, ≤ 1 GiB peak RSS, 2 cores"
_CHUNK = 100_000
_SAMPLE_S = 0.05


def _chunks(rows: int, seed: int) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    stream = iter_crm(rows, seed)
    while chunk := list(islice(stream, _CHUNK)):
        yield [c for c, _ in chunk], [t for _, tags in chunk for t in tags]


def build_crm(path: Path, rows: int, seed: int) -> tuple[int, int]:
    """Generate `rows` synthetic contacts into a new SQLite CRM at `path`."""
    schema = CrmSchema()
    engine = fast_sqlite_writes(sa.create_engine(f"sqlite:///{path}"))
    try:
        create_schema(engine, schema)
        n_contacts = n_tags = 0
        for contacts, tags in _chunks(rows, seed):
            added = insert_rows(engine, schema, contacts, tags)
            n_contacts, n_tags = n_contacts + added[0], n_tags + added[1]
    finally:
        engine.dispose()
    return n_contacts, n_tags


class _ReadPath(logging.Handler):
    """Keeps the CRM reader's last word on how it read (through Arrow or row-wise)."""

    said = "not reported"

    def emit(self, record: logging.LogRecord) -> None:
        self.said = record.getMessage()


def measure(url: str) -> dict[str, Any]:
    """The measured work (runs in the subprocess): read the contacts, classify them."""
    cores = sorted(os.sched_getaffinity(0))[:BUDGET_CORES]
    os.sched_setaffinity(0, cores)
    engine = sa.create_engine(url)
    path = _ReadPath()
    logger = logging.getLogger(arrow_reader.__name__)
    logger.addHandler(path)
    logger.setLevel(logging.INFO)
    start = time.perf_counter()
    contacts = read_contacts(engine, CrmSchema())
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    result = classify(contacts)
    classify_s = time.perf_counter() - start
    engine.dispose()
    return {
        "rows": len(contacts),
        "read_path": path.said,
        "read_s": read_s,
        "classify_s": classify_s,
        "cores": len(cores),
        "counts": result.counts,
    }


def _tree_rss(process: psutil.Process) -> int:
    total = 0
    for proc in (process, *process.children(recursive=True)):
        with contextlib.suppress(psutil.Error):  # a worker may exit between the two calls
            total += proc.memory_info().rss
    return total


def run_measurement(url: str) -> tuple[dict[str, Any], int, int]:
    """Run `measure` in a fresh subprocess: its figures, peak tree RSS, largest ru_maxrss."""
    command = [sys.executable, str(Path(__file__).resolve()), "--measure", url]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    watched = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, _tree_rss(watched))
        time.sleep(_SAMPLE_S)
    output = child.stdout.read() if child.stdout else ""
    if child.returncode:
        raise SystemExit(f"measurement failed with exit code {child.returncode}")
    max_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    return json.loads(output.strip().splitlines()[-1]), peak, max_rss


def report(figures: dict[str, Any], peak: int, max_rss: int, source: str) -> str:
    """The printed result, budget beside the figures."""
    total = figures["read_s"] + figures["classify_s"]
    rss = max(peak, max_rss)
    counts = ", ".join(f"{k}={v:,}" for k, v in figures["counts"].items())
    return "\n".join(
        [
            f"eligibility benchmark — budget {BUDGET_TEXT}",
            f"rows               {figures['rows']:>12,}   ({source})",
            f"read contacts      {figures['read_s']:>10.2f} s   ({figures['read_path']})",
            f"eligibility        {figures['classify_s']:>10.2f} s",
            f"total wall         {total:>10.2f} s   budget ≤ {BUDGET_WALL_S:.0f} s      "
            f"{verdict(total <= BUDGET_WALL_S)}",
            f"peak RSS           {rss / 1024**3:>10.2f} GiB budget ≤ 1 GiB     "
            f"{verdict(rss <= BUDGET_RSS_BYTES)}",
            f"  (process tree sampled {peak / 1024**2:,.0f} MiB; "
            f"largest single process ru_maxrss {max_rss / 1024**2:,.0f} MiB)",
            f"cores              {figures['cores']:>10}     budget {BUDGET_CORES} cores      "
            f"{verdict(figures['cores'] <= BUDGET_CORES)}",
            f"counts: {counts}",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """Build the CRM, measure in a subprocess, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="contacts to generate")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--keep", type=Path, help="write the SQLite file here and keep it")
    parser.add_argument("--url", help="read this CRM database (SQLAlchemy URL), generate none")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    print(f"machine: {machine()}", flush=True)
    if args.url:
        figures, peak, max_rss = run_measurement(args.url)
        dialect = sa.engine.make_url(args.url).get_backend_name()
        print(report(figures, peak, max_rss, f"existing {dialect} CRM"))
        return
    with tempfile.TemporaryDirectory(prefix="bench_eligibility_") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"crm_{args.rows}.sqlite3"
        path.unlink(missing_ok=True)
        start = time.perf_counter()
        _, tags = build_crm(path, args.rows, args.seed)
        setup_s = time.perf_counter() - start
        figures, peak, max_rss = run_measurement(f"sqlite:///{path}")
    source = f"SQLite CRM with {tags:,} tags, generated and loaded in {setup_s:.1f} s"
    print(report(figures, peak, max_rss, source))


if __name__ == "__main__":
    main()
