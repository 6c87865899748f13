"""Eligible subscribers from raw CRM contacts, in pandas.

1. Private contacts are dropped first: their data never leaves the CRM.
2. Email: trim, Unicode NFC, syntax check with email-validator; the key is the normalised
   address, lower-cased.
3. Among non-private rows with the same key the most recently updated row decides (ties: lowest
   id); the others are `duplicate`.
4. Eligible: the deciding row's newsletter is `CrmValues.yes` (the value the import-back
   writes; `no` opts out, anything else is not an opt-in).
Every other row keeps exactly one exclusion reason.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from newsletter_pipelines.settings import CrmValues
from newsletter_pipelines.sync.email_address import check_emails, clean_raw_email
from newsletter_pipelines.values import is_missing

REASONS = ("private", "missing_email", "invalid_email", "duplicate", "opted_out", "not_opted_in")
ELIGIBLE_COLUMNS = (
    "contact_id",
    "email",
    "email_key",
    "salutation",
    "first_name",
    "last_name",
    "tags",
    "updated_at",
)
EXCLUDED_COLUMNS = (
    "contact_id",
    "reason",
    "email",
    "email_key",
    "email_ascii",
    "detail",
    "newsletter",
    "updated_at",
)
DEFAULT_VALUES = CrmValues()
MAX_FIELD_BYTES = 255  # Mailchimp's limit for text merge fields; Brevo text attributes take more

_FALSE_FLAGS = frozenset({"", "0", "false", "f", "no", "n", "nein", "off"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class EligibilityResult:
    """Eligible rows, excluded rows with their reason, and the counts per outcome."""

    eligible: pd.DataFrame
    excluded: pd.DataFrame
    counts: dict[str, int]
    profile_fields_cleaned: int


def parse_private(value: Any) -> bool:
    """Read an is_private value of any type; NULL is not private, unknown text is private."""
    if is_missing(value):
        return False
    if isinstance(value, bool | int | float):
        return bool(value)
    # 'ja', 'true', and anything unrecognised count as private: never let it leave the CRM
    return str(value).strip().lower() not in _FALSE_FLAGS


def _fold(value: Any) -> str:
    return str(value).strip().lower()


def parse_newsletter(value: Any, values: CrmValues = DEFAULT_VALUES) -> str:
    """'yes' for `values.yes`, 'no' for `values.no` (case and outer spaces ignored), else
    'unknown' (`values.unspecified`, NULL, anything unrecognised)."""
    if is_missing(value):
        return "unknown"
    # 'no' last: should both fold to the same text, the opt-out wins
    return {_fold(values.yes): "yes", _fold(values.no): "no"}.get(_fold(value), "unknown")


def clean_field(value: Any) -> str:
    """A profile field fit for a provider: no control characters, single spaces, NFC, ≤255 bytes."""
    if is_missing(value):
        return ""
    text = _SPACES.sub(" ", _CONTROL.sub(" ", unicodedata.normalize("NFC", str(value)))).strip()
    encoded = text.encode("utf-8")
    if len(encoded) > MAX_FIELD_BYTES:
        text = encoded[:MAX_FIELD_BYTES].decode("utf-8", errors="ignore").rstrip()
    return text


def clean_tags(tags: Any) -> tuple[str, ...]:
    """Sorted distinct non-empty tags, cleaned like profile fields."""
    if is_missing(tags) or isinstance(tags, str):
        tags = () if is_missing(tags) else (tags,)
    return tuple(sorted({t for t in (clean_field(tag) for tag in tags) if t}))


def _map_unique(series: pd.Series, func: Any) -> np.ndarray:
    """Apply `func` once per distinct value (CRM columns repeat a lot); an object array."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    mapped = np.empty(len(uniques) + 1, dtype=object)
    mapped[:-1] = [func(u) for u in uniques]
    mapped[-1] = func(None)  # code -1: NULL
    return mapped[codes]


def _numbered(index: pd.Index) -> bool:
    """Whether `index` is 0, 1, 2, … already (no copy of the frame needed)."""
    return isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1


def _timestamps(series: pd.Series) -> pd.Series:
    """UTC timestamps; unreadable values become NaT (they lose every tie)."""
    try:
        return pd.to_datetime(series, errors="coerce", utc=True, format="ISO8601")
    except (TypeError, ValueError):  # mixed types (numbers, dates, text): one value at a time
        values = _map_unique(
            series, lambda v: pd.to_datetime(v, errors="coerce", utc=True, format="ISO8601")
        )
        return pd.Series(values, index=series.index).astype("datetime64[ns, UTC]")


def _newest_first_order(keys: np.ndarray, updated_at: pd.Series, ids: np.ndarray) -> np.ndarray:
    """Positions sorted by key, then newest update first (NULL last), then lowest id."""
    key_codes = pd.factorize(keys)[0]
    ts = updated_at.array.asi8
    nat = updated_at.isna().to_numpy()
    newest_first = np.where(nat, np.iinfo(np.int64).max, -np.where(nat, 0, ts))
    id_rank = pd.factorize(ids, sort=True)[0]
    return np.lexsort((id_rank, newest_first, key_codes))


