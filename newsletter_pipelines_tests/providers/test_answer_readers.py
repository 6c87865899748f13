"""The clients' fast readers of long answers: the same values as their validated models, and
a clear error for a malformed answer."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime
from typing import Any

import orjson
import pydantic
import pytest

from newsletter_pipelines.providers import mailchimp
from newsletter_pipelines.providers.base import (
    Action,
    Member,
    MemberStatus,
    Outcome,
    Result,
    member_row,
)
from newsletter_pipelines.providers.mailchimp import (
    member_of,
    read_members_rows,
    read_subscribe_answer,
)
from newsletter_pipelines.providers.mailchimp_models import BatchSubscribeAnswer, MembersPage
from newsletter_pipelines.providers.trusted import is_complete, trusted

STAMP = "2026-03-01T10:00:00+00:00"


def member_json(i: int, **changes: Any) -> dict[str, Any]:
    """One member as the snapshot's query returns it."""
    member: dict[str, Any] = {
        "id": f"{i:032x}",
        "email_address": f"p{i}@example.com",
        "contact_id": f"c{i:031x}",
        "status": "subscribed",
        "unsubscribe_reason": "",
        "merge_fields": {"FNAME": f"F{i}", "LNAME": f"L{i}", "ADDRESS": "", "SALUTATION": "Frau"},
        "last_changed": STAMP,
        "tags": [{"id": 5, "name": "crm"}, {"id": 6, "name": "VIP"}],
    }
    member.update(changes)
    return {k: v for k, v in member.items() if v is not DROP}


DROP = object()
MEMBERS = [
    member_json(1),
    member_json(2, status="unsubscribed", unsubscribe_reason="N/A (Unsubscribed by an admin)"),
    member_json(3, status="unsubscribed", unsubscribe_reason="too many emails", tags=[]),
    member_json(4, status="archived", last_changed=None, contact_id=None),
    member_json(5, status="cleaned", merge_fields={"FNAME": None, "LNAME": 7}),
    member_json(6, contact_id=DROP, last_changed=DROP, tags=DROP, merge_fields=DROP),
    member_json(7, last_changed="2026-03-01T11:00:00Z", unsubscribe_reason=None),
]


def page(members: list[Any], total: Any = 7) -> bytes:
    return orjson.dumps({"members": members, "total_items": total, "list_id": "x"})


def read_members_page(content: bytes, tag: str) -> tuple[int, list[Member]]:
    """The members of a page as `MailchimpClient.snapshot` makes them: its rows as `Member`s."""
    total, rows = read_members_rows(content, tag)
    return total, [mailchimp._member(row) for row in rows]


def validated(content: bytes, tag: str = "SALUTATION") -> tuple[int, list[Member]]:
    """What the client read before: the answer validated by its model."""
    checked = MembersPage.model_validate_json(content)
    return checked.total_items, [member_of(m, tag) for m in checked.members]


def same_members(a: list[Member], b: list[Member]) -> None:
    """Equal, and alike in every other way but the order a frozenset of tags iterates in (the
    fast reader keeps a member's tags sorted, the model in the answer's order)."""
    assert a == b
    untagged = [[m.model_copy(update={"tags": frozenset()}) for m in ms] for ms in (a, b)]
    assert [repr(m) for m in untagged[0]] == [repr(m) for m in untagged[1]]
    assert [m.model_dump_json() for m in untagged[0]] == [m.model_dump_json() for m in untagged[1]]
    assert [m.model_fields_set for m in a] == [m.model_fields_set for m in b]
    assert [pickle.loads(pickle.dumps(m)) for m in a] == b
    assert {hash(m) for m in a} == {hash(m) for m in b}


def test_a_members_page_reads_as_its_model_does(monkeypatch: pytest.MonkeyPatch) -> None:
    content = page(MEMBERS)
    expected = validated(content)
    monkeypatch.setattr(MembersPage, "model_validate_json", None)  # the fast path alone
    total, members = read_members_page(content, "SALUTATION")
    assert total == expected[0] == 7
    same_members(members, expected[1])
    assert [m.unsubscribed_by for m in members[:3]] == [None, "admin", "person"]
    assert members[0].last_changed == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert members[4].first_name == "" and members[4].last_name == "7"
    assert read_members_page(page([]), "SALUTATION") == (7, [])
    rows = [member_row(m) for m in expected[1]]
    assert read_members_rows(content, "SALUTATION") == (7, rows)
    assert rows[0][6] == ("VIP", "crm")  # sorted


def test_a_members_page_with_a_tag_twice_reads_it_once() -> None:
    content = page([member_json(1, tags=[{"id": 6, "name": "VIP"}] * 2 + [{"id": 5, "name": "a"}])])
    rows = read_members_rows(content, "SALUTATION")[1]
    assert rows == [member_row(m) for m in validated(content)[1]]
    assert rows[0][6] == ("VIP", "a")


@pytest.mark.parametrize(
    "member",
    [
        member_json(1, tags=[{"id": "5", "name": "crm"}]),  # a number as a string
        member_json(1, last_changed=1772359200),  # a time as a number
    ],
)
def test_values_the_model_converts_are_converted_as_before(member: dict[str, Any]) -> None:
    content = page([member])
    same_members(read_members_page(content, "SALUTATION")[1], validated(content)[1])


