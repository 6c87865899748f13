"""`import_back_schedule`: every night, one import-back run per audience."""

from collections.abc import Iterator

import dagster as dg

from newsletter_pipelines.defs.import_back.jobs import import_back_job
from newsletter_pipelines.defs.providers.partitions import audience_partitions
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
def import_back_schedule(context: dg.ScheduleEvaluationContext) -> Iterator[dg.RunRequest]:
    """One run per audience partition."""
    stamp = context.scheduled_execution_time.isoformat()
    for key in audience_partitions.get_partition_keys():
        yield dg.RunRequest(run_key=f"{key}:{stamp}", partition_key=key)
