"""The nightly schedules: one run per audience partition, run keys made of audience and
scheduled time (a tick never launches twice), running by default."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest

from newsletter_pipelines.definitions import defs
from newsletter_pipelines.defs.import_back.schedules import import_back_schedule
from newsletter_pipelines.defs.providers.schedules import nightly_sync_schedule

AT = datetime(2026, 12, 4, 2, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("schedule", "cron", "job"),
    [
        (nightly_sync_schedule, "0 3 * * *", "full_sync_job"),
        (import_back_schedule, "0 2 * * *", "import_back_job"),
    ],
)
def test_a_nightly_tick_runs_every_audience_once(
    schedule: dg.ScheduleDefinition, cron: str, job: str
) -> None:
    assert (schedule.cron_schedule, schedule.job_name) == (cron, job)
    assert schedule.execution_timezone == "Europe/Berlin"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=AT,
            repository_def=defs.get_repository_def(),
        )
        requests = list(schedule.evaluate_tick(context).run_requests or [])
    assert [(r.partition_key, r.run_key) for r in requests] == [
        (key, f"{key}:{AT.isoformat()}") for key in ("mailchimp", "brevo")
    ]
