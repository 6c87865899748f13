"""Campaign engagement → CRM activities: `delivered`, `opened`, `clicked`.

They change nothing but the activities table, so they never go through the import-back's rules:
- Brevo tells each one in a marketing webhook event (`delivered`, `opened`, `click`);
- Mailchimp tells only that a campaign went out (the `campaign` event); who received it is in
  the campaign's sent-to report, one `delivered` per recipient the report says was sent to.

Every CRM contact with the address gets one activity per engagement; its source key is made of
the audience, the kind, the campaign, the address, the moment (opens and clicks repeat; a
delivery does not) and the contact, so a redelivered event or a re-read report writes nothing
new.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from newsletter_pipelines.crm.writer import Activity, ContactChange
from newsletter_pipelines.state.events import StoredEvent
from newsletter_pipelines.sync.email_address import raw_match_key

BREVO_KINDS = {"delivered": "delivered", "opened": "opened", "click": "clicked"}
MAILCHIMP_CAMPAIGN = "campaign"
ENGAGEMENT_EVENTS = frozenset({*BREVO_KINDS, MAILCHIMP_CAMPAIGN})  # event types of the inbox


@dataclass(frozen=True)
class Engagement:
    """One person's engagement with one campaign; `moment` tells repeated opens apart."""

    kind: str
    email: str
    campaign: str
    occurred_at: datetime | None
    moment: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)


def is_engagement(event: StoredEvent) -> bool:
    """Whether the event is about a campaign rather than a member's state."""
    return event.type in ENGAGEMENT_EVENTS


def brevo_engagements(events: Iterable[StoredEvent], enabled: frozenset[str]) -> list[Engagement]:
    """The engagements Brevo's events tell, of the kinds `enabled`."""
    found = []
    for event in events:
        kind = BREVO_KINDS.get(event.type) if event.provider == "brevo" else None
        if kind is None or kind not in enabled or event.email is None:
            continue
        data = event.payload
        stamp = data.get("ts_event") or data.get("date_event") or ""
        found.append(
            Engagement(
                kind=kind,
                email=event.email,
                campaign=str(data.get("camp_id") or data.get("campaign name") or "-"),
                occurred_at=_brevo_time(data) or event.received_at,
                moment="" if kind == "delivered" else f"{stamp}|{data.get('URL') or ''}",
                details={
                    k: v
                    for k, v in (
                        ("campaign_name", data.get("campaign name")),
                        ("url", data.get("URL")),
                    )
                    if v
                },
            )
        )
    return found


def sent_campaigns(events: Iterable[StoredEvent]) -> dict[str, StoredEvent]:
    """Mailchimp campaigns the events say were sent, by campaign id (the first event of each)."""
    found: dict[str, StoredEvent] = {}
    for event in events:
        data = event.payload.get("data") if event.provider == "mailchimp" else None
        if event.type != MAILCHIMP_CAMPAIGN or not isinstance(data, Mapping):
            continue
        if data.get("status") == "sent" and data.get("id"):
            found.setdefault(str(data["id"]), event)
    return found


def delivered_to(
    campaign: str, event: StoredEvent, recipients: Iterable[tuple[str, str]]
) -> list[Engagement]:
    """One `delivered` per (address, status) of a Mailchimp sent-to report that was sent."""
    data = event.payload.get("data") or {}
    when = _mailchimp_time(event.payload.get("fired_at")) or event.received_at
    subject = data.get("subject") if isinstance(data, Mapping) else None
    return [
        Engagement(
            kind="delivered",
            email=email,
            campaign=campaign,
            occurred_at=when,
            details={"campaign_subject": subject} if subject else {},
        )
        for email, status in recipients
        if status == "sent"
    ]


def engagement_changes(
    engagements: Sequence[Engagement],
    contacts_by_key: Mapping[str, Sequence[str]],
    *,
    provider: str,
    audience: str,
) -> list[ContactChange]:
    """One activity-only change per engagement and CRM contact with its address (addresses no
    contact has are left out)."""
    changes = []
    for engagement in engagements:
        key = raw_match_key(engagement.email)
        for crm_id in contacts_by_key.get(key or "", ()):
            parts = (audience, engagement.kind, engagement.campaign, key, engagement.moment, crm_id)
            activity = Activity(
                kind=engagement.kind,
                provider=provider,
                audience=audience,
                occurred_at=engagement.occurred_at,
                details={
                    "email": engagement.email,
                    "campaign": engagement.campaign,
                    **engagement.details,
                },
                source_key=hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest(),
            )
            changes.append(ContactChange(contact_id=crm_id, activity=activity))
    return changes


def _brevo_time(data: Mapping[str, Any]) -> datetime | None:
    stamp = data.get("ts_event")
    if isinstance(stamp, int | float) and not isinstance(stamp, bool):
        return datetime.fromtimestamp(stamp, UTC)
    return None


def _mailchimp_time(value: object) -> datetime | None:
    """`fired_at` (`YYYY-MM-DD HH:MM:SS`, taken as UTC: Mailchimp does not say)."""
    try:
        return datetime.strptime(str(value), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return None
