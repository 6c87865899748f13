"""Guards that stop harm before it is done: a sudden drop of the eligible count, and a push
that would unsubscribe or remove a large part of an audience."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class DropVerdict:
    """Whether the eligible count may replace the baseline, and why."""

    passed: bool
    baseline: int | None  # the count later runs compare against
    drop_share: float
    message: str


def check_count_drop(
    previous_baseline: int | None, current: int, max_drop_share: float, accept_drop: bool = False
) -> DropVerdict:
    """Compare `current` with the last accepted count; a drop above `max_drop_share` fails.

    The first run has no baseline and passes. A failed run keeps the old baseline, so repeating
    it does not launder the drop; `accept_drop` accepts it for one run and sets a new baseline.
    """
    if previous_baseline is None:
        return DropVerdict(True, current, 0.0, f"first materialization: baseline {current}")
    drop = (previous_baseline - current) / previous_baseline if previous_baseline else 0.0
    drop = max(drop, 0.0)
    summary = (
        f"eligible {current} vs baseline {previous_baseline}: drop {drop:.1%} "
        f"(limit {max_drop_share:.0%})"
    )
    if drop <= max_drop_share:
        return DropVerdict(True, current, drop, summary)
    if accept_drop:
        return DropVerdict(True, current, drop, f"{summary}; accepted for this run by config")
    return DropVerdict(
        False,
        previous_baseline,
        drop,
        f"{summary}. Check the CRM; if the drop is real, re-run with accept_drop: true.",
    )


@dataclass(frozen=True)
class RemovalVerdict:
    """Whether a push may unsubscribe/remove as many contacts as the diff asks."""

    passed: bool
    removals: int
    active_members: int
    share: float
    message: str


def check_removals(
    removals: int,
    active_members: int,
    max_share: float,
    min_count: int = 10,
    allow_mass_removal: bool = False,
) -> RemovalVerdict:
    """Fail when unsubscribes + removals exceed both `max_share` of the audience's active
    members and the floor `min_count` (so one opt-out never stalls a small audience).

    A truncated CRM export or a mapping mistake must never empty an audience: the push then
    holds the unsubscribes and removals back (creates and updates still go out) until a run
    sets `allow_mass_removal`.
    """
    share = removals / active_members if active_members else 0.0
    summary = (
        f"{removals} of {active_members} active members to unsubscribe or remove "
        f"({share:.1%}; limit {max_share:.0%} or {min_count} contacts, whichever is more)"
    )
    if share <= max_share or removals <= min_count:
        return RemovalVerdict(True, removals, active_members, share, summary)
    if allow_mass_removal:
        return RemovalVerdict(
            True, removals, active_members, share, f"{summary}; allowed for this run by config"
        )
    return RemovalVerdict(
        False,
        removals,
        active_members,
        share,
        f"{summary}. These unsubscribes and removals are held (creates and updates still go "
        "out). If they are intended, run audience_sync with allow_mass_removal: true.",
    )


def resubscribe_violations(diff: pd.DataFrame, ledger: pd.DataFrame) -> pd.DataFrame:
    """Diff rows that would subscribe someone the provider holds or held as opted out.

    An independent check of the rules' output: a create or update of a member the provider holds
    as unsubscribed, cleaned or blacklisted; a create of an archived member whose consent the
    ledger does not know to be clean; a create of an address or contact with an opt-out in the
    ledger (`ledger` is `state.ledger.load_ledger_frame`).
    """
    writes = diff[diff["action"].isin(["create", "update"])]
    creates = writes["action"] == "create"
    blocked_keys = set(
        ledger.loc[ledger["state"].isin(["opted_out", "unsubscribed"]), "member_key"]
    )
    opted_out_owners = set(ledger.loc[ledger["state"] == "opted_out", "owner"].dropna())
    may_create = writes["ledger_before"].map(
        lambda row: row is not None and row.state in ("removed", "released")
    )
    risky = (
        writes["provider_status"].isin(["unsubscribed", "cleaned", "blacklisted"])
        | (creates & (writes["provider_status"] == "archived") & ~may_create)
        | (creates & writes["match_key"].isin(blocked_keys))
        | (creates & writes["crm_id"].isin(opted_out_owners))
    )
    return writes[risky]
