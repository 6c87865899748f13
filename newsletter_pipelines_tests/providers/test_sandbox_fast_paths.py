"""The sandbox's shortcuts for long answers and large writes answer what the plain way does."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from newsletter_pipelines.sandbox import (
    SANDBOX_BREVO_KEY,
    SANDBOX_MAILCHIMP_KEY,
    SANDBOX_ORIGIN,
    Sandbox,
    SandboxTransport,
)
from newsletter_pipelines.sandbox.fields import _keep, _tree
from newsletter_pipelines.sandbox.mailchimp_state import McAccount, McMember, subscriber_hash
from newsletter_pipelines_tests.providers.conftest import brevo_account
from newsletter_pipelines_tests.providers.test_sandbox_mailchimp import NEW_LIST

AUTH = ("anystring", SANDBOX_MAILCHIMP_KEY)
ROOT = "/mailchimp/3.0"
UNSET = {"archived_from", "tags", "unsubscribe_reason"}
MEMBERS = [
    {"email_address": "a@example.com", "status": "subscribed", "tags": ["VIP", "crm"]},
    {"email_address": "b@example.com", "status": "pending", "merge_fields": {"FNAME": "B"}},
    {"email_address": "c@example.com", "status": "unsubscribed", "merge_fields": {"LNAME": 7}},
    {"email_address": "d@example.com", "status": "transactional", "tags": ["crm"]},
]


@pytest.fixture
def list_id(http: httpx.Client) -> str:
    list_id = str(http.post(f"{ROOT}/lists", json=NEW_LIST, auth=AUTH).json()["id"])
    answer = http.post(f"{ROOT}/lists/{list_id}", json={"members": MEMBERS}, auth=AUTH).json()
    assert answer["total_created"] == len(MEMBERS)
    return list_id


@pytest.mark.parametrize(
    "fields",
    [
        "total_items,members.id,members.contact_id,members.email_address,members.status,"
        "members.merge_fields,members.tags,members.last_changed,members.unsubscribe_reason",
        "members.id,members.email_address,members.web_id,members.source,total_items",
        "members.merge_fields.FNAME,members.tags.name,members.full_name,members.stats",
        "members,total_items",
        "members.id,list_id",
    ],
)
def test_a_page_with_fields_is_the_whole_page_trimmed(
    http: httpx.Client, list_id: str, fields: str
) -> None:
    path = f"{ROOT}/lists/{list_id}/members"
    whole = http.get(path, params={"count": 10}, auth=AUTH).json()
    trimmed = http.get(path, params={"count": 10, "fields": fields}, auth=AUTH).json()
    assert trimmed == _keep(whole, _tree(fields.split(",")))


def test_a_list_of_items_holding_only_kept_fields_is_kept_as_it_is() -> None:
    items: list[Any] = [{"id": 1, "name": "a"}, {"id": 2, "name": "b", "other": 3}, "x"]
    kept = _keep(items, {"id": {}, "name": {}})
    assert kept == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, "x"]
    assert kept[0] is items[0]


def test_members_a_batch_subscribe_creates_are_the_validated_ones(
    sandbox: Sandbox, list_id: str
) -> None:
    lst = sandbox.state.mailchimp[SANDBOX_MAILCHIMP_KEY].lists[list_id]
    for member in lst.members.values():
        checked = McMember(**member.model_dump())
        assert member == checked
        assert list(vars(member)) == list(vars(checked)) == list(McMember.model_fields)
        assert member.model_fields_set == UNSET ^ set(McMember.model_fields)  # as given before
        assert member.model_dump_json() == checked.model_dump_json()
    assert len({id(m.tags) for m in lst.members.values()}) == len(MEMBERS)
    state = sandbox.state.model_dump_json()
    assert type(sandbox.state).model_validate_json(state).model_dump_json() == state


MEMBERSHIP_CHANGES = st.lists(
    st.tuples(st.sampled_from(["add", "add", "move", "forget", "archive"]), st.integers(0, 50)),
    max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(MEMBERSHIP_CHANGES)
def test_pages_of_every_member_follow_every_change_of_the_membership(
    changes: list[tuple[str, int]],
) -> None:
    """Read page by page, the members are those the audience holds, in the order it stored
    them, after additions, address changes (the member moves to the end), permanent deletions
    and archivings: the pages' kept order is made again when a member comes or goes."""
    sandbox = Sandbox()
    with httpx.Client(transport=SandboxTransport(sandbox), base_url=SANDBOX_ORIGIN) as http:
        list_id = str(http.post(f"{ROOT}/lists", json=NEW_LIST, auth=AUTH).json()["id"])
        lst = sandbox.state.mailchimp[SANDBOX_MAILCHIMP_KEY].lists[list_id]
        members = f"{ROOT}/lists/{list_id}/members"

        def paged() -> list[str]:
            emails: list[str] = []
            for offset in range(0, len(lst.members) + 3, 3):
                params = {"count": 3, "offset": offset, "fields": "members.email_address"}
                page = http.get(members, params=params, auth=AUTH).json()["members"]
                emails += [m["email_address"] for m in page]
            return emails

        for step, (change, pick) in enumerate(changes):
            subscribed = [m for m in lst.members.values() if m.status == "subscribed"]
            at = f"{members}/{subscribed[pick % len(subscribed)].id}" if subscribed else ""
            if change == "add" or not subscribed:
                new = {"email_address": f"n{step}@example.com", "status": "subscribed"}
                http.post(f"{ROOT}/lists/{list_id}", json={"members": [new]}, auth=AUTH)
            elif change == "move":
                moved = {"email_address": f"moved{step}@example.com"}
                assert http.patch(at, json=moved, auth=AUTH).status_code == 200
            elif change == "forget":
                forgotten = http.post(f"{at}/actions/delete-permanent", auth=AUTH)
                assert forgotten.status_code == 204
            else:
                assert http.delete(at, auth=AUTH).status_code == 204
            assert paged() == [m.email_address for m in lst.members.values()]
        assert all(subscriber_hash(m.email_address) == k for k, m in lst.members.items())


