"""What people do at the providers (`sandbox/people.py`): every action in every state either
changes the state as the provider would (and fires its webhooks) or is refused with the
provider's error, leaving state and webhooks untouched."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest

from newsletter_pipelines.providers.base import MemberStatus
from newsletter_pipelines.providers.brevo import BrevoClient
from newsletter_pipelines.providers.mailchimp import MailchimpClient
from newsletter_pipelines.sandbox import (
    SANDBOX_BREVO_KEY,
    SANDBOX_MAILCHIMP_KEY,
    PersonEvent,
    Sandbox,
    SandboxTransport,
)
from newsletter_pipelines.sandbox.brevo_rules import BrevoError
from newsletter_pipelines.sandbox.brevo_state import BvAccount, BvContact
from newsletter_pipelines.sandbox.mailchimp_members import ProblemError
from newsletter_pipelines.sandbox.mailchimp_state import McMember, subscriber_hash
from newsletter_pipelines.sandbox.people import PersonAction, brevo_person, mailchimp_person
from newsletter_pipelines_tests.providers.conftest import (
    Receiver,
    brevo_account,
    make_brevo,
    make_mailchimp,
)
from newsletter_pipelines_tests.providers.helpers import audience, contacts

MC_ROOT = "/mailchimp/3.0"
MC_AUTH = ("anystring", SANDBOX_MAILCHIMP_KEY)
BV_ROOT = "/brevo/v3"
BV_KEY = {"api-key": SANDBOX_BREVO_KEY}
ACTIONS = get_args(PersonAction)


def mc(sandbox: Sandbox, email: str, action: str, **extra: Any) -> dict[str, Any]:
    event = PersonEvent(list_id=audience(sandbox).id, email=email, action=action, **extra)  # type: ignore[arg-type]
    return mailchimp_person(sandbox, event)


def bv(sandbox: Sandbox, list_id: str, email: str, action: str, **extra: Any) -> dict[str, Any]:
    event = PersonEvent(list_id=list_id, email=email, action=action, **extra)  # type: ignore[arg-type]
    return brevo_person(sandbox, event)


def mc_bodies(receiver: Receiver) -> list[httpx.QueryParams]:
    """The form-encoded Mailchimp deliveries so far."""
    return [httpx.QueryParams(r.content.decode()) for r in receiver.posts()]


def mc_hooks(receiver: Receiver) -> list[tuple[str, str]]:
    """(type, email) of the Mailchimp deliveries so far."""
    return [(b["type"], b["data[email]"]) for b in mc_bodies(receiver)]


def bv_hooks(receiver: Receiver) -> list[dict[str, Any]]:
    """The Brevo deliveries so far."""
    return [json.loads(r.content) for r in receiver.posts()]


def brevo_state(sandbox: Sandbox) -> BvAccount:
    return sandbox.state.brevo[SANDBOX_BREVO_KEY]


def stored(sandbox: Sandbox, email: str) -> BvContact:
    contact = brevo_state(sandbox).by_email(email)
    assert contact is not None
    return contact


def member(sandbox: Sandbox, email: str) -> McMember:
    return audience(sandbox).members[subscriber_hash(email)]


# --- Mailchimp: every action in every state ----------------------------------------------

MC_SETUP: dict[str, tuple[str, ...]] = {
    "absent": (),
    "forgotten": ("signup", "delete"),
    "subscribed": ("signup",),
    "unsubscribed": ("signup", "unsubscribe"),
    "cleaned": ("signup", "clean"),
    "pending": ("pending",),
    "transactional": ("transactional",),
    "archived-subscribed": ("signup", "archive"),
    "archived-unsubscribed": ("signup", "unsubscribe", "archive"),
    "archived-transactional": ("transactional", "archive"),
}
_ARCHIVED = ("archived-subscribed", "archived-unsubscribed", "archived-transactional")
_EXISTING = tuple(s for s in MC_SETUP if s not in ("absent", "forgotten"))
_GONE = {"absent": 404, "forgotten": 404}


def _same(states: tuple[str, ...]) -> dict[str, str | int]:
    """Each state's status, unchanged."""
    return {s: "archived" if s in _ARCHIVED else s for s in states}


MC_EXPECTED: dict[str, dict[str, str | int]] = {
    "signup": {
        **dict.fromkeys(MC_SETUP, "subscribed"),
        "forgotten": 400,
        "archived-unsubscribed": 400,
    },
    "resubscribe": {**dict.fromkeys(MC_SETUP, "subscribed"), "subscribed": 400, "cleaned": 400},
    "pending": {
        **dict.fromkeys(MC_SETUP, "pending"),
        "subscribed": 400,
        "cleaned": 400,
        "pending": 400,
    },
    "transactional": {**dict.fromkeys(MC_SETUP, 400), "absent": "transactional"},
    "unsubscribe": {**_GONE, **dict.fromkeys(_EXISTING, "unsubscribed")},
    "blacklist": dict.fromkeys(MC_SETUP, 400),
    "list_unsubscribe": dict.fromkeys(MC_SETUP, 400),
    "complain": dict.fromkeys(MC_SETUP, 400),
    "archive": {
        **_GONE,
        **dict.fromkeys(_EXISTING, 405),
        "subscribed": "archived",
        "unsubscribed": "archived",
        "transactional": "archived",
    },
    "delete": {**_GONE, **dict.fromkeys(_EXISTING, "gone")},
    "clean": {**_GONE, **dict.fromkeys(_EXISTING, "cleaned")},
    "tag": {**_GONE, **_same(_EXISTING)},
    "untag": {**_GONE, **_same(_EXISTING)},
    "change_email": {**_GONE, **dict.fromkeys(_EXISTING, 400), "subscribed": "subscribed"},
    # Brevo only in the sandbox (test_sandbox_campaigns.py)
    "open": dict.fromkeys(MC_SETUP, 400),
    "click": dict.fromkeys(MC_SETUP, 400),
}
MC_WEBHOOKS = {
    "signup": ["subscribe"],
    "resubscribe": ["subscribe"],
    "unsubscribe": ["unsubscribe"],
    "archive": ["unsubscribe"],
    "delete": ["unsubscribe"],
    "clean": ["cleaned"],
    "change_email": ["upemail"],
}


