"""The removal guard as a pure function."""

from __future__ import annotations

from newsletter_pipelines.guards import check_removals


def test_within_the_limit_passes() -> None:
    assert check_removals(10, 100, 0.1).passed
    assert check_removals(0, 0, 0.1).passed


def test_half_the_audience_fails_and_says_how_to_override() -> None:
    verdict = check_removals(50, 100, 0.1)
    assert not verdict.passed and verdict.share == 0.5
    assert "allow_mass_removal" in verdict.message and "Nothing was sent" in verdict.message


def test_override_for_one_run() -> None:
    verdict = check_removals(50, 100, 0.1, allow_mass_removal=True)
    assert verdict.passed and "allowed for this run" in verdict.message
