"""The audiences of one provider account share its connections: every way a run of a provider
job is created tags it with the account, the production run queue lets two runs of one
account run at once and holds the third, each run's Mailchimp client keeps to its share of the
account's 10 connections, and a run the queue did not count never reaches the provider."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin
from dagster._core.test_utils import create_run_for_test, create_test_daemon_workspace_context
from dagster._core.workspace.load_target import EmptyWorkspaceTarget
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
    QueuedRunCoordinatorDaemon,
)
from dagster._grpc.impl import get_partition_set_execution_param_data, get_partition_tags

from newsletter_pipelines.definitions import defs
from newsletter_pipelines.defs.import_back.schedules import import_back_schedule
from newsletter_pipelines.defs.import_back.sensors import provider_events_sensor
from newsletter_pipelines.defs.providers.accounts import (
    ACCOUNT_TAG,
    MAILCHIMP_ACCOUNT_CONNECTIONS,
    PROVIDER_JOBS,
    mailchimp_connections,
    runs_per_account,
)
from newsletter_pipelines.defs.providers.assets import provider_audience_snapshot
from newsletter_pipelines.defs.providers.clients import shared_client
from newsletter_pipelines.defs.providers.partitions import audience_config
from newsletter_pipelines.defs.providers.sensors import audience_syncs_sensor, crm_changes_sensor
from newsletter_pipelines.defs.resources import build_resources
from newsletter_pipelines.providers.resources import MailchimpResource, embedded_sandbox
from newsletter_pipelines.settings import PROJECT_ROOT, Settings
from newsletter_pipelines.state.events import NewEvent, store_events
from newsletter_pipelines_tests.test_incremental_sync import edit
from newsletter_pipelines_tests.test_schedules import tick
from newsletter_pipelines_tests.test_sync_assets import QUIET

ACCOUNTS = {"mailchimp": "mailchimp", "brevo": "brevo"}  # audience partition → its account
PARTITION_TAG = "dagster/partition"
PRODUCTION = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())


def account_of(request_or_run: Any) -> tuple[str, str | None]:
    tags = request_or_run.tags
    return tags[PARTITION_TAG], tags.get(ACCOUNT_TAG)


def limited_instance(**overrides: Any) -> Any:
    """A test instance with the production run queue (run limits and tag limits)."""
    return dg.instance_for_test(overrides={"concurrency": PRODUCTION["concurrency"], **overrides})


def test_every_partitioned_job_is_a_provider_job_with_the_account_config() -> None:
    repo = defs.get_repository_def()
    partitioned = {
        job.name
        for job in repo.get_all_jobs()
        if job.partitions_def is not None and not job.name.startswith("__")
    }
    assert partitioned == set(PROVIDER_JOBS)
    for name in PROVIDER_JOBS:
        assert repo.get_job(name).partitioned_config is audience_config


@pytest.mark.parametrize("job", PROVIDER_JOBS)
def test_launchpad_and_job_backfill_runs_carry_the_account(job: str) -> None:
    """What the code server answers the launchpad for a partition (the UI launches with these
    tags and this config merged into its own) and what a job backfill's runs are made of."""
    repo = defs.get_repository_def()
    for partition, account in ACCOUNTS.items():
        tags = get_partition_tags(repo, job, partition)
        assert account_of(tags) == (partition, account), tags
    backfill = get_partition_set_execution_param_data(repo, f"{job}_partition_set", list(ACCOUNTS))
    assert [account_of(p) for p in backfill.partition_data] == list(ACCOUNTS.items())
    assert [p.run_config for p in backfill.partition_data] == [{}, {}]  # nothing of its own


def test_the_asset_graphs_own_job_does_not_tag_runs() -> None:
    """Materialize on an asset page and asset backfills run the implicit asset job: no account
    tag, which is why provider steps check it (test below)."""
    implicit = defs.resolve_implicit_global_asset_job_def()
    assert ACCOUNT_TAG not in implicit.get_tags_for_partition_key("mailchimp", None)


def test_nightly_schedule_run_requests_carry_the_account() -> None:
    requests = tick(import_back_schedule)  # resolved as the daemon resolves them
    assert [account_of(r) for r in requests] == list(ACCOUNTS.items())


def test_change_sensor_run_requests_carry_the_account_and_keep_their_config(
    settings: Settings,
) -> None:
    crm = build_resources(settings)["crm"]
    with dg.instance_for_test() as instance:

        def evaluate(cursor: str | None) -> dg.SensorResult:
            with dg.build_sensor_context(
                instance=instance, cursor=cursor, resources={"crm": crm}, definitions=defs
            ) as context:
                return crm_changes_sensor.evaluate_tick(context)

        first = evaluate(None)  # sets the watermark
        edit(settings, "UPDATE contacts SET first_name = 'Tagged' WHERE id = 19")
        second = evaluate(first.cursor)
    requests = second.run_requests or []
    assert [account_of(r) for r in requests] == list(ACCOUNTS.items())
    assert all(r.run_config["ops"]["push_crm_changes"]["config"]["upto"] for r in requests)


