"""Python values as JSON text with a type tag, and back to equal values of the same types.

What a Parquet column cannot hold as such (tuples, frozensets, the sync's enums and frozen
dataclasses, NaN beside None, values of mixed types) is stored as one JSON text per cell:
JSON's own values for None, bool, int, finite float and str, plain arrays for lists, and an
object `{"$t": tag, "v": ...}` for everything else. Only the types below can be stored; any
other raises a TypeError naming it (nothing is pickled).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from enum import Enum
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytz
from pydantic_core import TzInfo

from newsletter_pipelines.providers.base import MemberStatus
from newsletter_pipelines.sync.identity import Intent, LedgerRow, RowState
from newsletter_pipelines.sync.rules import AddressMove, ProviderChange, SyncAction

TAG = "$t"
REGISTERED: tuple[type, ...] = (
    LedgerRow,
    AddressMove,
    RowState,
    Intent,
    SyncAction,
    ProviderChange,
    MemberStatus,
)
"""The project's enums and frozen dataclasses that may sit in a stored frame, by class name."""

Json = None | bool | int | float | str | list[Any] | dict[str, Any]


def encode(value: object) -> str:
    """`value` as tagged JSON text."""
    return _ENCODER.encode(to_json(value))


def decode(text: str) -> Any:
    """The value `encode` wrote."""
    return _DECODER.decode(text)


def decode_many(texts: Sequence[str | None], chunk: int = 10_000) -> Iterator[Any]:
    """The values of `texts` (None for None), parsed as JSON arrays of `chunk` texts at a time
    (one parse per text costs more than the parse itself)."""
    for start in range(0, len(texts), chunk):
        part = texts[start : start + chunk]
        yield from _DECODER.decode("[" + ",".join("null" if t is None else t for t in part) + "]")


def to_json(value: object) -> Json:
    """`value` as a JSON structure with type tags."""
    kind = type(value)
    if value is None or kind is str or kind is bool or kind is int:
        return value  # type: ignore[return-value]
    if kind is float:
        return value if math.isfinite(value) else {TAG: "float", "v": repr(value)}  # type: ignore[arg-type, return-value]
    encoder = _ENCODERS.get(kind)
    if encoder is not None:
        return encoder(value)
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return {TAG: "np", "dtype": value.dtype.str, "v": to_json(value.item())}
    raise TypeError(
        f"cannot store a value of type {kind.__module__}.{kind.__qualname__}: "
        f"storage.codec knows None, bool, int, float, str, tuple, list, set, frozenset, dict, "
        f"dates and times, Decimal, bytes, numpy numbers and {', '.join(_NAMES)} "
        "(a project enum or dataclass can be added to storage.codec.REGISTERED)"
    )


def dataclass_fields(cls: type) -> tuple[str, ...] | None:
    """The stored fields of a registered dataclass, in order; None for any other type."""
    return _FIELDS.get(cls)


def registered(name: str) -> type:
    """The registered enum or dataclass stored under `name`."""
    return _BY_NAME[name]


def build_dataclasses(
    cls: type, names: Sequence[str], rows: Iterable[Sequence[Any]]
) -> Iterator[Any]:
    """An instance of the registered dataclass `cls` for each of `rows`, the stored values of
    the fields `names` (checked once: see `_undataclass`)."""
    if set(names) != _FIELD_SETS[cls]:
        return (_undataclass(cls, dict(zip(names, row, strict=True))) for row in rows)
    new = object.__new__
    return (_filled(new(cls), names, row) for row in rows)


def _filled(value: Any, names: Sequence[str], row: Sequence[Any]) -> Any:
    value.__dict__.update(zip(names, row, strict=True))
    return value


def _untag(obj: dict[str, Any]) -> Any:
    tag = obj.get(TAG)
    if tag is None:
        return obj  # the fields of a dataclass
    return _DECODERS[tag](obj)


def _items(values: Iterable[object]) -> list[Json]:
    """Set members in a stable order (Python's set order changes between processes)."""
    items = [to_json(v) for v in values]
    items.sort(key=lambda j: j if isinstance(j, str) else json.dumps(j, sort_keys=True))
    return items


def zone_to_json(zone: tzinfo | None) -> Json:
    """A time zone as JSON (`zone_from_json` makes the same kind of object again)."""
    if zone is None:
        return None
    if isinstance(zone, ZoneInfo):
        return {"zone": zone.key}
    if isinstance(zone, timezone):
        return {"offset": zone.utcoffset(None).total_seconds()}
    if isinstance(zone, TzInfo):  # pydantic's fixed offset (provider times it parsed)
        return {"pydantic_offset": zone.utcoffset(None).total_seconds()}
    if isinstance(zone, pytz.BaseTzInfo) and zone.zone:
        return {"pytz": zone.zone}
    raise TypeError(f"cannot store the time zone {zone!r}: only zoneinfo, pytz and fixed offsets")


def zone_from_json(found: dict[str, Any] | None) -> tzinfo | None:
    """The time zone `zone_to_json` wrote."""
    if found is None:
        return None
    if "zone" in found:
        return ZoneInfo(found["zone"])
    if "offset" in found:
        return timezone(timedelta(seconds=found["offset"]))
    if "pydantic_offset" in found:
        return TzInfo(int(found["pydantic_offset"]))
    return pytz.timezone(found["pytz"])


