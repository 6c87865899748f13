"""Column helpers of the reconciliation's bulk passes: keys matched and values compared in Arrow
(hash joins and comparisons in C, no Python object per value), values made once per distinct
value."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from newsletter_pipelines.state.columns import STRING


def text(column: pd.Series) -> pa.Array:
    """A text column as one Arrow array (without a copy for a `columns.TEXT` column); a
    missing value (None, NaN) is null."""
    found = pa.array(column, type=STRING, from_pandas=True)
    if isinstance(found, pa.Array):
        return found
    found = found.cast(STRING)  # its chunks may keep another string type
    return found.chunk(0) if found.num_chunks == 1 else found.combine_chunks()


def objects(column: pd.Series, at: np.ndarray, *, few: bool = False) -> np.ndarray:
    """The values of `column` at the positions `at` as Python objects: an object column's as
    they are, a `columns.TEXT` column's as str and None (with `few`, a column of few distinct
    values: equal texts one object)."""
    if column.dtype == object:
        return column.to_numpy()[at]
    values = text(column).take(at)
    if not few:
        return as_numpy(values)
    encoded = values.dictionary_encode()
    distinct = np.array([*encoded.dictionary.to_pylist(), None], dtype=object)
    return distinct[as_numpy(encoded.indices.fill_null(len(distinct) - 1))]


def crm_ids(ids: pd.Series) -> pa.Array:
    """The contacts' ids as the rules write them (`str(crm_id)`)."""
    if pd.api.types.is_integer_dtype(ids.dtype):
        return pc.cast(pa.array(ids.to_numpy()), STRING)  # the decimal digits, as `str` writes
    return pa.array(ids.astype(str).to_numpy(), STRING)


def key_at(keys: pa.Array, values: pa.Array) -> np.ndarray:
    """For each of `values`, the first position of its key in `keys`, -1 where none."""
    at = pc.index_in(values, value_set=keys, skip_nulls=True).fill_null(-1)
    return as_numpy(at).astype(np.int64)


def named(values: pa.Array, *names: pa.Array) -> np.ndarray:
    """Which of `values` one of `names` (nulls aside) names.

    A hash table is built over the smaller side: over a few contacts' keys, a million names
    are looked up in it rather than hashed into a table of their own."""
    found = pa.concat_arrays([n.drop_null() for n in names]) if names else pa.array([], STRING)
    if len(found) > len(values):
        distinct = pc.unique(values)
        at = key_at(distinct, found)
        found = distinct.take(np.unique(at[at >= 0]))
    if len(found) == 0:  # the usual case for writes in flight: most runs end
        return np.zeros(len(values), dtype=bool)
    return true(pc.is_in(values, value_set=found))


def as_numpy(values: pa.Array) -> np.ndarray:
    """An Arrow array without nulls as numpy."""
    return values.to_numpy(zero_copy_only=False)


def true(mask: pa.Array) -> np.ndarray:
    """An Arrow boolean array as numpy, null as false."""
    return as_numpy(mask.fill_null(False))


def per_distinct(values: np.ndarray, make: Callable[[Any], object]) -> np.ndarray:
    """`make(value)` for each of `values`, called once per distinct value."""
    codes, distinct = pd.factorize(values, use_na_sentinel=False)
    made = np.empty(len(distinct), dtype=object)
    for at, value in enumerate(distinct):  # one by one: numpy would unpack tuples
        made[at] = make(value)
    return made[codes]


def without(length: int, positions: np.ndarray) -> np.ndarray:
    """A mask of `length` rows that is false at `positions`."""
    keep = np.ones(length, dtype=bool)
    keep[positions] = False
    return keep
