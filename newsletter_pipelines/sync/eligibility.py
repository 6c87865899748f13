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
import pyarrow as pa

from newsletter_pipelines.bulk import gc_paused
from newsletter_pipelines.settings import CrmValues
from newsletter_pipelines.sync.email_address import check_addresses, clean_raw_emails
from newsletter_pipelines.values import is_missing

REASONS = ("private", "missing_email", "invalid_email", "duplicate", "opted_out", "not_opted_in")
_PRIVATE, _MISSING_EMAIL, _INVALID_EMAIL, _DUPLICATE, _OPTED_OUT, _NOT_OPTED_IN = range(1, 7)
_REASON_TEXT = np.array([None, *REASONS], dtype=object)
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


def _newest_first_order(
    key_codes: np.ndarray, updated_at: pd.Series, ids: np.ndarray
) -> np.ndarray:
    """Positions sorted by key, then newest update first (NULL last), then lowest id."""
    ts = updated_at.array.asi8
    nat = updated_at.isna().to_numpy()
    newest_first = np.where(nat, np.iinfo(np.int64).max, -np.where(nat, 0, ts))
    id_rank = ids if ids.dtype.kind in "iu" else pd.factorize(ids, sort=True)[0]
    return np.lexsort((id_rank, newest_first, key_codes))


def classify(contacts: pd.DataFrame, values: CrmValues = DEFAULT_VALUES) -> EligibilityResult:
    """Split raw CRM contacts (columns of `crm.reader.read_contacts`) into eligible and excluded,
    reading the newsletter column through `values`.

    The excluded frame also carries the `email_key` where the address is valid (private
    contacts included), so a provider member can be matched to its CRM contact, and every
    row's logical `newsletter` ('yes'/'no'/'unknown') and UTC `updated_at`.
    """
    with gc_paused():  # millions of short-lived objects, none in a cycle
        return _classify(contacts, values)


def _classify(contacts: pd.DataFrame, values: CrmValues) -> EligibilityResult:
    frame = contacts if _numbered(contacts.index) else contacts.reset_index(drop=True)
    total = len(frame)
    ids = frame["contact_id"].to_numpy()
    reason = np.zeros(total, dtype=np.int8)  # 0: none yet, else 1 + its index in REASONS
    detail = np.full(total, None, dtype=object)
    newsletter = _map_unique(frame["newsletter"], lambda v: parse_newsletter(v, values))
    updated_at = _timestamps(frame["updated_at"])

    private = _map_unique(frame["is_private"], parse_private).astype(bool)
    raw_email = clean_raw_emails(frame["email"].to_numpy())
    present = ~pd.isna(raw_email)
    reason[~present] = _MISSING_EMAIL
    reason[private] = _PRIVATE  # private first: it wins over every other reason

    email = np.full(total, None, dtype=object)
    key = np.full(total, None, dtype=object)
    key_code = np.full(total, -1, dtype=np.int64)  # one code per distinct key, -1: none
    checked_positions = np.flatnonzero(present)
    if len(checked_positions):
        # every address, repeated ones too: the fast path costs less than finding them first
        sent, keys, why = check_addresses(raw_email[checked_positions])
        email[checked_positions] = sent
        key[checked_positions] = keys
        key_code[checked_positions] = pd.factorize(keys)[0]
        invalid = (key_code[checked_positions] < 0) & ~private[checked_positions]
        reason[checked_positions[invalid]] = _INVALID_EMAIL
        detail[checked_positions[invalid]] = why[invalid]
        del sent, keys, why
        pa.default_memory_pool().release_unused()  # Arrow's buffers, not kept for later

    candidates = np.flatnonzero(reason == 0)
    order = candidates[
        _newest_first_order(key_code[candidates], updated_at.iloc[candidates], ids[candidates])
    ]
    sorted_codes = key_code[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = sorted_codes[1:] != sorted_codes[:-1]
    deciders = order[first]
    duplicates = np.flatnonzero(~first)
    decider_ids = ids[deciders[np.cumsum(first)[duplicates] - 1]]
    reason[order[duplicates]] = _DUPLICATE
    detail[order[duplicates]] = [
        f"contact {d} has the same address and decides" for d in decider_ids
    ]

    decided = newsletter[deciders]
    reason[deciders[decided == "no"]] = _OPTED_OUT
    reason[deciders[decided == "unknown"]] = _NOT_OPTED_IN
    eligible_positions = np.sort(deciders[decided == "yes"])

    eligible, cleaned = _eligible_frame(frame, email, key, updated_at, eligible_positions)
    is_excluded = reason != 0
    shown_email = raw_email[is_excluded]
    shown_email[private[is_excluded]] = None  # private: the address is not copied
    excluded = pd.DataFrame(
        {
            "contact_id": ids[is_excluded],
            "reason": _REASON_TEXT[reason[is_excluded]],
            "email": shown_email,
            "email_key": key[is_excluded],
            "email_ascii": email[is_excluded],
            "detail": detail[is_excluded],
            "newsletter": newsletter[is_excluded],
            "updated_at": updated_at.iloc[is_excluded].reset_index(drop=True),
        },
        copy=False,  # fresh arrays: not copied again into one block
    )
    occurrences = np.bincount(reason, minlength=len(REASONS) + 1).tolist()
    counts = {"eligible": len(eligible)} | dict(zip(REASONS, occurrences[1:], strict=True))
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
    def taken(column: str) -> pd.Series:
        return frame[column].iloc[positions].reset_index(drop=True)

    columns: dict[str, Any] = {
        "contact_id": frame["contact_id"].to_numpy()[positions],
        "email": email[positions],
        "email_key": key[positions],
    }
    cleaned = 0
    for column in ("salutation", "first_name", "last_name"):
        codes, uniques = pd.factorize(taken(column), use_na_sentinel=True)
        clean = [clean_field(u) for u in uniques]
        changed = np.array([c != str(u) for c, u in zip(clean, uniques, strict=True)] + [False])
        columns[column] = np.array([*clean, clean_field(None)], dtype=object)[codes]
        cleaned += int(changed[codes].sum())  # NULL (code -1) is not a cleaned value
    columns["tags"] = _map_unique(taken("tags"), clean_tags)
    columns["updated_at"] = updated_at.iloc[positions].reset_index(drop=True)
    ordered = {name: columns[name] for name in ELIGIBLE_COLUMNS}
    return pd.DataFrame(ordered, copy=False), cleaned  # fresh arrays: not copied again
