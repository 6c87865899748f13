"""What the benchmarks share: peak RSS, timers, time in the cycle collector, CPU time by
process and of the whole machine, the machine's speed, the load average, the budget verdict,
the printed tables, the served sandbox's call counts, fast writes while a throwaway SQLite file
is set up, and the `--postgres-url` option."""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import threading
import time
from array import array
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import sqlalchemy as sa


class PeakRss:
    """Samples this process's RSS on a thread while the block runs; `peak` in bytes.

    Where Linux allows it, the kernel's high-water mark (VmHWM) is reset on entry and read on
    exit too, so a spike between two samples is not missed. The samples are kept as numbers in
    arrays, not as a Python object each: objects kept every 10 ms, made among those of a step of
    a million rows, would keep that step's memory from the system once it ends (Python frees an
    arena only when all of it is free) and inflate the later steps' RSS.
    """

    def __init__(self, every_s: float = 0.01) -> None:
        self._every_s = every_s
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._hwm_reset = _reset_hwm()
        self.start = self.peak = self._process.memory_info().rss
        self._times = array("d")  # time.perf_counter() of each sample
        self._rss = array("q")  # and the RSS then

    def _sample(self) -> None:
        while not self._stop.wait(self._every_s):
            rss = self._process.memory_info().rss
            self._times.append(time.perf_counter())
            self._rss.append(rss)
            self.peak = max(self.peak, rss)

    def peak_between(self, start: float, end: float) -> int:
        """The highest sampled RSS between two `time.perf_counter()` readings (0: no sample)."""
        found = zip(self._times, self._rss, strict=True)
        return max((rss for t, rss in found if start <= t <= end), default=0)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)
        if self._hwm_reset:
            self.peak = max(self.peak, _hwm())

    @property
    def how(self) -> str:
        """How `peak` was measured."""
        sampled = f"sampled every {self._every_s * 1000:.0f} ms"
        return f"{sampled} and kernel high-water mark" if self._hwm_reset else sampled


def _reset_hwm() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS; False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _hwm() > 0


def _hwm() -> int:
    """VmHWM of this process in bytes (0 when unknown)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class GcTime:
    """Seconds this process spent in the cycle collector while the block ran (`seconds`)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def _track(self, phase: str, _info: Mapping[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started

    def __enter__(self) -> GcTime:
        gc.callbacks.append(self._track)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self._track)


class CpuTime:
    """CPU seconds while the block ran: of this process, of the processes named in `others`
    (name -> pid), and of the whole machine (every process: the rest is PostgreSQL, the
    system and whatever else ran), beside the core-seconds the block's wall time offered."""

    def __init__(self, others: Mapping[str, int]) -> None:
        self._processes = {"this process": psutil.Process()} | {
            name: psutil.Process(pid) for name, pid in others.items()
        }
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}
        self.wall = 0.0

    def _read(self) -> dict[str, float]:
        found = {name: _busy(p.cpu_times()) for name, p in self._processes.items()}
        times = psutil.cpu_times()
        idle = times.idle + getattr(times, "iowait", 0.0)
        # guest time is counted in user time already (Linux)
        guest = getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
        found["machine"] = sum(times) - idle - guest
        found["wall"] = time.perf_counter()
        return found

    def __enter__(self) -> CpuTime:
        self._start = self._read()
        return self

    def __exit__(self, *_: object) -> None:
        end = self._read()
        self.used = {name: end[name] - self._start[name] for name in end if name != "wall"}
        self.wall = end["wall"] - self._start["wall"]

    def text(self) -> str:
        """`this process 8.81 s, the sandbox 3.05 s, the rest of the machine 3.74 s: 15.60 of
        the 21.20 core-seconds the 10.60 s offered (74%)`."""
        if not self.used:
            return "not measured"
        named = [(n, v) for n, v in self.used.items() if n != "machine"]
        rest = self.used["machine"] - sum(v for _, v in named)
        offered = self.wall * (psutil.cpu_count() or 1)
        parts = ", ".join(f"{n} {v:.2f} s" for n, v in named)
        return (
            f"{parts}, the rest of the machine (PostgreSQL, the system) {rest:.2f} s: "
            f"{self.used['machine']:.2f} of the {offered:.2f} core-seconds the {self.wall:.2f} s "
            f"offered ({self.used['machine'] / offered:.0%})"
        )


def _busy(times: Any) -> float:
    return float(times.user + times.system)


@contextmanager
def timer(into: dict[str, float], name: str) -> Iterator[None]:
    """Add the seconds the block took to `into[name]`."""
    start = time.perf_counter()
    yield
    into[name] = into.get(name, 0.0) + time.perf_counter() - start


def machine() -> str:
    """`2 cores, load 0.75/0.36, a loop of ten million additions 0.97 s`: the machine the
    figures beside it were measured on. The loop runs as `python3 -c` runs it, at module level
    (its names global): one core, the interpreter's own speed, which tells apart machines that
    the core count does not. It took 0.62-1.08 s on the development machines of different
    sessions, and the figures bound by CPU moved with it."""
    start = time.perf_counter()
    exec(_LOOP, {})  # the loop at module level, as `python3 -c` runs it
    return f"{os.cpu_count()} cores, {load()}, a loop of ten million additions " + (
        f"{time.perf_counter() - start:.2f} s"
    )


_LOOP = compile("total = 0\nfor number in range(10_000_000):\n    total += number", "loop", "exec")


def load() -> str:
    """`load 1.23/1.45`: the 1- and 5-minute load averages, printed beside timings."""
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f}"


def sandbox_calls(url: str, provider: str) -> Counter[tuple[str, str, int]]:
    """Calls the served sandbox at `url` answered for `provider` so far, by (method, route
    template, status); subtract two of these to count a phase's calls."""
    rows = httpx.get(f"{url}/_sandbox/stats", timeout=60).raise_for_status().json()["calls"]
    return Counter(
        {
            (r["method"], r["route"], r["status"]): r["count"]
            for r in rows
            if r["provider"] == provider
        }
    )


def routes_text(calls: Counter[tuple[str, str, int]]) -> str:
    """`POST /lists/{list_id} ×200, …` from `sandbox_calls` counts, failures with their status."""
    by_route: Counter[str] = Counter()
    for (method, route, status), n in calls.items():
        by_route[f"{method} {route}" + ("" if status < 400 else f" → {status}")] += n
    return ", ".join(f"{r} ×{n:,}" for r, n in sorted(by_route.items())) or "none"


def verdict(ok: bool) -> str:
    """The word printed beside a figure with a budget."""
    return "within budget" if ok else "OVER BUDGET"


def report(title: str, rows: list[tuple[str, str]]) -> None:
    """Print a small aligned table."""
    print(f"\n{title}", flush=True)
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}", flush=True)


def counts_text(counter: Mapping[str, int]) -> str:
    """`a 1, b 2`: the non-zero counts by name."""
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counter.items()) if v) or "none"


def fast_sqlite_writes(engine: sa.Engine) -> sa.Engine:
    """No journal and no fsync on a SQLite engine: for setting up a throwaway file only."""
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=OFF")
            cursor.execute("PRAGMA synchronous=OFF")
            cursor.close()

    return engine


DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def add_postgres_url(parser: argparse.ArgumentParser, used_for: str) -> None:
    """`--postgres-url`: the PostgreSQL server `used_for` (default: $NEWSLETTER_TEST_POSTGRES_URL,
    as the tests take it, or the local server)."""
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("NEWSLETTER_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help=f"server {used_for} (default: $NEWSLETTER_TEST_POSTGRES_URL or "
        f"{DEFAULT_POSTGRES_URL})",
    )
