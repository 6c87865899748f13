"""pandas DataFrames as Parquet, read back equal: dtypes, index, `attrs` and the Python objects
of object columns.

Columns Arrow holds as they are (numbers, booleans, timestamps, categories, object columns of
str and None only) are stored as such; every other object column holds one tagged JSON text per
cell (`codec`), None as null. Which columns those are, the kind of each column's time zone
(zoneinfo, pytz or a fixed offset: Arrow keeps only its name) and the frame's `attrs` are kept in
the file's schema metadata under `newsletter_pipelines`.
"""

from __future__ import annotations

import json
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from newsletter_pipelines.bulk import gc_paused
from newsletter_pipelines.storage import codec

METADATA_KEY = b"newsletter_pipelines"
FORMAT = 1
_PLAIN = frozenset({str, type(None)})


def write_frame(frame: pd.DataFrame, file: BinaryIO) -> None:
    """Write `frame` to `file` as Parquet."""
    write_table(to_table(frame), file)


def write_table(table: pa.Table, file: BinaryIO) -> None:
    """Write a table of `to_table` to `file` as Parquet (zstd)."""
    pq.write_table(table, file, compression="zstd")


def read_frame(file: BinaryIO) -> pd.DataFrame:
    """The frame `write_frame` wrote to `file`."""
    return from_table(pq.read_table(file))


@gc_paused()
def to_table(frame: pd.DataFrame) -> pa.Table:
    """`frame` as an Arrow table whose Parquet file `from_table` reads back equal."""
    encoded = [i for i in range(frame.shape[1]) if _needs_codec(frame.iloc[:, i])]
    stored = frame.copy(deep=False)
    stored.attrs = {}
    for i in encoded:
        stored.isetitem(i, _encode_column(frame.iloc[:, i]))
    try:
        # a range index is metadata only; without columns it must be a column to keep its rows
        table = pa.Table.from_pandas(stored, preserve_index=None if frame.shape[1] else True)
    except (pa.ArrowException, ValueError) as exc:
        raise TypeError(f"cannot store the frame as Parquet: {exc}") from exc
    zones = {
        i: codec.zone_to_json(dtype.tz)
        for i, dtype in enumerate(frame.dtypes)
        if isinstance(dtype, pd.DatetimeTZDtype)
    }
    ours = {
        "format": FORMAT,
        "encoded": encoded,
        "zones": zones,
        "attrs": codec.encode(frame.attrs),
    }
    return table.replace_schema_metadata(
        {**(table.schema.metadata or {}), METADATA_KEY: json.dumps(ours).encode()}
    )


@gc_paused()
def from_table(table: pa.Table) -> pd.DataFrame:
    """The frame `to_table` stored."""
    frame = table.to_pandas()
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        return frame  # a Parquet file of someone else
    ours = json.loads(raw)
    if ours["format"] != FORMAT:
        raise ValueError(f"unknown stored frame format {ours['format']} (this code: {FORMAT})")
    for i in ours["encoded"]:
        frame.isetitem(i, _decode_column(frame.iloc[:, i]))
    for i, zone in ours["zones"].items():  # Arrow keeps a zone's name, not its kind
        frame.isetitem(int(i), frame.iloc[:, int(i)].dt.tz_convert(codec.zone_from_json(zone)))
    frame.attrs = codec.decode(ours["attrs"])
    return frame


def _needs_codec(column: pd.Series) -> bool:
    """An object column holding anything but str and None (NaN too: Arrow would make it null)."""
    return column.dtype == object and not set(map(type, column)) <= _PLAIN


def _encode_column(column: pd.Series) -> pd.Series:
    seen: dict[int, str] = {}  # by identity: frames share their tuples of tags
    try:
        texts = [
            None if v is None else seen.get(id(v)) or seen.setdefault(id(v), codec.encode(v))
            for v in column
        ]
    except TypeError as exc:
        raise TypeError(f"column {column.name!r}: {exc}") from None
    return pd.Series(texts, index=column.index, dtype=object, name=column.name)


def _decode_column(column: pd.Series) -> pd.Series:
    # fromiter keeps tuples whole (np.array would make them a second dimension)
    values = codec.decode_many(column.tolist())
    array = np.fromiter(values, dtype=object, count=len(column))
    return pd.Series(array, index=column.index, dtype=object, name=column.name, copy=False)
