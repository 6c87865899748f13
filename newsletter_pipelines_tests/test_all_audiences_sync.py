"""A sync of every audience reads the CRM once: `crm_eligibility_job`, then
`audience_syncs_sensor` launches `audience_sync_job` per audience on that result."""

from __future__ import annotations

import dagster as dg
import sqlalchemy as sa

from newsletter_pipelines.definitions import defs
from newsletter_pipelines.defs.providers.sensors import audience_syncs_sensor
from newsletter_pipelines.defs.resources import build_resources
from newsletter_pipelines.settings import Settings
from newsletter_pipelines_tests.test_incremental_sync import (
    edit,
    members,
    request_for,
    run_span,
    sense,
)
from newsletter_pipelines_tests.test_sync_assets import QUIET, metadata

AUDIENCES = ("mailchimp", "brevo")


def run(
    instance: dg.DagsterInstance, job: str, partition: str | None = None
) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance,
        partition_key=partition,
        run_config=QUIET,
        resources=build_resources(Settings()),
        raise_on_error=False,
    )


def fan_out(instance: dg.DagsterInstance, crm: dg.ExecuteInProcessResult) -> list[dg.RunRequest]:
    context = dg.build_run_status_sensor_context(
        sensor_name=audience_syncs_sensor.name,
        dagster_instance=instance,
        dagster_run=crm.dagster_run,
        dagster_event=crm.get_run_success_event(),
    )
    return list(audience_syncs_sensor(context))


def materializations(instance: dg.DagsterInstance, asset: str) -> int:
    records = instance.fetch_materializations(dg.AssetKey(asset), limit=100).records
    return len(records)


def test_every_audience_syncs_on_one_crm_read(settings: Settings) -> None:
    with dg.instance_for_test() as instance:
        crm = run(instance, "crm_eligibility_job")
        assert crm.success
        requests = fan_out(instance, crm)
        crm_run = crm.dagster_run.run_id
        assert [(r.partition_key, r.run_key) for r in requests] == [
            (key, f"{key}:{crm_run}") for key in AUDIENCES
        ]
        eligible = metadata(crm, "eligible_subscribers")["eligible_count"]
        for request in requests:
            result = run(instance, "audience_sync_job", request.partition_key)
            assert result.success
            assert metadata(result, "audience_sync")["created"] == eligible
        assert materializations(instance, "crm_contacts") == 1
        assert materializations(instance, "eligible_subscribers") == 1
        assert materializations(instance, "audience_sync") == len(AUDIENCES)


def test_a_crm_read_stopped_by_its_checks_syncs_no_audience(settings: Settings) -> None:
    with dg.instance_for_test() as instance:
        assert run(instance, "crm_eligibility_job").success
        crm = sa.create_engine(f"sqlite:///{settings.home / 'crm.sqlite3'}")
        with crm.begin() as conn:
            conn.execute(sa.text("UPDATE contacts SET newsletter = 'no' WHERE id % 2 = 0"))
        failed = run(instance, "crm_eligibility_job")
        assert not failed.success
        assert failed.dagster_run.status == dg.DagsterRunStatus.FAILURE  # the sensor only
        # reacts to SUCCESS: no audience runs on a suspicious drop


def test_an_audience_run_leaves_contacts_changed_since_the_crm_read_to_the_change_sensor(
    settings: Settings,
) -> None:
    """The CRM is read, then a contact is edited and the change sensor's run pushes the edit;
    the audience run that follows, decided on the earlier read, must not send the stale
    values back: it leaves that contact to the change sensor's runs."""
    audience = "brevo"
    with dg.instance_for_test() as instance:
        first = run(instance, "crm_eligibility_job")
        assert run(instance, "audience_sync_job", audience).success
        eligible = first.output_for_node("eligible_subscribers", "eligible_subscribers")
        edited = eligible.iloc[0]
        start = sense(instance, settings, None)
        crm = run(instance, "crm_eligibility_job")  # the read the audience run decides on
        edit(
            settings,
            "UPDATE contacts SET first_name = 'Frisch' WHERE id = :id",
            id=int(edited.contact_id),
        )
        request = request_for(sense(instance, settings, start.cursor), audience)
        assert run_span(instance, request, audience).success
        assert members(settings, audience)[edited.email_key].first_name == "Frisch"
        assert fan_out(instance, crm)
        late = run(instance, "audience_sync_job", audience)
        assert late.success
        assert members(settings, audience)[edited.email_key].first_name == "Frisch"
        assert metadata(late, "reconciliation_diff")["left_to_change_sensor"] == 1
