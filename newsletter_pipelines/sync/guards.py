"""Guards that stop harm before it is done: a sudden drop of the eligible count, and a push
that would unsubscribe or remove a large part of an audience."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from newsletter_pipelines.sync.bulk_columns import named, text
from newsletter_pipelines.sync.identity import BLOCKING, MAY_CREATE, RowState
from newsletter_pipelines.sync.rules import ACTIVE, OPTED_OUT


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
class MassVerdict:
    """Whether a push may send as many writes of one kind as the diff asks."""

    passed: bool
    count: int
    active_members: int
    share: float
    message: str


@dataclass(frozen=True)
class MassGuard:
    """A guard against a mass write of one kind: what it counts and how to release it."""

    what: str  # e.g. "to unsubscribe or remove"
    release: str  # the run config that releases it for one run
    effect: str  # what is held meanwhile
    asset: str = "audience_sync"  # the asset whose config `release` is


REMOVAL_GUARD = MassGuard(
    "to unsubscribe or remove",
    "allow_mass_removal",
    "These unsubscribes and removals are held (creates and updates still go out)",
)
RENAME_GUARD = MassGuard(
    "to move to another address",
    "allow_mass_rename",
    "These address changes are held (everything else still goes out)",
)


def check_mass(
    guard: MassGuard,
    count: int,
    active_members: int,
    max_share: float,
    *,
    min_count: int = 10,
    allow: bool = False,
) -> MassVerdict:
    """Fail when `count` exceeds both `max_share` of the audience's active members and the
    floor `min_count` (so one opt-out or one new address never stalls a small audience).

    A truncated CRM export or a mapping mistake must never empty or rename an audience: the
    push then holds those writes back, the rest still goes out, until a run sets the release.
    """
    share = count / active_members if active_members else 0.0
    summary = (
        f"{count} of {active_members} active members {guard.what} "
        f"({share:.1%}; limit {max_share:.1%} or {min_count} contacts, whichever is more)"
    )
    if share <= max_share or count <= min_count:
        return MassVerdict(True, count, active_members, share, summary)
    if allow:
        return MassVerdict(
            True, count, active_members, share, f"{summary}; allowed for this run by config"
        )
    return MassVerdict(
        False,
        count,
        active_members,
        share,
        f"{summary}. {guard.effect}. If they are intended, run {guard.asset} with "
        f"{guard.release}: true.",
    )


def resubscribe_violations(diff: pd.DataFrame, ledger: pd.DataFrame) -> pd.DataFrame:
    """Diff rows that would subscribe someone the provider holds or held as opted out.

    An independent check of the rules' output: a create or update of a member the provider holds
    as unsubscribed, cleaned or blacklisted; a create of an archived member whose consent the
    ledger does not know to be clean; a create of an address or contact with an opt-out in the
    ledger (`ledger` is `state.ledger.load_ledger_frame`), unless a person subscribed the
    opted-out member again (it is active now: the opt-out no longer blocks its owner).
    """
    # the write rows' five columns, not a copy of the whole diff: a first sync's diff is all
    # creates, and copying every column of it cost more than the check
    action = diff["action"].to_numpy()
    at = np.flatnonzero((action == "create") | (action == "update"))
    creates = action[at] == "create"
    status = diff["provider_status"].iloc[at]
    blocked_keys = set(ledger.loc[ledger["state"].isin(BLOCKING), "member_key"])
    active_again = text(diff.loc[diff["provider_status"].isin(ACTIVE), "match_key"])
    opted_out = ledger[ledger["state"] == RowState.OPTED_OUT]
    # `named`, not `isin`: a text column's `isin` makes a Python object per value looked up
    opted_out = opted_out[~named(text(opted_out["member_key"]), active_again)]
    opted_out_owners = set(opted_out["owner"].dropna())
    archived = creates & (status == "archived").to_numpy()
    may_create = (
        diff["ledger_before"]
        .iloc[at[archived]]
        .map(lambda row: row is not None and row.state in MAY_CREATE)
    )
    archived[archived] = ~may_create.to_numpy(dtype=bool)
    risky = (
        status.isin(OPTED_OUT).to_numpy()
        | archived
        | (creates & diff["match_key"].iloc[at].isin(blocked_keys).to_numpy())
        | (creates & diff["crm_id"].iloc[at].isin(opted_out_owners).to_numpy())
    )
    return diff.iloc[at[risky]]


@dataclass(frozen=True)
class MassLimits:
    """The limits of the removal and rename guards (from the settings)."""

    removal_max_share: float = 0.1
    removal_min_count: int = 10
    rename_max_share: float = 0.1
    rename_min_count: int = 10


def push_verdicts(
    diff: pd.DataFrame,
    limits: MassLimits,
    allow_removal: bool,
    allow_rename: bool,
    active: int | None = None,
) -> dict[str, MassVerdict]:
    """The removal guard and the rename guard of a diff, by check name; `active`: the
    audience's active members when the diff covers only some (default: the diff's)."""
    if active is None:
        active = int(diff["provider_status"].isin(ACTIVE).sum())
    removals = int(diff["action"].isin(["unsubscribe", "remove"]).sum())
    renames = int(((diff["action"] == "update") & diff["old_email"].notna()).sum())
    return {
        "removal_guard": check_mass(
            REMOVAL_GUARD,
            removals,
            active,
            limits.removal_max_share,
            min_count=limits.removal_min_count,
            allow=allow_removal,
        ),
        "rename_guard": check_mass(
            RENAME_GUARD,
            renames,
            active,
            limits.rename_max_share,
            min_count=limits.rename_min_count,
            allow=allow_rename,
        ),
    }
