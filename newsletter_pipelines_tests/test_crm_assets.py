"""The `crm` assets through Dagster's testing API on ephemeral instances."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from newsletter_pipelines.defs.crm import assets
from newsletter_pipelines.defs.crm.assets import crm_contacts, eligible_subscribers
from newsletter_pipelines.defs.resources import build_resources
from newsletter_pipelines.settings import Settings
from newsletter_pipelines.state.exclusions import count_by_reason
from newsletter_pipelines.sync.eligibility import EXCLUDED_COLUMNS, REASONS

CHECKS = {"unique_email_keys", "valid_emails", "eligible_count_drop"}
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


@pytest.fixture
def crm_url(demo_crm_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A writable copy of the demo CRM, configured through NEWSLETTER_CRM_DATABASE_URL."""
    copy = tmp_path / "crm.sqlite3"
    shutil.copy(demo_crm_file, copy)
    url = f"sqlite:///{copy}"
    monkeypatch.setenv("NEWSLETTER_CRM_DATABASE_URL", url)
    return url


def materialize(
    instance: dg.DagsterInstance,
    extra: list[dg.AssetsDefinition] | None = None,
    accept_drop: bool = False,
) -> dg.ExecuteInProcessResult:
    run_config = dict(QUIET)
    if accept_drop:
        run_config["ops"] = {"eligible_subscribers": {"config": {"accept_drop": True}}}
    return dg.materialize(
        [crm_contacts, eligible_subscribers, *(extra or [])],
        resources=build_resources(Settings()),
        instance=instance,
        run_config=run_config,
        raise_on_error=False,
    )


