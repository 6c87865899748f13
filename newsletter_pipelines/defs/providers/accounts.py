"""Provider accounts in the run queue: the audiences of one account share its connections.

Every run of a job that calls a provider (`full_sync_job`, `audience_sync_job`,
`import_back_job`, `incremental_sync_job`, `provider_events_job`) carries the tag
`newsletter/provider_account` naming its audience's account: the provider's name (one API key
per provider, so one account each; never anything derived from a key). The instance's run queue
(`tag_concurrency_limits` in `dagster.yaml`: 2) lets only so many runs of one account run at
once. All runs of one Mailchimp account together stay within the 10 simultaneous connections
Mailchimp allows an account: with a PostgreSQL state database each call holds one of the
account's 10 connection slots there (`state.connection_slots`), so a run alone may open up to
NEWSLETTER_MAILCHIMP_MAX_CONNECTIONS (default 10) and runs at once share them call by call;
with another state database a run opens at most its fixed share, 10 // the queue's limit.

The tag comes from the jobs' partitioned config (`partitions.audience_config`), which Dagster
applies to every run it creates for a partition of a job: sensor and schedule run requests,
the launchpad, job backfills, `execute_in_process`; re-executions and run retries keep their
parent's tags. Runs of the asset graph's own job (Materialize on an asset page, asset
backfills) do not carry it, nor does a launch through the GraphQL API that does not name it: on
an instance whose queue limits the tag, their steps refuse to call the provider in production
and warn in the embedded demo, whose sandbox has no connection limit (`checked_account_runs`).
"""

from __future__ import annotations

import dagster as dg

from newsletter_pipelines.providers.mailchimp import (
    ACCOUNT_CONNECTIONS as MAILCHIMP_ACCOUNT_CONNECTIONS,
)
from newsletter_pipelines.settings import AudienceConfig, Settings

ACCOUNT_TAG = "newsletter/provider_account"
PROVIDER_JOBS = (
    "full_sync_job",
    "audience_sync_job",
    "import_back_job",
    "incremental_sync_job",
    "provider_events_job",
)
"""The jobs whose runs call a provider, each partitioned by audience."""

_SETTINGS = Settings()


def account_name(audience: AudienceConfig) -> str:
    """The provider account the audience lives in, as the run tag names it."""
    return audience.provider


def account_tags(partition_key: str) -> dict[str, str]:
    """The run tags of an audience partition: its account."""
    return {ACCOUNT_TAG: account_name(_SETTINGS.audience(partition_key))}


def runs_per_account(instance: dg.DagsterInstance, account: str) -> int | None:
    """How many runs of `account` the instance's run queue lets run at once (None: no limit on
    the account tag)."""
    queue = instance.get_concurrency_config().run_queue_config
    if queue is None:
        return None
    limits = [
        int(rule["limit"])
        for rule in queue.tag_concurrency_limits
        if rule["key"] == ACCOUNT_TAG
        # a string value limits that account; none or applyLimitPerUniqueValue: every account
        and (not isinstance(rule.get("value"), str) or rule["value"] == account)
    ]
    return min(limits, default=None)


def checked_account_runs(
    context: dg.OpExecutionContext | dg.AssetExecutionContext, audience: AudienceConfig
) -> int | None:
    """The run queue's limit on the runs of the audience's account (None: no limit), once it is
    sure this run counts against it: on an instance that limits the account tag, a run without
    the tag (or with another account's) raises `dg.Failure` before any provider call in
    production; in the embedded demo it only warns (the sandbox has no connection limit)."""
    account = account_name(audience)
    runs = runs_per_account(context.instance, account)
    tagged = context.run.tags.get(ACCOUNT_TAG)
    if runs is None or tagged == account:
        return runs
    problem = (
        f"{audience.key}: this run carries {ACCOUNT_TAG}={tagged or '(none)'}, not {account}, "
        f"so the run queue did not count it against the {runs} runs one {account} account may "
        f"run at once. Launch {' or '.join(PROVIDER_JOBS)} for the partition (their runs carry "
        "the tag), not Materialize on an asset page or an asset backfill, or add the tag "
        f"{ACCOUNT_TAG}={account} at launch."
    )
    if _SETTINGS.deployment != "production":
        context.log.warning(f"{problem} Going on: the embedded sandbox has no connection limit.")
        return runs
    raise dg.Failure(description=problem, allow_retries=False)


def mailchimp_connections(runs: int | None, configured: int) -> int:
    """Connections one run may open to a Mailchimp account whose runs the queue limits to
    `runs` at once: its share of the account's 10, at most `configured`."""
    if runs is None:
        return configured
    share = MAILCHIMP_ACCOUNT_CONNECTIONS // runs
    if share < 1:
        raise dg.Failure(
            description=f"the run queue lets {runs} runs of one Mailchimp account run at once "
            f"({ACCOUNT_TAG} in dagster.yaml): more than its {MAILCHIMP_ACCOUNT_CONNECTIONS} "
            "simultaneous connections",
            allow_retries=False,
        )
    return min(configured, share)
