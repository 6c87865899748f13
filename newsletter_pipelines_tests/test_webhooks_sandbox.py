"""End to end: the receiver served by uvicorn on a free loopback port, webhooks registered at the
embedded sandbox through the provider clients, a person unsubscribes at the sandbox, and the
event is in `provider_events` exactly once (also when the provider delivers it again)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import uvicorn

from newsletter_pipelines.providers.errors import ApiError
from newsletter_pipelines.sandbox import (
    SANDBOX_BREVO_KEY,
    SANDBOX_MAILCHIMP_KEY,
    SANDBOX_ORIGIN,
    CampaignSend,
    PersonEvent,
    Sandbox,
    SandboxTransport,
)
from newsletter_pipelines.sandbox.campaigns import send_brevo_campaign, send_mailchimp_campaign
from newsletter_pipelines.sandbox.people import brevo_person, mailchimp_person
from newsletter_pipelines.settings import Settings
from newsletter_pipelines.state.events import unprocessed_events
from newsletter_pipelines.webhooks import create_app
from newsletter_pipelines_tests.providers.conftest import brevo_account, make_brevo, make_mailchimp
from newsletter_pipelines_tests.providers.helpers import contacts

SECRET = "e2e-webhook-secret-0123456789"


@pytest.fixture
def state(tmp_path: Path) -> sa.Engine:
    return sa.create_engine(f"sqlite:///{tmp_path / 'state.sqlite3'}")


@pytest.fixture
def receiver_url(state: sa.Engine) -> Iterator[str]:
    """The receiver for the default audiences (`mailchimp`, `brevo`), served on a thread."""
    app = create_app(Settings(webhook_secret=SECRET), state)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "receiver did not start"
        time.sleep(0.01)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    yield f"http://{host}:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A sandbox delivering its webhooks over real HTTP."""
    box = Sandbox()
    yield box
    box.close()


def test_mailchimp_unsubscribe_arrives_once(
    sandbox: Sandbox, receiver_url: str, state: sa.Engine
) -> None:
    client = make_mailchimp(SandboxTransport(sandbox))
    client.upsert(contacts(2))
    list_id = client.ensure_audience().id
    # The sandbox checks the URL with a GET first, as Mailchimp does.
    client.register_webhook(f"{receiver_url}/webhooks/mailchimp/mailchimp", SECRET)
    assert unprocessed_events(state, "mailchimp") == []  # the sync's own writes are not echoed
    event = PersonEvent(list_id=list_id, email="person1@example.com", action="unsubscribe")
    mailchimp_person(sandbox, event)
    delivery = sandbox.webhooks.calls[-1]
    assert delivery.status == 200
    redelivered = httpx.post(delivery.url, content=delivery.body, headers=delivery.headers)
    assert (redelivered.status_code, redelivered.json()["stored"]) == (200, 0)
    (stored,) = unprocessed_events(state, "mailchimp")
    assert (stored.provider, stored.type, stored.email) == (
        "mailchimp",
        "unsubscribe",
        "person1@example.com",
    )
    assert stored.payload["data"]["action"] == "unsub"
    assert stored.payload["data"]["merges"]["FNAME"] == "First1"
    client.close()


def test_brevo_unsubscribe_arrives_once(
    sandbox: Sandbox, receiver_url: str, state: sa.Engine
) -> None:
    brevo_account(sandbox)
    client = make_brevo(SandboxTransport(sandbox))
    client.upsert(contacts(2))
    client.register_webhook(f"{receiver_url}/webhooks/brevo/brevo", SECRET)
    list_id = client.ensure_audience().id
    event = PersonEvent(list_id=list_id, email="person0@example.com", action="unsubscribe")
    brevo_person(sandbox, event)
    delivery = sandbox.webhooks.calls[-1]
    assert delivery.status == 200
    assert httpx.post(delivery.url, content=delivery.body, headers=delivery.headers).json() == {
        "received": 1,
        "stored": 0,
    }
    (stored,) = unprocessed_events(state, "brevo")
    assert (stored.provider, stored.type, stored.email) == (
        "brevo",
        "unsubscribed",
        "person0@example.com",
    )
    assert stored.payload["list_id"] == [int(list_id)]