def test_events_sensor_run_requests_carry_the_account(settings: Settings) -> None:
    state_db = build_resources(settings)["state_db"]
    store_events(
        state_db.engine(),
        [
            NewEvent(audience, audience, "unsubscribe", f"{audience}@example.com", {}, audience)
            for audience in ACCOUNTS
        ],
    )
    with (
        dg.instance_for_test() as instance,
        dg.build_sensor_context(
            instance=instance, resources={"state_db": state_db}, definitions=defs
        ) as context,
    ):
        result = provider_events_sensor.evaluate_tick(context)
    requests = result.run_requests or []
    assert sorted(account_of(r) for r in requests) == sorted(ACCOUNTS.items())
    assert all(r.run_config["ops"]["apply_provider_events"]["config"] for r in requests)


def test_audience_syncs_sensor_run_requests_carry_the_account() -> None:
    with dg.instance_for_test() as instance:
        crm_run = create_run_for_test(instance, job_name="crm_eligibility_job")
        context = dg.build_run_status_sensor_context(
            sensor_name=audience_syncs_sensor.name,
            dagster_instance=instance,
            dagster_run=crm_run,
            dagster_event=DagsterEvent(
                DagsterEventType.RUN_SUCCESS.value, job_name="crm_eligibility_job"
            ),
        )
        raw = list(audience_syncs_sensor(context))
        with dg.build_sensor_context(instance=instance, definitions=defs) as sensor_context:
            # what the daemon does with a sensor's requests for a partition
            requests = audience_syncs_sensor.resolve_run_requests(raw, sensor_context, None, [])
    assert [account_of(r) for r in requests] == list(ACCOUNTS.items())
    assert all(r.tags["crm_run"] == crm_run.run_id for r in requests)


@pytest.mark.parametrize("audience", list(ACCOUNTS))
def test_an_in_process_run_carries_the_account_and_reaches_it(
    audience: str, settings: Settings
) -> None:
    """`execute_in_process(partition_key=...)` (the demo, the tests) on the production queue:
    tagged, so its provider steps go on; the run config it was given is its own."""
    job = defs.resolve_job_def("import_back_job")
    with limited_instance() as instance:
        result = job.execute_in_process(
            instance=instance,
            partition_key=audience,
            run_config={**QUIET, "ops": {"crm_import_back": {"config": {"dry_run": True}}}},
            resources=build_resources(settings),
            raise_on_error=False,
        )
        logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert result.success
    assert account_of(result.dagster_run) == (audience, ACCOUNTS[audience])
    share = f"{audience}: at most 2 runs of the mailchimp account at once, this one opens at most 5"
    assert any(share in m for m in logs) == (audience == "mailchimp")
    assert result.dagster_run.run_config["ops"]["crm_import_back"]["config"]["dry_run"]


