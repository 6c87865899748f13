"""The nightly schedules, running by default; run keys made of the scheduled time (and the
audience), so a tick never launches twice. The nightly sync reads the CRM once."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from newsletter_pipelines.definitions import defs
from newsletter_pipelines.defs.import_back.schedules import import_back_schedule
from newsletter_pipelines.defs.providers.schedules import nightly_sync_schedule

AT = datetime(2026, 12, 4, 2, 0, tzinfo=UTC)


def tick(schedule: dg.ScheduleDefinition) -> list[dg.RunRequest]:
    assert schedule.execution_timezone == "Europe/Berlin"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    with (
        dg.instance_for_test() as instance,
        dg.build_schedule_context(  # a context left open leaves the instance's state storage set
            instance=instance,
            scheduled_execution_time=AT,
            repository_def=defs.get_repository_def(),
        ) as context,
    ):
        return list(schedule.evaluate_tick(context).run_requests or [])


def test_the_nightly_import_back_runs_every_audience_once() -> None:
    schedule = import_back_schedule
    assert (schedule.cron_schedule, schedule.job_name) == ("0 2 * * *", "import_back_job")
    assert [(r.partition_key, r.run_key) for r in tick(schedule)] == [
        (key, f"{key}:{AT.isoformat()}") for key in ("mailchimp", "brevo")
    ]


def test_the_nightly_sync_reads_the_crm_once() -> None:
    """One crm_eligibility_job run; audience_syncs_sensor then runs every audience on it."""
    schedule = nightly_sync_schedule
    assert (schedule.cron_schedule, schedule.job_name) == ("0 3 * * *", "crm_eligibility_job")
    assert [(r.partition_key, r.run_key) for r in tick(schedule)] == [(None, AT.isoformat())]
