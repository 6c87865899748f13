"""`nightly_sync_schedule`: every night, the full two-way sync of every audience (the CRM read
once by `crm_eligibility_job`, then `audience_syncs_sensor` fans out)."""

import dagster as dg

from newsletter_pipelines.defs.crm.jobs import crm_eligibility_job
from newsletter_pipelines.settings import Settings

_SETTINGS = Settings()


@dg.schedule(
    job=crm_eligibility_job,
    cron_schedule=_SETTINGS.nightly_cron,
    execution_timezone=_SETTINGS.timezone,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Nightly full two-way sync of every audience (NEWSLETTER_NIGHTLY_CRON in "
    "NEWSLETTER_TIMEZONE): crm_eligibility_job reads the CRM once, then audience_syncs_sensor "
    "launches audience_sync_job per audience. Catches what the change sensor cannot see "
    "(deleted CRM rows, changes without updated_at, provider drift); run key: scheduled time.",
)
def nightly_sync_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    return dg.RunRequest(run_key=context.scheduled_execution_time.isoformat())