def test_a_run_the_queue_did_not_count_never_reaches_the_account_in_production(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Materialize on an asset page (the implicit asset job, no account tag) on an instance
    whose queue limits accounts: in production the step fails before any call; with the tag
    added it runs."""
    production = settings.model_copy(update={"deployment": "production"})
    monkeypatch.setattr("newsletter_pipelines.defs.providers.accounts._SETTINGS", production)
    sandbox = embedded_sandbox(settings.home / "sandbox.json")
    resources = build_resources(settings)
    with limited_instance() as instance:
        untagged = dg.materialize(
            [provider_audience_snapshot],
            partition_key="mailchimp",
            instance=instance,
            resources=resources,
            raise_on_error=False,
        )
        assert not untagged.success
        (failure,) = [e for e in untagged.all_events if e.is_step_failure]
        message = failure.step_failure_data.user_failure_data.description
        assert f"{ACCOUNT_TAG}=(none), not mailchimp" in message
        assert "full_sync_job" in message
        assert sandbox.stats.count("mailchimp") == 0  # no call left this run

        tagged = dg.materialize(
            [provider_audience_snapshot],
            partition_key="mailchimp",
            instance=instance,
            resources=resources,
            tags={ACCOUNT_TAG: "mailchimp"},
        )
        assert tagged.success
        assert sandbox.stats.count("mailchimp") > 0


def test_a_run_the_queue_did_not_count_only_warns_in_the_embedded_demo(settings: Settings) -> None:
    sandbox = embedded_sandbox(settings.home / "sandbox.json")
    with limited_instance() as instance:
        untagged = dg.materialize(
            [provider_audience_snapshot],
            partition_key="mailchimp",
            instance=instance,
            resources=build_resources(settings),
        )
        logs = [e.user_message for e in instance.all_logs(untagged.run_id)]
    assert untagged.success and sandbox.stats.count("mailchimp") > 0
    assert any("Going on: the embedded sandbox has no connection limit" in m for m in logs)


def test_the_production_queue_limit_and_the_connections_per_run_fit_the_account(
    postgres_url: str,
) -> None:
    default = Settings().mailchimp_max_connections
    assert default == MAILCHIMP_ACCOUNT_CONNECTIONS  # a run alone may use them all
    with limited_instance() as instance:
        runs = runs_per_account(instance, "mailchimp")
        assert runs == runs_per_account(instance, "brevo") == 2  # every account alike
    # without the state database's connection slots, a run keeps to its fixed share
    assert runs * mailchimp_connections(runs, default) <= MAILCHIMP_ACCOUNT_CONNECTIONS
    assert mailchimp_connections(runs, default) == 5
    assert mailchimp_connections(3, 5) == 3
    assert mailchimp_connections(1, 10) == 10
    assert mailchimp_connections(None, 10) == 10  # no queue limit: the setting alone
    with pytest.raises(dg.Failure, match="more than its 10 simultaneous connections"):
        mailchimp_connections(11, 5)
    client = MailchimpResource(max_connections=5).client("CRM Newsletter", max_connections=3)
    try:
        assert client._api.max_connections == 3
    finally:
        client.close()
    audience = Settings().audience("mailchimp")
    for settings, connections in (
        (Settings(), 5),  # SQLite: the fixed share
        (Settings(state_database_url=postgres_url), default),  # the slots keep to the account's
    ):
        resource = build_resources(settings)["mailchimp"]
        with shared_client(audience, runs, resource) as client:
            assert client._api.max_connections == connections


@pytest.mark.parametrize(
    ("rule", "mailchimp", "brevo"),
    [
        ({"value": {"applyLimitPerUniqueValue": True}, "limit": 2}, 2, 2),
        ({"value": "mailchimp", "limit": 1}, 1, None),
        ({"limit": 3}, 3, 3),  # all accounts together: still a bound on each
    ],
)
def test_the_account_limit_is_read_from_any_form_of_the_rule(
    rule: dict[str, Any], mailchimp: int | None, brevo: int | None
) -> None:
    limits = [{"key": PARTITION_TAG, "limit": 1}, {"key": ACCOUNT_TAG, **rule}]
    config = {"runs": {"max_concurrent_runs": 4, "tag_concurrency_limits": limits}}
    with dg.instance_for_test(overrides={"concurrency": config}) as instance:
        assert runs_per_account(instance, "mailchimp") == mailchimp
        assert runs_per_account(instance, "brevo") == brevo
    with dg.instance_for_test() as instance:
        assert runs_per_account(instance, "mailchimp") is None


def test_the_run_queue_holds_a_third_run_of_one_account() -> None:
    """The production queue (QueuedRunCoordinator's daemon, a launcher that only records): of
    three Mailchimp audiences' runs two start and the third waits until one of them ends, while
    a Brevo run starts beside them."""
    launcher = {"module": "dagster._core.test_utils", "class": "MockedRunLauncher"}
    location = RegisteredCodeLocationOrigin("newsletter_pipelines")
    origin = RemoteRepositoryOrigin(location, "__repository__").get_job_origin("audience_sync_job")
    with limited_instance(run_launcher=launcher) as instance:
        runs = {
            key: create_run_for_test(
                instance,
                job_name="audience_sync_job",
                status=dg.DagsterRunStatus.QUEUED,
                tags={PARTITION_TAG: key, ACCOUNT_TAG: account},
                remote_job_origin=origin,
            ).run_id
            for key, account in [
                ("news-a", "mailchimp"),
                ("news-b", "mailchimp"),
                ("news-c", "mailchimp"),
                ("brevo", "brevo"),
            ]
        }
        with (
            create_test_daemon_workspace_context(EmptyWorkspaceTarget(), instance) as workspace,
            QueuedRunCoordinatorDaemon(interval_seconds=1) as daemon,
        ):

            def dequeue() -> set[str]:
                list(daemon.run_iteration(workspace, fixed_iteration_time=_now()))
                launched = {run.run_id for run in instance.run_launcher.queue()}
                return {key for key, run_id in runs.items() if run_id in launched}

            assert dequeue() == {"news-a", "news-b", "brevo"}
            assert instance.get_run_by_id(runs["news-c"]).status == dg.DagsterRunStatus.QUEUED
            instance.report_dagster_event(
                DagsterEvent(DagsterEventType.RUN_SUCCESS.value, job_name="audience_sync_job"),
                run_id=runs["news-a"],
            )
            assert dequeue() == set(runs)


def _now() -> float:
    return datetime.now(UTC).timestamp()
