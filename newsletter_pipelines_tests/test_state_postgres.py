"""The state database (exclusions, ledger, outcome log) on a real PostgreSQL."""

from __future__ import annotations

import pandas as pd
import pytest
import sqlalchemy as sa

from newsletter_pipelines.sync.rules import LedgerEntry
from newsletter_pipelines.state.exclusions import count_by_reason, replace_exclusions
from newsletter_pipelines.state.ledger import (
    OutcomeRecord,
    create_tables,
    load_ledger,
    outcome_counts,
    record,
)

pytestmark = pytest.mark.postgres


def entry(crm_id: str, status: str = "subscribed") -> LedgerEntry:
    return LedgerEntry(
        crm_id,
        f"p{crm_id}@example.de",
        f"p{crm_id}@example.de",
        f"id{crm_id}",
        "hash",
        frozenset({"Käufer", "VIP"}),
        status,
    )


def test_ledger_and_outcomes_round_trip(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    create_tables(engine)
    record(
        engine,
        "mailchimp",
        "run-1",
        [entry("1"), entry("2")],
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
    record(engine, "mailchimp", "run-2", [entry("2", "unsubscribed")])
    record(engine, "brevo", "run-2", [entry("1")])
    ledger = {e.crm_id: e for e in load_ledger(engine, "mailchimp")}
    assert set(ledger) == {"1", "2"}
    assert ledger["2"].provider_status == "unsubscribed"  # replaced, not duplicated
    assert ledger["1"].tags == frozenset({"Käufer", "VIP"})
    assert len(load_ledger(engine, "brevo")) == 1
    assert outcome_counts(engine, "run-1") == {("create", "created"): 1, ("create", "refused"): 1}


def test_exclusions_on_postgres_replace_previous_rows(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    excluded = pd.DataFrame(
        {
            "contact_id": [1, 2],
            "reason": ["private", "invalid_email"],
            "email": [None, "a\x00b@x"],
            "detail": [None, "bad"],
        }
    )
    replace_exclusions(engine, excluded, "run-1")
    replace_exclusions(engine, excluded.iloc[1:], "run-2")
    assert count_by_reason(engine) == {"invalid_email": 1}
