"""The Brevo emulator itself, over raw HTTP: attribute languages, silent quirks, limits,
processes and rate-limit headers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from newsletter_pipelines.sandbox import (
    SANDBOX_BREVO_KEY,
    SANDBOX_ORIGIN,
    Sandbox,
    SandboxTransport,
)
from newsletter_pipelines.sandbox.brevo_state import BvAttribute, BvContact
from newsletter_pipelines_tests.providers.conftest import brevo_account

ROOT = "/brevo/v3"
KEY = {"api-key": SANDBOX_BREVO_KEY}


@pytest.fixture
def list_id(http: httpx.Client, sandbox: Sandbox) -> int:
    brevo_account(sandbox)
    folder = http.post(f"{ROOT}/contacts/folders", json={"name": "F"}, headers=KEY).json()["id"]
    body = {"name": "L", "folderId": folder}
    return int(http.post(f"{ROOT}/contacts/lists", json=body, headers=KEY).json()["id"])


def contact(http: httpx.Client, email: str) -> dict[str, object]:
    answer = http.get(f"{ROOT}/contacts/{email}", headers=KEY)
    assert answer.status_code == 200
    return dict(answer.json())


@pytest.mark.parametrize(
    ("language", "names"),
    [("en", {"FIRSTNAME", "LASTNAME"}), ("de", {"VORNAME", "NACHNAME"}), ("fr", {"PRENOM", "NOM"})],
)
def test_default_attribute_names_follow_the_account_language(
    http: httpx.Client, sandbox: Sandbox, language: str, names: set[str]
) -> None:
    brevo_account(sandbox, language=language)
    attributes = http.get(f"{ROOT}/contacts/attributes", headers=KEY).json()["attributes"]
    assert names <= {a["name"] for a in attributes}


def test_unknown_attributes_are_silently_ignored(http: httpx.Client, list_id: int) -> None:
    body = {"email": "a@example.com", "attributes": {"FIRSTNAME": "Ann", "VORNAME": "Anna"}}
    assert http.post(f"{ROOT}/contacts", json=body, headers=KEY).status_code == 201
    assert contact(http, "a@example.com")["attributes"] == {"FIRSTNAME": "Ann"}


def test_create_twice_is_a_duplicate_unless_update_is_enabled(
    http: httpx.Client, list_id: int
) -> None:
    body = {"email": "a@example.com", "listIds": [list_id]}
    assert http.post(f"{ROOT}/contacts", json=body, headers=KEY).status_code == 201
    again = http.post(f"{ROOT}/contacts", json=body, headers=KEY)
    assert (again.status_code, again.json()["code"]) == (400, "duplicate_parameter")
    update = http.post(f"{ROOT}/contacts", json={**body, "updateEnabled": True}, headers=KEY)
    assert update.status_code == 204


def test_email_blacklisted_false_clears_a_blacklist(http: httpx.Client, list_id: int) -> None:
    http.post(f"{ROOT}/contacts", json={"email": "a@example.com"}, headers=KEY)
    for flag in (True, False):
        body = {"contacts": [{"email": "a@example.com", "emailBlacklisted": flag}]}
        assert http.post(f"{ROOT}/contacts/batch", json=body, headers=KEY).status_code == 204
        assert contact(http, "a@example.com")["emailBlacklisted"] is flag


def test_a_batch_with_an_unknown_contact_is_refused_whole(http: httpx.Client, list_id: int) -> None:
    http.post(f"{ROOT}/contacts", json={"email": "a@example.com"}, headers=KEY)
    body = {
        "contacts": [
            {"email": "a@example.com", "attributes": {"FIRSTNAME": "Changed"}},
            {"email": "ghost@example.com", "attributes": {"FIRSTNAME": "Nobody"}},
        ]
    }
    refused = http.post(f"{ROOT}/contacts/batch", json=body, headers=KEY)
    assert refused.status_code == 400
    assert contact(http, "a@example.com")["attributes"] == {}


def test_list_membership_calls_take_at_most_150(
    http: httpx.Client, sandbox: Sandbox, list_id: int
) -> None:
    http.post(f"{ROOT}/contacts", json={"email": "a@example.com"}, headers=KEY)
    added = http.post(
        f"{ROOT}/contacts/lists/{list_id}/contacts/add",
        json={"emails": ["a@example.com", "ghost@example.com"]},
        headers=KEY,
    ).json()["contacts"]
    assert (added["success"], added["failure"]) == (["a@example.com"], ["ghost@example.com"])
    raw = httpx.Client(transport=SandboxTransport(sandbox), base_url=SANDBOX_ORIGIN)
    emails = [f"p{i}@example.com" for i in range(151)]
    too_many = raw.post(
        f"{ROOT}/contacts/lists/{list_id}/contacts/remove", json={"emails": emails}, headers=KEY
    )
    assert too_many.status_code == 400


def test_imports_are_processes_that_finish_later(
    http: httpx.Client, sandbox: Sandbox, list_id: int
) -> None:
    sandbox.process_delay_seconds = 60.0
    body = {
        "jsonBody": [{"email": "a@example.com"}, {"email": "not-an-address"}],
        "listIds": [list_id],
    }
    process_id = http.post(f"{ROOT}/contacts/import", json=body, headers=KEY).json()["processId"]
    assert http.get(f"{ROOT}/processes/{process_id}", headers=KEY).json()["status"] == "queued"
    assert http.get(f"{ROOT}/contacts/a@example.com", headers=KEY).status_code == 404
    sandbox.process_delay_seconds = 0.0
    done = http.get(f"{ROOT}/processes/{process_id}", headers=KEY).json()
    assert done["status"] == "completed" and done["info"]["import"]["invalid_emails"] == 1
    assert contact(http, "a@example.com")["listIds"] == [list_id]


def test_contact_endpoints_answer_429_after_ten_a_second(
    http: httpx.Client, sandbox: Sandbox
) -> None:
    brevo_account(sandbox, per_second=10)
    answers = [http.get(f"{ROOT}/contacts/attributes", headers=KEY) for _ in range(12)]
    assert [a.status_code for a in answers] == [200] * 10 + [429] * 2
    assert answers[0].headers["x-sib-ratelimit-limit"] == "10"
    assert answers[9].headers["x-sib-ratelimit-remaining"] == "0"
    assert int(answers[11].headers["x-sib-ratelimit-reset"]) in (0, 1)
    assert answers[11].json()["code"] == "too_many_requests"


def test_the_account_owner_cannot_be_deleted(http: httpx.Client, list_id: int) -> None:
    owner = http.get(f"{ROOT}/account", headers=KEY).json()["email"]
    http.post(f"{ROOT}/contacts", json={"email": owner}, headers=KEY)
    assert http.delete(f"{ROOT}/contacts/{owner}", headers=KEY).status_code == 405


def put_contact(sandbox: Sandbox, email: str, **fields: Any) -> None:
    with sandbox.transaction():
        state = sandbox.state.brevo[SANDBOX_BREVO_KEY]
        now = sandbox.now()
        contact = BvContact(id=state.new_id(), email=email, createdAt=now, modifiedAt=now, **fields)
        state.add_contact(contact)


def run_import(http: httpx.Client, body: dict[str, Any]) -> None:
    process_id = http.post(f"{ROOT}/contacts/import", json=body, headers=KEY).json()["processId"]
    assert http.get(f"{ROOT}/processes/{process_id}", headers=KEY).json()["status"] == "completed"


def test_an_import_links_existing_contacts_and_updates_them_only_when_asked(
    http: httpx.Client, sandbox: Sandbox, list_id: int
) -> None:
    put_contact(sandbox, "a@example.com", attributes={"FIRSTNAME": "Old", "LASTNAME": "Keep"})
    put_contact(sandbox, "b@example.com", attributes={"FIRSTNAME": "Old"}, emailBlacklisted=True)
    put_contact(sandbox, "c@example.com", listUnsubscribed=[list_id])
    rows = [
        {"email": email, "attributes": {"FIRSTNAME": "New", "LASTNAME": ""}}
        for email in ("a@example.com", "b@example.com", "c@example.com", "d@example.com")
    ]
    run_import(http, {"jsonBody": rows, "listIds": [list_id], "updateExistingContacts": False})
    a, b, c, d = (contact(http, f"{x}@example.com") for x in "abcd")
    assert all(x["listIds"] == [list_id] for x in (a, b, c, d))
    assert a["attributes"] == {"FIRSTNAME": "Old", "LASTNAME": "Keep"}
    assert (b["attributes"], b["emailBlacklisted"]) == ({"FIRSTNAME": "Old"}, True)
    assert c["listUnsubscribed"] == [list_id]
    assert d["attributes"] == {"FIRSTNAME": "New"}
    run_import(http, {"jsonBody": rows[:1], "listIds": [list_id]})
    assert contact(http, "a@example.com")["attributes"] == {"FIRSTNAME": "New", "LASTNAME": "Keep"}
    erase = {"jsonBody": rows[:1], "listIds": [list_id], "emptyContactsAttributes": True}
    run_import(http, erase)
    assert contact(http, "a@example.com")["attributes"] == {"FIRSTNAME": "New"}


def test_an_empty_string_clears_an_attribute_and_null_is_ignored(
    http: httpx.Client, sandbox: Sandbox
) -> None:
    salutation = BvAttribute(
        name="SALUTATION",
        category="category",
        type=None,
        enumeration=[{"value": 1, "label": "Herr"}, {"value": 2, "label": "Frau"}],
    )
    brevo_account(sandbox, salutation=salutation)
    body = {"email": "a@example.com", "attributes": {"SALUTATION": 1, "FIRSTNAME": "Ann"}}
    assert http.post(f"{ROOT}/contacts", json=body, headers=KEY).status_code == 201
    nulls = {"contacts": [{"email": "a@example.com", "attributes": {"SALUTATION": None}}]}
    assert http.post(f"{ROOT}/contacts/batch", json=nulls, headers=KEY).status_code == 204
    label = {"attributes": {"SALUTATION": "Frau"}}
    assert http.put(f"{ROOT}/contacts/a@example.com", json=label, headers=KEY).status_code == 204
    assert contact(http, "a@example.com")["attributes"] == {"SALUTATION": 1, "FIRSTNAME": "Ann"}
    empty = {"attributes": {"SALUTATION": "", "FIRSTNAME": ""}}
    assert http.put(f"{ROOT}/contacts/a@example.com", json=empty, headers=KEY).status_code == 204
    assert contact(http, "a@example.com")["attributes"] == {}


def test_duplicate_addresses_are_refused_with_the_identifier_named(
    http: httpx.Client, list_id: int
) -> None:
    for email in ("a@example.com", "b@example.com"):
        http.post(f"{ROOT}/contacts", json={"email": email}, headers=KEY)
    again = http.post(f"{ROOT}/contacts", json={"email": "A@example.com"}, headers=KEY)
    rename = {"attributes": {"EMAIL": "b@example.com"}}
    renamed = http.put(f"{ROOT}/contacts/a@example.com", json=rename, headers=KEY)
    for answer in (again, renamed):
        assert answer.status_code == 400
        assert answer.json()["code"] == "duplicate_parameter"
        assert answer.json()["metadata"] == {"duplicate_identifiers": ["email"]}
    batch = {"contacts": [{"email": "a@example.com", "attributes": {"EMAIL": "b@example.com"}}]}
    refused = http.post(f"{ROOT}/contacts/batch", json=batch, headers=KEY)
    assert (refused.status_code, refused.json()["code"]) == (400, "duplicate_parameter")


def test_a_list_holds_its_linked_contacts_not_those_unsubscribed_from_it(
    http: httpx.Client, sandbox: Sandbox, list_id: int
) -> None:
    put_contact(sandbox, "in@example.com", listIds=[list_id])
    put_contact(sandbox, "out@example.com", listUnsubscribed=[list_id])
    page = http.get(f"{ROOT}/contacts/lists/{list_id}/contacts", headers=KEY).json()
    assert [c["email"] for c in page["contacts"]] == ["in@example.com"]
    assert page["count"] == 1
    assert contact(http, "out@example.com")["listUnsubscribed"] == [list_id]


def admin_unsubscriptions(http: httpx.Client, email: str) -> int:
    statistics: Any = contact(http, email)["statistics"]
    return len(statistics["unsubscriptions"]["adminUnsubscription"])


def test_blacklisting_through_the_api_is_an_admin_unsubscription(
    http: httpx.Client, list_id: int
) -> None:
    blacklisted = {"email": "a@example.com", "emailBlacklisted": True}
    assert http.post(f"{ROOT}/contacts", json=blacklisted, headers=KEY).status_code == 201
    assert admin_unsubscriptions(http, "a@example.com") == 1
    for flag, expected in ((True, 1), (False, 1), (True, 2)):
        body = {"emailBlacklisted": flag}
        assert http.put(f"{ROOT}/contacts/a@example.com", json=body, headers=KEY).status_code == 204
        assert admin_unsubscriptions(http, "a@example.com") == expected
    imported = {"jsonBody": [{"email": "b@example.com"}], "listIds": [list_id]}
    run_import(http, {**imported, "emailBlacklist": True})
    assert admin_unsubscriptions(http, "b@example.com") == 1
    statistics: Any = contact(http, "b@example.com")["statistics"]
    assert (statistics["hardBounces"], statistics["complaints"]) == ([], [])


def test_statistics_survive_the_state_file_and_older_files_load(tmp_path: Path) -> None:
    state = tmp_path / "sandbox.json"

    def call(method: str, path: str, **options: Any) -> httpx.Response:
        """One request to a sandbox freshly loaded from the state file."""
        box = Sandbox(state_file=state)
        try:
            with httpx.Client(transport=SandboxTransport(box), base_url=SANDBOX_ORIGIN) as http:
                return http.request(method, ROOT + path, headers=KEY, **options)
        finally:
            box.close()

    body = {"email": "a@example.com", "emailBlacklisted": True}
    assert call("POST", "/contacts", json=body).status_code == 201
    kept = call("GET", "/contacts/a@example.com").json()["statistics"]
    assert len(kept["unsubscriptions"]["adminUnsubscription"]) == 1

    older = json.loads(state.read_text())
    for stored in older["brevo"][SANDBOX_BREVO_KEY]["contacts"].values():
        del stored["statistics"]
    state.write_text(json.dumps(older))
    loaded = call("GET", "/contacts/a@example.com").json()
    assert loaded["emailBlacklisted"] is True
    assert loaded["statistics"] == {
        "hardBounces": [],
        "complaints": [],
        "unsubscriptions": {"userUnsubscription": [], "adminUnsubscription": []},
    }


def scanned(sandbox: Sandbox, list_id: int, *, descending: bool) -> list[str]:
    """The list's contacts found as the list page did before its index: every contact of the
    account looked at, sorted by id."""
    contacts = sandbox.state.brevo[SANDBOX_BREVO_KEY].contacts.values()
    rows = sorted((c for c in contacts if list_id in c.listIds), key=lambda c: c.id)
    return [c.email for c in (rows[::-1] if descending else rows)]


def listed(http: httpx.Client, list_id: int, sort: str, **params: Any) -> list[str]:
    path = f"{ROOT}/contacts/lists/{list_id}/contacts"
    emails: list[str] = []
    for offset in range(0, 40, 7):
        query = {"limit": 7, "offset": offset, "sort": sort, **params}
        page = http.get(path, params=query, headers=KEY).json()
        emails += [c["email"] for c in page["contacts"]]
    return emails


def test_a_list_page_shows_what_a_scan_of_every_contact_finds(
    http: httpx.Client, sandbox: Sandbox, list_id: int, tmp_path: Path
) -> None:
    folder = http.post(f"{ROOT}/contacts/folders", json={"name": "G"}, headers=KEY).json()["id"]
    other = http.post(f"{ROOT}/contacts/lists", json={"name": "M", "folderId": folder}, headers=KEY)
    other_id = int(other.json()["id"])
    put_contact(sandbox, "put@example.com", listIds=[list_id, other_id])
    rows = [{"email": f"i{n}@example.com"} for n in range(12)]
    run_import(http, {"jsonBody": rows, "listIds": [list_id]})
    run_import(http, {"jsonBody": rows[::3], "listIds": [other_id]})
    for n in range(3):
        body = {"email": f"p{n}@example.com", "listIds": [other_id]}
        http.post(f"{ROOT}/contacts", json=body, headers=KEY)
    add = {"emails": ["p0@example.com", "p1@example.com", "nobody@example.com"]}
    http.post(f"{ROOT}/contacts/lists/{list_id}/contacts/add", json=add, headers=KEY)
    remove = {"emails": ["i1@example.com", "i4@example.com"]}
    http.post(f"{ROOT}/contacts/lists/{list_id}/contacts/remove", json=remove, headers=KEY)
    unlink = {"unlinkListIds": [list_id], "listIds": [other_id]}
    http.put(f"{ROOT}/contacts/i2@example.com", json=unlink, headers=KEY)
    http.delete(f"{ROOT}/contacts/i3@example.com", headers=KEY)
    for action, email in (("list_unsubscribe", "i5@example.com"), ("signup", "new@example.com")):
        event = {"list_id": str(list_id), "email": email, "action": action}
        assert http.post("/_sandbox/brevo/people", json=event).status_code < 300
    for target in (list_id, other_id):
        for sort in ("asc", "desc"):
            assert listed(http, target, sort) == scanned(sandbox, target, descending=sort == "desc")
    since = {"modifiedSince": "2000-01-01T00:00:00.000Z"}
    assert listed(http, list_id, "asc", **since) == scanned(sandbox, list_id, descending=False)

    state = tmp_path / "sandbox.json"
    sandbox.state_file = state
    sandbox.save()
    loaded = Sandbox(state_file=state)
    with httpx.Client(transport=SandboxTransport(loaded), base_url=SANDBOX_ORIGIN) as again:
        assert listed(again, other_id, "asc") == scanned(sandbox, other_id, descending=False)
    loaded.close()
