"""The Mailchimp client against the sandbox: every operation of the Provider interface."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from newsletter_pipelines.providers.base import (
    Contact,
    ContactRef,
    EmailChange,
    MemberRow,
    MemberStatus,
    Result,
)
from newsletter_pipelines.providers.errors import AuthenticationError, ConfigurationError
from newsletter_pipelines.providers.mailchimp import MailchimpClient, base_url_for, subscriber_hash
from newsletter_pipelines.sandbox import PersonEvent, Sandbox
from newsletter_pipelines.sandbox.people import mailchimp_person
from newsletter_pipelines_tests.providers.conftest import make_mailchimp
from newsletter_pipelines_tests.providers.helpers import audience, contacts

BATCH_SUBSCRIBE = "/lists/{list_id}"


def person(sandbox: Sandbox, list_id: str, email: str, action: str, **extra: str) -> None:
    mailchimp_person(
        sandbox,
        PersonEvent(list_id=list_id, email=email, action=action, **extra),  # type: ignore[arg-type]
    )


def test_base_url_comes_from_the_key_suffix() -> None:
    assert base_url_for("abc123-us6") == "https://us6.api.mailchimp.com/3.0"
    with pytest.raises(ConfigurationError, match="data center") as caught:
        base_url_for("nodatacenter")
    assert "nodatacenter" not in str(caught.value)


def test_credentials_are_checked_with_one_clear_error(
    transport: httpx.BaseTransport, sandbox: Sandbox, mailchimp: MailchimpClient
) -> None:
    mailchimp.check_credentials()
    wrong = "ffffffffffffffffffffffffffffffff-us9"
    client = make_mailchimp(transport, api_key=wrong)
    before = sandbox.stats.count("mailchimp")
    with pytest.raises(AuthenticationError, match="API Key Invalid") as caught:
        client.check_credentials()
    assert sandbox.stats.count("mailchimp") == before + 1
    assert wrong not in str(caught.value)
    assert caught.value.status == 401


def test_audience_and_merge_fields_are_created_once(
    transport: httpx.BaseTransport, sandbox: Sandbox, mailchimp: MailchimpClient
) -> None:
    first = mailchimp.ensure_audience()
    again = make_mailchimp(transport).ensure_audience()
    assert again.id == first.id
    lst = audience(sandbox)
    assert len(sandbox.state.mailchimp[next(iter(sandbox.state.mailchimp))].lists) == 1
    assert {"FNAME", "LNAME", "SALUTATION"} <= {f.tag for f in lst.merge_fields}
    assert (
        sandbox.stats.count("mailchimp", method="POST", template="/lists/{list_id}/merge-fields")
        == 1
    )


def test_missing_audience_without_defaults_is_a_configuration_error(
    transport: httpx.BaseTransport, sandbox: Sandbox
) -> None:
    client = make_mailchimp(transport, "Other", audience_defaults=None)
    with pytest.raises(ConfigurationError, match="does not exist"):
        client.ensure_audience()
    assert sandbox.stats.count("mailchimp", writes=True) == 0


def test_required_merge_field_stops_before_any_member_write(
    transport: httpx.BaseTransport, sandbox: Sandbox, mailchimp: MailchimpClient
) -> None:
    """A required merge field the sync does not fill fails a fresh client's first write; its
    snapshot reads the members all the same (reading needs the list only)."""
    list_id = mailchimp.ensure_audience().id
    raw = httpx.Client(transport=transport, base_url="http://sandbox.local/mailchimp/3.0")
    raw.post(
        f"/lists/{list_id}/merge-fields",
        json={"name": "Birthday", "tag": "BDAY", "type": "birthday", "required": True},
        auth=("x", next(iter(sandbox.state.mailchimp))),
    ).raise_for_status()
    assert make_mailchimp(transport).snapshot_rows() == []
    with pytest.raises(ConfigurationError, match="BDAY"):
        make_mailchimp(transport).upsert(contacts(1))
    assert sandbox.stats.count("mailchimp", template=BATCH_SUBSCRIBE) == 0


def test_dropdown_salutation_is_validated_before_sending(
    transport: httpx.BaseTransport, sandbox: Sandbox
) -> None:
    client = make_mailchimp(transport)
    lst_id = client.ensure_audience().id
    field = next(f for f in audience(sandbox).merge_fields if f.tag == "SALUTATION")
    field.type, field.options = "dropdown", {"choices": ["Frau", "Herr"]}
    fresh = make_mailchimp(transport)
    wrong = Contact(crm_id="x", email="x@example.com", salutation="Dr.")
    outcomes = fresh.upsert([wrong, *contacts(1)])
    assert outcomes[0].outcome is Result.REFUSED and "SALUTATION" in (outcomes[0].message or "")
    assert outcomes[1].outcome is Result.CREATED
    assert subscriber_hash("x@example.com") not in audience(sandbox).members
    assert lst_id == fresh.ensure_audience().id


@pytest.mark.parametrize(("length", "refused"), [(63, False), (64, True)])
def test_a_name_over_255_bytes_is_refused_before_sending(
    sandbox: Sandbox, mailchimp: MailchimpClient, length: int, refused: bool
) -> None:
    name = "\N{GRINNING FACE}" * length  # four bytes each: 252 or 256
    (outcome,) = mailchimp.upsert([Contact(crm_id="x", email="x@example.com", first_name=name)])
    assert (outcome.outcome is Result.REFUSED) is refused
    assert ("before sending" in (outcome.message or "")) is refused
    assert (subscriber_hash("x@example.com") in audience(sandbox).members) is not refused


def test_1201_new_contacts_take_three_batch_subscribe_calls(
    sandbox: Sandbox, mailchimp: MailchimpClient
) -> None:
    people = contacts(1201, tags=frozenset({"vip"}))
    outcomes = mailchimp.upsert(people)
    assert [o.outcome for o in outcomes] == [Result.CREATED] * 1201
    assert sandbox.stats.count("mailchimp", method="POST", template=BATCH_SUBSCRIBE) == 3
    assert {o.crm_id for o in outcomes} == {c.crm_id for c in people}
    members = {m.email: m for m in mailchimp.snapshot()}
    assert len(members) == 1201
    sample = members["person7@example.com"]
    assert (sample.first_name, sample.last_name, sample.salutation) == ("First7", "Last7", "Frau")
    assert sample.tags == {"vip"} and sample.status is MemberStatus.SUBSCRIBED
    assert sample.provider_id == subscriber_hash("person7@example.com")
    assert sample.last_changed is not None


def test_snapshot_pages_by_1000_and_reports_every_status(
    sandbox: Sandbox, mailchimp: MailchimpClient
) -> None:
    mailchimp.upsert(contacts(2050))
    list_id = mailchimp.ensure_audience().id
    person(sandbox, list_id, "person1@example.com", "unsubscribe")
    person(sandbox, list_id, "person2@example.com", "clean")
    person(sandbox, list_id, "person3@example.com", "archive")
    statuses = {m.email: m.status for m in mailchimp.snapshot()}
    assert len(statuses) == 2050
    assert statuses["person1@example.com"] is MemberStatus.UNSUBSCRIBED
    assert statuses["person2@example.com"] is MemberStatus.CLEANED
    assert statuses["person3@example.com"] is MemberStatus.ARCHIVED
    assert sandbox.stats.count("mailchimp", template="/lists/{list_id}/members") == 3


def test_member_count_is_the_lists_own_counts(
    sandbox: Sandbox, transport: httpx.BaseTransport, mailchimp: MailchimpClient
) -> None:
    """Subscribed, unsubscribed and cleaned members as the list's counts have them when it is
    found (the counts a snapshot's size is judged by); 0 for a list the client creates."""
    assert mailchimp.member_count() == 0  # created
    mailchimp.upsert(contacts(30))
    list_id = mailchimp.ensure_audience().id
    person(sandbox, list_id, "person1@example.com", "unsubscribe")
    person(sandbox, list_id, "person2@example.com", "clean")
    person(sandbox, list_id, "person3@example.com", "archive")
    assert make_mailchimp(transport).member_count() == 29


class _Timeline(httpx.BaseTransport):
    """Passes requests on; notes each one's path with when it was sent and answered."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.calls: list[tuple[str, float, float]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        sent = time.perf_counter()
        response = self.inner.handle_request(request)
        self.calls.append((request.url.path, sent, time.perf_counter()))
        return response


def test_a_snapshot_checks_the_merge_fields_once_its_pages_are_read(
    transport: httpx.BaseTransport, mailchimp: MailchimpClient
) -> None:
    """A fresh client's snapshot finds the list and reads its pages; the merge fields' check
    (which would take a connection from the pages) starts after the last page is answered,
    on a thread of the client, and is done by the first write."""
    mailchimp.upsert(contacts(1500))
    timeline = _Timeline(transport)
    client = make_mailchimp(timeline)
    assert len(client.snapshot_rows()) == 1500
    assert client.found_audience() == mailchimp.ensure_audience()
    client.upsert(contacts(1, start=1500))
    pages = [answered for path, _, answered in timeline.calls if path.endswith("/members")]
    checks = [sent for path, sent, _ in timeline.calls if path.endswith("/merge-fields")]
    assert len(pages) == 2 and len(checks) == 1
    assert checks[0] > max(pages)
    client.close()


class _PagesTogether(httpx.BaseTransport):
    """Notes how many members pages each asked for while none had been answered yet (holding
    each up to 1 s for the others): pages read one round after the other note 1."""

    def __init__(self, inner: httpx.BaseTransport, expected: int) -> None:
        self.inner = inner
        self.barrier = threading.Barrier(expected, timeout=1)
        self.first_round = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/members"):
            try:
                self.barrier.wait()
                self.first_round += 1
            except threading.BrokenBarrierError:
                pass
        return self.inner.handle_request(request)


def test_a_snapshot_reads_the_pages_the_lists_counts_promise_with_the_first(
    sandbox: Sandbox, transport: httpx.BaseTransport, mailchimp: MailchimpClient
) -> None:
    mailchimp.upsert(contacts(2500))
    list_id = mailchimp.ensure_audience().id
    person(sandbox, list_id, "person1@example.com", "unsubscribe")
    together = _PagesTogether(transport, expected=3)
    assert len(make_mailchimp(together).snapshot_rows()) == 2500
    assert together.first_round == 3
    # counts that lag (here: a client that found the list before 1,500 more joined) still
    # give every member, the pages past them read once the first tells the whole count
    stale = make_mailchimp(transport)
    stale.ensure_audience()
    mailchimp.upsert(contacts(1500, start=2500))
    before = sandbox.stats.count("mailchimp", template="/lists/{list_id}/members")
    assert len(stale.snapshot_rows()) == 4000
    assert sandbox.stats.count("mailchimp", template="/lists/{list_id}/members") == before + 4


class _PagesAsked(httpx.BaseTransport):
    """Sets `all_asked` once `pages` members pages have been asked for."""

    def __init__(self, inner: httpx.BaseTransport, pages: int) -> None:
        self.inner = inner
        self.pages = pages
        self.asked = 0
        self.lock = threading.Lock()
        self.all_asked = threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/members"):
            with self.lock:
                self.asked += 1
                if self.asked >= self.pages:
                    self.all_asked.set()
        return self.inner.handle_request(request)


def test_a_connection_fetches_its_next_page_while_the_page_before_is_read(
    transport: httpx.BaseTransport, mailchimp: MailchimpClient
) -> None:
    """A page is read and converted off its connection's thread, which asks for its next page
    at once: on one connection, all three pages are asked for while the first is converted."""
    mailchimp.upsert(contacts(2500))
    pages = _PagesAsked(transport, 3)

    def convert(rows: list[MemberRow]) -> tuple[bool, int]:
        return pages.all_asked.wait(timeout=2), len(rows)

    one_connection = make_mailchimp(pages, max_connections=1)
    assert one_connection.snapshot_pages(convert) == [(True, 1000), (True, 1000), (True, 500)]


def test_existing_members_get_fields_and_tags_but_never_a_status(
    sandbox: Sandbox, mailchimp: MailchimpClient
) -> None:
    people = contacts(40, tags=frozenset({"old"}))
    mailchimp.upsert(people)
    list_id = mailchimp.ensure_audience().id
    person(sandbox, list_id, "person0@example.com", "unsubscribe")
    current = {m.key: m for m in mailchimp.snapshot()}
    changed = [
        c.model_copy(update={"first_name": "Renamed", "tags": frozenset({"new"})})
        for c in people[:30]
    ] + people[30:]
    outcomes = mailchimp.upsert(changed, current)
    assert [o.outcome for o in outcomes] == [Result.UPDATED] * 30 + [Result.UNCHANGED] * 10
    assert outcomes[0].status is MemberStatus.UNSUBSCRIBED
    assert sandbox.stats.count("mailchimp", method="POST", template="/batches") == 1
    after = {m.email: m for m in mailchimp.snapshot()}
    assert after["person0@example.com"].status is MemberStatus.UNSUBSCRIBED
    assert after["person5@example.com"].first_name == "Renamed"
    assert after["person5@example.com"].tags == {"new"}
    assert after["person35@example.com"].tags == {"old"}


def test_a_few_updates_go_direct_and_nothing_changed_means_no_write(
    sandbox: Sandbox, mailchimp: MailchimpClient
) -> None:
    people = contacts(3)
    mailchimp.upsert(people)
    current = {m.key: m for m in mailchimp.snapshot()}
    writes = sandbox.stats.count("mailchimp", writes=True)
    assert {o.outcome for o in mailchimp.upsert(people, current)} == {Result.UNCHANGED}
    assert sandbox.stats.count("mailchimp", writes=True) == writes
    one = people[0].model_copy(update={"last_name": "Changed"})
    assert mailchimp.upsert([one], current)[0].outcome is Result.UPDATED
    assert sandbox.stats.count("mailchimp", writes=True) == writes + 1
    assert sandbox.stats.count("mailchimp", template="/batches") == 0


def test_a_member_unsubscribed_since_the_snapshot_is_reported_not_resubscribed(
    sandbox: Sandbox, mailchimp: MailchimpClient
) -> None:
    mailchimp.upsert(contacts(2))
    list_id = mailchimp.ensure_audience().id
    person(sandbox, list_id, "person0@example.com", "unsubscribe")
    outcomes = mailchimp.upsert(contacts(2), current={})
    assert outcomes[0].outcome is Result.UPDATED
    assert outcomes[0].status is MemberStatus.UNSUBSCRIBED
    assert (
        audience(sandbox).members[subscriber_hash("person0@example.com")].status == "unsubscribed"
    )


def test_refusals_are_per_contact_outcomes(sandbox: Sandbox, mailchimp: MailchimpClient) -> None:
    mailchimp.upsert(contacts(4))
    list_id = mailchimp.ensure_audience().id
    person(sandbox, list_id, "person0@example.com", "unsubscribe")
    person(sandbox, list_id, "person0@example.com", "archive")
    person(sandbox, list_id, "person1@example.com", "delete")
    fake = Contact(crm_id="fake", email="someone@nowhere.invalid")
    outcomes = mailchimp.upsert([*contacts(2), fake, *contacts(2, start=2)])
    codes = {o.crm_id: (o.outcome, o.code) for o in outcomes}
    assert codes["0"] == (Result.REFUSED, "Member In Compliance State")
    assert codes["1"] == (Result.REFUSED, "Forgotten Email Not Subscribed")
    assert codes["fake"] == (Result.REFUSED, "Invalid Resource")
    assert codes["2"][0] is Result.UPDATED and codes["3"][0] is Result.UPDATED
    member = audience(sandbox).members[subscriber_hash("person0@example.com")]
    assert (member.status, member.archived_from) == ("archived", "unsubscribed")


def test_an_archived_member_is_added_back(sandbox: Sandbox, mailchimp: MailchimpClient) -> None:
    mailchimp.upsert(contacts(1))
    mailchimp.remove([ContactRef(email="person0@example.com")])
    current = {m.key: m for m in mailchimp.snapshot()}
    outcome = mailchimp.upsert(contacts(1), current)[0]
    assert (outcome.outcome, outcome.status) == (Result.CREATED, MemberStatus.SUBSCRIBED)


def test_an_archived_member_comes_back_with_exactly_the_contacts_tags(
    sandbox: Sandbox, mailchimp: MailchimpClient
) -> None:
    mailchimp.upsert(contacts(2, tags=frozenset({"Käufer", "VIP"})))
    mailchimp.remove([ContactRef(email=f"person{i}@example.com") for i in range(2)])
    current = {m.key: m for m in mailchimp.snapshot()}
    assert current["person0@example.com"].tags == {"Käufer", "VIP"}  # the archive keeps them
    outcomes = mailchimp.upsert(contacts(2, tags=frozenset({"vip", "Neu"})), current)
    assert [o.outcome for o in outcomes] == [Result.CREATED, Result.CREATED]
    for i in range(2):
        member = audience(sandbox).members[subscriber_hash(f"person{i}@example.com")]
        assert set(member.tags) == {"VIP", "Neu"}  # tag names ignore case


def test_email_change_keeps_the_member(sandbox: Sandbox, mailchimp: MailchimpClient) -> None:
    mailchimp.upsert(contacts(3))
    list_id = mailchimp.ensure_audience().id
    person(sandbox, list_id, "person1@example.com", "unsubscribe")
    outcomes = mailchimp.change_emails(
        [
            EmailChange(crm_id="0", old_email="person0@example.com", new_email="new0@example.com"),
            EmailChange(crm_id="1", old_email="person1@example.com", new_email="new1@example.com"),
            EmailChange(crm_id="2", old_email="person2@example.com", new_email="new0@example.com"),
        ]
    )
    assert outcomes[0].outcome is Result.UPDATED
    assert outcomes[0].provider_id == subscriber_hash("new0@example.com")
    assert (outcomes[1].outcome, outcomes[1].code) == (Result.REFUSED, "Invalid Resource")
    assert (outcomes[2].outcome, outcomes[2].code) == (Result.REFUSED, "Member Exists")
    emails = {m.email for m in mailchimp.snapshot()}
    assert emails == {"new0@example.com", "person1@example.com", "person2@example.com"}


def test_snapshot_stable_id_is_the_contact_id_across_address_changes(
    sandbox: Sandbox, mailchimp: MailchimpClient
) -> None:
    mailchimp.upsert(contacts(2))
    list_id = mailchimp.ensure_audience().id
    first = {m.stable_id: m.email for m in mailchimp.snapshot()}
    assert set(first) == {m.contact_id for m in audience(sandbox).members.values()}
    person(sandbox, list_id, "person0@example.com", "change_email", new_email="moved@example.com")
    mailchimp.change_emails(
        [EmailChange(crm_id="1", old_email="person1@example.com", new_email="new1@example.com")]
    )
    after = {m.stable_id: m.email for m in mailchimp.snapshot()}
    renamed = {
        "person0@example.com": "moved@example.com",
        "person1@example.com": "new1@example.com",
    }
    assert after == {stable_id: renamed[email] for stable_id, email in first.items()}


def test_unsubscribe_and_remove_in_batches(sandbox: Sandbox, mailchimp: MailchimpClient) -> None:
    mailchimp.upsert(contacts(30))
    list_id = mailchimp.ensure_audience().id
    person(sandbox, list_id, "person29@example.com", "clean")
    gone = ContactRef(email="unknown@example.com")
    unsubscribed = mailchimp.unsubscribe([c.ref() for c in contacts(15)] + [gone])
    assert [o.outcome for o in unsubscribed[:15]] == [Result.UNSUBSCRIBED] * 15
    assert (unsubscribed[15].outcome, unsubscribed[15].code) == (
        Result.REFUSED,
        "Resource Not Found",
    )
    removed = mailchimp.remove([c.ref() for c in contacts(15, start=15)])
    assert [o.outcome for o in removed[:14]] == [Result.REMOVED] * 14
    assert (removed[14].outcome, removed[14].code) == (Result.REFUSED, "Method Not Allowed")
    statuses = {m.email: m.status for m in mailchimp.snapshot()}
    assert statuses["person3@example.com"] is MemberStatus.UNSUBSCRIBED
    assert statuses["person20@example.com"] is MemberStatus.ARCHIVED
    assert statuses["person29@example.com"] is MemberStatus.CLEANED
    assert sandbox.stats.count("mailchimp", template="/batches") == 2
    assert (
        sandbox.stats.count(
            "mailchimp", template="/lists/{list_id}/members/{hash}/actions/delete-permanent"
        )
        == 0
    )


def test_webhook_hears_people_but_not_our_own_writes(
    sandbox: Sandbox, mailchimp: MailchimpClient, receiver: object
) -> None:
    first = mailchimp.register_webhook("https://hooks.example.com/mailchimp", "s3cret")
    assert mailchimp.register_webhook("https://hooks.example.com/mailchimp", "s3cret") == first
    hook = audience(sandbox).webhooks[0]
    assert hook.sources == {"user": True, "admin": True, "api": False}
    assert hook.url == "https://hooks.example.com/mailchimp?secret=s3cret"
    mailchimp.upsert(contacts(3))
    mailchimp.unsubscribe([contacts(1)[0].ref()])
    assert receiver.posts() == []  # type: ignore[attr-defined]
    person(sandbox, audience(sandbox).id, "person1@example.com", "unsubscribe")
    person(sandbox, audience(sandbox).id, "new@example.com", "signup", first_name="Neu")
    bodies = [httpx.QueryParams(r.content.decode()) for r in receiver.posts()]  # type: ignore[attr-defined]
    assert [(b["type"], b["data[email]"]) for b in bodies] == [
        ("unsubscribe", "person1@example.com"),
        ("subscribe", "new@example.com"),
    ]
    assert bodies[0]["data[action]"] == "unsub"
    assert bodies[1]["data[merges][FNAME]"] == "Neu"