def test_a_wrong_secret_fails_registration_and_delivery(
    sandbox: Sandbox, receiver_url: str, state: sa.Engine
) -> None:
    client = make_mailchimp(SandboxTransport(sandbox))
    client.upsert(contacts(1))
    with pytest.raises(ApiError, match="verify the URL"):
        client.register_webhook(f"{receiver_url}/webhooks/mailchimp/mailchimp", "not-the-secret")
    brevo_account(sandbox)
    brevo = make_brevo(SandboxTransport(sandbox))
    brevo.upsert(contacts(1))
    brevo.register_webhook(f"{receiver_url}/webhooks/brevo/brevo", "not-the-secret")
    list_id = brevo.ensure_audience().id
    brevo_person(
        sandbox, PersonEvent(list_id=list_id, email="person0@example.com", action="unsubscribe")
    )
    assert sandbox.webhooks.calls[-1].status == 401
    assert unprocessed_events(state, "brevo") == []


def test_campaign_events_arrive_over_http(
    sandbox: Sandbox, receiver_url: str, state: sa.Engine
) -> None:
    """A sent campaign's events, delivered by the sandbox to the receiver served by uvicorn."""
    mailchimp = make_mailchimp(SandboxTransport(sandbox))
    mailchimp.upsert(contacts(2))
    list_id = mailchimp.ensure_audience().id
    brevo_account(sandbox)
    brevo = make_brevo(SandboxTransport(sandbox))
    brevo.upsert(contacts(2))
    brevo_list = brevo.ensure_audience().id
    with httpx.Client(transport=SandboxTransport(sandbox), base_url=SANDBOX_ORIGIN) as http:
        hook = {
            "url": f"{receiver_url}/webhooks/mailchimp/mailchimp?secret={SECRET}",
            "events": {"campaign": True, "cleaned": True},
            "sources": {"user": False, "admin": False, "api": False},
        }
        answer = http.post(
            f"/mailchimp/3.0/lists/{list_id}/webhooks",
            json=hook,
            auth=("any", SANDBOX_MAILCHIMP_KEY),
        )
        assert answer.status_code == 200
        hook = {
            "url": f"{receiver_url}/webhooks/brevo/brevo",
            "events": ["delivered", "hardBounce", "opened", "click"],
            "type": "marketing",
            "auth": {"type": "bearer", "token": SECRET},
        }
        answer = http.post("/brevo/v3/webhooks", json=hook, headers={"api-key": SANDBOX_BREVO_KEY})
        assert answer.status_code == 201
    sent = send_mailchimp_campaign(
        sandbox, CampaignSend(list_id=list_id, bouncing=["person1@example.com"])
    )
    campaign = send_brevo_campaign(
        sandbox, CampaignSend(list_id=brevo_list, bouncing=["person1@example.com"])
    )
    click = PersonEvent(
        list_id=brevo_list,
        email="person0@example.com",
        action="click",
        campaign_id=campaign["id"],
        url="https://example.com/a",
    )
    brevo_person(sandbox, click)
    assert {c.status for c in sandbox.webhooks.calls} == {200}
    stored = [(e.type, e.email) for e in unprocessed_events(state, "mailchimp")]
    assert stored == [("campaign", None), ("cleaned", "person1@example.com")]
    assert unprocessed_events(state, "mailchimp")[0].payload["data"]["id"] == sent["id"]
    events = unprocessed_events(state, "brevo")
    assert [(e.type, e.email) for e in events] == [
        ("delivered", "person0@example.com"),
        ("hard_bounce", "person1@example.com"),
        ("click", "person0@example.com"),
    ]
    assert {e.payload["camp_id"] for e in events} == {campaign["id"]}
    mailchimp.close()
    brevo.close()
