"""The alert sensors: `alert_on_run_failure`, `alert_on_failed_checks`, `alert_on_stalled_sensors`.

The texts and decisions live in `newsletter_pipelines.alerts`; these only read the instance.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import dagster as dg

from newsletter_pipelines.alerts import (
    FAILED_TICKS,
    CheckCursor,
    CheckExecution,
    Tick,
    check_failure_text,
    due_stall_alerts,
    error_line,
    is_alerting_check_failure,
    new_check_failures,
    run_failure_text,
    send_alert,
    stall_reason,
    stalled_sensor_text,
)

if TYPE_CHECKING:
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecord

PARTITION_TAG = "dagster/partition"
WRAPPERS = frozenset({"DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError"})
"""Dagster's errors around the one user code raised (its cause)."""
CHECK_BATCH = 100
"""Executions read per check and tick (newest first)."""
DEFAULT_INTERVAL_SECONDS = 30
"""Dagster's interval of a sensor that sets none."""


@dg.run_failure_sensor(
    name="alert_on_run_failure",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every failed run of this code location: an alert (job, partition, run id, the "
    "error's class and first line, addresses masked) to the log and "
    "NEWSLETTER_ALERT_WEBHOOK_URL.",
)
def alert_on_run_failure(context: dg.RunFailureSensorContext) -> None:
    run = context.dagster_run
    send_alert(
        run_failure_text(run.job_name, run.run_id, run.tags.get(PARTITION_TAG), _error(context)),
        context.log,
    )


def _error(context: dg.RunFailureSensorContext) -> str:
    """The first failed step's error (the one user code raised), else the run's, else the
    failure's message (a run failed from outside, e.g. by the code server when its worker
    died, carries no failure data)."""
    for event in context.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None and error.cause is not None and error.cls_name in WRAPPERS:
            error = error.cause
        if error is not None:
            return error_line(error.cls_name, error.message)
    data = context.failure_event.job_failure_data
    if data is not None and data.error is not None:
        return error_line(data.error.cls_name, data.error.message)
    return error_line(None, context.failure_event.message)


@dg.sensor(
    name="alert_on_failed_checks",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every 60 s: an alert (check, asset, job, partition, run id) to the log and "
    "NEWSLETTER_ALERT_WEBHOOK_URL for each failed blocking asset check since the last tick, "
    "once each; cursor: the check executions handled. The first tick starts from now.",
)
def alert_on_failed_checks(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    storage = context.instance.event_log_storage
    repository = context.repository_def
    keys = list(repository.asset_graph.asset_check_keys) if repository else []
    if context.cursor is None:
        latest = storage.get_latest_asset_check_execution_by_key(keys).values()
        start = CheckCursor(max((r.id for r in latest), default=0))
        return dg.SensorResult(
            skip_reason="watching check results from now on", cursor=start.dumps()
        )
    cursor = CheckCursor.loads(context.cursor)
    records = {
        record.id: record
        for key in keys
        for record in storage.get_asset_check_execution_history(key, limit=CHECK_BATCH)
        if record.id > cursor.upto and record.id not in cursor.done
    }
    runs = {r.run_id: context.instance.get_run_by_id(r.run_id) for r in records.values()}
    due, cursor = new_check_failures(
        (_execution(r, runs[r.run_id]) for r in records.values()), cursor
    )
    for execution in due:
        record, run = records[execution.id], runs[records[execution.id].run_id]
        text = check_failure_text(
            record.key.name,
            record.key.asset_key.to_user_string(),
            run.job_name if run else None,
            record.run_id,
            record.partition or (run.tags.get(PARTITION_TAG) if run else None),
        )
        send_alert(text, context.log)
    return dg.SensorResult(
        skip_reason=f"{len(due)} failed blocking check(s) alerted", cursor=cursor.dumps()
    )


def _execution(record: AssetCheckExecutionRecord, run: dg.DagsterRun | None) -> CheckExecution:
    event = record.event.dagster_event if record.event else None
    if record.status.value == "PLANNED" or event is None:
        return CheckExecution(record.id, alerting=False, final=run is None or run.is_finished)
    evaluation = event.asset_check_evaluation_data
    alerting = is_alerting_check_failure(
        evaluation.passed, evaluation.blocking, evaluation.severity.value
    )
    return CheckExecution(record.id, alerting=alerting, final=True)


@dg.sensor(
    name="alert_on_stalled_sensors",
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every 5 min: an alert to the log and NEWSLETTER_ALERT_WEBHOOK_URL for each "
    "running sensor of this code location without a tick for max(10 × its interval, 10 min), "
    f"or whose last {FAILED_TICKS} ticks failed; once per stall (cursor: the stalled sensors).",
)
def alert_on_stalled_sensors(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    intervals = _watched_intervals(context)
    location = context.code_location_origin.location_name if context.code_location_origin else None
    now = time.time()
    reasons: dict[str, str | None] = {}
    for state in context.instance.all_instigator_state():
        origin = state.origin.repository_origin
        if (
            state.instigator_name not in intervals
            or not state.is_running
            or (context.repository_name and origin.repository_name != context.repository_name)
            or (location and origin.code_location_origin.location_name != location)
        ):
            continue
        ticks = context.instance.get_ticks(
            state.instigator_origin_id, state.selector_id, limit=FAILED_TICKS
        )
        started = getattr(state.instigator_data, "last_sensor_start_timestamp", None)
        reasons[state.instigator_name] = stall_reason(
            [Tick(t.timestamp, t.status.value == "FAILURE") for t in ticks],
            intervals[state.instigator_name],
            now,
            started,
        )
    due, stalled = due_stall_alerts(reasons, json.loads(context.cursor or "[]"))
    for name, reason in due.items():
        send_alert(stalled_sensor_text(name, reason), context.log)
    context.update_cursor(json.dumps(stalled))
    return dg.SkipReason(f"stalled: {', '.join(stalled)}" if stalled else "no stalled sensor")


def _watched_intervals(context: dg.SensorEvaluationContext) -> dict[str, int]:
    """The code location's other sensors with their minimum intervals."""
    sensors = context.repository_def.sensor_defs if context.repository_def else []
    return {
        s.name: s.minimum_interval_seconds or DEFAULT_INTERVAL_SECONDS
        for s in sensors
        if s.name != context.sensor_name
    }
