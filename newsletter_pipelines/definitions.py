"""The one Definitions object, loaded by workspace.yaml and the tests."""

import dagster as dg

from newsletter_pipelines.defs.alerts.sensors import (
    alert_on_failed_checks,
    alert_on_run_failure,
    alert_on_stalled_sensors,
)
from newsletter_pipelines.defs.crm.assets import crm_contacts, eligible_subscribers
from newsletter_pipelines.defs.crm.jobs import crm_eligibility_job
from newsletter_pipelines.defs.import_back.assets import crm_import_back
from newsletter_pipelines.defs.import_back.jobs import import_back_job, provider_events_job
from newsletter_pipelines.defs.import_back.schedules import import_back_schedule
from newsletter_pipelines.defs.import_back.sensors import provider_events_sensor
from newsletter_pipelines.defs.providers.assets import (
    audience_sync,
    provider_audience_snapshot,
    reconciliation_diff,
)
from newsletter_pipelines.defs.providers.jobs import (
    audience_sync_job,
    full_sync_job,
    incremental_sync_job,
)
from newsletter_pipelines.defs.providers.schedules import nightly_sync_schedule
from newsletter_pipelines.defs.providers.sensors import audience_syncs_sensor, crm_changes_sensor
from newsletter_pipelines.defs.resources import build_resources

defs = dg.Definitions(
    assets=[
        crm_contacts,
        eligible_subscribers,
        provider_audience_snapshot,
        reconciliation_diff,
        audience_sync,
        crm_import_back,
    ],
    jobs=[
        crm_eligibility_job,
        audience_sync_job,
        full_sync_job,
        incremental_sync_job,
        import_back_job,
        provider_events_job,
    ],
    schedules=[import_back_schedule, nightly_sync_schedule],
    sensors=[
        provider_events_sensor,
        crm_changes_sensor,
        audience_syncs_sensor,
        alert_on_run_failure,
        alert_on_failed_checks,
        alert_on_stalled_sensors,
    ],
    resources=build_resources(),
    # every step of a run in the run's own process: a step process per step (Dagster's default)
    # costs seconds of start-up each, more than a sync of 10,000 contacts takes (README:
    # "Benchmarks"); runs are per audience, so a run has little to do in parallel
    executor=dg.in_process_executor,
)