def test_every_mailchimp_action_in_every_state(
    sandbox: Sandbox, mailchimp: MailchimpClient, receiver: Receiver
) -> None:
    mailchimp.register_webhook("https://hooks.example.com/mailchimp", "s3cret")
    assert set(MC_EXPECTED) == set(ACTIONS)
    for action, expected in MC_EXPECTED.items():
        for state, outcome in expected.items():
            email = f"{action}.{state}@example.com"
            moved = f"moved.{email}"
            for step in MC_SETUP[state]:
                mc(sandbox, email, step)
            before, hooks = audience(sandbox).model_dump(), len(receiver.posts())
            case = f"{action} on {state}"
            try:
                answer = mc(sandbox, email, action, tag="VIP", new_email=moved)
            except ProblemError as refusal:
                assert refusal.status == outcome, case
                assert audience(sandbox).model_dump() == before, case
                assert len(receiver.posts()) == hooks, case
                continue
            lst = audience(sandbox)
            where = moved if action == "change_email" else email
            current = lst.members.get(subscriber_hash(where))
            status = current.status if current is not None else "gone"
            assert status == outcome, case
            assert answer.get("status", "gone") == status, case
            if current is not None:
                assert (current.archived_from is not None) == (status == "archived"), case
            assert (subscriber_hash(where) in lst.forgotten) == (status == "gone"), case
            fired = [b["type"] for b in mc_bodies(receiver)[hooks:]]
            assert fired == MC_WEBHOOKS.get(action, []), case


# --- Mailchimp: the new actions through the client ---------------------------------------


def test_resubscribe_brings_back_opt_outs_archived_and_deleted_members(
    sandbox: Sandbox, mailchimp: MailchimpClient, receiver: Receiver
) -> None:
    mailchimp.upsert(contacts(3))
    mailchimp.register_webhook("https://hooks.example.com/mailchimp", "s3cret")
    mc(sandbox, "person0@example.com", "unsubscribe")
    mc(sandbox, "person1@example.com", "unsubscribe")
    mc(sandbox, "person1@example.com", "archive")
    mc(sandbox, "person2@example.com", "delete")
    before = {m.email: m.status for m in mailchimp.snapshot()}
    assert before == {
        "person0@example.com": MemberStatus.UNSUBSCRIBED,
        "person1@example.com": MemberStatus.ARCHIVED,
    }
    assert member(sandbox, "person1@example.com").archived_from == "unsubscribed"
    start = len(receiver.posts())
    for email in ("person0@example.com", "person1@example.com", "person2@example.com"):
        mc(sandbox, email, "resubscribe")
    mc(sandbox, "new@example.com", "resubscribe", first_name="Neu")
    after = {m.email: m for m in mailchimp.snapshot()}
    assert {e: m.status for e, m in after.items()} == {
        "person0@example.com": MemberStatus.SUBSCRIBED,
        "person1@example.com": MemberStatus.SUBSCRIBED,
        "person2@example.com": MemberStatus.SUBSCRIBED,
        "new@example.com": MemberStatus.SUBSCRIBED,
    }
    assert after["person0@example.com"].first_name == "First0"  # no name typed: kept
    assert after["new@example.com"].first_name == "Neu"
    assert member(sandbox, "person0@example.com").unsubscribe_reason == ""
    assert subscriber_hash("person2@example.com") not in audience(sandbox).forgotten
    assert member(sandbox, "new@example.com").source == "Hosted Signup Form"
    assert mc_hooks(receiver)[start:] == [
        ("subscribe", "person0@example.com"),
        ("subscribe", "person1@example.com"),
        ("subscribe", "person2@example.com"),
        ("subscribe", "new@example.com"),
    ]


def test_a_cleaned_member_cannot_resubscribe_by_form(
    sandbox: Sandbox, mailchimp: MailchimpClient, receiver: Receiver
) -> None:
    mailchimp.upsert(contacts(2))
    mailchimp.register_webhook("https://hooks.example.com/mailchimp", "s3cret")
    mc(sandbox, "person0@example.com", "clean")
    start = len(receiver.posts())
    with pytest.raises(ProblemError) as cleaned:
        mc(sandbox, "person0@example.com", "resubscribe")
    assert (cleaned.value.status, cleaned.value.title) == (400, "Member In Compliance State")
    with pytest.raises(ProblemError) as subscribed:
        mc(sandbox, "person1@example.com", "resubscribe")
    assert (subscribed.value.status, subscribed.value.title) == (400, "Member Exists")
    statuses = {m.email: m.status for m in mailchimp.snapshot()}
    assert statuses == {
        "person0@example.com": MemberStatus.CLEANED,
        "person1@example.com": MemberStatus.SUBSCRIBED,
    }
    assert receiver.posts()[start:] == []


