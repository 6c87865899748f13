"""Write the campaign engagement of an audience's webhook events into the CRM's activities
(`sync.engagements`), for the kinds NEWSLETTER_ACTIVITIES turns on."""

from collections.abc import Callable, Sequence

from newsletter_pipelines.crm.reader import read_contacts_at
from newsletter_pipelines.crm.writer import CrmWriter
from newsletter_pipelines.defs.resources import CrmResource
from newsletter_pipelines.providers.base import Provider
from newsletter_pipelines.providers.mailchimp import MailchimpClient
from newsletter_pipelines.settings import AudienceConfig, Settings
from newsletter_pipelines.state.events import StoredEvent
from newsletter_pipelines.sync.email_address import raw_match_key
from newsletter_pipelines.sync.engagements import (
    Engagement,
    brevo_engagements,
    delivered_to,
    engagement_changes,
    sent_campaigns,
)

_SETTINGS = Settings()


def record_engagements(
    audience: AudienceConfig,
    events: Sequence[StoredEvent],
    client: Provider,
    crm: CrmResource,
    log: Callable[[str], None],
) -> dict[str, int]:
    """Engagements found, activities planned and written (nothing without write-back)."""
    enabled = _SETTINGS.activities
    found: list[Engagement] = brevo_engagements(events, enabled)
    if "delivered" in enabled and isinstance(client, MailchimpClient):
        for campaign, event in sent_campaigns(events).items():
            recipients = client.campaign_recipients(campaign)
            log(f"{audience.key}: campaign {campaign} was sent to {len(recipients)} members")
            found += delivered_to(campaign, event, ((r.email, r.status) for r in recipients))
    if not found:
        return {}
    keys = {raw_match_key(e.email) for e in found} - {None}
    contacts = read_contacts_at(crm.engine(), crm.crm_schema, keys, ())
    by_key: dict[str, list[str]] = {}
    for crm_id, email in zip(contacts["contact_id"], contacts["email"], strict=True):
        by_key.setdefault(raw_match_key(email) or "", []).append(crm_id)
    changes = engagement_changes(found, by_key, provider=audience.provider, audience=audience.key)
    counts = {"engagements": len(found), "engagement_activities_planned": len(changes)}
    if not _SETTINGS.crm_write_back or not changes:
        return counts
    summary = CrmWriter(crm.engine(), crm.crm_schema, _SETTINGS.crm_values, log=log).apply(
        changes, []
    )
    log(f"{audience.key}: {summary.activities} engagement activities written")
    return {**counts, "engagement_activities_written": summary.activities}
