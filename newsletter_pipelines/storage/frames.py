"""pandas DataFrames as Parquet, read back equal: dtypes, index, `attrs` and the Python objects
of object columns.

Columns Arrow holds as they are (numbers, booleans, timestamps, categories, object columns of
str and None only) are stored as such. An object column of one registered dataclass (and None),
such as the diff's ledger rows, is a struct column with one child per field: text fields as
text, the others as tagged JSON per cell, each distinct text decoded once (a million rows in
seconds instead of a minute). Every other object column holds one tagged JSON text per cell
(`codec`), None as null. Which columns those are, the kind of each column's time zone (zoneinfo,
pytz or a fixed offset: Arrow keeps only its name) and the frame's `attrs` are kept in the file's
schema metadata under `newsletter_pipelines`.

Read with `arrow_text`, the columns stored as plain text come as `columns.TEXT` (Arrow-backed,
a missing value NaN) instead of one Python str per value: less than half the memory for a
million addresses. The struct columns named in `arrow_structs` stay Arrow-backed until
`struct_objects` or `decoded_structs` makes their objects, e.g. a chunk of rows at a time.
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Collection, Iterable, Sequence
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from newsletter_pipelines.bulk import gc_paused
from newsletter_pipelines.state.columns import TEXT, python_values
from newsletter_pipelines.storage import codec

METADATA_KEY = b"newsletter_pipelines"
FORMAT = 1
_PLAIN = frozenset({str, type(None)})
_GROUPED = frozenset({tuple, frozenset, type(None)})  # tags, and no tags
# types whose values may be shared by cells: frozensets hold hashable (immutable) items
_IMMUTABLE = frozenset({str, int, float, bool, type(None), frozenset, date, datetime, Decimal})
_ARROW_TEXT = {pa.string(): TEXT, pa.large_string(): TEXT}  # the text columns' dtype


def write_frame(frame: pd.DataFrame, file: BinaryIO) -> None:
    """Write `frame` to `file` as Parquet."""
    write_table(to_table(frame), file)


def write_table(table: pa.Table, file: BinaryIO) -> None:
    """Write a table of `to_table` to `file` as Parquet (zstd)."""
    pq.write_table(table, file, compression="zstd")


def read_frame(
    file: BinaryIO,
    columns: Sequence[str] | None = None,
    rows_with: Sequence[str] = (),
    rows_in: tuple[str, Collection[str | None]] | None = None,
    *,
    arrow_text: bool = False,
    arrow_structs: Collection[str] = (),
) -> pd.DataFrame:
    """The frame `write_frame` wrote to `file`; only `columns` of it (in the stored order), when
    given, the others not read at all; only the rows with a value (not null in the file: not
    None, nor NaN in a column of numbers) in one of the columns `rows_with`, when given, and
    only those whose text column `rows_in[0]` (str and None only: stored as it is) holds one of
    the values `rows_in[1]` (None for None), when given, keeping their index, the others not
    decoded; with `arrow_text`, its plain text columns as `columns.TEXT`; its struct columns
    named in `arrow_structs` undecoded (`struct_objects`)."""
    if columns is None and not rows_with and rows_in is None:
        return _frame_of([pq.read_table(file)], None, arrow_text, arrow_structs)
    parquet = pq.ParquetFile(file)
    schema = parquet.schema_arrow
    wanted = set(schema.names if columns is None else columns)
    named = set(rows_with) | ({rows_in[0]} if rows_in else set())
    if unknown := (wanted | named) - set(schema.names):
        raise KeyError(f"no stored columns {sorted(unknown)} (stored: {schema.names})")
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if rows_in is not None:
        _check_plain_text(rows_in[0], schema, None if raw is None else json.loads(raw))
    if rows_with and _all_null(parquet, rows_with):  # e.g. a diff without provider changes
        table = _empty_table(schema, wanted)
        kept = np.empty(0, dtype=np.intp)
    else:
        table = parquet.read(
            columns=[n for n in schema.names if n in wanted], use_pandas_metadata=True
        )
        kept = _kept_rows(parquet, table, rows_with, rows_in)
        if kept is not None and len(kept) < table.num_rows:  # no copy keeping every row
            table = table.take(pa.array(kept))
    ours = None if raw is None else _subset(json.loads(raw), schema.names, table.schema.names)
    held = [table]
    del table  # `_frame_of` frees each column once converted
    frame = _frame_of(held, ours, arrow_text, arrow_structs)
    if kept is not None and (stored := _range_index(schema)) is not None:
        frame.index = stored[kept]  # a range index is metadata: Arrow cannot filter it
    return frame


def _kept_rows(
    parquet: pq.ParquetFile,
    table: pa.Table,
    rows_with: Sequence[str],
    rows_in: tuple[str, Collection[str | None]] | None,
) -> np.ndarray | None:
    """The positions of the rows `read_frame` keeps of `table` (None: no selection)."""
    masks = []
    if rows_with:
        valid = [_column(parquet, table, name).is_valid() for name in rows_with]
        masks.append(functools.reduce(pc.or_, valid))
    if rows_in is not None:
        name, values = rows_in
        found = _column(parquet, table, name)
        if pa.types.is_null(found.type):  # a column of None only (Arrow knows no text type)
            found = found.cast(pa.string())
        value_set = pa.array(list(values), type=found.type)
        masks.append(pc.is_in(found, value_set=value_set, skip_nulls=False))
    if not masks:
        return None
    mask = functools.reduce(pc.and_, masks).combine_chunks()
    return np.flatnonzero(mask.to_numpy(zero_copy_only=False))


def _all_null(parquet: pq.ParquetFile, names: Sequence[str]) -> bool:
    """Whether every stored value of the columns `names` is null, by the file's schema (a
    column of None only) and statistics alone, nothing read; False when they do not tell."""
    schema, meta = parquet.schema_arrow, parquet.metadata
    leaves = {meta.schema.column(j).path: j for j in range(meta.num_columns)}
    for name in names:
        if pa.types.is_null(schema.field(name).type):
            continue
        if name not in leaves:  # a struct: its fields' statistics do not say the rows'
            return False
        for group in map(meta.row_group, range(meta.num_row_groups)):
            stats = group.column(leaves[name]).statistics
            if stats is None or not stats.has_null_count or stats.null_count != group.num_rows:
                return False
    return True


def _empty_table(schema: pa.Schema, wanted: Collection[str]) -> pa.Table:
    """The table a read of the columns `wanted` (and the index's, as pandas' metadata names
    them) would make, without rows."""
    index = [
        c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)
    ]
    names = [n for n in schema.names if n in wanted or n in index]
    return schema.empty_table().select(names)


def _column(parquet: pq.ParquetFile, table: pa.Table, name: str) -> pa.ChunkedArray:
    """The stored column `name`: `table`'s when read into it, else read now."""
    if name in table.schema.names:
        return table.column(name)
    return parquet.read(columns=[name]).column(0)


