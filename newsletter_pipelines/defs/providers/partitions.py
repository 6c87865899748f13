"""One partition per configured audience (NEWSLETTER_AUDIENCES); every run of a partition
carries its provider account's tag (`accounts.ACCOUNT_TAG`)."""

import dagster as dg

from newsletter_pipelines.defs.providers.accounts import account_tags
from newsletter_pipelines.settings import Settings

audience_partitions = dg.StaticPartitionsDefinition([a.key for a in Settings().audiences])

audience_config = dg.PartitionedConfig(
    partitions_def=audience_partitions,
    # no run config of its own: a launch's run config (dry_run, allow_mass_removal, a span) is
    # used as given, and a launch without one gets none, as before
    run_config_for_partition_key_fn=lambda _key: {},
    tags_for_partition_key_fn=account_tags,
)
"""The partitioned config of every provider job: Dagster adds `account_tags` to each run it
creates for a partition (run requests, launchpad, job backfills, `execute_in_process`)."""


def nightly_run_requests(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    """One run per audience partition, run key `<audience>:<scheduled time>` (a tick never
    launches twice)."""
    stamp = context.scheduled_execution_time.isoformat()
    return [
        dg.RunRequest(run_key=f"{key}:{stamp}", partition_key=key)
        for key in audience_partitions.get_partition_keys()
    ]