@pytest.mark.parametrize(
    ("members", "total", "where"),
    [
        ([member_json(1, email_address=DROP)], 1, "members.0.email_address"),
        ([member_json(1), member_json(2, id=None)], 2, "members.1.id"),
        ([member_json(1, tags=[{"id": 1}])], 1, "members.0.tags.0.name"),
        ([member_json(1, tags="crm")], 1, "members.0.tags"),
        ([member_json(1, merge_fields=[])], 1, "members.0.merge_fields"),
        ([member_json(1, last_changed="yesterday")], 1, "members.0.last_changed"),
        ([member_json(1, contact_id=12)], 1, "members.0.contact_id"),
        (["p1@example.com"], 1, "members.0"),
        ([member_json(1)], None, "total_items"),
        (None, 1, "members"),
    ],
)
def test_a_malformed_members_page_raises_naming_the_field(
    members: Any, total: Any, where: str
) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        read_members_page(page(members, total), "SALUTATION")
    assert where in str(caught.value).replace("\n", " ").replace(" ", ".")


def test_a_page_that_is_no_json_or_has_an_unknown_status_raises() -> None:
    with pytest.raises(pydantic.ValidationError, match="Invalid JSON"):
        read_members_page(b'{"members": [', "SALUTATION")
    with pytest.raises(ValueError, match="'gone' is not a valid MemberStatus"):
        read_members_page(page([member_json(1, status="gone")]), "SALUTATION")


def subscribe_answer(new: list[Any], errors: list[Any]) -> bytes:
    return orjson.dumps({"new_members": new, "updated_members": [], "errors": errors})


def test_a_batch_subscribe_answer_reads_as_its_model_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    error = {
        "email_address": "x@example.invalid",
        "error": "x@example.invalid looks fake or invalid",
        "error_code": "ERROR_GENERIC",
        "field": "",
        "field_message": "",
    }
    content = subscribe_answer([*MEMBERS[:4], member_json(8, contact_id=DROP)], [error])
    checked = BatchSubscribeAnswer.model_validate_json(content)
    monkeypatch.setattr(BatchSubscribeAnswer, "model_validate_json", None)
    created, errors = read_subscribe_answer(content)
    assert created == [(m.email_address, m.id, m.status, m.contact_id) for m in checked.new_members]
    assert created[3][3] is None and created[4][3] is None
    assert errors == checked.errors


@pytest.mark.parametrize(
    ("new", "errors", "where"),
    [
        ([member_json(1, status=None)], [], "new_members.0.status"),
        ([member_json(1, id=DROP)], [], "new_members.0.id"),
        ([], [{"email_address": 5}], "errors.0.email_address"),
        ("p1@example.com", [], "new_members"),
    ],
)
def test_a_malformed_batch_subscribe_answer_raises_naming_the_field(
    new: Any, errors: list[Any], where: str
) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        read_subscribe_answer(subscribe_answer(new, errors))
    assert where in str(caught.value).replace("\n", " ").replace(" ", ".")


def test_a_malformed_page_through_the_client_raises_a_validation_error(
    monkeypatch: pytest.MonkeyPatch, mailchimp: mailchimp.MailchimpClient
) -> None:
    broken = page([member_json(1, email_address=None)], 1)

    class Answer:
        content = broken

    mailchimp.ensure_audience()
    monkeypatch.setattr(mailchimp._api, "request", lambda *args, **kwargs: Answer)
    with pytest.raises(pydantic.ValidationError, match="email_address"):
        mailchimp.snapshot()


@pytest.mark.parametrize(
    ("model", "values"),
    [
        (
            Member,
            {
                "provider_id": "a" * 32,
                "email": "p@example.com",
                "status": MemberStatus.SUBSCRIBED,
                "first_name": "F",
                "last_name": "",
                "salutation": "Frau",
                "tags": frozenset({"crm"}),
                "last_changed": datetime(2026, 3, 1, tzinfo=UTC),
                "stable_id": None,
                "unsubscribed_by": "person",
            },
        ),
        (Member, {"provider_id": "a", "email": "p@example.com", "status": MemberStatus.CLEANED}),
        (
            Outcome,
            {
                "action": Action.UPSERT,
                "outcome": Result.CREATED,
                "email": "p@example.com",
                "crm_id": "7",
                "provider_id": "a" * 32,
                "status": MemberStatus.SUBSCRIBED,
                "stable_id": "c1",
            },
        ),
    ],
)
def test_a_trusted_model_is_the_validated_one(
    model: type[pydantic.BaseModel], values: dict[str, Any]
) -> None:
    assert is_complete(model, values)
    built, checked = trusted(model, values), model(**values)
    assert built == checked and hash(built) == hash(checked)
    assert repr(built) == repr(checked)
    assert list(vars(built)) == list(vars(checked)) == list(model.model_fields)
    assert built.model_dump_json() == checked.model_dump_json()
    assert built.model_dump(exclude_unset=True) == checked.model_dump(exclude_unset=True)
    assert built.__getstate__() == checked.__getstate__()
    assert pickle.loads(pickle.dumps(built)) == checked
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        built.email = "q@example.com"  # type: ignore[misc]