def _check_plain_text(name: str, schema: pa.Schema, ours: dict[str, Any] | None) -> None:
    """Refuse to select rows by the values of a column that is not stored as plain text (JSON
    per cell, a struct, numbers: its stored values are not the frame's)."""
    position = schema.names.index(name)
    coded = ours is not None and (
        position in ours["encoded"] or str(position) in ours.get("structs", {})
    )
    kind = schema.field(name).type
    text = pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)
    if coded or not text:
        raise TypeError(f"rows can be selected by the values of a text column only: {name!r}")


def _range_index(schema: pa.Schema) -> pd.RangeIndex | None:
    """The range index pandas' metadata in `schema` describes (None: another index)."""
    meta = schema.pandas_metadata or {}
    (index, *more) = meta.get("index_columns") or [None]
    if more or not isinstance(index, dict) or index.get("kind") != "range":
        return None
    return pd.RangeIndex(index["start"], index["stop"], index["step"], name=index.get("name"))


def _subset(ours: dict[str, Any], stored: list[str], read: list[str]) -> dict[str, Any]:
    """`to_table`'s metadata, its column positions those of the columns `read` (by name) of
    the `stored` ones."""
    position = {name: i for i, name in enumerate(read)}
    moved = {str(i): position[name] for i, name in enumerate(stored) if name in position}
    return {
        **ours,
        "encoded": [moved[str(i)] for i in ours["encoded"] if str(i) in moved],
        "structs": {moved[i]: spec for i, spec in ours.get("structs", {}).items() if i in moved},
        "zones": {moved[i]: zone for i, zone in ours["zones"].items() if i in moved},
    }


