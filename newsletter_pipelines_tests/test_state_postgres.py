"""The state database (exclusions, ledger, outcome log) on a real PostgreSQL."""

from __future__ import annotations

import pandas as pd
import pytest
import sqlalchemy as sa

from newsletter_pipelines.state.exclusions import count_by_reason, record_eligibility
from newsletter_pipelines.state.ledger import OutcomeRecord, load_ledger, outcome_counts, record
from newsletter_pipelines.state.schema import ensure_schema
from newsletter_pipelines.sync.guards import check_count_drop
from newsletter_pipelines.sync.identity import Intent, LedgerRow, RowState

pytestmark = pytest.mark.postgres


def row(n: str, state: RowState = RowState.SUBSCRIBED, **extra: object) -> LedgerRow:
    return LedgerRow(
        member_key=f"p{n}@example.de",
        email=f"p{n}@example.de",
        owner=n,
        provider_id=f"id{n}",
        tags=frozenset({"Käufer", "VIP"}),
        state=state,
        **extra,  # type: ignore[arg-type]
    )


def test_ledger_and_outcomes_round_trip(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    ensure_schema(engine, upgrade=True)
    record(
        engine,
        "mailchimp",
        "run-1",
        [row("1"), row("2")],
        logged=[
            OutcomeRecord("1", "p1@example.de", "create", "created"),
            OutcomeRecord(
                "2",
                "p2@example.de",
                "create",
                "refused",
                code="Invalid Resource",
                message="looks fake",
            ),
        ],
    )
    moving = row("2", RowState.UNSUBSCRIBED, intent=Intent.CHANGE_EMAIL, intent_key="n@x.de")
    record(engine, "mailchimp", "run-2", [moving])
    record(engine, "brevo", "run-2", [row("1")])
    ledger = {e.member_key: e for e in load_ledger(engine, "mailchimp")}
    assert set(ledger) == {"p1@example.de", "p2@example.de"}
    assert ledger["p2@example.de"] == moving  # replaced, not duplicated; every field kept
    assert ledger["p1@example.de"].tags == frozenset({"Käufer", "VIP"})
    assert len(load_ledger(engine, "brevo")) == 1
    record(engine, "mailchimp", "run-3", [], deleted=["p1@example.de"])
    assert [r.member_key for r in load_ledger(engine, "mailchimp")] == ["p2@example.de"]
    assert outcome_counts(engine, "run-1") == {("create", "created"): 1, ("create", "refused"): 1}


def test_ledger_loads_in_member_key_order(postgres_url: str) -> None:
    # without ORDER BY, PostgreSQL returns rows in storage order, which updates change
    engine = sa.create_engine(postgres_url)
    ensure_schema(engine, upgrade=True)
    record(engine, "a", "run-1", [row(n) for n in "93718"])
    record(engine, "a", "run-2", [row("3", RowState.REMOVED)])
    assert [r.owner for r in load_ledger(engine, "a")] == list("13789")


def test_exclusions_on_postgres_replace_previous_rows(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    ensure_schema(engine, upgrade=True)
    excluded = pd.DataFrame(
        {
            "contact_id": [1, 2],
            "reason": ["private", "invalid_email"],
            "email": [None, "a\x00b@x"],
            "detail": [None, "bad"],
        }
    )
    record_eligibility(engine, excluded, "run-1", lambda _: check_count_drop(None, 5, 0.2))
    record_eligibility(engine, excluded.iloc[1:], "run-2", lambda b: check_count_drop(b, 5, 0.2))
    assert count_by_reason(engine) == {"invalid_email": 1}