def test_pending_members_cannot_be_archived_directly_in_batches_or_by_an_admin(
    sandbox: Sandbox, mailchimp: MailchimpClient, receiver: Receiver, http: httpx.Client
) -> None:
    list_id = mailchimp.ensure_audience().id
    mailchimp.register_webhook("https://hooks.example.com/mailchimp", "s3cret")
    assert mc(sandbox, "doi@example.com", "pending")["status"] == "pending"
    assert [(m.email, m.status) for m in mailchimp.snapshot()] == [
        ("doi@example.com", MemberStatus.PENDING)
    ]
    assert receiver.posts() == []  # Mailchimp fires `subscribe` on confirmation only
    path = f"/lists/{list_id}/members/{subscriber_hash('doi@example.com')}"
    refused = http.delete(MC_ROOT + path, auth=MC_AUTH)
    assert (refused.status_code, refused.json()["title"]) == (405, "Method Not Allowed")
    assert "bounced, pending or archived" in refused.json()["detail"]
    operations = [{"method": "DELETE", "path": path, "operation_id": "archive-doi"}]
    batch = http.post(f"{MC_ROOT}/batches", json={"operations": operations}, auth=MC_AUTH)
    done = http.get(f"{MC_ROOT}/batches/{batch.json()['id']}", auth=MC_AUTH).json()
    assert (done["status"], done["errored_operations"]) == ("finished", 1)
    result = sandbox.state.mailchimp[SANDBOX_MAILCHIMP_KEY].batches[done["id"]].results[0]
    assert result["status_code"] == 405
    assert json.loads(result["response"])["detail"] == (
        "This list member cannot be removed. "
        "Can not archive a contact that is bounced, pending or archived"
    )
    with pytest.raises(ProblemError) as archived:
        mc(sandbox, "doi@example.com", "archive")
    assert archived.value.status == 405
    with pytest.raises(ProblemError):
        mc(sandbox, "doi@example.com", "pending")
    mc(sandbox, "doi@example.com", "resubscribe")  # the person confirms
    assert [m.status for m in mailchimp.snapshot()] == [MemberStatus.SUBSCRIBED]
    assert mc_hooks(receiver) == [("subscribe", "doi@example.com")]


def test_transactional_members_have_no_consent_and_are_created_once(
    sandbox: Sandbox, mailchimp: MailchimpClient, receiver: Receiver
) -> None:
    mailchimp.upsert(contacts(1))
    mailchimp.register_webhook("https://hooks.example.com/mailchimp", "s3cret")
    mc(sandbox, "buyer@example.com", "transactional", first_name="Bea")
    with pytest.raises(ProblemError) as again:
        mc(sandbox, "person0@example.com", "transactional")
    assert (again.value.status, again.value.title) == (400, "Member Exists")
    members = {m.email: m for m in mailchimp.snapshot()}
    assert members["buyer@example.com"].status is MemberStatus.TRANSACTIONAL
    assert members["buyer@example.com"].first_name == "Bea"
    assert members["person0@example.com"].status is MemberStatus.SUBSCRIBED
    assert receiver.posts() == []


def test_an_archived_opt_out_keeps_its_status_behind_the_archive(
    sandbox: Sandbox, mailchimp: MailchimpClient, http: httpx.Client
) -> None:
    mailchimp.upsert(contacts(2))
    list_id = mailchimp.ensure_audience().id
    for email in ("person0@example.com", "person1@example.com"):
        mc(sandbox, email, "archive")
    mc(sandbox, "person0@example.com", "resubscribe")
    mc(sandbox, "person0@example.com", "unsubscribe")
    mc(sandbox, "person0@example.com", "archive")
    assert member(sandbox, "person0@example.com").archived_from == "unsubscribed"
    assert member(sandbox, "person1@example.com").archived_from == "subscribed"
    entries = [
        {"email_address": e, "status": "subscribed"}
        for e in ("person0@example.com", "person1@example.com")
    ]
    body = {"members": entries, "update_existing": False}
    answer = http.post(f"{MC_ROOT}/lists/{list_id}", json=body, auth=MC_AUTH).json()
    # An archived member counts as absent (no `Member Exists`): the subscribed one is re-added,
    # the opt-out is refused for compliance and stays archived with its status behind it.
    assert [m["email_address"] for m in answer["new_members"]] == ["person1@example.com"]
    assert [e["email_address"] for e in answer["errors"]] == ["person0@example.com"]
    assert "compliance state" in answer["errors"][0]["error"]
    statuses = {m.email: m.status for m in mailchimp.snapshot()}
    assert statuses == {
        "person0@example.com": MemberStatus.ARCHIVED,
        "person1@example.com": MemberStatus.SUBSCRIBED,
    }
    assert member(sandbox, "person0@example.com").archived_from == "unsubscribed"


def test_mailchimp_refuses_brevo_actions_unknown_audiences_and_blank_tags(
    sandbox: Sandbox, mailchimp: MailchimpClient
) -> None:
    mailchimp.upsert(contacts(1))
    for action in ("blacklist", "list_unsubscribe", "complain"):
        with pytest.raises(ProblemError) as refused:
            mc(sandbox, "person0@example.com", action)
        assert refused.value.status == 400
    with pytest.raises(ProblemError) as blank:
        mc(sandbox, "person0@example.com", "tag")
    assert blank.value.status == 400
    event = PersonEvent(list_id="nope", email="person0@example.com", action="resubscribe")
    with pytest.raises(ProblemError) as unknown:
        mailchimp_person(sandbox, event)
    assert unknown.value.status == 404
    assert [m.status for m in mailchimp.snapshot()] == [MemberStatus.SUBSCRIBED]


