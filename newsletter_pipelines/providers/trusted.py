"""Models built from values already checked, and answers read without a model where they hold
what the provider documents.

A validated pydantic model costs a few microseconds a field set; a snapshot builds one
`Member` per member and a write one `Outcome` per contact, from values the client has just
checked itself. `trusted` fills such an instance as unpickling does. Readers that go around the
answer models raise `Unusual` on anything they do not check themselves, and the caller then
validates the answer with its model, which converts it as before or raises naming the field.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any, TypeVar

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
    cost; `__setstate__` itself costs as much as the validation)."""
    fields = _template(cls).copy()  # in field order, as validation leaves `__dict__`
    fields.update(values)
    instance = _new(cls)
    _set(instance, "__dict__", fields)
    _set(instance, "__pydantic_fields_set__", set(values))
    _set(instance, "__pydantic_extra__", None)
    _set(instance, "__pydantic_private__", None)
    return instance


@functools.cache
def _template(cls: type[BaseModel]) -> dict[str, Any]:
    """Every field of `cls` at its default (required fields: a marker `trusted` overwrites);
    a model with private attributes, extra fields or default factories is refused."""
    if cls.__private_attributes__ or cls.model_config.get("extra") == "allow":
        raise TypeError(f"{cls.__name__}: not a plain model")
    template: dict[str, Any] = {}
    for name, field in cls.__pydantic_fields__.items():
        if field.default_factory is not None:
            raise TypeError(f"{cls.__name__}.{name}: a default factory")
        template[name] = field.default
    return template


def is_complete(cls: type[BaseModel], values: dict[str, Any]) -> bool:
    """Whether `values` names every required field of `cls` and nothing else (for tests)."""
    template = _template(cls)
    required = {name for name, default in template.items() if default is PydanticUndefined}
    return required <= values.keys() <= template.keys()


@functools.lru_cache(maxsize=4096)  # a page of members holds a few distinct times
def moment(text: str) -> datetime:
    """`text` read as a datetime field reads it (pydantic's parser, its time zones)."""
    return _DATETIME.validate_python(text)
