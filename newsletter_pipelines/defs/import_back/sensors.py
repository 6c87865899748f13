"""`provider_events_sensor`: a run of `provider_events_job` per audience with new webhook events."""

import dagster as dg
import sqlalchemy as sa

from newsletter_pipelines.defs.import_back.jobs import provider_events_job
from newsletter_pipelines.defs.resources import StateDatabaseResource
from newsletter_pipelines.state.events import pending_by_audience
from newsletter_pipelines.sync.event_import import runs_to_request

INTERVAL_SECONDS = 15


@dg.sensor(
    job=provider_events_job,
    minimum_interval_seconds=INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every 15 s: one provider_events_job run per audience with new events in the "
    "inbox provider_events; run key <audience>:<last event id>, cursor: the last id submitted. "
    "A failed read of the inbox skips the tick and keeps the cursor.",
)
def provider_events_sensor(
    context: dg.SensorEvaluationContext, state_db: StateDatabaseResource
) -> dg.SensorResult | dg.SkipReason:
    cursor = int(context.cursor or 0)
    try:
        pending = pending_by_audience(state_db.engine())
    except sa.exc.SQLAlchemyError as exc:
        return dg.SkipReason(f"cannot read the inbox in the {state_db.describe()}: {exc}")
    due, new_cursor = runs_to_request(pending, cursor)
    if not due:
        return dg.SkipReason("no new provider events")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"{audience}:{last}",
                partition_key=audience,
                run_config={"ops": {"apply_provider_events": {"config": {"up_to_event_id": last}}}},
            )
            for audience, last in due
        ],
        cursor=str(new_cursor),
    )