def test_new_ids_are_what_as_many_new_id_calls_give() -> None:
    one, many = McAccount(api_key="a"), McAccount(api_key="b")
    assert [one.new_id(), one.new_id(), one.new_id()] == list(many.new_ids(3))
    assert one.next_id == many.next_id and one.new_id() == many.new_id()
    assert "next_id" in many.model_fields_set


BREVO = "/brevo/v3"
BREVO_KEY = {"api-key": SANDBOX_BREVO_KEY}


def test_a_brevo_list_read_since_a_time_follows_every_change(
    http: httpx.Client, sandbox: Sandbox
) -> None:
    brevo_account(sandbox)
    clock = [1_800_000_000.0]
    sandbox.now = lambda: clock[0]  # type: ignore[method-assign]
    folder = http.post(f"{BREVO}/contacts/folders", json={"name": "F"}, headers=BREVO_KEY)
    body = {"name": "L", "folderId": folder.json()["id"]}
    list_id = http.post(f"{BREVO}/contacts/lists", json=body, headers=BREVO_KEY).json()["id"]
    for n in range(6):
        clock[0] += 10
        contact = {"email": f"p{n}@example.com", "listIds": [list_id]}
        assert http.post(f"{BREVO}/contacts", json=contact, headers=BREVO_KEY).status_code == 201
    account = sandbox.state.brevo[SANDBOX_BREVO_KEY]

    def since(seconds: float) -> list[str]:
        stamp = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
        params = {"modifiedSince": stamp.replace("+00:00", "Z"), "sort": "asc", "limit": 2}
        emails = []
        for offset in range(0, 10, 2):
            path = f"{BREVO}/contacts/lists/{list_id}/contacts"
            page = http.get(path, params={**params, "offset": offset}, headers=BREVO_KEY).json()
            emails += [c["email"] for c in page["contacts"]]
        scanned = [
            account.contacts[i].email
            for i in sorted(account.list_contact_ids(list_id))
            if account.contacts[i].modifiedAt >= seconds
        ]
        assert emails == scanned
        return emails

    assert since(1_800_000_035) == ["p3@example.com", "p4@example.com", "p5@example.com"]
    assert since(1_800_000_035) == ["p3@example.com", "p4@example.com", "p5@example.com"]
    clock[0] += 10
    update = {"attributes": {"FIRSTNAME": "P"}}
    http.put(f"{BREVO}/contacts/p0@example.com", json=update, headers=BREVO_KEY)
    assert since(1_800_000_035)[0] == "p0@example.com"
    remove = {"emails": ["p4@example.com"]}
    http.post(f"{BREVO}/contacts/lists/{list_id}/contacts/remove", json=remove, headers=BREVO_KEY)
    assert "p4@example.com" not in since(1_800_000_035)
    http.delete(f"{BREVO}/contacts/p5@example.com", headers=BREVO_KEY)
    assert since(1_800_000_035) == ["p0@example.com", "p3@example.com"]
    account.contacts[account.by_email("p1@example.com").id].modifiedAt = 1_800_000_100.0  # type: ignore[union-attr]
    assert since(1_800_000_035) == ["p0@example.com", "p1@example.com", "p3@example.com"]
