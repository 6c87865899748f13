"""The production `dagster.yaml` is a valid instance config whose storage lives on PostgreSQL
and whose run queue limits runs per audience and per provider account; the embedded instance
`make` writes has the same run limits."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml
from dagster_postgres import PostgresScheduleStorage

from newsletter_pipelines import instance_storage
from newsletter_pipelines.defs.providers.accounts import runs_per_account
from newsletter_pipelines.instance_storage import (
    PooledPostgresEventLogStorage,
    PooledPostgresRunStorage,
)
from newsletter_pipelines.settings import PROJECT_ROOT


def _production_home(postgres_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """$DAGSTER_HOME holding the production `dagster.yaml`, its database at `postgres_url`."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    url = sa.engine.make_url(postgres_url).set(drivername="postgresql+psycopg2")
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", url.render_as_string(hide_password=False))
    monkeypatch.setenv("DAGSTER_HOME", str(home))


@dg.asset(check_specs=[dg.AssetCheckSpec("positive", asset="numbers")])
def numbers(context) -> Iterator[dg.Output[int] | dg.AssetCheckResult]:
    """An asset with a log line, metadata and a check: every kind of event a run stores."""
    context.log.info("counting")
    yield dg.Output(3, metadata={"count": 3})
    yield dg.AssetCheckResult(passed=True)


@pytest.mark.postgres
def test_production_instance_config_runs_on_postgres(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The file as the README says: copied into $DAGSTER_HOME."""
    _production_home(postgres_url, monkeypatch, tmp_path)
    with dg.DagsterInstance.get() as instance:
        # dagster-postgres's, the run and event log storages keeping a connection open
        assert isinstance(instance.run_storage, PooledPostgresRunStorage)
        assert isinstance(instance.event_log_storage, PooledPostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        limits = instance.get_concurrency_config().run_queue_config
        assert limits.max_concurrent_runs == 4
        assert limits.tag_concurrency_limits[0]["key"] == "dagster/partition"
        assert runs_per_account(instance, "mailchimp") == 2  # 2 runs x 5 connections
        # a run left STARTED by a dead code server is failed (then alerted and retried)
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_max_runtime_seconds == 6 * 3600


def test_the_embedded_instance_has_the_same_run_limits(tmp_path: Path) -> None:
    """`make` writes the demo instance's dagster.yaml with the production concurrency and run
    retry blocks: one run per audience partition there too, failed runs retried."""
    home = tmp_path / "dagster_home"
    subprocess.run(
        ["make", "-s", f"DAGSTER_HOME={home}", f"{home}/dagster.yaml"], cwd=PROJECT_ROOT, check=True
    )
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    production = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    assert config["concurrency"] == production["concurrency"]
    assert config["run_retries"] == production["run_retries"]  # the jobs' dagster/max_retries
    with dg.instance_for_test(overrides=config) as instance:
        limits = instance.get_concurrency_config().run_queue_config
        assert limits.tag_concurrency_limits[0]["key"] == "dagster/partition"
        assert runs_per_account(instance, "mailchimp") == 2


@pytest.mark.postgres
def test_a_run_on_the_production_instance_reuses_its_connections(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """dagster-postgres's own storages open a PostgreSQL connection per query: 2 or more per
    event of a run; these keep one open."""
    _production_home(postgres_url, monkeypatch, tmp_path)

    with dg.DagsterInstance.get() as instance:
        opened = []
        for storage in (instance.run_storage, instance.event_log_storage):
            sa.event.listen(storage._engine, "connect", lambda *_: opened.append(1))
        result = dg.materialize([numbers], instance=instance)
        assert result.success
        events = instance.get_records_for_run(result.run_id).records
        assert len(events) > 15
        # dagster-postgres's own: 55 connections for these 18 events; these: one per storage
        # and a second while the first is taken (the first asset event's index checks)
        assert len(opened) <= 6

        # the server drops the idle connections (a restart): the next run reconnects
        monkeypatch.setattr(instance_storage, "PING_AFTER_IDLE_SECONDS", 0.0)
        killer = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
        with killer.connect() as conn:
            dropped = conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar()
        killer.dispose()
        assert dropped >= 2
        assert dg.materialize([numbers], instance=instance).success


@pytest.mark.postgres
def test_the_event_log_asks_the_catalog_for_a_table_once(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """dagster-postgres asks the server's catalog whether its tag table exists at every asset
    event (3 ms each on a busy machine, 21 times a sync); a table found is not asked for again,
    one not found is (a migration may add it)."""
    _production_home(postgres_url, monkeypatch, tmp_path)

    @dg.asset
    def letters() -> str:
        return "abc"

    with dg.DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        asked: list[str] = []
        sa.event.listen(
            storage._engine,
            "before_cursor_execute",
            lambda _c, _cur, statement, *_: asked.append(statement) if "pg_" in statement else None,
        )
        for _ in range(3):
            assert dg.materialize([letters], instance=instance).success
        assert len(asked) == 1
        assert not storage.has_table("no_such_table")
        assert not storage.has_table("no_such_table")
        assert len(asked) == 3


@pytest.mark.postgres
def test_the_event_log_stores_a_runs_events_without_notifying(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """dagster-postgres sends a NOTIFY after each event for watchers of older versions; Dagster
    1.13 polls instead. Without it a run's events, asset and check events with their index
    rows, are all stored and found as before."""
    _production_home(postgres_url, monkeypatch, tmp_path)

    with dg.DagsterInstance.get() as instance:
        sent: list[str] = []
        sa.event.listen(
            instance.event_log_storage._engine,
            "before_cursor_execute",
            lambda _c, _cur, statement, *_: sent.append(statement),
        )
        result = dg.materialize([numbers], instance=instance)
        assert result.success
        assert sent
        assert not [s for s in sent if "NOTIFY" in s.upper()]
        logged = instance.get_records_for_run(result.run_id).records
        assert any(r.event_log_entry.user_message == "counting" for r in logged)
        latest = instance.get_latest_materialization_event(dg.AssetKey("numbers"))
        assert latest is not None and latest.run_id == result.run_id
        check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey("numbers"), "positive")]
        )
        assert check[dg.AssetCheckKey(dg.AssetKey("numbers"), "positive")].run_id == result.run_id