@gc_paused()
def to_table(frame: pd.DataFrame) -> pa.Table:
    """`frame` as an Arrow table whose Parquet file `read_frame` reads back equal."""
    kinds = [_kind(frame.iloc[:, i]) for i in range(frame.shape[1])]
    encoded = [i for i, kind in enumerate(kinds) if kind is _CODEC]
    structs = {i: kind for i, kind in enumerate(kinds) if isinstance(kind, type)}
    stored = frame.copy(deep=False)
    stored.attrs = {}
    for i in encoded:
        stored.isetitem(i, _encode_column(frame.iloc[:, i]))
    for i in structs:  # a column of nulls until the struct takes its place
        stored.isetitem(i, pd.Series(None, index=frame.index, dtype=object))
    try:
        # a range index is metadata only; without columns it must be a column to keep its rows
        table = pa.Table.from_pandas(stored, preserve_index=None if frame.shape[1] else True)
    except (pa.ArrowException, ValueError) as exc:
        raise TypeError(f"cannot store the frame as Parquet: {exc}") from exc
    coded: dict[int, dict[str, Any]] = {}
    for i, cls in structs.items():  # the frame's columns come first in the table, in order
        array, coded_fields = _struct_column(frame.iloc[:, i], cls)
        table = table.set_column(i, table.field(i).name, array)
        coded[i] = {"type": cls.__name__, "coded": coded_fields}
    zones = {
        i: codec.zone_to_json(dtype.tz)
        for i, dtype in enumerate(frame.dtypes)
        if isinstance(dtype, pd.DatetimeTZDtype)
    }
    ours = {
        "format": FORMAT,
        "encoded": encoded,
        "structs": coded,
        "zones": zones,
        "attrs": codec.encode(frame.attrs),
    }
    return table.replace_schema_metadata(
        {**(table.schema.metadata or {}), METADATA_KEY: json.dumps(ours).encode()}
    )


@gc_paused()
def _frame_of(
    held: list[pa.Table],
    ours: dict[str, Any] | None,
    arrow_text: bool,
    arrow_structs: Collection[str],
) -> pd.DataFrame:
    """The frame `to_table` stored, of the one table in `held` (`ours`: its metadata, when not
    the table's own); with `arrow_text`, its plain text columns as `columns.TEXT`; its struct
    columns named in `arrow_structs` Arrow-backed, each field saying how it is decoded.

    The table is taken out of `held` and unusable afterwards: each column's Arrow memory is
    freed once converted (a first sync's diff of a million rows peaked about 0.3 GiB lower in
    the push)."""
    table = held.pop()
    mapper = _ARROW_TEXT.get if arrow_text else None
    if ours is None:
        raw = (table.schema.metadata or {}).get(METADATA_KEY)
        if raw is None:
            return table.to_pandas(types_mapper=mapper)  # a Parquet file of someone else
        ours = json.loads(raw)
    if ours["format"] != FORMAT:
        raise ValueError(f"unknown stored frame format {ours['format']} (this code: {FORMAT})")
    structs = {int(i): spec for i, spec in ours.get("structs", {}).items()}
    values: dict[int, Any] = {}
    for i, spec in structs.items():  # each struct replaced by the column of nulls the pandas
        column = table.column(i)  # metadata describes once decoded
        kept = table.field(i).name in arrow_structs
        values[i] = _described(column, spec) if kept else _struct_values(column, spec)
        table = table.set_column(i, table.field(i).name, pa.nulls(table.num_rows))
    frame = table.to_pandas(types_mapper=mapper, split_blocks=True, self_destruct=True)
    del table  # unusable once converted so
    for i, column in values.items():
        frame.isetitem(i, pd.Series(column, index=frame.index, name=frame.columns[i], copy=False))
    for i in ours["encoded"]:
        frame.isetitem(i, _decode_column(frame.iloc[:, i]))
    for i, zone in ours["zones"].items():  # Arrow keeps a zone's name, not its kind
        frame.isetitem(int(i), frame.iloc[:, int(i)].dt.tz_convert(codec.zone_from_json(zone)))
    frame.attrs = codec.decode(ours["attrs"])
    return frame


_CODEC = object()  # `_kind` of a column stored as tagged JSON per cell


def _kind(column: pd.Series) -> type | object | None:
    """How an object column is stored: None as it is (str and None only), a registered dataclass
    as a struct (that class and None only), else `_CODEC` (NaN too: Arrow would make it null)."""
    if column.dtype != object:
        return None
    types = set(map(type, column.to_numpy()))  # a Series iterates slower
    if types <= _PLAIN:
        return None
    (cls, *others) = types - {type(None)}
    if not others and codec.dataclass_fields(cls) is not None:
        return cls
    return _CODEC