# --- Mailchimp: a member changes its address --------------------------------------------


def test_change_email_moves_the_mailchimp_member_and_fires_upemail(
    sandbox: Sandbox,
    mailchimp: MailchimpClient,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mailchimp.upsert(contacts(2, tags=frozenset({"VIP"})))
    mailchimp.register_webhook("https://hooks.example.com/mailchimp", "s3cret")
    list_id = audience(sandbox).id
    old = member(sandbox, "person0@example.com").model_copy(deep=True)
    before = {m.email: m for m in mailchimp.snapshot()}["person0@example.com"]
    later = time.time() + 3600
    monkeypatch.setattr(sandbox, "now", lambda: later)
    answer = mc(sandbox, "person0@example.com", "change_email", new_email="Moved@example.com")
    assert subscriber_hash("person0@example.com") not in audience(sandbox).members
    moved = member(sandbox, "moved@example.com")
    assert (moved.id, moved.email_address) == (
        subscriber_hash("moved@example.com"),
        "Moved@example.com",
    )
    assert (moved.contact_id, moved.status, moved.tags, moved.merge_fields) == (
        old.contact_id,
        "subscribed",
        old.tags,
        old.merge_fields,
    )
    assert moved.last_changed > old.last_changed
    assert (answer["id"], answer["contact_id"]) == (moved.id, old.contact_id)
    assert [dict(b) for b in mc_bodies(receiver)] == [
        {
            "type": "upemail",
            "fired_at": mc_bodies(receiver)[0]["fired_at"],
            "data[list_id]": list_id,
            "data[new_id]": subscriber_hash("moved@example.com"),
            "data[new_email]": "Moved@example.com",
            "data[old_email]": "person0@example.com",
        }
    ]
    after = {m.email: m for m in mailchimp.snapshot()}
    assert set(after) == {"Moved@example.com", "person1@example.com"}
    assert after["Moved@example.com"].provider_id == subscriber_hash("moved@example.com")
    assert after["Moved@example.com"].stable_id == before.stable_id == old.contact_id
    assert after["Moved@example.com"].tags == {"VIP"}


def test_change_email_refuses_taken_addresses_unknown_members_and_a_missing_address(
    sandbox: Sandbox, mailchimp: MailchimpClient, receiver: Receiver, http: httpx.Client
) -> None:
    mailchimp.upsert(contacts(3))
    mailchimp.register_webhook("https://hooks.example.com/mailchimp", "s3cret")
    mc(sandbox, "person2@example.com", "archive")
    mc(sandbox, "gone@example.com", "signup")
    mc(sandbox, "gone@example.com", "delete")
    before, hooks = audience(sandbox).model_dump(), len(receiver.posts())
    refusals = {
        ("person0@example.com", "person1@example.com"): (400, "Member Exists"),
        ("person0@example.com", "Person0@example.com"): (400, "Member Exists"),  # itself
        ("person0@example.com", "PERSON2@example.com"): (400, "Member Exists"),  # archived
        ("person0@example.com", "gone@example.com"): (400, "Forgotten Email Not Subscribed"),
        ("person0@example.com", "not-an-address"): (400, "Invalid Resource"),
        ("nobody@example.com", "new@example.com"): (404, "Resource Not Found"),
        ("person2@example.com", "new@example.com"): (400, "Invalid Resource"),  # not subscribed
    }
    for (email, new_email), expected in refusals.items():
        with pytest.raises(ProblemError) as refused:
            mc(sandbox, email, "change_email", new_email=new_email)
        assert (refused.value.status, refused.value.title) == expected, (email, new_email)
    with pytest.raises(ProblemError) as missing:
        mc(sandbox, "person0@example.com", "change_email")
    assert (missing.value.status, missing.value.title) == (400, "Invalid Resource")
    assert "new_email" in missing.value.detail
    body = {"list_id": audience(sandbox).id, "email": "person0@example.com"}
    answer = http.post("/_sandbox/mailchimp/people", json={**body, "action": "change_email"})
    assert answer.status_code == 400 and "new_email" in answer.json()["error"]
    assert audience(sandbox).model_dump() == before
    assert len(receiver.posts()) == hooks


# --- Mailchimp: tag names are case-insensitive -------------------------------------------


def test_tag_names_ignore_case_and_keep_the_first_spelling(
    sandbox: Sandbox, mailchimp: MailchimpClient, http: httpx.Client
) -> None:
    mailchimp.upsert(contacts(3, tags=frozenset({"VIP"})))
    list_id = mailchimp.ensure_audience().id
    mc(sandbox, "person0@example.com", "tag", tag="vip")
    mc(sandbox, "person0@example.com", "tag", tag="Käufer")
    mc(sandbox, "person0@example.com", "tag", tag="KÄUFER")
    tags = {m.email: m.tags for m in mailchimp.snapshot()}
    assert tags["person0@example.com"] == {"VIP", "Käufer"}
    mc(sandbox, "person0@example.com", "untag", tag="vip")
    assert {m.email: m.tags for m in mailchimp.snapshot()}["person0@example.com"] == {"Käufer"}

    tags_path = f"{MC_ROOT}/lists/{list_id}/members/{subscriber_hash('person1@example.com')}/tags"
    changes = {"tags": [{"name": "vip", "status": "active"}, {"name": "Vip", "status": "active"}]}
    assert http.post(tags_path, json=changes, auth=MC_AUTH).status_code == 204
    assert [t["name"] for t in http.get(tags_path, auth=MC_AUTH).json()["tags"]] == ["VIP"]
    removal = {"tags": [{"name": "vip", "status": "inactive"}]}
    assert http.post(tags_path, json=removal, auth=MC_AUTH).status_code == 204
    assert http.get(tags_path, auth=MC_AUTH).json()["tags"] == []

    entries = [
        {"email_address": "person2@example.com", "status": "subscribed", "tags": ["vip"]},
        {"email_address": "new@example.com", "status": "subscribed", "tags": ["vip", "käufer"]},
    ]
    body = {"members": entries, "update_existing": True}
    answer = http.post(f"{MC_ROOT}/lists/{list_id}", json=body, auth=MC_AUTH).json()
    assert answer["error_count"] == 0
    tags = {m.email: m.tags for m in mailchimp.snapshot()}
    assert tags["person2@example.com"] == {"VIP"}
    assert tags["new@example.com"] == {"VIP", "Käufer"}
    found = http.get(f"{MC_ROOT}/lists/{list_id}/tag-search", auth=MC_AUTH).json()
    assert sorted(t["name"] for t in found["tags"]) == ["Käufer", "VIP"]

    segment = {"name": "vip", "static_segment": ["person1@example.com"]}
    created = http.post(f"{MC_ROOT}/lists/{list_id}/segments", json=segment, auth=MC_AUTH).json()
    assert (created["id"], created["name"]) == (audience(sandbox).segments["VIP"], "VIP")
    bulk = {"members_to_remove": ["person2@example.com", "new@example.com"]}
    segment_path = f"{MC_ROOT}/lists/{list_id}/segments/{created['id']}"
    assert http.post(segment_path, json=bulk, auth=MC_AUTH).json()["total_removed"] == 2
    tags = {m.email: m.tags for m in mailchimp.snapshot()}
    assert tags == {
        "person0@example.com": {"Käufer"},
        "person1@example.com": {"VIP"},
        "person2@example.com": set(),
        "new@example.com": {"Käufer"},
    }
    assert set(audience(sandbox).segments) == {"VIP", "Käufer"}


# --- Brevo: every action in every state --------------------------------------------------

BV_SETUP: dict[str, tuple[str, ...]] = {
    "absent": (),
    "in": ("signup",),
    "in+bl": ("signup", "unsubscribe"),
    "out+unsub": ("signup", "list_unsubscribe"),
    "out+bl": ("blacklist",),
}
_CONTACTS = ("in", "in+bl", "out+unsub", "out+bl")
BV_EXPECTED: dict[str, dict[str, str | int]] = {
    "signup": {"absent": "in", "in": "in", "in+bl": "in+bl", "out+unsub": "in", "out+bl": "in+bl"},
    "resubscribe": {**dict.fromkeys(BV_SETUP, "in"), "in": 400},
    "blacklist": {
        "absent": "out+bl",
        "in": "in+bl",
        "in+bl": 400,
        "out+unsub": "out+unsub+bl",
        "out+bl": 400,
    },
    "list_unsubscribe": {
        "absent": 404,
        "in": "out+unsub",
        "in+bl": "out+unsub+bl",
        "out+unsub": 400,
        "out+bl": 400,
    },
    "unsubscribe": {
        "absent": 404,
        "in": "in+bl",
        "in+bl": "in+bl",
        "out+unsub": "out+unsub+bl",
        "out+bl": "out+bl",
    },
    "archive": {"absent": 404, **dict.fromkeys(_CONTACTS, "gone")},
    "delete": {"absent": 404, **dict.fromkeys(_CONTACTS, "gone")},
    "pending": dict.fromkeys(BV_SETUP, 400),
    "transactional": dict.fromkeys(BV_SETUP, 400),
    "tag": {"absent": 404, **{s: s for s in _CONTACTS}},
    "untag": {"absent": 404, **{s: s for s in _CONTACTS}},
    "change_email": {"absent": 404, **{s: s for s in _CONTACTS}},
    # without a campaign (the sent campaigns' opens and clicks: test_sandbox_campaigns.py)
    "open": dict.fromkeys(BV_SETUP, 400),
    "click": dict.fromkeys(BV_SETUP, 400),
}
BV_EXPECTED["clean"] = BV_EXPECTED["complain"] = BV_EXPECTED["unsubscribe"]
BV_WEBHOOKS = {
    "signup": ["list_addition"],
    "resubscribe": ["list_addition"],
    "blacklist": ["unsubscribed"],
    "list_unsubscribe": ["unsubscribed"],
    "unsubscribe": ["unsubscribed"],
    "archive": ["contact_deleted"],
    "delete": ["contact_deleted"],
    "clean": ["hard_bounce"],
    "complain": ["spam"],
    # the sandbox fires contact_updated, but the sync's webhook does not ask for it (Brevo
    # fires it for the sync's own API writes too): tags come back with the nightly import-back
    "tag": [],
    "untag": [],
    "change_email": [],  # Brevo's marketing events have none for an address change
}


def describe(contact: BvContact | None, list_id: int) -> str:
    """`in`/`out` of the list, `+unsub` when unsubscribed from it, `+bl` when blacklisted."""
    if contact is None:
        return "gone"
    parts = ["in" if list_id in contact.listIds else "out"]
    parts += ["unsub"] if list_id in contact.listUnsubscribed else []
    parts += ["bl"] if contact.emailBlacklisted else []
    return "+".join(parts)


def test_every_brevo_action_in_every_state(
    sandbox: Sandbox, brevo: BrevoClient, receiver: Receiver
) -> None:
    brevo.register_webhook("https://hooks.example.com/brevo", "t0ken")
    list_id = brevo.ensure_audience().id
    assert set(BV_EXPECTED) == set(ACTIONS)
    for action, expected in BV_EXPECTED.items():
        for state, outcome in expected.items():
            email = f"{action}.{state}@example.com"
            moved = f"moved.{email}"
            for step in BV_SETUP[state]:
                bv(sandbox, list_id, email, step)
            assert describe(brevo_state(sandbox).by_email(email), int(list_id)) == (
                "gone" if state == "absent" else state
            )
            before, hooks = brevo_state(sandbox).model_dump(), len(receiver.posts())
            case = f"{action} on {state}"
            try:
                bv(sandbox, list_id, email, action, tag="vip", new_email=moved)
            except BrevoError as refusal:
                assert refusal.status == outcome, case
                assert brevo_state(sandbox).model_dump() == before, case
                assert len(receiver.posts()) == hooks, case
                continue
            where = moved if action == "change_email" else email
            contact = brevo_state(sandbox).by_email(where)
            assert describe(contact, int(list_id)) == outcome, case
            if contact is not None:
                assert not set(contact.listIds) & set(contact.listUnsubscribed), case
            fired = [e["event"] for e in bv_hooks(receiver)[hooks:]]
            assert fired == BV_WEBHOOKS[action], case


# --- Brevo: the new actions through the client -------------------------------------------


def test_resubscribe_lifts_the_blacklist_and_the_list_unsubscription(
    sandbox: Sandbox, brevo: BrevoClient, receiver: Receiver
) -> None:
    brevo.upsert(contacts(3))
    brevo.register_webhook("https://hooks.example.com/brevo", "t0ken")
    list_id = brevo.ensure_audience().id
    bv(sandbox, list_id, "person0@example.com", "unsubscribe")
    bv(sandbox, list_id, "person1@example.com", "list_unsubscribe")
    assert {m.email: m.status for m in brevo.snapshot()} == {
        "person0@example.com": MemberStatus.BLACKLISTED,
        "person2@example.com": MemberStatus.SUBSCRIBED,
    }
    start = len(receiver.posts())
    for email in ("person0@example.com", "person1@example.com", "new@example.com"):
        bv(sandbox, list_id, email, "resubscribe")
    with pytest.raises(BrevoError) as again:
        bv(sandbox, list_id, "person2@example.com", "resubscribe")
    assert again.value.status == 400
    members = {m.email: m for m in brevo.snapshot()}
    assert {e: m.status for e, m in members.items()} == dict.fromkeys(
        ["person0@example.com", "person1@example.com", "person2@example.com", "new@example.com"],
        MemberStatus.SUBSCRIBED,
    )
    assert members["person1@example.com"].first_name == "First1"
    assert stored(sandbox, "person1@example.com").listUnsubscribed == []
    events = bv_hooks(receiver)[start:]
    assert [(e["event"], e["email"], e["list_id"]) for e in events] == [
        ("list_addition", "person0@example.com", [int(list_id)]),
        ("list_addition", "person1@example.com", [int(list_id)]),
        ("list_addition", "new@example.com", [int(list_id)]),
    ]
    assert all("api_key_name" not in e for e in events)


def test_blacklist_keeps_lists_and_creates_unknown_addresses_outside_every_list(
    sandbox: Sandbox, brevo: BrevoClient, receiver: Receiver, http: httpx.Client
) -> None:
    brevo.upsert(contacts(2))
    brevo.register_webhook("https://hooks.example.com/brevo", "t0ken")
    list_id = brevo.ensure_audience().id
    start = len(receiver.posts())
    bv(sandbox, list_id, "person0@example.com", "blacklist")
    bv(sandbox, list_id, "stranger@example.com", "blacklist")
    assert {m.email: m.status for m in brevo.snapshot()} == {
        "person0@example.com": MemberStatus.BLACKLISTED,
        "person1@example.com": MemberStatus.SUBSCRIBED,
    }
    stranger = http.get(f"{BV_ROOT}/contacts/stranger@example.com", headers=BV_KEY).json()
    assert (stranger["emailBlacklisted"], stranger["listIds"], stranger["listUnsubscribed"]) == (
        True,
        [],
        [],
    )
    assert stored(sandbox, "person0@example.com").listIds == [int(list_id)]
    events = bv_hooks(receiver)[start:]
    assert [(e["event"], e["email"], e["list_id"]) for e in events] == [
        ("unsubscribed", "person0@example.com", [int(list_id)]),
        ("unsubscribed", "stranger@example.com", []),
    ]
    with pytest.raises(BrevoError) as twice:
        bv(sandbox, list_id, "stranger@example.com", "blacklist")
    assert twice.value.status == 400


def statistics(
    hard: list[dict[str, Any]] | None = None,
    complaints: list[dict[str, Any]] | None = None,
    user: list[dict[str, Any]] | None = None,
    admin: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The `statistics` part of `GET /contacts/{identifier}` the sandbox keeps."""
    return {
        "hardBounces": hard or [],
        "complaints": complaints or [],
        "unsubscriptions": {"userUnsubscription": user or [], "adminUnsubscription": admin or []},
    }


def test_brevo_statistics_record_why_a_contact_is_blocklisted(
    sandbox: Sandbox,
    brevo: BrevoClient,
    receiver: Receiver,
    http: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    brevo.upsert(contacts(4))
    brevo.register_webhook("https://hooks.example.com/brevo", "t0ken")
    list_id = brevo.ensure_audience().id
    moment = datetime(2026, 3, 1, 12, 30, 5, tzinfo=UTC).timestamp()
    monkeypatch.setattr(sandbox, "now", lambda: moment)
    start = len(receiver.posts())
    actions = ["clean", "unsubscribe", "blacklist", "complain"]
    for i, action in enumerate(actions):
        bv(sandbox, list_id, f"person{i}@example.com", action)
    details = [
        http.get(f"{BV_ROOT}/contacts/person{i}@example.com", headers=BV_KEY).json()
        for i in range(len(actions))
    ]
    assert all(d["emailBlacklisted"] for d in details)
    campaign = [{"campaignId": 0, "eventTime": "2026-03-01T12:30:05Z"}]
    assert [d["statistics"] for d in details] == [
        statistics(hard=campaign),
        statistics(user=campaign),
        statistics(admin=[{"eventTime": "2026-03-01T12:30:05Z"}]),
        statistics(complaints=campaign),
    ]
    events = bv_hooks(receiver)[start:]
    assert [(e["event"], e["email"]) for e in events] == [
        (event, f"person{i}@example.com")
        for i, event in enumerate(["hard_bounce", "unsubscribed", "unsubscribed", "spam"])
    ]
    assert (events[3]["camp_id"], events[3]["ts_event"]) == (0, int(moment))


def test_brevo_statistics_keep_their_history_and_show_the_last_90_days(
    sandbox: Sandbox, brevo: BrevoClient, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    brevo.upsert(contacts(1))
    list_id = brevo.ensure_audience().id
    moment = time.time()
    monkeypatch.setattr(sandbox, "now", lambda: moment)
    for action in ("unsubscribe", "resubscribe", "clean"):
        bv(sandbox, list_id, "person0@example.com", action)

    def shown(days: float) -> tuple[bool, dict[str, Any]]:
        monkeypatch.setattr(sandbox, "now", lambda: moment + days * 86400)
        answer = http.get(f"{BV_ROOT}/contacts/person0@example.com", headers=BV_KEY).json()
        return answer["emailBlacklisted"], answer["statistics"]

    blacklisted, recent = shown(89.9)
    assert blacklisted
    assert [len(recent["hardBounces"]), len(recent["unsubscriptions"]["userUnsubscription"])] == [
        1,
        1,
    ]
    assert shown(90.1) == (True, statistics())


def test_list_unsubscribe_leaves_the_list_but_not_the_account(
    sandbox: Sandbox, brevo: BrevoClient, receiver: Receiver, http: httpx.Client
) -> None:
    brevo.upsert(contacts(3))
    brevo.register_webhook("https://hooks.example.com/brevo", "t0ken")
    list_id = brevo.ensure_audience().id
    start = len(receiver.posts())
    bv(sandbox, list_id, "person0@example.com", "list_unsubscribe")
    details = http.get(f"{BV_ROOT}/contacts/person0@example.com", headers=BV_KEY).json()
    assert (details["emailBlacklisted"], details["listIds"], details["listUnsubscribed"]) == (
        False,
        [],
        [int(list_id)],
    )
    # Gone from the list's contacts and counters, as the specification's examples show.
    page = http.get(f"{BV_ROOT}/contacts/lists/{list_id}/contacts", headers=BV_KEY).json()
    assert sorted(c["email"] for c in page["contacts"]) == [
        "person1@example.com",
        "person2@example.com",
    ]
    lists = http.get(f"{BV_ROOT}/contacts/lists", headers=BV_KEY).json()["lists"]
    ours = next(x for x in lists if x["id"] == int(list_id))
    assert (ours["uniqueSubscribers"], ours["totalSubscribers"]) == (2, 2)
    assert {m.email for m in brevo.snapshot()} == {"person1@example.com", "person2@example.com"}
    events = bv_hooks(receiver)[start:]
    assert [(e["event"], e["email"], e["list_id"]) for e in events] == [
        ("unsubscribed", "person0@example.com", [int(list_id)])
    ]
    with pytest.raises(BrevoError) as not_in_list:
        bv(sandbox, list_id, "person0@example.com", "list_unsubscribe")
    assert not_in_list.value.status == 400
    with pytest.raises(BrevoError) as unknown:
        bv(sandbox, list_id, "nobody@example.com", "list_unsubscribe")
    assert unknown.value.status == 404
    bv(sandbox, list_id, "person0@example.com", "signup", first_name="Again")
    assert stored(sandbox, "person0@example.com").listUnsubscribed == []
    assert {m.email: m.status for m in brevo.snapshot()}["person0@example.com"] is (
        MemberStatus.SUBSCRIBED
    )


def test_change_email_keeps_the_brevo_contact_under_its_id(
    sandbox: Sandbox, brevo: BrevoClient, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    brevo.upsert(contacts(2))
    brevo.register_webhook("https://hooks.example.com/brevo", "t0ken")
    list_id = brevo.ensure_audience().id
    bv(sandbox, list_id, "person0@example.com", "tag", tag="vip")
    old = stored(sandbox, "person0@example.com").model_copy(deep=True)
    before = {m.email: m for m in brevo.snapshot()}["person0@example.com"]
    start = len(receiver.posts())
    later = time.time() + 3600
    monkeypatch.setattr(sandbox, "now", lambda: later)
    answer = bv(
        sandbox, list_id, "person0@example.com", "change_email", new_email="moved@example.com"
    )
    assert brevo_state(sandbox).by_email("person0@example.com") is None
    moved = stored(sandbox, "moved@example.com")
    assert (moved.id, moved.listIds, moved.attributes, moved.emailBlacklisted) == (
        old.id,
        old.listIds,
        old.attributes,
        False,
    )
    assert moved.modifiedAt == later > old.modifiedAt
    assert (answer["id"], answer["email"]) == (old.id, "moved@example.com")
    assert receiver.posts()[start:] == []  # no marketing event for an address change
    after = {m.email: m for m in brevo.snapshot()}
    assert set(after) == {"moved@example.com", "person1@example.com"}
    assert after["moved@example.com"].stable_id == before.stable_id == str(old.id)
    assert after["moved@example.com"].provider_id == before.provider_id
    assert after["moved@example.com"].status is MemberStatus.SUBSCRIBED


def test_brevo_change_email_refuses_taken_addresses_unknown_contacts_and_a_missing_address(
    sandbox: Sandbox, brevo: BrevoClient, http: httpx.Client
) -> None:
    brevo.upsert(contacts(2))
    list_id = brevo.ensure_audience().id
    bv(sandbox, list_id, "outside@example.com", "blacklist")
    before = brevo_state(sandbox).model_dump()
    refusals = {
        ("person0@example.com", "PERSON1@example.com"): (400, "duplicate_parameter"),
        ("person0@example.com", "outside@example.com"): (400, "duplicate_parameter"),
        ("person0@example.com", "not-an-address"): (400, "invalid_parameter"),
        ("nobody@example.com", "new@example.com"): (404, "document_not_found"),
    }
    for (email, new_email), expected in refusals.items():
        with pytest.raises(BrevoError) as refused:
            bv(sandbox, list_id, email, "change_email", new_email=new_email)
        assert (refused.value.status, refused.value.code) == expected, (email, new_email)
    with pytest.raises(BrevoError) as missing:
        bv(sandbox, list_id, "person0@example.com", "change_email")
    assert (missing.value.status, missing.value.code) == (400, "missing_parameter")
    body = {"list_id": list_id, "email": "person0@example.com", "action": "change_email"}
    answer = http.post("/_sandbox/brevo/people", json=body)
    assert answer.status_code == 400 and "new_email" in answer.json()["error"]
    assert brevo_state(sandbox).model_dump() == before


def test_brevo_refuses_mailchimp_actions_unknown_lists_and_blank_tags(
    sandbox: Sandbox, brevo: BrevoClient
) -> None:
    brevo.upsert(contacts(1))
    list_id = brevo.ensure_audience().id
    before = brevo_state(sandbox).model_dump()
    for action in ("pending", "transactional"):
        with pytest.raises(BrevoError) as refused:
            bv(sandbox, list_id, "person0@example.com", action)
        assert refused.value.status == 400
    with pytest.raises(BrevoError) as blank:
        bv(sandbox, list_id, "person0@example.com", "untag")
    assert blank.value.status == 400
    for unknown_list in ("999999", "not-a-list"):
        with pytest.raises(BrevoError) as unknown:
            bv(sandbox, unknown_list, "person0@example.com", "resubscribe")
        assert unknown.value.status == 404
    with pytest.raises(BrevoError) as bad_address:
        bv(sandbox, list_id, "not-an-address", "blacklist")
    assert bad_address.value.status == 400
    assert brevo_state(sandbox).model_dump() == before


@pytest.mark.parametrize("provider", ["mailchimp", "brevo"])
def test_the_person_command_acts_on_the_state_file_the_sync_shares(
    provider: str, tmp_path: Path
) -> None:
    """`python -m newsletter_pipelines.sandbox person …` in its own process, as under `make dev`:
    the member the sync created is unsubscribed in the shared state file; a refused action and
    an ambiguous audience are clear errors."""
    state_file = tmp_path / "sandbox.json"
    box = Sandbox(state_file=state_file)
    if provider == "brevo":
        brevo_account(box)
    make = make_mailchimp if provider == "mailchimp" else make_brevo
    client = make(SandboxTransport(box))
    client.upsert(contacts(1))
    client.close()
    command = [sys.executable, "-m", "newsletter_pipelines.sandbox", "person", provider]
    files = ["--state-file", str(state_file)]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *args, *files], check=False, capture_output=True, text=True
        )

    done = run("person0@example.com", "unsubscribe")
    assert done.returncode == 0, done.stderr
    again = make(SandboxTransport(Sandbox(state_file=state_file)))
    member = again.members(["person0@example.com"])[0]
    assert member.status in ("unsubscribed", "blacklisted")
    refused = run("nobody@example.com", "unsubscribe")
    assert refused.returncode == 1 and "refused by the sandbox" in refused.stderr
    unknown = run("person0@example.com", "unsubscribe", "--list", "Other")
    assert unknown.returncode == 2 and "name the audience with --list" in unknown.stderr
