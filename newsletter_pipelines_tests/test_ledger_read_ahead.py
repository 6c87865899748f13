"""The ledger read ahead for the diff while the snapshot is read (`StateDatabaseResource`)."""

from __future__ import annotations

import threading
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from newsletter_pipelines.defs import resources
from newsletter_pipelines.defs.resources import StateDatabaseResource
from newsletter_pipelines.sandbox import Sandbox
from newsletter_pipelines.state.ledger import load_ledger_frame, record
from newsletter_pipelines.state.schema import ensure_schema
from newsletter_pipelines.sync.identity import LedgerRow, RowState
from newsletter_pipelines_tests.test_sync_assets import metadata, run_sync

AHEAD = "read ahead while the snapshot was read"


def rows(count: int) -> list[LedgerRow]:
    return [
        LedgerRow(
            member_key=f"p{n}@example.de",
            email=f"p{n}@example.de",
            owner=str(n),
            provider_id=f"id{n}",
            tags=frozenset({"VIP"}),
            state=RowState.SUBSCRIBED,
        )
        for n in range(count)
    ]


def state_db(url: str, count: int) -> StateDatabaseResource:
    """The resource as a run sets it up, on a state database holding `count` ledger rows of
    the audience `mailchimp` (and one of `brevo`)."""
    engine = sa.create_engine(url)
    ensure_schema(engine, upgrade=True)
    record(engine, "mailchimp", "run-0", rows(count))
    record(engine, "brevo", "run-0", rows(1))
    engine.dispose()
    return StateDatabaseResource(database_url=url)


@pytest.mark.postgres
def test_a_ledger_read_ahead_is_the_ledger_the_step_would_read(postgres_url: str) -> None:
    resource = state_db(postgres_url, 30)
    assert resource.read_ledger_early("mailchimp", most=30)
    frame, how = resource.ledger_frame("mailchimp")
    assert how == AHEAD
    pd.testing.assert_frame_equal(frame, load_ledger_frame(resource.engine(), "mailchimp"))
    assert len(frame) == 30
    # taken once: a second take reads in the step
    assert resource.ledger_frame("mailchimp")[1] == "read in the step"


@pytest.mark.postgres
def test_a_ledger_over_the_bound_is_read_in_the_step(postgres_url: str) -> None:
    resource = state_db(postgres_url, 31)
    assert resource.read_ledger_early("mailchimp", most=30)
    frame, how = resource.ledger_frame("mailchimp")
    assert how == "read in the step: too many rows to read ahead"
    assert len(frame) == 31


@pytest.mark.postgres
def test_a_failed_read_ahead_is_read_again_and_said(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object) -> None:
        raise sa.exc.OperationalError("SELECT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(resources, "load_small_ledger_frame", broken)
    resource = state_db(postgres_url, 3)
    assert resource.read_ledger_early("mailchimp", most=30)
    frame, how = resource.ledger_frame("mailchimp")
    assert how == "read in the step: its read ahead failed (OperationalError)"  # no message
    assert len(frame) == 3


def test_a_sqlite_ledger_is_not_read_ahead(tmp_path: Path) -> None:
    resource = state_db(f"sqlite:///{tmp_path / 'state.sqlite3'}", 3)
    assert not resource.read_ledger_early("mailchimp", most=30)
    frame, how = resource.ledger_frame("mailchimp")
    assert (len(frame), how) == (3, "read in the step")


@pytest.mark.postgres
def test_a_read_ahead_no_step_took_ends_with_the_run(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = threading.Event(), threading.Event()

    def slow(*_args: object) -> None:
        started.set()
        release.wait(5)

    monkeypatch.setattr(resources, "load_small_ledger_frame", slow)
    resource = state_db(postgres_url, 3)
    context = dg.build_init_resource_context()
    assert resource.read_ledger_early("mailchimp", most=30)
    assert started.wait(5)
    threading.Timer(0.2, release.set).start()
    resource.teardown_after_execution(context)
    assert release.is_set()  # waited for
    assert resource.ledger_frame("mailchimp")[1] == "read in the step"  # and let go


@pytest.mark.postgres
def test_a_rerun_on_postgresql_diffs_on_the_ledger_read_ahead(
    sandbox: Sandbox, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both runs of `full_sync_job` read the ledger while the snapshot is read; the re-run's
    diff finds every member the first run created in it, and nothing to send."""
    monkeypatch.setenv("NEWSLETTER_STATE_DATABASE_URL", postgres_url)
    with dg.instance_for_test() as instance:
        first = run_sync(instance, "mailchimp")
        second = run_sync(instance, "mailchimp")
    assert first.success and second.success
    created = metadata(first, "audience_sync")["created"]
    assert metadata(first, "reconciliation_diff")["ledger_read"] == AHEAD
    diff = metadata(second, "reconciliation_diff")
    assert diff["ledger_read"] == AHEAD
    assert diff["ledger_rows"] == created > 0
    assert diff["action_unchanged"] == created
    assert diff["action_create"] == diff["action_update"] == 0


def test_a_read_ahead_that_cannot_start_leaves_the_ledger_to_the_diff(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state database the snapshot step cannot reach does not fail the snapshot: it warns,
    and the diff reads the ledger (here: reachable again)."""

    def unreachable(_self: StateDatabaseResource, _audience: str, _most: int) -> bool:
        raise sa.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(StateDatabaseResource, "read_ledger_early", unreachable)
    with dg.instance_for_test() as instance:
        result = run_sync(instance, "mailchimp")
        warnings = [
            e.message
            for e in instance.all_logs(result.run_id)
            if e.level >= 30 and "not read ahead" in (e.message or "")
        ]
    assert result.success
    assert warnings == [
        "mailchimp: the ledger is not read ahead (OperationalError); the diff reads it"
    ]
    assert metadata(result, "reconciliation_diff")["ledger_read"] == "read in the step"


def test_only_postgresql_is_read_ahead() -> None:
    """An in-memory SQLite state database (no file) is not read ahead either: a thread's
    connection to it would be another, empty, database."""
    resource = StateDatabaseResource(database_url="sqlite://", upgrade_schema=True)
    assert not resource.read_ledger_early("mailchimp", most=30)
    assert resource.ledger_frame("mailchimp")[1] == "read in the step"