def _encode_column(column: pd.Series) -> pd.Series:
    try:
        texts = _encode_values(column)
    except TypeError as exc:
        raise TypeError(f"column {column.name!r}: {exc}") from None
    return pd.Series(texts, index=column.index, dtype=object, name=column.name)


def _encode_values(values: Sequence[Any] | pd.Series) -> Sequence[str | None]:
    """Tagged JSON texts of `values` (None for None). Tuples and frozensets of texts (tags),
    the usual case: each distinct value encoded once, found by one hash pass in C (a million
    cells 0.44 s -> 0.11 s); anything else one by one (`_encoded_one_by_one`)."""
    cells = values.to_numpy() if isinstance(values, pd.Series) else np.fromiter(values, object)
    if set(map(type, cells)) <= _GROUPED:
        try:
            codes, distinct = pd.factorize(cells)  # None: -1
        except TypeError:  # an unhashable item: refused one by one
            return _encoded_one_by_one(values)
        if all(type(item) is str for value in distinct for item in value):
            texts = np.array([*map(codec.encode, distinct), None], dtype=object)
            return texts[codes]
    return _encoded_one_by_one(values)


def _encoded_one_by_one(values: Iterable[Any]) -> list[str | None]:
    """`_encode_values`, value by value: each object encoded once (frames share their tuples
    of tags), a set or tuple of texts once per distinct value."""
    by_id: dict[int, str] = {}
    by_value: dict[tuple[type, Any], str] = {}  # sets and tuples of str only: 1 == 1.0
    texts: list[str | None] = []
    for value in values:
        if value is None:
            texts.append(None)
            continue
        text = by_id.get(id(value))
        if text is None:
            kind = type(value)
            grouped = kind is frozenset or kind is tuple
            text = by_value.get((kind, value)) if grouped else None
            if text is None:
                text = codec.encode(value)
                if grouped and all(type(v) is str for v in value):
                    by_value[kind, value] = text
            by_id[id(value)] = text
        texts.append(text)
    return texts


def _struct_column(column: pd.Series, cls: type) -> tuple[pa.StructArray, list[str]]:
    """A column of `cls` instances and None as a struct array, and the fields held as JSON.
    The fields are gathered of the instances only, the null rows placed after (a re-run's
    diff holds ledger rows for the few contacts with something to do)."""
    names = codec.dataclass_fields(cls) or ()
    values = column.to_numpy()
    present = np.flatnonzero(pd.notna(values))
    states = [v.__dict__ for v in values[present].tolist()]
    children, coded = [], []
    for name in names:
        cells = list(map(operator.itemgetter(name), states))
        if not set(map(type, cells)) <= _PLAIN:
            try:
                cells = _encode_values(cells)
            except TypeError as exc:
                raise TypeError(f"column {column.name!r}, field {name}: {exc}") from None
            coded.append(name)
        children.append(pa.array(cells, pa.string()))
    found = pa.StructArray.from_arrays(children, names=list(names))
    if len(present) == len(values):
        return found, coded
    at = np.full(len(values), -1, dtype=np.int64)
    at[present] = np.arange(len(present))
    return found.take(pa.array(at, mask=at < 0)), coded


def _struct_values(column: pa.ChunkedArray, spec: dict[str, Any]) -> np.ndarray:
    """The objects of a struct column `_struct_column` made."""
    cls = codec.registered(spec["type"])
    array = column.combine_chunks()
    names = [array.type.field(k).name for k in range(array.type.num_fields)]
    fields = [_field_values(array.field(k), name in spec["coded"]) for k, name in enumerate(names)]
    nulls = array.is_null().to_numpy(zero_copy_only=False).tolist()
    objects = codec.build_dataclasses(cls, names, zip(*fields, strict=True))
    found = (None if null else value for null, value in zip(nulls, objects, strict=True))
    return np.fromiter(found, dtype=object, count=len(nulls))


def _field_values(field: pa.Array, coded: bool) -> list[Any]:
    """The values of one field of a struct column `_struct_column` made (`coded`: held as
    tagged JSON)."""
    cells = field.to_numpy(zero_copy_only=False).tolist()
    return _decode_distinct(cells) if coded else cells


def struct_objects(column: pd.Series) -> list[Any]:
    """The values of `column`: of a struct column `read_frame` left Arrow-backed
    (`arrow_structs`), the objects it reads otherwise; of any other column, as they are."""
    spec = _spec_of(column.dtype)
    if spec is None:
        return column.tolist()
    with gc_paused():
        return _struct_values(column.array.__arrow_array__(), spec).tolist()


