"""Eligible subscribers from raw CRM contacts (DESIGN §3 "Eligibility"), in pandas.

1. Private contacts are dropped first: their data never leaves the CRM.
2. Email: trim, Unicode NFC, syntax check with email-validator; the key is the normalised
   address, lower-cased.
3. Among non-private rows with the same key the most recently updated row decides (ties: lowest
   id); the others are `duplicate`.
4. Eligible: the deciding row has newsletter 'yes'.
Every other row keeps exactly one exclusion reason.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import pandas as pd

from newsletter_pipelines.email_address import check_emails, clean_raw_email
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
EXCLUDED_COLUMNS = ("contact_id", "reason", "email", "detail")
MAX_FIELD_BYTES = 255  # Mailchimp's limit for text merge fields; Brevo text attributes take more

_TRUE_FLAGS = frozenset({"1", "true", "t", "yes", "y", "ja", "j", "x", "on"})
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


def parse_newsletter(value: Any) -> str:
    """'yes' or 'no' when the CRM says so (case and spaces ignored), else 'unknown'."""
    if is_missing(value):
        return "unknown"
    text = str(value).strip().lower()
    return text if text in ("yes", "no") else "unknown"


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


def _map_unique(series: pd.Series, func: Any) -> pd.Series:
    """Apply `func` once per distinct value (CRM columns repeat a lot)."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    mapped = [func(u) for u in uniques]
    missing = func(None)
    return pd.Series([mapped[c] if c >= 0 else missing for c in codes], index=series.index)


def _timestamps(series: pd.Series) -> pd.Series:
    """UTC timestamps; unreadable values become NaT (they lose every tie)."""
    try:
        return pd.to_datetime(series, errors="coerce", utc=True, format="ISO8601")
    except (TypeError, ValueError):  # mixed types (numbers, dates, text): one value at a time
        return _map_unique(
            series, lambda v: pd.to_datetime(v, errors="coerce", utc=True, format="ISO8601")
        ).astype("datetime64[ns, UTC]")


def classify(contacts: pd.DataFrame, workers: int | None = None) -> EligibilityResult:
    """Split raw CRM contacts (columns of `crm.reader.read_contacts`) into eligible and excluded."""
    frame = contacts.reset_index(drop=True)
    total = len(frame)
    reason = pd.Series(pd.NA, index=frame.index, dtype="object")
    detail = pd.Series(pd.NA, index=frame.index, dtype="object")

    private = _map_unique(frame["is_private"], parse_private).astype(bool)
    reason[private] = "private"

    raw_email = _map_unique(frame["email"], clean_raw_email)
    missing = raw_email.isna() & reason.isna()
    reason[missing] = "missing_email"

    to_check = raw_email[reason.isna()]
    distinct = list(pd.unique(to_check))
    checked = dict(zip(distinct, check_emails(distinct, workers=workers), strict=True))
    email = to_check.map(lambda a: checked[a][0])
    key = to_check.map(lambda a: checked[a][1])
    invalid = key.isna()
    reason[invalid[invalid].index] = "invalid_email"
    detail[invalid[invalid].index] = to_check[invalid].map(lambda a: checked[a][2])

    candidates = pd.DataFrame(
        {
            "contact_id": frame["contact_id"],
            "email": email,
            "email_key": key,
            "updated_at": _timestamps(frame["updated_at"]),
        }
    ).loc[key[~invalid].index]
    ordered = candidates.sort_values(
        ["email_key", "updated_at", "contact_id"],
        ascending=[True, False, True],
        na_position="last",
        kind="mergesort",
    )
    deciding_id = ordered.drop_duplicates("email_key").set_index("email_key")["contact_id"]
    dup_index = ordered.index[ordered.duplicated("email_key", keep="first")]
    reason[dup_index] = "duplicate"
    detail[dup_index] = [
        f"contact {deciding_id[k]} has the same address and decides"
        for k in candidates.loc[dup_index, "email_key"]
    ]

    deciders = ordered.index[~ordered.duplicated("email_key", keep="first")]
    newsletter = _map_unique(frame.loc[deciders, "newsletter"], parse_newsletter)
    reason[newsletter.index[newsletter == "no"]] = "opted_out"
    reason[newsletter.index[newsletter == "unknown"]] = "not_opted_in"
    eligible_index = newsletter.index[newsletter == "yes"].sort_values()

    eligible, cleaned = _eligible_frame(frame, candidates, eligible_index)
    excluded = pd.DataFrame(
        {
            "contact_id": frame["contact_id"],
            "reason": reason,
            "email": raw_email.where(reason != "private", None),
            "detail": detail,
        }
    )[reason.notna()].reset_index(drop=True)
    counts = {"eligible": len(eligible)} | {
        r: int((excluded["reason"] == r).sum()) for r in REASONS
    }
    if sum(counts.values()) != total:  # every row has exactly one outcome
        raise AssertionError(f"eligibility lost rows: {counts} for {total} contacts")
    return EligibilityResult(eligible, excluded, counts, cleaned)


def _eligible_frame(
    frame: pd.DataFrame, candidates: pd.DataFrame, index: pd.Index
) -> tuple[pd.DataFrame, int]:
    rows = frame.loc[index]
    out = pd.DataFrame(
        {
            "contact_id": rows["contact_id"],
            "email": candidates.loc[index, "email"],
            "email_key": candidates.loc[index, "email_key"],
            "updated_at": candidates.loc[index, "updated_at"],
            "tags": _map_unique(rows["tags"], clean_tags),
        }
    )
    cleaned = 0
    for column in ("salutation", "first_name", "last_name"):
        out[column] = _map_unique(rows[column], clean_field)
        changed = _map_unique(rows[column], lambda v: clean_field(v) != str(v) and v is not None)
        cleaned += int(changed.sum())
    return out[list(ELIGIBLE_COLUMNS)].reset_index(drop=True), cleaned
