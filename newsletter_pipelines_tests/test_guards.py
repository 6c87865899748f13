"""The eligible-count drop guard as a pure function."""

from __future__ import annotations

import pytest

from newsletter_pipelines.sync.guards import check_count_drop


def test_first_run_passes_and_sets_the_baseline() -> None:
    verdict = check_count_drop(None, 120, 0.2)
    assert verdict.passed and verdict.baseline == 120


@pytest.mark.parametrize(("current", "passed"), [(100, True), (80, True), (79, False), (0, False)])
def test_drop_limit_is_inclusive(current: int, passed: bool) -> None:
    verdict = check_count_drop(100, current, 0.2)
    assert verdict.passed is passed
    assert verdict.baseline == (current if passed else 100)


def test_growth_is_no_drop() -> None:
    verdict = check_count_drop(100, 150, 0.2)
    assert verdict.passed and verdict.drop_share == 0.0 and verdict.baseline == 150


def test_accepting_a_drop_sets_a_new_baseline() -> None:
    verdict = check_count_drop(100, 10, 0.2, accept_drop=True)
    assert verdict.passed and verdict.baseline == 10 and "accepted" in verdict.message


def test_failure_message_says_what_to_do() -> None:
    verdict = check_count_drop(1000, 500, 0.2)
    assert "50.0%" in verdict.message and "accept_drop" in verdict.message


def test_empty_baseline_does_not_divide_by_zero() -> None:
    assert check_count_drop(0, 0, 0.2).passed