def eligible_metadata(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    events = result.asset_materializations_for_node("eligible_subscribers")
    event = [e for e in events if e.asset_key == dg.AssetKey("eligible_subscribers")][-1]
    return {key: value.value for key, value in event.metadata.items()}


def checks_of(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_materialize_crm_group_reports_every_count(crm_url: str) -> None:
    with dg.instance_for_test() as instance:
        result = materialize(instance)
    assert result.success
    contacts = result.asset_materializations_for_node("crm_contacts")[-1].metadata
    rows = contacts["row_count"].value
    assert "•••@" in contacts["preview"].value  # emails are masked in the preview
    meta = eligible_metadata(result)
    excluded = {r: meta[f"excluded_{r}"] for r in REASONS}
    assert meta["eligible_count"] + sum(excluded.values()) == rows == meta["crm_rows"]
    assert all(count > 0 for count in excluded.values()), excluded
    assert "| excluded: duplicate" in meta["counts"]
    assert checks_of(result) == dict.fromkeys(CHECKS, True)
    eligible = result.output_for_node("eligible_subscribers", "eligible_subscribers")
    assert isinstance(eligible, pd.DataFrame) and len(eligible) == meta["eligible_count"]
    excluded_frame = result.output_for_node("eligible_subscribers", "excluded_contacts")
    assert list(excluded_frame.columns) == list(EXCLUDED_COLUMNS)
    assert excluded_frame["reason"].value_counts().to_dict() == {
        r: c for r, c in excluded.items() if c
    }
    state = sa.create_engine(Settings().resolved_state_database_url())
    assert count_by_reason(state) == {r: c for r, c in excluded.items() if c}


def test_private_contacts_leave_no_email_in_the_exclusions_table(crm_url: str) -> None:
    with dg.instance_for_test() as instance:
        assert materialize(instance).success
    state = sa.create_engine(Settings().resolved_state_database_url())
    with state.connect() as conn:
        emails = conn.execute(
            sa.text(
                "SELECT count(*) FROM eligibility_exclusions WHERE reason = 'private'"
                " AND email IS NOT NULL"
            )
        ).scalar_one()
    assert emails == 0


def _counts(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    meta = eligible_metadata(result)
    return {r: meta[f"excluded_{r}"] for r in REASONS} | {"eligible": meta["eligible_count"]}


def test_eligibility_reads_the_newsletter_column_through_the_configured_values(
    crm_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with dg.instance_for_test() as instance:
        expected = _counts(materialize(instance))
    with sa.create_engine(crm_url).begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE contacts SET newsletter = CASE lower(trim(newsletter))"
                " WHEN 'yes' THEN ' Opt-In' WHEN 'no' THEN 'opt-out' ELSE newsletter END"
            )
        )
    monkeypatch.setenv("NEWSLETTER_CRM_VALUES__YES", "opt-in")
    monkeypatch.setenv("NEWSLETTER_CRM_VALUES__NO", "OPT-OUT")
    monkeypatch.setattr(assets, "_SETTINGS", Settings())
    with dg.instance_for_test() as instance:
        result = materialize(instance)
    assert _counts(result) == expected
    excluded = result.output_for_node("eligible_subscribers", "excluded_contacts")
    opted_out = excluded.loc[excluded["reason"] == "opted_out", "newsletter"]
    assert set(opted_out) == {"no"} and set(excluded["newsletter"]) == {"yes", "no", "unknown"}
    assert str(excluded["updated_at"].dtype) == "datetime64[ns, UTC]"


def _opt_out_half(crm_url: str) -> None:
    engine = sa.create_engine(crm_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE contacts SET newsletter = 'no' WHERE id % 2 = 0"))


@dg.asset(deps=["eligible_subscribers"])
def downstream_push() -> None:
    """Stands for the provider push: must not run when a blocking check fails."""


def test_count_drop_fails_blocks_downstream_and_keeps_the_baseline(crm_url: str) -> None:
    with dg.instance_for_test() as instance:
        first = materialize(instance, [downstream_push])
        assert first.success
        baseline = eligible_metadata(first)["eligible_count"]
        _opt_out_half(crm_url)

        second = materialize(instance, [downstream_push])
        assert not second.success
        assert checks_of(second)["eligible_count_drop"] is False
        assert not second.asset_materializations_for_node("downstream_push")
        assert eligible_metadata(second)["eligible_baseline"] == baseline

        third = materialize(instance, [downstream_push])  # repeating does not launder the drop
        assert checks_of(third)["eligible_count_drop"] is False

        accepted = materialize(instance, [downstream_push], accept_drop=True)
        assert accepted.success
        assert accepted.asset_materializations_for_node("downstream_push")
        new_baseline = eligible_metadata(accepted)["eligible_baseline"]
        assert new_baseline == eligible_metadata(accepted)["eligible_count"] < baseline


def test_embedded_demo_crm_is_built_on_first_use(settings: Settings) -> None:
    assert not Path(settings.home / "crm.sqlite3").exists()
    with dg.instance_for_test() as instance:
        result = materialize(instance)
    assert result.success
    assert (settings.home / "crm.sqlite3").exists()


def test_unreachable_crm_fails_the_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NEWSLETTER_CRM_DATABASE_URL", f"sqlite:///{tmp_path / 'missing.sqlite3'}")
    with dg.instance_for_test() as instance:
        result = materialize(instance)
    assert not result.success
    assert not result.asset_materializations_for_node("eligible_subscribers")


@pytest.mark.postgres
def test_materialization_on_a_postgres_dagster_instance(crm_url: str, postgres_url: str) -> None:
    # dagster-postgres speaks psycopg2; SQLAlchemy 2.1's default driver for postgresql:// is psycopg
    dagster_url = sa.engine.make_url(postgres_url).set(drivername="postgresql+psycopg2")
    overrides = {
        "storage": {"postgres": {"postgres_url": dagster_url.render_as_string(hide_password=False)}}
    }
    with dg.instance_for_test(overrides=overrides) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        result = materialize(instance)
        assert result.success
        latest = instance.get_latest_materialization_event(dg.AssetKey("eligible_subscribers"))
        assert latest is not None
        assert latest.asset_materialization.metadata["eligible_count"].value > 0


# one eligibility run in its own process, as the run launcher starts it; prints run id and count
RUN_ONE = """
import dagster as dg
from newsletter_pipelines.defs.crm.assets import crm_contacts, eligible_subscribers
from newsletter_pipelines.defs.resources import build_resources
from newsletter_pipelines.settings import Settings
with dg.instance_for_test() as instance:
    result = dg.materialize(
        [crm_contacts, eligible_subscribers], resources=build_resources(Settings()),
        instance=instance,
    )
    events = result.asset_materializations_for_node("eligible_subscribers")
    count = [e for e in events if e.asset_key.path == ["eligible_subscribers"]][-1]
    print(result.run_id, count.metadata["eligible_count"].value)
"""


@pytest.mark.postgres
def test_two_concurrent_runs_store_one_runs_exclusions_and_baseline(
    crm_url: str, postgres_url: str
) -> None:
    """Two eligibility runs at the same time in two processes, state database on PostgreSQL:
    both succeed, the exclusions are exactly one run's and the baseline is that run's."""
    env = {**os.environ, "NEWSLETTER_STATE_DATABASE_URL": postgres_url}
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", RUN_ONE], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    eligible = dict(line.split()[-2:] for line in outputs)
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        ids = conn.execute(sa.text("SELECT DISTINCT run_id FROM eligibility_exclusions")).all()
        keys = conn.execute(
            sa.text("SELECT count(*), count(DISTINCT contact_id) FROM eligibility_exclusions")
        ).one()
        base = conn.execute(sa.text("SELECT eligible_count, run_id FROM eligibility_baseline"))
        base = base.all()
    engine.dispose()
    assert len(ids) == 1 and ids[0][0] in eligible and keys[0] == keys[1] > 0
    assert len(base) == 1 and str(base[0][0]) == eligible[base[0][1]]
