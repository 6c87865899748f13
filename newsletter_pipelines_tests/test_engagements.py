"""Campaign engagement → CRM activities (`sync.engagements`): which events count, one activity
per engagement and contact, and the same engagement told twice writes once."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import count
from typing import Any

from newsletter_pipelines.state.events import StoredEvent
from newsletter_pipelines.sync.engagements import (
    brevo_engagements,
    delivered_to,
    engagement_changes,
    sent_campaigns,
)
from newsletter_pipelines.sync.event_import import event_addresses

_IDS = count(1)
ALL = frozenset({"delivered", "opened", "clicked"})
RECEIVED = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def stored(provider: str, kind: str, email: str | None, payload: dict[str, Any]) -> StoredEvent:
    return StoredEvent(
        id=next(_IDS),
        audience=provider,
        provider=provider,
        type=kind,
        email=email,
        payload=payload,
        received_at=RECEIVED,
        dedupe_key=str(next(_IDS)),
        processed_at=None,
    )


def brevo(kind: str, email: str, ts: int, **extra: Any) -> StoredEvent:
    payload = {"event": kind, "email": email, "camp_id": 7, "ts_event": ts, **extra}
    return stored("brevo", kind, email, {**payload, "campaign name": "Spring"})


def campaign(campaign_id: str, status: str = "sent") -> StoredEvent:
    data = {"id": campaign_id, "status": status, "subject": "Neuigkeiten", "list_id": "L1"}
    return stored(
        "mailchimp",
        "campaign",
        None,
        {"type": "campaign", "fired_at": "2026-12-01 08:00:00", "data": data},
    )


def test_brevo_events_become_the_engagements_turned_on() -> None:
    events = [
        brevo("delivered", "anna@example.de", 100),
        brevo("opened", "anna@example.de", 200),
        brevo("click", "Anna@Example.de", 300, URL="https://example.de/a"),
        brevo("unsubscribed", "anna@example.de", 400),
    ]
    found = brevo_engagements(events, ALL)
    assert [(e.kind, e.campaign) for e in found] == [
        ("delivered", "7"),
        ("opened", "7"),
        ("clicked", "7"),
    ]
    assert found[2].details == {"campaign_name": "Spring", "url": "https://example.de/a"}
    assert found[1].occurred_at == datetime.fromtimestamp(200, UTC)
    assert [e.kind for e in brevo_engagements(events, frozenset({"opened"}))] == ["opened"]
    assert brevo_engagements(events, frozenset()) == []


def test_engagement_events_name_no_address_to_decide_again() -> None:
    events = [brevo("delivered", "anna@example.de", 1), brevo("unsubscribed", "bob@example.de", 2)]
    assert event_addresses([*events, campaign("c1")]) == {"bob@example.de"}


def test_a_sent_mailchimp_campaign_is_delivered_to_the_recipients_the_report_says_were_sent() -> (
    None
):
    events = [campaign("c1"), campaign("c1"), campaign("c2", status="canceled")]
    found = sent_campaigns(events)
    assert list(found) == ["c1"]
    recipients = [
        ("anna@example.de", "sent"),
        ("bob@example.de", "hard"),
        ("eva@example.de", "soft"),
    ]
    delivered = delivered_to("c1", found["c1"], recipients)
    assert [(e.kind, e.email, e.campaign) for e in delivered] == [
        ("delivered", "anna@example.de", "c1")
    ]
    assert delivered[0].occurred_at == datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    assert delivered[0].details == {"campaign_subject": "Neuigkeiten"}


def test_every_contact_with_the_address_gets_one_activity_and_a_repeat_writes_nothing_new() -> None:
    events = [
        brevo("delivered", "anna@example.de", 100),
        brevo("opened", "anna@example.de", 200),
        brevo("opened", "anna@example.de", 250),  # a second open is a second activity
        brevo("delivered", "nobody@example.de", 100),
    ]
    contacts = {"anna@example.de": ["1", "2"]}
    changes = engagement_changes(
        brevo_engagements(events, ALL), contacts, provider="brevo", audience="brevo"
    )
    assert sorted((c.contact_id, c.activity.kind) for c in changes) == [
        ("1", "delivered"),
        ("1", "opened"),
        ("1", "opened"),
        ("2", "delivered"),
        ("2", "opened"),
        ("2", "opened"),
    ]
    assert all(c.newsletter is None and not c.add_tags and not c.remove_tags for c in changes)
    keys = [c.activity.source_key for c in changes]
    assert len(set(keys)) == len(keys)
    redelivered = [brevo("opened", "anna@example.de", 200)]  # the same event, delivered again
    again = engagement_changes(
        brevo_engagements(redelivered, ALL), contacts, provider="brevo", audience="brevo"
    )
    assert {c.activity.source_key for c in again} <= set(keys)
