"""Helpers for raw CRM values of any type."""

from __future__ import annotations

import math
from typing import Any


def is_missing(value: Any) -> bool:
    """True for None and float NaN (how pandas shows a NULL in a numeric column)."""
    return value is None or (isinstance(value, float) and math.isnan(value))
