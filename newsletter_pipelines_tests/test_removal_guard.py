"""The removal guard as a pure function."""

from __future__ import annotations

from newsletter_pipelines.sync.guards import REMOVAL_GUARD, MassVerdict, check_mass


def check_removals(
    removals: int, active: int, share: float, min_count: int = 10, allow_mass_removal: bool = False
) -> MassVerdict:
    return check_mass(
        REMOVAL_GUARD, removals, active, share, min_count=min_count, allow=allow_mass_removal
    )


def test_within_the_limit_passes() -> None:
    assert check_removals(10, 100, 0.1).passed
    assert check_removals(0, 0, 0.1).passed


def test_half_the_audience_fails_and_says_how_to_release() -> None:
    verdict = check_removals(50, 100, 0.1)
    assert not verdict.passed and verdict.share == 0.5
    assert "allow_mass_removal" in verdict.message and "held" in verdict.message


def test_override_for_one_run() -> None:
    verdict = check_removals(50, 100, 0.1, allow_mass_removal=True)
    assert verdict.passed and "allowed for this run" in verdict.message


def test_the_floor_keeps_small_audiences_moving() -> None:
    # one opt-out in a 9-member audience is 11 %: below the floor of 10 contacts it passes
    assert check_removals(1, 9, 0.1, min_count=10).passed
    assert check_removals(10, 20, 0.1, min_count=10).passed
    assert not check_removals(11, 20, 0.1, min_count=10).passed
    assert not check_removals(2, 9, 0.1, min_count=1).passed
