"""`nightly_sync_schedule`: every night, the full two-way sync of every audience."""

import dagster as dg

from newsletter_pipelines.defs.providers.jobs import full_sync_job
from newsletter_pipelines.defs.providers.partitions import nightly_run_requests
from newsletter_pipelines.settings import Settings

_SETTINGS = Settings()


@dg.schedule(
    job=full_sync_job,
    cron_schedule=_SETTINGS.nightly_cron,
    execution_timezone=_SETTINGS.timezone,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Nightly full two-way sync of every audience (NEWSLETTER_NIGHTLY_CRON in "
    "NEWSLETTER_TIMEZONE): catches what the change sensor cannot see (deleted CRM rows, "
    "changes without updated_at, provider drift); run key: audience and scheduled time.",
)
def nightly_sync_schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    return nightly_run_requests(context)
