"""Small markdown renderings for asset metadata and the demo summary (no Dagster here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from tabulate import tabulate

from newsletter_pipelines.eligibility import REASONS, parse_private
from newsletter_pipelines.values import is_missing

REASON_TEXT = {
    "eligible": "eligible: sent to the providers",
    "private": "private contact: never leaves the CRM",
    "missing_email": "no email address",
    "invalid_email": "email address invalid (syntax, or refused by providers)",
    "duplicate": "duplicate address: a more recently updated contact decides",
    "opted_out": "newsletter = no",
    "not_opted_in": "newsletter unspecified or unrecognised value",
}


def mask_email(value: Any) -> str:
    """`m•••@example.com`: enough to recognise an address, not to copy it."""
    if is_missing(value):
        return ""
    text = str(value)
    local, at, domain = text.partition("@")
    return f"{local[:1]}•••{at}{domain[:40]}" if at else f"{text[:1]}•••"


def _short(value: Any, width: int = 30) -> str:
    if is_missing(value):
        return ""
    text = " ".join(str(value).replace("\x00", " ").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def contacts_preview(contacts: pd.DataFrame, rows: int = 10) -> str:
    """A markdown preview of CRM contacts: emails masked, private contacts redacted."""
    records = []
    for row in contacts.head(rows).itertuples(index=False):
        private = parse_private(row.is_private)
        records.append(
            {
                "id": row.contact_id,
                "name": "(private)"
                if private
                else _short(f"{row.first_name or ''} {row.last_name or ''}"),
                "email": "" if private else mask_email(row.email),
                "newsletter": _short(row.newsletter, 12),
                "private": private,
                "tags": "" if private else _short(", ".join(row.tags)),
            }
        )
    return markdown_table(records)


def markdown_table(records: Sequence[Mapping[str, Any]]) -> str:
    """Records as a GitHub markdown table."""
    return tabulate(records, headers="keys", tablefmt="github") if records else "(none)"


def counts_table(counts: Mapping[str, int], fmt: str = "github") -> str:
    """Eligibility counts with what each means, and the total of CRM rows."""
    total = sum(counts.values())
    rows = [["eligible", counts.get("eligible", 0), REASON_TEXT["eligible"]]]
    rows += [[f"excluded: {r}", counts.get(r, 0), REASON_TEXT[r]] for r in REASONS]
    rows.append(["CRM contacts", total, "eligible + excluded"])
    return tabulate(rows, headers=["outcome", "contacts", "meaning"], tablefmt=fmt)
