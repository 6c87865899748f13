"""`import_back_schedule`: every night, one import-back run per audience."""

import dagster as dg

from newsletter_pipelines.defs.import_back.jobs import import_back_job
from newsletter_pipelines.defs.providers.partitions import nightly_run_requests
from newsletter_pipelines.settings import Settings

_SETTINGS = Settings()


@dg.schedule(
    job=import_back_job,
    cron_schedule=_SETTINGS.import_back_cron,
    execution_timezone=_SETTINGS.timezone,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Nightly import-back of every audience (NEWSLETTER_IMPORT_BACK_CRON in "
    "NEWSLETTER_TIMEZONE); run key: audience and scheduled time, so a tick never runs twice.",
)
def import_back_schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    return nightly_run_requests(context)