def classify(contacts: pd.DataFrame, values: CrmValues = DEFAULT_VALUES) -> EligibilityResult:
    """Split raw CRM contacts (columns of `crm.reader.read_contacts`) into eligible and excluded,
    reading the newsletter column through `values`.

    The excluded frame also carries the `email_key` where the address is valid (private
    contacts included), so a provider member can be matched to its CRM contact, and every
    row's logical `newsletter` ('yes'/'no'/'unknown') and UTC `updated_at`.
    """
    frame = contacts if _numbered(contacts.index) else contacts.reset_index(drop=True)
    total = len(frame)
    ids = frame["contact_id"].to_numpy()
    reason = np.full(total, None, dtype=object)
    detail = np.full(total, None, dtype=object)
    newsletter = _map_unique(frame["newsletter"], lambda v: parse_newsletter(v, values))
    updated_at = _timestamps(frame["updated_at"])

    private = _map_unique(frame["is_private"], parse_private).astype(bool)
    raw_email = _map_unique(frame["email"], clean_raw_email)
    present = np.array([e is not None for e in raw_email], dtype=bool)
    reason[~present] = "missing_email"
    reason[private] = "private"  # private first: it wins over every other reason

    email = np.full(total, None, dtype=object)
    key = np.full(total, None, dtype=object)
    checked_positions = np.flatnonzero(present)
    if len(checked_positions):
        codes, distinct = pd.factorize(raw_email[checked_positions])
        checked = np.empty((len(distinct), 3), dtype=object)
        checked[:] = check_emails(distinct.tolist())
        email[checked_positions] = checked[codes, 0]
        key[checked_positions] = checked[codes, 1]
        invalid = (key[checked_positions] == None) & ~private[checked_positions]  # noqa: E711
        reason[checked_positions[invalid]] = "invalid_email"
        detail[checked_positions[invalid]] = checked[codes[invalid], 2]

    candidates = np.flatnonzero(reason == None)  # noqa: E711 (element-wise on an object array)
    order = candidates[
        _newest_first_order(key[candidates], updated_at.iloc[candidates], ids[candidates])
    ]
    sorted_keys = key[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    deciders = order[first]
    decider_of_key = dict(zip(key[deciders], ids[deciders], strict=True))
    for position in order[~first]:
        reason[position] = "duplicate"
        detail[position] = (
            f"contact {decider_of_key[key[position]]} has the same address and decides"
        )

    decided = newsletter[deciders]
    reason[deciders[decided == "no"]] = "opted_out"
    reason[deciders[decided == "unknown"]] = "not_opted_in"
    eligible_positions = np.sort(deciders[decided == "yes"])

    eligible, cleaned = _eligible_frame(frame, email, key, updated_at, eligible_positions)
    is_excluded = reason != None  # noqa: E711
    excluded = pd.DataFrame(
        {
            "contact_id": ids[is_excluded],
            "reason": reason[is_excluded],
            "email": np.where(private, None, raw_email)[is_excluded],
            "email_key": key[is_excluded],
            "email_ascii": email[is_excluded],
            "detail": detail[is_excluded],
            "newsletter": newsletter[is_excluded],
            "updated_at": updated_at.iloc[is_excluded].reset_index(drop=True),
        }
    )
    reasons, occurrences = np.unique(reason[is_excluded].astype(str), return_counts=True)
    found = dict(zip(reasons.tolist(), occurrences.tolist(), strict=True))
    counts = {"eligible": len(eligible)} | {r: found.get(r, 0) for r in REASONS}
    if sum(counts.values()) != total:  # every row has exactly one outcome
        raise AssertionError(f"eligibility lost rows: {counts} for {total} contacts")
    return EligibilityResult(eligible, excluded, counts, cleaned)


def _eligible_frame(
    frame: pd.DataFrame,
    email: np.ndarray,
    key: np.ndarray,
    updated_at: pd.Series,
    positions: np.ndarray,
) -> tuple[pd.DataFrame, int]:
    rows = frame.iloc[positions]
    out = pd.DataFrame(
        {
            "contact_id": rows["contact_id"].to_numpy(),
            "email": email[positions],
            "email_key": key[positions],
            "updated_at": updated_at.iloc[positions].reset_index(drop=True),
            "tags": _map_unique(rows["tags"], clean_tags),
        }
    )
    cleaned = 0
    for column in ("salutation", "first_name", "last_name"):
        codes, uniques = pd.factorize(rows[column], use_na_sentinel=True)
        clean = [clean_field(u) for u in uniques]
        changed = np.array([c != str(u) for c, u in zip(clean, uniques, strict=True)] + [False])
        out[column] = np.array([*clean, clean_field(None)], dtype=object)[codes]
        cleaned += int(changed[codes].sum())  # NULL (code -1) is not a cleaned value
    return out[list(ELIGIBLE_COLUMNS)], cleaned
