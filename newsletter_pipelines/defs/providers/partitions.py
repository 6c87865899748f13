"""One partition per configured audience (NEWSLETTER_AUDIENCES)."""

import dagster as dg

from newsletter_pipelines.settings import Settings

audience_partitions = dg.StaticPartitionsDefinition([a.key for a in Settings().audiences])


def nightly_run_requests(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    """One run per audience partition, run key `<audience>:<scheduled time>` (a tick never
    launches twice)."""
    stamp = context.scheduled_execution_time.isoformat()
    return [
        dg.RunRequest(run_key=f"{key}:{stamp}", partition_key=key)
        for key in audience_partitions.get_partition_keys()
    ]
