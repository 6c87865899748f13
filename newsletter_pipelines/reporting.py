"""Small markdown renderings for asset metadata and the demo summary (no Dagster here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from tabulate import tabulate

from newsletter_pipelines.sync.eligibility import REASONS, parse_private
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


def explain_diff(diff: pd.DataFrame) -> str:
    """Markdown: why the provider's subscribed count differs from the CRM's eligible count."""
    diff = diff[["eligible", "action", "provider_status"]]  # the rows taken below: no more
    desired = diff[diff["eligible"]]
    mine = desired["action"].value_counts()
    subscribed = diff[diff["provider_status"] == "subscribed"]
    theirs = subscribed[~subscribed["eligible"]]["action"].value_counts()
    now = len(subscribed)
    after = (
        now
        + int(mine.get("create", 0))
        - int(theirs.get("unsubscribe", 0))
        - int(theirs.get("remove", 0))
    )
    rows = [
        ["eligible in the CRM", len(desired)],
        [
            "… at the provider (in sync, or updated now)",
            int(mine.get("unchanged", 0) + mine.get("update", 0)),
        ],
        ["… not at the provider yet: created now", int(mine.get("create", 0))],
        [
            "… blocked by the provider (opted out there, refused, archived): never re-subscribed",
            int(mine.get("blocked_by_provider", 0)),
        ],
        [
            "… deleted or archived at the provider since the last sync (import back)",
            int(mine.get("import_back", 0)),
        ],
        ["subscribed at the provider before this sync", now],
        ["… eligible in the CRM", int(subscribed["eligible"].sum())],
        ["… newsletter = no in the CRM: unsubscribed now", int(theirs.get("unsubscribe", 0))],
        ["… private, deleted or no longer eligible: removed now", int(theirs.get("remove", 0))],
        [
            "… signed up at the provider, not eligible in the CRM (import back)",
            int(theirs.get("import_back", 0)),
        ],
        ["subscribed at the provider after this sync (expected)", after],
    ]
    return tabulate(rows, headers=["", "contacts"], tablefmt="github")


def diff_samples(diff: pd.DataFrame, per_action: int = 5) -> str:
    """Markdown: a few contacts per action with the reason, emails masked."""
    records = [
        {
            "action": row.action,
            "crm id": row.crm_id or "",
            "email": mask_email(row.email),
            "provider status": row.provider_status or "",
            "why": _short(row.detail, 70),
        }
        # of the columns shown only: each group is a copy of its rows
        for _, group in diff[["action", "crm_id", "email", "provider_status", "detail"]].groupby(
            "action", sort=True
        )
        for row in group.head(per_action).itertuples(index=False)
    ]
    return markdown_table(records)
