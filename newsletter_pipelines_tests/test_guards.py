"""The eligible-count drop guard as a pure function."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from newsletter_pipelines.state.columns import TEXT
from newsletter_pipelines.sync.guards import (
    MassLimits,
    check_count_drop,
    push_verdicts,
    resubscribe_violations,
)
from newsletter_pipelines.sync.identity import LedgerRow, RowState


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


def _ledger_row(key: str, state: RowState) -> LedgerRow:
    return LedgerRow(
        member_key=key, email=key, owner=None, provider_id=None, tags=frozenset(), state=state
    )


def test_never_resubscribe_flags_each_kind_of_write_that_would_subscribe_an_opt_out() -> None:
    """Each of the check's reasons flags exactly its rows, among rows that are no writes, and
    the flagged rows come back whole, with their index."""
    rows = [  # crm_id, action, provider_status, match_key, ledger_before; flagged?
        ("1", "update", "unsubscribed", "a@x.de", None, True),
        ("2", "create", "cleaned", "b@x.de", None, True),
        ("3", "unchanged", "unsubscribed", "c@x.de", None, False),  # no write
        ("4", "create", "archived", "d@x.de", None, True),  # consent unknown
        ("5", "create", "archived", "e@x.de", _ledger_row("e@x.de", RowState.REMOVED), False),
        ("6", "create", "archived", "f@x.de", _ledger_row("f@x.de", RowState.GONE), True),
        ("7", "create", None, "blocked@x.de", None, True),  # opt-out in the ledger at the key
        ("8", "update", None, "blocked@x.de", None, False),  # updates: by provider status only
        ("owner", "create", None, "new@x.de", None, True),  # its opted-out row elsewhere
        ("9", "create", "subscribed", "g@x.de", None, False),
        ("10", "remove", "unsubscribed", "h@x.de", None, False),
    ]
    diff = pd.DataFrame(
        [r[:5] for r in rows],
        columns=["crm_id", "action", "provider_status", "match_key", "ledger_before"],
        index=pd.RangeIndex(100, 100 + len(rows)),
    ).assign(detail="kept")
    ledger = pd.DataFrame(
        {
            "member_key": ["blocked@x.de", "old@x.de", "e@x.de"],
            "owner": ["7", "owner", "5"],
            "state": ["unsubscribed", "opted_out", "removed"],
        },
        dtype=TEXT,
    )
    found = resubscribe_violations(diff, ledger)
    expected = diff[[r[5] for r in rows]]
    pd.testing.assert_frame_equal(found, expected)
    # a person subscribed the opted-out member again: its owner may be created elsewhere
    active = pd.DataFrame(
        [("x", "unchanged", "subscribed", "old@x.de", None)], columns=diff.columns[:5]
    ).assign(detail="kept")
    again = resubscribe_violations(pd.concat([diff, active], ignore_index=True), ledger)
    assert "owner" not in set(again["crm_id"])


COUNTED_ROWS = st.tuples(
    st.sampled_from(["update", "unsubscribe", "remove", "create", "unchanged", "import_back"]),
    st.sampled_from([None, "subscribed", "pending", "unsubscribed", "cleaned", "archived"]),
    st.sampled_from([None, "alt@x.de", ""]),
)


@given(st.lists(COUNTED_ROWS, max_size=30), st.integers(0, 3))
def test_the_mass_guards_decide_alike_on_arrow_text_and_on_python_objects(
    rows: list[tuple[str, str | None, str | None]], min_count: int
) -> None:
    """The push reads the diff's counted columns as Arrow text (a missing value NaN): its
    guards count what they count on the Python objects the diff step holds (None)."""
    objects = pd.DataFrame(rows, columns=["action", "provider_status", "old_email"], dtype=object)
    limits = MassLimits(0.1, min_count, 0.1, min_count)
    for allow in (False, True):
        expected = push_verdicts(objects, limits, allow, allow)
        assert push_verdicts(objects.astype(TEXT), limits, allow, allow) == expected
