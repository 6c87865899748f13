"""`crm_changes_sensor`: a run of `incremental_sync_job` per audience when CRM contacts changed;
`audience_syncs_sensor`: a run of `audience_sync_job` per audience after each CRM read."""

from datetime import timedelta

import dagster as dg

from newsletter_pipelines.crm.changes import changed_after, changed_between, latest_change
from newsletter_pipelines.crm.errors import CrmError
from newsletter_pipelines.defs.crm.jobs import crm_eligibility_job
from newsletter_pipelines.defs.providers.jobs import audience_sync_job, incremental_sync_job
from newsletter_pipelines.defs.providers.partitions import audience_partitions
from newsletter_pipelines.defs.resources import CrmResource
from newsletter_pipelines.settings import Settings
from newsletter_pipelines.sync.changes import Cursor, Mark, digest, next_span, window_start

_SETTINGS = Settings()


@dg.sensor(
    job=incremental_sync_job,
    minimum_interval_seconds=_SETTINGS.change_sensor_seconds,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every NEWSLETTER_CHANGE_SENSOR_SECONDS: the CRM contacts whose updated_at "
    "passed the watermark (at most NEWSLETTER_CHANGE_BATCH a tick, looking back "
    "NEWSLETTER_CHANGE_OVERLAP_SECONDS for late commits) → one incremental_sync_job run per "
    "audience, run key <audience>:<watermark>. Never calls a provider; a failed CRM read skips "
    "the tick and keeps the cursor. The first tick only sets the watermark.",
)
def crm_changes_sensor(
    context: dg.SensorEvaluationContext, crm: CrmResource
) -> dg.SensorResult | dg.SkipReason:
    cursor = Cursor.loads(context.cursor)
    engine, schema = crm.engine(), crm.crm_schema
    overlap = timedelta(seconds=_SETTINGS.change_overlap_seconds)
    try:
        if cursor.mark is None:
            start = latest_change(engine, schema)
            if start is None:
                return dg.SkipReason("no CRM contact has an updated_at yet")
            return dg.SensorResult(
                skip_reason=f"watermark set at {start.text()}: later changes are pushed",
                cursor=Cursor(start, _window_digest(crm, start, overlap)).dumps(),
            )
        fresh = changed_after(engine, schema, cursor.mark, _SETTINGS.change_batch)
        window = _window(crm, cursor.mark, overlap)
        span = next_span(cursor, fresh, window, overlap)
        if span is None:
            return dg.SkipReason(f"no CRM changes after {cursor.mark.text()}")
        moved = Cursor(span.upto, _window_digest(crm, span.upto, overlap))
    except CrmError as exc:
        return dg.SkipReason(f"cannot read the CRM's changes, cursor kept: {exc}")
    config = {"after": span.after.text() if span.after else None, "upto": span.upto.text()}
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=span.run_key(key),
                partition_key=key,
                run_config={"ops": {"push_crm_changes": {"config": config}}},
            )
            for key in audience_partitions.get_partition_keys()
        ],
        cursor=moved.dumps(),
    )


def _window(crm: CrmResource, mark: Mark, overlap: timedelta) -> list[Mark]:
    """The changes in the overlap window up to `mark`."""
    since = Mark(window_start(mark, overlap), "")
    return changed_between(crm.engine(), crm.crm_schema, since, mark, _SETTINGS.change_batch)


def _window_digest(crm: CrmResource, mark: Mark, overlap: timedelta) -> str:
    return digest(_window(crm, mark, overlap))


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[crm_eligibility_job],
    request_job=audience_sync_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After each successful crm_eligibility_job run: one audience_sync_job run per "
    "audience on its result, run key <audience>:<CRM run id> (a CRM read never fans out twice). "
    "A CRM run whose blocking checks failed launches nothing.",
)
def audience_syncs_sensor(context: dg.RunStatusSensorContext) -> list[dg.RunRequest]:
    crm_run = context.dagster_run.run_id
    return [
        dg.RunRequest(run_key=f"{key}:{crm_run}", partition_key=key, tags={"crm_run": crm_run})
        for key in audience_partitions.get_partition_keys()
    ]
