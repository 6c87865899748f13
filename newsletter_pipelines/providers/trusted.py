"""Models built from values already checked, and answers read without a model where they hold
what the provider documents.

A validated pydantic model costs a few microseconds a field set; a snapshot builds one
`Member` per member and a write one `Outcome` per contact, from values the client has just
checked itself. `trusted` fills such an instance as unpickling does. Readers that go around the
answer models raise `Unusual` on anything they do not check themselves, and the caller then
validates the answer with its model, which converts it as before or raises naming the field.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Hashable
from datetime import datetime
from typing import Any, TypeVar, cast

from pydantic import BaseModel, TypeAdapter
from pydantic_core import PydanticUndefined

M = TypeVar("M", bound=BaseModel)

_DATETIME = TypeAdapter(datetime)
_new = object.__new__
_set = object.__setattr__


class Unusual(Exception):  # noqa: N818 (a signal to take the validated path, not an error)
    """An answer holds something a fast reader does not check itself (a missing key, another
    type, an unknown value): validate it with its model instead."""


def trusted(cls: type[M], values: dict[str, Any]) -> M:
    """An instance of `cls` holding `values`, which must be what validating them would keep
    (each of the field's own type, no unknown names, the required fields given), the other
    fields at their defaults: equal to `cls(**values)`, its fields set and its `__dict__` in
    the same order, but filled as `__setstate__` fills it, without validating (a third of the
    cost; `__setstate__` itself costs as much as the validation). Worth it for many values:
    a model given two or three costs about as much validated."""
    template, factories = _template(cls)
    fields = template.copy()  # in field order, as validation leaves `__dict__`
    fields.update(values)
    for name, factory in factories:
        if name not in values:
            fields[name] = factory()
    instance = _new(cls)
    _set(instance, "__dict__", fields)
    _set(instance, "__pydantic_fields_set__", set(values))
    _set(instance, "__pydantic_extra__", None)
    _set(instance, "__pydantic_private__", None)
    return instance


@functools.cache
def _template(
    cls: type[BaseModel],
) -> tuple[dict[str, Any], tuple[tuple[str, Callable[[], Any]], ...]]:
    """Every field of `cls` at its default (required fields: a marker `trusted` overwrites),
    and how to make the defaults each instance gets its own of (a default factory; a copy of
    a mutable default); a model with private attributes or extra fields is refused."""
    if cls.__private_attributes__ or cls.model_config.get("extra") == "allow":
        raise TypeError(f"{cls.__name__}: not a plain model")
    defaults: dict[str, Any] = {}
    factories = []
    for name, field in cls.__pydantic_fields__.items():
        defaults[name] = default = field.default
        if field.default_factory is not None:
            if field.default_factory_takes_validated_data:
                raise TypeError(f"{cls.__name__}.{name}: a default factory taking the data")
            factories.append((name, cast("Callable[[], Any]", field.default_factory)))
        elif not isinstance(default, Hashable):  # validation gives each instance a copy
            factories.append((name, functools.partial(copy.deepcopy, default)))
    return defaults, tuple(factories)


def is_complete(cls: type[BaseModel], values: dict[str, Any]) -> bool:
    """Whether `values` names every required field of `cls` and nothing else (for tests)."""
    defaults, factories = _template(cls)
    optional = {name for name, _ in factories}
    required = {n for n, d in defaults.items() if d is PydanticUndefined and n not in optional}
    return required <= values.keys() <= defaults.keys()


@functools.lru_cache(maxsize=4096)  # a page of members holds a few distinct times
def moment(text: str) -> datetime:
    """`text` read as a datetime field reads it (pydantic's parser, its time zones)."""
    return _DATETIME.validate_python(text)
