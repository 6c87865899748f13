"""Turn the assets' data (eligibility frames, provider snapshot) into reconciliation inputs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pandas as pd

from newsletter_pipelines.email_address import match_key
from newsletter_pipelines.providers.base import Member
from newsletter_pipelines.reconcile import Actual, CrmExclusion, Desired, LedgerEntry, reconcile


def desired_contacts(eligible: pd.DataFrame) -> Iterator[Desired]:
    """One `Desired` per eligible subscriber (columns of `eligible_subscribers`)."""
    columns = ("contact_id", "email", "salutation", "first_name", "last_name", "tags")
    for crm_id, email, salutation, first, last, tags in eligible[list(columns)].itertuples(
        index=False, name=None
    ):
        yield Desired(str(crm_id), email, salutation, first, last, frozenset(tags))


def crm_exclusions(excluded: pd.DataFrame) -> dict[str, CrmExclusion]:
    """Match key → reason for excluded contacts with a valid address (duplicates left out:
    the deciding contact of the same address speaks for them)."""
    rows = excluded[excluded["email_key"].notna() & (excluded["reason"] != "duplicate")]
    found: dict[str, CrmExclusion] = {}
    for crm_id, reason, email in rows[["contact_id", "reason", "email_ascii"]].itertuples(
        index=False, name=None
    ):
        found[match_key(email)] = CrmExclusion(str(crm_id), reason)
    return found


def actual_members(members: Iterable[Member]) -> list[Actual]:
    """The snapshot in reconciliation values."""
    return [
        Actual(
            provider_id=m.provider_id,
            email=m.email,
            status=m.status.value,
            salutation=m.salutation,
            first_name=m.first_name,
            last_name=m.last_name,
            tags=frozenset(m.tags),
        )
        for m in members
    ]


def members_by_key(members: Iterable[Member]) -> dict[str, Member]:
    """The snapshot indexed by match key."""
    return {match_key(m.email): m for m in members}


def build_diff(
    eligible: pd.DataFrame,
    excluded: pd.DataFrame,
    members: Iterable[Member],
    ledger: Iterable[LedgerEntry],
    system_tag: str | None,
) -> pd.DataFrame:
    """The reconciliation of one audience as a frame (columns `reconcile.DIFF_COLUMNS`)."""
    return reconcile(
        desired_contacts(eligible),
        actual_members(members),
        ledger,
        crm_exclusions(excluded),
        system_tag,
    ).frame()
