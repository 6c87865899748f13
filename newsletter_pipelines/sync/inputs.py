"""Turn the assets' data (eligibility frames, provider snapshot) into reconciliation inputs."""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import pandas as pd

from newsletter_pipelines.email_address import match_key
from newsletter_pipelines.in_sync import match_keys, split_in_sync
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


SNAPSHOT_COLUMNS = (
    "provider_id",
    "email",
    "status",
    "salutation",
    "first_name",
    "last_name",
    "tags",
    "last_changed",
)


def snapshot_frame(members: Iterable[Member]) -> pd.DataFrame:
    """The provider snapshot as a frame (what the `provider_audience_snapshot` asset holds)."""
    return pd.DataFrame(
        [
            (
                m.provider_id,
                m.email,
                m.status.value,
                m.salutation,
                m.first_name,
                m.last_name,
                tuple(sorted(m.tags)),
                m.last_changed,
            )
            for m in members
        ],
        columns=list(SNAPSHOT_COLUMNS),
    )


def actual_members(snapshot: pd.DataFrame) -> Iterator[Actual]:
    """The snapshot in reconciliation values."""
    columns = SNAPSHOT_COLUMNS[:-1]
    for pid, email, status, salutation, first, last, tags in snapshot[list(columns)].itertuples(
        index=False, name=None
    ):
        yield Actual(pid, email, status, salutation, first, last, frozenset(tags))


def members_by_key(snapshot: pd.DataFrame, keys: Iterable[str] | None = None) -> dict[str, Member]:
    """Snapshot members as the clients take them, by match key (only `keys`, when given)."""
    wanted = None if keys is None else set(keys)
    found: dict[str, Member] = {}
    for row in snapshot.itertuples(index=False):
        key = match_key(row.email)
        if wanted is None or key in wanted:
            found[key] = Member(
                provider_id=row.provider_id,
                email=row.email,
                status=row.status,
                salutation=row.salutation,
                first_name=row.first_name,
                last_name=row.last_name,
                tags=frozenset(row.tags),
                last_changed=None if pd.isna(row.last_changed) else row.last_changed,
            )
    return found


def build_diff(
    eligible: pd.DataFrame,
    excluded: pd.DataFrame,
    snapshot: pd.DataFrame,
    ledger: Iterable[LedgerEntry],
    system_tag: str | None,
) -> pd.DataFrame:
    """The reconciliation of one audience as a frame (columns `reconcile.DIFF_COLUMNS`).

    Contacts already in sync are settled in bulk (`in_sync`); the rest one by one (`reconcile`).
    The cyclic garbage collector is paused meanwhile: millions of small objects are made and none
    forms a cycle, and its passes cost a third of the time at a million contacts.
    """
    with _gc_paused():
        return _build_diff(eligible, excluded, snapshot, list(ledger), system_tag)


@contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _build_diff(
    eligible: pd.DataFrame,
    excluded: pd.DataFrame,
    snapshot: pd.DataFrame,
    ledger: list[LedgerEntry],
    system_tag: str | None,
) -> pd.DataFrame:
    settled, other_desired, other_members = split_in_sync(eligible, snapshot, ledger, system_tag)
    ids = set(other_desired["contact_id"].astype(str))
    keys = set(match_keys(other_members["email"]))
    rest = reconcile(
        desired_contacts(other_desired),
        actual_members(other_members),
        [e for e in ledger if e.crm_id in ids or e.match_key in keys],
        crm_exclusions(excluded),
        system_tag,
    ).frame()
    return pd.concat([settled, rest], ignore_index=True) if len(settled) else rest
