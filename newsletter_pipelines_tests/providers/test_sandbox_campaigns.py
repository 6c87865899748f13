"""Campaigns at the sandbox: an admin sends one to a list (control API), the providers record its
recipients and fire their campaign events; the Mailchimp client reads the sent-to report."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from newsletter_pipelines.providers.brevo import BrevoClient
from newsletter_pipelines.providers.errors import ApiError
from newsletter_pipelines.providers.mailchimp import MailchimpClient
from newsletter_pipelines.providers.mailchimp_models import CampaignRecipient
from newsletter_pipelines.sandbox import (
    SANDBOX_BREVO_KEY,
    SANDBOX_MAILCHIMP_KEY,
    SANDBOX_ORIGIN,
    CampaignSend,
    PersonEvent,
    Sandbox,
    SandboxTransport,
)
from newsletter_pipelines.sandbox.brevo_rules import BrevoError
from newsletter_pipelines.sandbox.campaigns import send_brevo_campaign, send_mailchimp_campaign
from newsletter_pipelines.sandbox.mailchimp_members import ProblemError
from newsletter_pipelines.sandbox.mailchimp_state import subscriber_hash
from newsletter_pipelines.sandbox.people import brevo_person, mailchimp_person
from newsletter_pipelines_tests.providers.conftest import Receiver, make_mailchimp
from newsletter_pipelines_tests.providers.helpers import RecordingTransport, audience, contacts

MC_ROOT = "/mailchimp/3.0"
MC_AUTH = ("anystring", SANDBOX_MAILCHIMP_KEY)
BV_ROOT = "/brevo/v3"
BV_KEY = {"api-key": SANDBOX_BREVO_KEY}


def posts_to(receiver: Receiver, url: str) -> list[httpx.Request]:
    """The deliveries to one webhook URL."""
    return [r for r in receiver.posts() if str(r.url) == url]


def forms(receiver: Receiver, url: str) -> list[dict[str, str]]:
    """The form-encoded (Mailchimp) deliveries to one URL, as flat dicts."""
    return [dict(httpx.QueryParams(r.content.decode())) for r in posts_to(receiver, url)]


def events(receiver: Receiver, url: str) -> list[dict[str, Any]]:
    """The JSON (Brevo) deliveries to one URL."""
    return [json.loads(r.content) for r in posts_to(receiver, url)]


def mc_person(sandbox: Sandbox, email: str, action: str) -> None:
    event = PersonEvent(list_id=audience(sandbox).id, email=email, action=action)  # type: ignore[arg-type]
    mailchimp_person(sandbox, event)


def mc_hook(http: httpx.Client, list_id: str, url: str, events: dict[str, bool]) -> None:
    """An audience webhook with these events, every source off."""
    body = {"url": url, "events": events, "sources": {"user": False, "admin": False, "api": False}}
    answer = http.post(f"{MC_ROOT}/lists/{list_id}/webhooks", json=body, auth=MC_AUTH)
    assert answer.status_code == 200


def bv_hook(http: httpx.Client, url: str, events: list[str]) -> int:
    """A marketing webhook subscribed to `events`; returns its id."""
    body = {"url": url, "events": events, "type": "marketing"}
    answer = http.post(f"{BV_ROOT}/webhooks", json=body, headers=BV_KEY)
    assert answer.status_code == 201
    return int(answer.json()["id"])


# --- Mailchimp ---------------------------------------------------------------------------


def test_the_client_reads_every_recipient_of_a_large_campaign_1000_a_page(
    sandbox: Sandbox, transport: httpx.BaseTransport, http: httpx.Client
) -> None:
    recording = RecordingTransport(transport)
    client = make_mailchimp(recording)
    client.upsert(contacts(2345))
    mc_person(sandbox, "person7@example.com", "unsubscribe")
    mc_person(sandbox, "person8@example.com", "archive")
    mc_person(sandbox, "person9@example.com", "clean")
    body = {
        "list_id": client.ensure_audience().id,
        "subject": "Spring",
        "bouncing": ["person3@example.com", "PERSON2000@example.com"],
    }
    sent = http.post("/_sandbox/mailchimp/campaigns", json=body)
    assert sent.status_code == 200
    campaign_id = sent.json()["id"]
    assert len(sent.json()["recipients"]) == 2342

    start = len(recording.requests)
    recipients = client.campaign_recipients(campaign_id)
    pages = recording.requests[start:]
    assert sorted(r.url.params["offset"] for r in pages) == ["0", "1000", "2000"]
    assert {r.url.params["count"] for r in pages} == {"1000"}
    assert [r.url.path for r in pages] == [f"{MC_ROOT}/reports/{campaign_id}/sent-to"] * 3
    expected = {
        CampaignRecipient(
            email=f"person{i}@example.com", status="hard" if i in (3, 2000) else "sent"
        )
        for i in range(2345)
        if i not in (7, 8, 9)  # not subscribed at send time
    }
    assert len(recipients) == len(expected)  # each once, over the pages
    assert set(recipients) == expected
    # in the audience's order, as the send recorded it (the parallel upsert's order varies)
    assert [r.email for r in recipients] == [r["email_address"] for r in sent.json()["recipients"]]
    # a hard bounce cleans the member, as Mailchimp does
    statuses = {m.email: m.status for m in client.snapshot()}
    assert (statuses["person3@example.com"], statuses["person2000@example.com"]) == (
        "cleaned",
        "cleaned",
    )
    assert statuses["person4@example.com"] == "subscribed"
    client.close()


def test_the_sent_to_report_pages_like_the_api(
    sandbox: Sandbox, mailchimp: MailchimpClient, http: httpx.Client
) -> None:
    mailchimp.upsert(contacts(12))
    list_id = mailchimp.ensure_audience().id
    campaign = send_mailchimp_campaign(sandbox, CampaignSend(list_id=list_id, subject="Hi"))
    path = f"{MC_ROOT}/reports/{campaign['id']}/sent-to"
    first = http.get(path, auth=MC_AUTH).json()
    assert (first["total_items"], first["campaign_id"], len(first["sent_to"])) == (
        12,
        campaign["id"],
        10,  # the default count
    )
    row = first["sent_to"][0]
    assert {k: row[k] for k in ("email_id", "email_address", "status", "campaign_id")} == {
        "email_id": subscriber_hash("person0@example.com"),
        "email_address": "person0@example.com",
        "status": "sent",
        "campaign_id": campaign["id"],
    }
    assert (row["list_id"], row["merge_fields"]["FNAME"]) == (list_id, "First0")
    rest = http.get(path, params={"count": 5, "offset": 10}, auth=MC_AUTH).json()
    assert [r["email_address"] for r in rest["sent_to"]] == [
        "person10@example.com",
        "person11@example.com",
    ]
    # beyond the spec's maximum (not sent through the contract-checking transport)
    with httpx.Client(transport=SandboxTransport(sandbox), base_url=SANDBOX_ORIGIN) as raw:
        too_many = raw.get(path, params={"count": 1001}, auth=MC_AUTH)
    assert (too_many.status_code, too_many.json()["errors"][0]["field"]) == (400, "count")


def test_an_unknown_campaign_is_a_404_problem(
    sandbox: Sandbox, mailchimp: MailchimpClient, http: httpx.Client
) -> None:
    answer = http.get(f"{MC_ROOT}/reports/0123456789/sent-to", auth=MC_AUTH)
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert (answer.json()["status"], answer.json()["title"]) == (404, "Resource Not Found")
    with pytest.raises(ApiError) as unknown:
        mailchimp.campaign_recipients("0123456789")
    assert unknown.value.status == 404


def test_the_campaign_webhook_goes_to_hooks_with_campaign_on_whatever_their_sources(
    sandbox: Sandbox, mailchimp: MailchimpClient, receiver: Receiver, http: httpx.Client
) -> None:
    mailchimp.upsert(contacts(3))
    list_id = mailchimp.ensure_audience().id
    campaign_only = "https://hooks.example.com/campaign"
    everything = "https://hooks.example.com/everything"
    no_campaign = "https://hooks.example.com/members"
    members_events = dict.fromkeys(("subscribe", "unsubscribe", "profile", "cleaned"), True)
    mc_hook(http, list_id, campaign_only, {"campaign": True})
    mc_hook(http, list_id, everything, {**members_events, "campaign": True})
    mc_hook(http, list_id, no_campaign, {**members_events, "campaign": False})
    body = {"list_id": list_id, "subject": "Spring news", "bouncing": ["person1@example.com"]}
    campaign = http.post("/_sandbox/mailchimp/campaigns", json=body).json()
    assert campaign["recipients"] == [
        {"email_address": "person0@example.com", "status": "sent"},
        {"email_address": "person1@example.com", "status": "hard"},
        {"email_address": "person2@example.com", "status": "sent"},
    ]
    (fired,) = forms(receiver, campaign_only)
    assert fired == {
        "type": "campaign",
        "fired_at": fired["fired_at"],
        "data[id]": campaign["id"],
        "data[subject]": "Spring news",
        "data[status]": "sent",
        "data[reason]": "",
        "data[list_id]": list_id,
    }
    datetime.strptime(fired["fired_at"], "%Y-%m-%d %H:%M:%S")  # Mailchimp's format
    assert [f["type"] for f in forms(receiver, everything)] == ["campaign", "cleaned"]
    cleaned = forms(receiver, everything)[1]
    assert (cleaned["data[email]"], cleaned["data[reason]"], cleaned["data[campaign_id]"]) == (
        "person1@example.com",
        "hard",
        campaign["id"],
    )
    assert [f["type"] for f in forms(receiver, no_campaign)] == ["cleaned"]


def test_mailchimp_sends_are_refused_for_unknown_audiences_and_strangers_bouncing(
    sandbox: Sandbox, mailchimp: MailchimpClient, receiver: Receiver, http: httpx.Client
) -> None:
    list_id = mailchimp.ensure_audience().id
    with pytest.raises(ProblemError) as empty:
        send_mailchimp_campaign(sandbox, CampaignSend(list_id=list_id))
    assert empty.value.status == 400
    mailchimp.upsert(contacts(2))
    mc_person(sandbox, "person1@example.com", "unsubscribe")
    before = sandbox.state.mailchimp[SANDBOX_MAILCHIMP_KEY].model_dump()
    refused = http.post(
        "/_sandbox/mailchimp/campaigns",
        json={"list_id": list_id, "bouncing": ["person1@example.com"]},  # not subscribed
    )
    assert refused.status_code == 400 and "person1@example.com" in refused.json()["error"]
    unknown = http.post("/_sandbox/mailchimp/campaigns", json={"list_id": "nope"})
    assert unknown.status_code == 404
    assert sandbox.state.mailchimp[SANDBOX_MAILCHIMP_KEY].model_dump() == before
    assert http.post("/_sandbox/mailchimp/people", json={
        "list_id": list_id, "email": "person0@example.com", "action": "open", "campaign_id": 1
    }).status_code == 400  # fmt: skip


# --- Brevo -------------------------------------------------------------------------------


def test_brevo_campaign_events_reach_the_webhooks_subscribed_to_them(
    sandbox: Sandbox,
    brevo: BrevoClient,
    receiver: Receiver,
    http: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    brevo.upsert(contacts(4))
    list_id = int(brevo.ensure_audience().id)
    wanted = "https://hooks.example.com/activities"
    other = "https://hooks.example.com/opt-outs"
    person = {"list_id": str(list_id), "email": "person3@example.com"}
    unsubscribed = http.post(
        "/_sandbox/brevo/people", json={**person, "action": "list_unsubscribe"}
    )
    assert unsubscribed.status_code == 200  # not a recipient
    wanted_id = bv_hook(http, wanted, ["delivered", "hardBounce", "opened", "click"])
    bv_hook(http, other, ["unsubscribed", "listAddition", "spam"])
    sent_at = datetime(2026, 3, 1, 9, 0, 0, tzinfo=UTC).timestamp()
    monkeypatch.setattr(sandbox, "now", lambda: sent_at)
    body = {
        "list_id": list_id,
        "name": "Spring",
        "subject": "Spring news",
        "tag": "newsletter",
        "bouncing": ["Person1@example.com"],
    }
    sent = http.post("/_sandbox/brevo/campaigns", json=body)
    assert sent.status_code == 200
    campaign = sent.json()
    assert (campaign["list_id"], campaign["recipients"]) == (
        list_id,
        [
            {"email": "person0@example.com", "status": "delivered"},
            {"email": "person1@example.com", "status": "hardBounce"},
            {"email": "person2@example.com", "status": "delivered"},
        ],
    )
    opened_at = sent_at + 3600
    monkeypatch.setattr(sandbox, "now", lambda: opened_at)
    reaction = {"list_id": str(list_id), "campaign_id": campaign["id"]}
    for email, action, extra in (
        ("person0@example.com", "open", {}),
        ("person2@example.com", "click", {"url": "https://example.com/spring"}),
    ):
        answer = http.post(
            "/_sandbox/brevo/people", json={**reaction, "email": email, "action": action, **extra}
        )
        assert answer.status_code == 200, answer.text

    common = {
        "id": wanted_id,
        "camp_id": campaign["id"],
        "campaign name": "Spring",
        "date_sent": "2026-03-01 09:00:00",
        "ts_sent": int(sent_at),
        "tag": "newsletter",
    }
    at_send = {"date_event": "2026-03-01 09:00:00", "ts_event": int(sent_at), "ts": int(sent_at)}
    later = {"date_event": "2026-03-01 10:00:00", "ts_event": int(opened_at), "ts": int(opened_at)}
    ip = events(receiver, wanted)[0]["sending_ip"]
    assert events(receiver, wanted) == [
        {
            "event": "delivered",
            "email": "person0@example.com",
            **common,
            **at_send,
            "sending_ip": ip,
        },
        {
            "event": "hard_bounce",
            "email": "person1@example.com",
            **common,
            **at_send,
            "sending_ip": ip,
            "reason": "unknown user",
        },
        {
            "event": "delivered",
            "email": "person2@example.com",
            **common,
            **at_send,
            "sending_ip": ip,
        },
        {"event": "opened", "email": "person0@example.com", **common, **later},
        {
            "event": "click",
            "email": "person2@example.com",
            **common,
            **later,
            "URL": "https://example.com/spring",
        },
    ]
    assert events(receiver, other) == []
    # the hard bounce blocklists the contact and names the campaign in its statistics
    bounced = http.get(f"{BV_ROOT}/contacts/person1@example.com", headers=BV_KEY).json()
    assert bounced["emailBlacklisted"] is True
    assert bounced["statistics"]["hardBounces"] == [
        {"campaignId": campaign["id"], "eventTime": "2026-03-01T09:00:00Z"}
    ]
    assert {m.email: m.status for m in brevo.snapshot()}["person1@example.com"] == "blacklisted"


def test_brevo_opens_and_clicks_need_a_delivered_recipient(
    sandbox: Sandbox, brevo: BrevoClient, receiver: Receiver, http: httpx.Client
) -> None:
    brevo.upsert(contacts(3))
    list_id = brevo.ensure_audience().id
    bv_hook(http, "https://hooks.example.com/activities", ["delivered", "opened", "click"])
    send = CampaignSend(list_id=list_id, bouncing=["person1@example.com"])
    campaign = send_brevo_campaign(sandbox, send)
    brevo.upsert(contacts(1, start=3))  # after the send: not a recipient
    hooks = len(receiver.posts())

    def react(email: str, action: str = "open", **extra: Any) -> int:
        event = PersonEvent(
            list_id=list_id,
            email=email,
            action=action,  # type: ignore[arg-type]
            **({"campaign_id": campaign["id"]} | extra),
        )
        try:
            brevo_person(sandbox, event)
        except BrevoError as refusal:
            return refusal.status
        return 200

    assert react("person1@example.com") == 400  # bounced
    assert react("person3@example.com") == 400  # not a recipient
    assert react("person0@example.com", campaign_id=campaign["id"] + 1000) == 404
    assert react("person0@example.com", campaign_id=None) == 400
    assert react("person0@example.com", "click") == 400  # no url
    assert react("nobody@example.com") == 404
    assert len(receiver.posts()) == hooks
    brevo_person(
        sandbox, PersonEvent(list_id=list_id, email="person0@example.com", action="unsubscribe")
    )
    assert react("person0@example.com") == 200  # an unsubscribed recipient still opens it
    assert react("person2@example.com", "click", url="https://example.com/a") == 200
    fired = [json.loads(r.content)["event"] for r in receiver.posts()[hooks:]]
    assert fired == ["opened", "click"]


def test_brevo_sends_are_refused_before_anything_changes(
    sandbox: Sandbox, brevo: BrevoClient, receiver: Receiver, http: httpx.Client
) -> None:
    brevo.upsert(contacts(2))
    list_id = brevo.ensure_audience().id
    bv_hook(http, "https://hooks.example.com/activities", ["delivered", "hardBounce"])
    before = sandbox.state.brevo[SANDBOX_BREVO_KEY].model_dump()
    stranger = {"list_id": list_id, "bouncing": ["stranger@example.com"]}
    refused = http.post("/_sandbox/brevo/campaigns", json=stranger)
    assert refused.status_code == 400 and "stranger@example.com" in refused.json()["error"]
    assert http.post("/_sandbox/brevo/campaigns", json={"list_id": 999999}).status_code == 404
    for i in range(2):
        brevo_person(
            sandbox,
            PersonEvent(list_id=list_id, email=f"person{i}@example.com", action="list_unsubscribe"),
        )
    hooks, state = len(receiver.posts()), sandbox.state.brevo[SANDBOX_BREVO_KEY].model_dump()
    with pytest.raises(BrevoError) as empty:
        send_brevo_campaign(sandbox, CampaignSend(list_id=list_id))
    assert empty.value.status == 400
    assert sandbox.state.brevo[SANDBOX_BREVO_KEY].model_dump() == state
    assert len(receiver.posts()) == hooks
    assert before["campaigns"] == {}


def test_a_batched_brevo_webhook_gets_the_events_in_arrays(
    sandbox: Sandbox,
    brevo: BrevoClient,
    receiver: Receiver,
    http: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("newsletter_pipelines.sandbox.engine.BREVO_BATCH_MAX", 2)
    brevo.upsert(contacts(5))
    list_id = int(brevo.ensure_audience().id)
    batched, single = "https://hooks.example.com/batched", "https://hooks.example.com/single"
    body = {"url": batched, "events": ["delivered"], "type": "marketing", "batched": True}
    assert http.post(f"{BV_ROOT}/webhooks", json=body, headers=BV_KEY).status_code == 201
    bv_hook(http, single, ["delivered"])
    sent = http.post("/_sandbox/brevo/campaigns", json={"list_id": list_id, "subject": "News"})
    assert sent.status_code == 200
    arrays = events(receiver, batched)
    assert [len(a) for a in arrays] == [2, 2, 1]  # at most BREVO_BATCH_MAX per delivery
    assert sorted(e["email"] for a in arrays for e in a) == [
        f"person{i}@example.com" for i in range(5)
    ]
    assert len(events(receiver, single)) == 5  # one delivery per event
