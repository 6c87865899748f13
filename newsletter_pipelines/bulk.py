"""Bulk work on millions of rows without the cyclic garbage collector.

Reading a million ledger rows or deciding a million contacts makes millions of small objects
and none forms a cycle; the collector's passes over them cost a third to a half of the time.
"""

from __future__ import annotations

import ctypes
import gc
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

import pandas as pd
import pyarrow as pa


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (reference counting still frees everything)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def collect_garbage() -> None:
    """A full collection of reference cycles, then a freeze of what survived it (`gc.freeze`):
    the next collection looks only at what was made since. Before each step of a run, the
    earlier steps' live objects were gone over again and again (30-45 ms a step at 100,000
    contacts, the diff's 100,000 ledger rows among them); `thaw` ends the freeze."""
    gc.collect()
    gc.freeze()


def freeze_lasting() -> None:
    """Freeze what exists now (`gc.freeze`): called as a run starts, when what exists (the
    modules, Dagster's definitions, the run's plan) outlives the run, so even the first
    `collect_garbage` looks only at the objects made since (its full pass over the rest cost
    0.1 s before the first step's inputs)."""
    gc.freeze()


def thaw() -> None:
    """Hand everything frozen back to the collector (`gc.unfreeze`): called as a run ends, so
    that the cycles among it that died since are collected, and a process running many runs
    (a test session, a notebook) keeps none of their garbage."""
    gc.unfreeze()


def release_freed_memory() -> None:
    """Hand memory freed after bulk work back to the system: Arrow's pool, and glibc's heap,
    which keeps what C code freed with `free` (database drivers' buffers, pandas' temporaries:
    a few hundred MiB after a million rows) for later allocations. Takes milliseconds."""
    pa.default_memory_pool().release_unused()
    if sys.platform.startswith("linux"):
        with suppress(OSError, AttributeError):  # a C library other than glibc
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def records_in_chunks(
    frame: pd.DataFrame,
    size: int,
    per_read: int = 16,
    per_chunk: Mapping[str, Callable[[pd.Series], list[Any]]] | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """`records` of `frame.iloc[start : start + size]` for each start in steps of `size`,
    reading the columns `per_read` chunks at a time (slicing the frame per chunk cost more than
    making its dicts), so no more than that many chunks' values are held as lists at once;
    the columns of `per_chunk` are read one chunk at a time, by their function (a decoding
    the first chunk need not wait for the next ones' of)."""
    later = per_chunk or {}
    for at in range(0, len(frame), size * per_read):
        part = frame.iloc[at : at + size * per_read]
        names = list(part.columns)
        columns = [None if name in later else part[name].tolist() for name in names]
        for start in range(0, len(part), size):
            values = zip(
                *(
                    later[name](part[name].iloc[start : start + size])
                    if column is None
                    else column[start : start + size]
                    for name, column in zip(names, columns, strict=True)
                ),
                strict=True,
            )
            yield [dict(zip(names, row, strict=True)) for row in values]


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows as dicts, like `frame.to_dict("records")` but converting each column once
    (pandas boxes every cell on its own: seconds for a hundred thousand rows)."""
    names = list(frame.columns)
    columns = [frame[name].tolist() for name in names]
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