def struct_fields(column: pd.Series, names: Sequence[str]) -> dict[str, list[Any]]:
    """The fields `names` of `column`'s values, one list per field, None where a value is
    None: of a struct column `read_frame` left Arrow-backed read field by field (no object
    made per row), of any other column read off its objects."""
    spec = _spec_of(column.dtype)
    if spec is None:
        values = column.tolist()
        return {name: [None if v is None else getattr(v, name) for v in values] for name in names}
    array = column.array.__arrow_array__().combine_chunks()
    nulls = array.is_null()
    return {
        name: _field_values(pc.if_else(nulls, None, array.field(name)), name in spec["coded"])
        for name in names
    }


def struct_field_missing(column: pd.Series, name: str) -> np.ndarray:
    """Whether each value of `column` is None or holds None in its field `name`: of a struct
    column `read_frame` left Arrow-backed read off the field's validity (nothing decoded), of
    any other column off its objects."""
    if _spec_of(column.dtype) is None:
        values = column.tolist()
        missing = (v is None or getattr(v, name) is None for v in values)
        return np.fromiter(missing, dtype=bool, count=len(values))
    array = column.array.__arrow_array__().combine_chunks()
    return pc.or_(array.is_null(), array.field(name).is_null()).to_numpy(zero_copy_only=False)


def decoded_structs(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with the struct columns `read_frame` left Arrow-backed decoded (`struct_objects`);
    `frame` itself when it has none."""
    positions = [i for i, dtype in enumerate(frame.dtypes) if _spec_of(dtype) is not None]
    if not positions:
        return frame
    frame = frame.copy(deep=False)
    for i in positions:
        column = frame.iloc[:, i]
        array = np.fromiter(struct_objects(column), dtype=object, count=len(column))
        frame.isetitem(i, pd.Series(array, index=frame.index, name=column.name, copy=False))
    return frame


def _described(column: pa.ChunkedArray, spec: dict[str, Any]) -> pd.api.extensions.ExtensionArray:
    """A struct column as it is stored, Arrow-backed, each field's metadata holding its class
    and whether the field is tagged JSON (`_spec_of`)."""
    kind = column.type
    fields = [
        field.with_metadata(
            {METADATA_KEY: json.dumps({"type": spec["type"], "coded": field.name in spec["coded"]})}
        )
        for field in (kind.field(k) for k in range(kind.num_fields))
    ]
    return pd.arrays.ArrowExtensionArray(column.cast(pa.struct(fields)))


def _spec_of(dtype: Any) -> dict[str, Any] | None:
    """The `_struct_values` spec of an Arrow-backed struct column `_described` made; None for
    any other column."""
    if not isinstance(dtype, pd.ArrowDtype) or not pa.types.is_struct(dtype.pyarrow_dtype):
        return None
    kind = dtype.pyarrow_dtype
    fields = [kind.field(k) for k in range(kind.num_fields)]
    described = [json.loads((f.metadata or {}).get(METADATA_KEY, "null")) for f in fields]
    if not described or None in described:
        return None
    coded = [f.name for f, d in zip(fields, described, strict=True) if d["coded"]]
    return {"type": described[0]["type"], "coded": coded}


def _decode_distinct(texts: list[str | None]) -> list[Any]:
    """The values of `texts`, each distinct text parsed once; a value of a mutable type is
    parsed again for each further cell, so no two cells share it."""
    distinct = list(dict.fromkeys(t for t in texts if t is not None))
    values = dict(zip(distinct, codec.decode_many(distinct), strict=True))
    shared = {t: v for t, v in values.items() if _immutable(v)}
    return [None if t is None else shared[t] if t in shared else codec.decode(t) for t in texts]


def _immutable(value: Any) -> bool:
    kind = type(value)
    if kind in _IMMUTABLE or isinstance(value, Enum):
        return True
    return kind is tuple and all(_immutable(v) for v in value)


def _decode_column(column: pd.Series) -> pd.Series:
    # fromiter keeps tuples whole (np.array would make them a second dimension)
    values = _decode_distinct(python_values(column))  # a `TEXT` column's NaN as None
    array = np.fromiter(values, dtype=object, count=len(column))
    return pd.Series(array, index=column.index, dtype=object, name=column.name, copy=False)
