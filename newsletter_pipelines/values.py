"""Helpers for raw CRM values of any type."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import pandas as pd


def is_missing(value: Any) -> bool:
    """True for None and float NaN (how pandas shows a NULL in a numeric column)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def as_datetime(value: Any) -> datetime | None:
    """A timestamp of a frame (or anything pandas reads as one) as a datetime; None for
    None, NaN and NaT."""
    return None if value is None or pd.isna(value) else pd.Timestamp(value).to_pydatetime()
