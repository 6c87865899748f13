"""Guards that stop a run before harm is done: here, a sudden drop of the eligible count."""

from __future__ import annotations

from dataclasses import dataclass


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
    removals: int, active_members: int, max_share: float, allow_mass_removal: bool = False
) -> RemovalVerdict:
    """Fail when unsubscribes + removals exceed `max_share` of the audience's active members.

    A truncated CRM export or a mapping mistake must never empty an audience: the run stops
    before anything is sent, unless `allow_mass_removal` is set for that one run.
    """
    share = removals / active_members if active_members else 0.0
    summary = (
        f"{removals} of {active_members} active members to unsubscribe or remove "
        f"({share:.1%}; limit {max_share:.0%})"
    )
    if share <= max_share:
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
        f"{summary}. Nothing was sent. If this is intended, run audience_sync with "
        "allow_mass_removal: true.",
    )
