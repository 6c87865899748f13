"""Reading an audience's snapshot: the webhook first, then every member.

A run of `full_sync_job` or `audience_sync_job` starts the read as it sets its provider
resources up (`start_snapshot_read`), on a thread of its own: it finds the audience and, when
the provider's own counts say it holds at most `EARLY_MAX_MEMBERS` members, reads it. The
provider's pages then come in while the CRM is read and classified (`provider_audience_snapshot`
runs after those steps, priority -1), and the snapshot step takes what was read
(`take_snapshot_read`). A larger audience (its members would be held beside the CRM's in
memory; also when the pages show more members than the counts, which may lag), a run without
its account's tag or of another job: the step reads. An early read that failed fails the step
with its error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg

from newsletter_pipelines.defs.providers.accounts import (
    ACCOUNT_TAG,
    account_name,
    runs_per_account,
)
from newsletter_pipelines.defs.providers.clients import provider_resource, shared_client
from newsletter_pipelines.providers.base import Audience, Provider
from newsletter_pipelines.providers.errors import AudienceTooLargeError
from newsletter_pipelines.providers.resources import (
    BrevoResource,
    MailchimpResource,
    on_run_start,
)
from newsletter_pipelines.settings import AudienceConfig, Settings
from newsletter_pipelines.sync.snapshot_columns import MemberColumns, merged, page_columns

SNAPSHOT_STEP = "provider_audience_snapshot"
EARLY_JOBS = ("full_sync_job", "audience_sync_job")
EARLY_MAX_MEMBERS = 200_000
"""An audience larger by the provider's counts is read in its step: read early, its members
would be held beside the CRM's contacts (a million of each: over the 2 GiB a run may take)."""
_SETTINGS = Settings()


@dataclass(frozen=True)
class SnapshotRead:
    """What a snapshot read brought: the members, the audience found, where changes come back
    from (`webhook`), the lines to log, and when it started and ended (`time.monotonic`)."""

    members: MemberColumns
    found: Audience
    webhook: str
    notes: tuple[str, ...]
    started: float
    ended: float


def read_snapshot(
    client: Provider, audience: AudienceConfig, most: int | None = None
) -> SnapshotRead:
    """Register the audience's webhook (so no change made while the pages are read goes
    unheard), then read every member (`AudienceTooLargeError` past `most`). A refused key fails the
    first call: no separate ping."""
    started = time.monotonic()
    notes: list[str] = []
    webhook = _register_webhook(audience, client, notes.append)
    members = merged(client.snapshot_pages(page_columns, most))
    found = client.found_audience()  # Mailchimp's fields: checked after the pages, by the push
    return SnapshotRead(members, found, webhook, tuple(notes), started, time.monotonic())


def _register_webhook(
    audience: AudienceConfig, client: Provider, log: Callable[[str], None]
) -> str:
    """Register the audience's webhook at NEWSLETTER_WEBHOOK_PUBLIC_URL (idempotent); says
    where changes come back from."""
    url = _SETTINGS.webhook_url(audience)
    if url is None:
        note = (
            "not registered (NEWSLETTER_WEBHOOK_PUBLIC_URL unset): only the nightly "
            "import-back brings changes made at the provider back"
        )
        log(f"{audience.key}: webhook {note}")
        return note
    hook_id = client.register_webhook(
        url, _SETTINGS.resolved_webhook_secret(), _SETTINGS.activities
    )
    log(f"{audience.key}: webhook registered at {url} (id {hook_id})")
    return f"registered at {url} (id {hook_id})"


@on_run_start
def start_snapshot_read(
    resource: MailchimpResource | BrevoResource, context: dg.InitResourceContext
) -> None:
    """Start reading the run's audience snapshot on the resource's early thread, when this run
    materializes it and may read it early (see the module's docstring)."""
    run = context.run
    if run is None or run.job_name not in EARLY_JOBS:
        return
    if run.step_keys_to_execute is not None and SNAPSHOT_STEP not in run.step_keys_to_execute:
        return
    partition = run.tags.get("dagster/partition")
    audience = next((a for a in _SETTINGS.audiences if a.key == partition), None)
    if audience is None or isinstance(resource, MailchimpResource) != (
        audience.provider == "mailchimp"
    ):
        return  # no audience of this resource's provider
    account = account_name(audience)
    if run.tags.get(ACCOUNT_TAG) != account:
        return  # the step checks the tag, and says what is wrong
    opening = shared_client(audience, runs_per_account(context.instance, account), resource)

    def read() -> SnapshotRead | None:
        with opening as client:
            if client.member_count() > EARLY_MAX_MEMBERS:
                return None
            try:
                return read_snapshot(client, audience, EARLY_MAX_MEMBERS)
            except AudienceTooLargeError:  # its counts lagged: the pages read so far are let go
                return None

    resource.start_early(audience.key, read)


def take_snapshot_read(
    audience: AudienceConfig, mailchimp: MailchimpResource, brevo: BrevoResource
) -> SnapshotRead | None:
    """The read this run started early for the audience (waited for; raises what it raised),
    or None (none started, or the audience was too large): then the step reads."""
    early = provider_resource(audience, mailchimp, brevo).take_early(audience.key)
    return None if early is None else early.result()