def _datetime(value: datetime) -> Json:
    if value.tzinfo is None:
        return {TAG: "datetime", "v": value.isoformat(), "fold": value.fold}
    utc = value.astimezone(UTC).replace(tzinfo=None)
    return {TAG: "datetime", "v": utc.isoformat(), "tz": zone_to_json(value.tzinfo)}


def _undatetime(obj: dict[str, Any]) -> datetime:
    moment = datetime.fromisoformat(obj["v"])
    if "tz" not in obj:
        return moment.replace(fold=obj["fold"])
    return moment.replace(tzinfo=UTC).astimezone(zone_from_json(obj["tz"]))


def _timestamp(value: pd.Timestamp) -> Json:
    return {
        TAG: "Timestamp",
        "v": value.value,
        "unit": value.unit,
        "tz": zone_to_json(value.tzinfo),
    }


def _untimestamp(obj: dict[str, Any]) -> pd.Timestamp:
    return pd.Timestamp(obj["v"], tz=zone_from_json(obj["tz"])).as_unit(obj["unit"])


def _dataclass(value: Any) -> Json:
    fields = {}
    for name in _FIELDS[type(value)]:
        field = getattr(value, name)
        fields[name] = field if field is None or type(field) is str else to_json(field)
    return {TAG: type(value).__name__, "v": fields}


def _undataclass(cls: type, fields: dict[str, Any]) -> Any:
    """An instance with the stored fields. When they are the class's fields, its `__dict__` is
    filled as pickle does (a frozen dataclass's `__init__` costs more than the whole parse);
    otherwise (the class changed since) `__init__` takes them."""
    if fields.keys() != _FIELD_SETS[cls]:
        return cls(**fields)
    value = object.__new__(cls)
    value.__dict__.update(fields)
    return value


def _enum(value: Enum) -> Json:
    return {TAG: type(value).__name__, "v": value.value}


def _registered() -> tuple[dict[type, Callable[[Any], Json]], dict[str, Callable[..., Any]]]:
    encoders: dict[type, Callable[[Any], Json]] = {}
    decoders: dict[str, Callable[..., Any]] = {}
    for cls in REGISTERED:
        if cls.__name__ in _DECODERS or cls.__name__ in decoders:
            raise TypeError(f"{cls.__qualname__}: its name is taken by another stored type")
        if issubclass(cls, Enum):
            encoders[cls] = _enum
            decoders[cls.__name__] = lambda obj, members=cls._value2member_map_: members[obj["v"]]
        elif dataclasses.is_dataclass(cls) and not hasattr(cls, "__slots__"):
            encoders[cls] = _dataclass
            _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
            _FIELD_SETS[cls] = frozenset(_FIELDS[cls])
            decoders[cls.__name__] = lambda obj, cls=cls: _undataclass(cls, obj["v"])
        else:
            raise TypeError(f"{cls.__qualname__}: only enums and dataclasses can be registered")
    return encoders, decoders


_ENCODERS: dict[type, Callable[[Any], Json]] = {
    tuple: lambda v: {TAG: "tuple", "v": [to_json(x) for x in v]},
    list: lambda v: [to_json(x) for x in v],
    frozenset: lambda v: {TAG: "frozenset", "v": _items(v)},
    set: lambda v: {TAG: "set", "v": _items(v)},
    dict: lambda v: {TAG: "dict", "v": [[to_json(k), to_json(x)] for k, x in v.items()]},
    type(pd.NaT): lambda _: {TAG: "NaT"},
    type(pd.NA): lambda _: {TAG: "NA"},
    pd.Timestamp: _timestamp,
    pd.Timedelta: lambda v: {TAG: "Timedelta", "v": v.value, "unit": v.unit},
    datetime: _datetime,
    date: lambda v: {TAG: "date", "v": v.isoformat()},
    timedelta: lambda v: {TAG: "timedelta", "v": [v.days, v.seconds, v.microseconds]},
    Decimal: lambda v: {TAG: "Decimal", "v": str(v)},
    bytes: lambda v: {TAG: "bytes", "v": base64.b64encode(v).decode("ascii")},
}
_DECODERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "tuple": lambda o: tuple(o["v"]),
    "frozenset": lambda o: frozenset(o["v"]),
    "set": lambda o: set(o["v"]),
    "dict": lambda o: {k: v for k, v in o["v"]},
    "float": lambda o: float(o["v"]),
    "NaT": lambda _: pd.NaT,
    "NA": lambda _: pd.NA,
    "Timestamp": _untimestamp,
    "Timedelta": lambda o: pd.Timedelta(o["v"], unit="ns").as_unit(o["unit"]),
    "datetime": _undatetime,
    "date": lambda o: date.fromisoformat(o["v"]),
    "timedelta": lambda o: timedelta(*o["v"]),
    "Decimal": lambda o: Decimal(o["v"]),
    "bytes": lambda o: base64.b64decode(o["v"]),
    "np": lambda o: np.dtype(o["dtype"]).type(o["v"]),
}
_FIELDS: dict[type, tuple[str, ...]] = {}
_FIELD_SETS: dict[type, frozenset[str]] = {}
_more_encoders, _more_decoders = _registered()
_ENCODERS |= _more_encoders
_DECODERS |= _more_decoders
_NAMES = sorted(_more_decoders)
_BY_NAME = {cls.__name__: cls for cls in REGISTERED}
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_DECODER = json.JSONDecoder(object_hook=_untag)
