"""`members(emails)`: a targeted read of a few members that returns exactly what the snapshot
returns for them, on both clients, by lookups or (many addresses) through the snapshot; and the
snapshot held to a most."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import httpx
import pytest

from newsletter_pipelines.providers import brevo as brevo_module
from newsletter_pipelines.providers import mailchimp as mailchimp_module
from newsletter_pipelines.providers.base import (
    MEMBER_ROW_FIELDS,
    Contact,
    Member,
    MemberStatus,
    Provider,
    member_row,
)
from newsletter_pipelines.providers.brevo import BrevoClient
from newsletter_pipelines.providers.errors import (
    AudienceTooLargeError,
    AuthenticationError,
    UnavailableError,
)
from newsletter_pipelines.providers.http import RetryPolicy
from newsletter_pipelines.providers.mailchimp import MailchimpClient, subscriber_hash
from newsletter_pipelines.providers.trusted import moment
from newsletter_pipelines.sandbox import SANDBOX_BREVO_KEY, FaultRule, PersonEvent, Sandbox
from newsletter_pipelines.sandbox.people import brevo_person, mailchimp_person
from newsletter_pipelines_tests.providers.conftest import brevo_account, make_brevo, make_mailchimp
from newsletter_pipelines_tests.providers.helpers import RecordingTransport, contacts

MC_MEMBER = "/lists/{list_id}/members/{hash}"
BV_CONTACT = "/contacts/{identifier}"
BV_PAGE = "/contacts/lists/{listId}/contacts"
UNKNOWN = ["nobody@example.com", "not-an-address", "a@b"]


def by_key(members: Sequence[Member]) -> dict[str, Member]:
    return {m.key: m for m in members}


def act(
    sandbox: Sandbox, provider: str, list_id: str, email: str, action: str, **extra: str
) -> None:
    event = PersonEvent(list_id=list_id, email=email, action=action, **extra)  # type: ignore[arg-type]
    (mailchimp_person if provider == "mailchimp" else brevo_person)(sandbox, event)


class Answering(httpx.BaseTransport):
    """Answers the member reads that `hit` picks with `answer`, passes the rest on."""

    def __init__(
        self,
        inner: httpx.BaseTransport,
        hit: Callable[[httpx.Request], bool],
        answer: httpx.Response,
    ) -> None:
        self.inner, self.hit, self.answer = inner, hit, answer

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """The canned answer for a hit, else the inner transport's."""
        if request.method == "GET" and self.hit(request):
            return httpx.Response(
                self.answer.status_code, headers=self.answer.headers, content=self.answer.content
            )
        return self.inner.handle_request(request)


def mailchimp_problem(status: int, title: str) -> httpx.Response:
    body = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": title,
        "instance": "",
    }
    return httpx.Response(status, json=body)


def brevo_error(status: int, code: str) -> httpx.Response:
    return httpx.Response(status, json={"code": code, "message": code})


# --- shared behaviour -------------------------------------------------------------------


@pytest.fixture(params=["mailchimp", "brevo"])
def client(
    request: pytest.FixtureRequest, sandbox: Sandbox, transport: httpx.BaseTransport
) -> Provider:
    if request.param == "brevo":
        brevo_account(sandbox)
        return make_brevo(transport)
    return make_mailchimp(transport)


def test_no_address_makes_no_call(sandbox: Sandbox, client: Provider) -> None:
    assert client.members([]) == []
    assert client.members(["", "   "]) == []
    assert sandbox.stats.count(client.name) == 0


def test_addresses_are_read_once_per_key_in_their_order(sandbox: Sandbox, client: Provider) -> None:
    client.upsert(contacts(3))
    template = MC_MEMBER if client.name == "mailchimp" else BV_CONTACT
    before = sandbox.stats.count(client.name, method="GET", template=template)
    found = client.members(
        ["PERSON2@example.com", " person0@example.com ", "person2@EXAMPLE.com", "nobody@x.org"]
    )
    assert [m.email for m in found] == ["person2@example.com", "person0@example.com"]
    assert sandbox.stats.count(client.name, method="GET", template=template) == before + 3


def test_a_snapshot_held_to_a_most_stops_at_the_first_page_counting_more(
    sandbox: Sandbox, transport: httpx.BaseTransport, client: Provider
) -> None:
    """Counts that lag (a client found the audience with 12 members, then 1,200 more joined)
    and `most` below the whole count: `AudienceTooLargeError` with the count once the first
    page tells it, no other page read; with `most` at the count, every member."""
    client.upsert(contacts(12))
    stale = (make_mailchimp if client.name == "mailchimp" else make_brevo)(transport)
    assert stale.member_count() == 12
    client.upsert(contacts(1200, start=12))
    template = "/lists/{list_id}/members" if client.name == "mailchimp" else BV_PAGE
    before = sandbox.stats.count(client.name, template=template)
    with pytest.raises(AudienceTooLargeError) as raised:
        stale.snapshot_rows(most=1000)
    assert (raised.value.total, raised.value.most) == (1212, 1000)
    assert sandbox.stats.count(client.name, template=template) == before + 1
    assert len(stale.snapshot_rows(most=1212)) == 1212


# --- Mailchimp --------------------------------------------------------------------------


def populate_mailchimp(sandbox: Sandbox, client: MailchimpClient) -> list[str]:
    """An audience with members of every status; returns every address involved."""
    people = contacts(10, tags=frozenset({"news"}))
    client.upsert(people)
    list_id = client.ensure_audience().id
    for i, action in enumerate(["unsubscribe", "clean", "archive", "delete"], start=1):
        act(sandbox, "mailchimp", list_id, f"person{i}@example.com", action)
    act(sandbox, "mailchimp", list_id, "person5@example.com", "tag", tag="VIP")
    act(sandbox, "mailchimp", list_id, "person6@example.com", "change_email", new_email="n6@x.org")
    act(sandbox, "mailchimp", list_id, "waiting@example.com", "pending")
    act(sandbox, "mailchimp", list_id, "shop@example.com", "transactional")
    client.unsubscribe([people[7].ref()])
    client.remove([people[8].ref()])  # archived by the sync
    extra = ["n6@x.org", "waiting@example.com", "shop@example.com"]
    return [c.email for c in people] + extra + UNKNOWN


def test_the_mailchimp_snapshot_keeps_none_of_its_times_cached(
    sandbox: Sandbox, transport: httpx.BaseTransport
) -> None:
    """The times read while paging are not kept once the snapshot is read: kept among the
    objects of a million members, they kept about half a GiB of memory from the system."""
    client = make_mailchimp(transport)
    populate_mailchimp(sandbox, client)
    rows = client.snapshot_rows()
    assert any(row[MEMBER_ROW_FIELDS.index("last_changed")] is not None for row in rows)
    assert moment.cache_info().currsize == 0


def test_mailchimp_members_are_the_snapshot_of_every_status(
    sandbox: Sandbox, transport: httpx.BaseTransport
) -> None:
    recording = RecordingTransport(transport)
    client = make_mailchimp(recording)
    addresses = populate_mailchimp(sandbox, client)
    snapshot = by_key(client.snapshot())
    assert client.snapshot_rows() == [member_row(m) for m in client.snapshot()]
    assert {m.status for m in snapshot.values()} == {
        MemberStatus.SUBSCRIBED,
        MemberStatus.UNSUBSCRIBED,
        MemberStatus.CLEANED,
        MemberStatus.ARCHIVED,
        MemberStatus.PENDING,
        MemberStatus.TRANSACTIONAL,
    }
    recording.requests.clear()
    found = client.members(addresses)
    assert by_key(found) == snapshot
    assert len(found) == len(snapshot)  # person4 (deleted), person6's old address, UNKNOWN: out
    reads = [r for r in recording.requests if r.method == "GET"]
    assert len(reads) == len(recording.requests) == len(addresses)
    assert {r.url.path.rsplit("/", 1)[1] for r in reads} == {subscriber_hash(a) for a in addresses}
    assert {r.url.params["fields"] for r in reads} == {mailchimp_module._MEMBER_FIELDS}


def test_mailchimp_many_addresses_read_the_snapshot(
    sandbox: Sandbox, transport: httpx.BaseTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_mailchimp(transport)
    addresses = populate_mailchimp(sandbox, client)
    looked_up = client.members(addresses)
    monkeypatch.setattr(mailchimp_module, "MEMBERS_LOOKUP_MAX", len(addresses) - 1)
    before = sandbox.stats.count("mailchimp", method="GET", template=MC_MEMBER)
    assert client.members(addresses) == looked_up
    assert sandbox.stats.count("mailchimp", method="GET", template=MC_MEMBER) == before
    assert sandbox.stats.count("mailchimp", method="GET", template="/lists/{list_id}/members") == 1
    monkeypatch.setattr(mailchimp_module, "MEMBERS_LOOKUP_MAX", len(addresses))
    assert client.members(addresses) == looked_up
    after = sandbox.stats.count("mailchimp", method="GET", template=MC_MEMBER)
    assert after == before + len(addresses)


def test_mailchimp_refused_address_is_absent_but_errors_raise(
    sandbox: Sandbox, transport: httpx.BaseTransport
) -> None:
    make_mailchimp(transport).upsert(contacts(2))
    refused = subscriber_hash("person1@example.com")

    def hit(request: httpx.Request) -> bool:
        return request.url.path.endswith(refused)

    bad = make_mailchimp(Answering(transport, hit, mailchimp_problem(400, "Invalid Resource")))
    assert [m.email for m in bad.members(["person0@example.com", "person1@example.com"])] == [
        "person0@example.com"
    ]
    denied = make_mailchimp(Answering(transport, hit, mailchimp_problem(401, "API Key Invalid")))
    with pytest.raises(AuthenticationError):
        denied.members(["person0@example.com", "person1@example.com"])
    client = make_mailchimp(transport)
    list_id = client.ensure_audience().id
    sandbox.faults.add(
        FaultRule(
            kind="server_error",
            provider="mailchimp",
            method="GET",
            path_prefix=f"/lists/{list_id}/members/",
            count=100,
        )
    )
    with pytest.raises(UnavailableError, match="503"):
        client.members(["person0@example.com"])


# --- Brevo ------------------------------------------------------------------------------


def populate_brevo(
    sandbox: Sandbox, transport: httpx.BaseTransport, client: BrevoClient, http: httpx.Client
) -> list[str]:
    """A list with contacts of every status, and contacts of the account outside it."""
    people = [*contacts(9), Contact(crm_id="slash", email="a/b+c@example.com", first_name="S")]
    client.upsert(people)
    list_id = client.ensure_audience().id
    steps = {1: "blacklist", 2: "unsubscribe", 3: "list_unsubscribe", 4: "clean", 5: "delete"}
    for i, action in steps.items():
        act(sandbox, "brevo", list_id, f"person{i}@example.com", action)
    act(sandbox, "brevo", list_id, "person6@example.com", "change_email", new_email="n6@x.org")
    act(sandbox, "brevo", list_id, "person7@example.com", "list_unsubscribe")
    relink = http.post(  # back in the list, still list-unsubscribed: both arrays
        f"/brevo/v3/contacts/lists/{list_id}/contacts/add",
        json={"emails": ["person7@example.com"]},
        headers={"api-key": SANDBOX_BREVO_KEY},
    )
    assert relink.status_code == 201
    client.remove([people[8].ref()])  # unlinked by the sync
    act(sandbox, "brevo", list_id, "outside@example.com", "blacklist")  # in no list
    make_brevo(transport, "Other").upsert([Contact(crm_id="o", email="elsewhere@example.com")])
    extra = ["n6@x.org", "outside@example.com", "elsewhere@example.com"]
    return [c.email for c in people] + extra + UNKNOWN


def test_brevo_members_are_the_snapshot_of_every_status(
    sandbox: Sandbox,
    transport: httpx.BaseTransport,
    http: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(brevo_module, "MEMBERS_LOOKUP_FLOOR", 100)  # one by one, whatever size
    brevo_account(sandbox)
    recording = RecordingTransport(transport)
    client = make_brevo(recording)
    addresses = populate_brevo(sandbox, transport, client, http)
    snapshot = by_key(client.snapshot())
    assert client.snapshot_rows() == [member_row(m) for m in client.snapshot()]
    assert {m.status for m in snapshot.values()} == {
        MemberStatus.SUBSCRIBED,
        MemberStatus.UNSUBSCRIBED,
        MemberStatus.BLACKLISTED,
    }
    assert "person3@example.com" not in snapshot and "outside@example.com" not in snapshot
    recording.requests.clear()
    found = client.members(addresses)
    assert by_key(found) == snapshot
    assert len(found) == len(snapshot)
    assert "a/b+c@example.com" in by_key(found)
    reads = [r for r in recording.requests if r.method == "GET"]
    assert len(reads) == len(recording.requests) == len(addresses)
    assert {r.url.params["identifierType"] for r in reads} == {"email_id"}
    encoded = b"/brevo/v3/contacts/a%2Fb%2Bc%40example.com?"
    assert any(r.url.raw_path.startswith(encoded) for r in reads)


def test_brevo_many_addresses_read_the_snapshot(
    sandbox: Sandbox,
    transport: httpx.BaseTransport,
    http: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    brevo_account(sandbox)
    client = make_brevo(transport)
    addresses = populate_brevo(sandbox, transport, client, http)
    looked_up = client.members(addresses)
    monkeypatch.setattr(brevo_module, "MEMBERS_LOOKUP_MAX", len(addresses) - 1)
    before = sandbox.stats.count("brevo", method="GET", template=BV_CONTACT)
    assert client.members(addresses) == looked_up
    assert sandbox.stats.count("brevo", method="GET", template=BV_CONTACT) == before
    monkeypatch.setattr(brevo_module, "MEMBERS_LOOKUP_MAX", len(addresses))
    monkeypatch.setattr(brevo_module, "MEMBERS_LOOKUP_FLOOR", len(addresses))
    assert client.members(addresses) == looked_up
    after = sandbox.stats.count("brevo", method="GET", template=BV_CONTACT)
    assert after == before + len(addresses)


def test_brevo_lookups_are_paced_below_the_rate_limit(
    sandbox: Sandbox, transport: httpx.BaseTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    brevo_account(sandbox, per_second=10)  # Brevo's limit on contact endpoints
    monkeypatch.setattr(brevo_module, "MEMBERS_LOOKUP_FLOOR", 12)
    once = RetryPolicy(attempts=1, timeout=5.0)  # a 429 would fail the call
    client = make_brevo(transport, requests_per_second=8.0, retry=once)
    client.ensure_audience()
    assert client.members([f"person{i}@example.com" for i in range(12)]) == []
    assert sandbox.stats.count("brevo", method="GET", template=BV_CONTACT) == 12


def test_brevo_refused_address_is_absent_but_errors_raise(
    sandbox: Sandbox, transport: httpx.BaseTransport
) -> None:
    brevo_account(sandbox)
    make_brevo(transport).upsert(contacts(2))

    def hit(request: httpx.Request) -> bool:
        return request.url.path.endswith("/contacts/person1@example.com")

    bad = make_brevo(Answering(transport, hit, brevo_error(400, "invalid_parameter")))
    assert [m.email for m in bad.members(["person0@example.com", "person1@example.com"])] == [
        "person0@example.com"
    ]
    denied = make_brevo(Answering(transport, hit, brevo_error(401, "unauthorized")))
    with pytest.raises(AuthenticationError):
        denied.members(["person0@example.com", "person1@example.com"])
    client = make_brevo(transport)
    client.ensure_audience()
    sandbox.faults.add(
        FaultRule(
            kind="server_error",
            provider="brevo",
            method="GET",
            path_prefix="/contacts/p",
            count=100,
        )
    )
    with pytest.raises(UnavailableError, match="503"):
        client.members(["person0@example.com"])


def test_brevo_reads_a_small_list_whole_rather_than_address_by_address(
    sandbox: Sandbox, transport: httpx.BaseTransport
) -> None:
    """Found by the live latency benchmark: 400 addresses read one by one at 8 a second took
    50 s. A list whose snapshot takes fewer calls than the addresses is read whole: here one
    call for the list's size and one page."""
    brevo_account(sandbox)
    recording = RecordingTransport(transport)
    client = make_brevo(recording)
    client.upsert(contacts(40))
    expected = by_key(client.snapshot())
    recording.requests.clear()
    addresses = [f"person{i}@example.com" for i in range(40)] + ["nobody@example.com"]
    assert by_key(client.members(addresses)) == expected
    assert len(recording.requests) == 2
    assert by_key(client.members(addresses[:3])) == {
        k: v for k, v in expected.items() if k in {a.lower() for a in addresses[:3]}
    }  # a few: one by one, no size asked
    assert len(recording.requests) == 2 + 3


# --- by stable id -----------------------------------------------------------------------


def test_members_by_id_find_moved_members_and_leave_out_deleted_ones(
    sandbox: Sandbox, client: Provider
) -> None:
    """A member that moved at the provider is found by its stable id at its new address, as the
    snapshot shows it; a deleted one and an unknown id are left out."""
    client.upsert(contacts(3))
    list_id = client.ensure_audience().id
    before = by_key(client.snapshot())
    act(sandbox, client.name, list_id, "person0@example.com", "change_email", new_email="n0@x.org")
    act(sandbox, client.name, list_id, "person1@example.com", "delete")
    snapshot = by_key(client.snapshot())
    ids = [before[f"person{i}@example.com"].stable_id or "" for i in range(3)]
    unknown = "999999" if client.name == "brevo" else "f" * 32
    found = client.members_by_id([*ids, ids[0], unknown])
    assert found == [snapshot["n0@x.org"], snapshot["person2@example.com"]]
    assert client.members_by_id([]) == []


def test_many_ids_read_the_snapshot_instead_of_one_call_each(
    sandbox: Sandbox, client: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.upsert(contacts(4))
    list_id = client.ensure_audience().id
    ids = [m.stable_id or "" for m in client.snapshot()]
    act(sandbox, client.name, list_id, "person0@example.com", "change_email", new_email="n0@x.org")
    one_by_one = client.members_by_id(ids)
    module = mailchimp_module if client.name == "mailchimp" else brevo_module
    monkeypatch.setattr(module, "MEMBERS_LOOKUP_MAX", 2)
    template = MC_MEMBER if client.name == "mailchimp" else BV_CONTACT
    before = sandbox.stats.count(client.name, method="GET", template=template)
    assert client.members_by_id(ids) == one_by_one
    assert sandbox.stats.count(client.name, method="GET", template=template) == before
    assert {m.email for m in one_by_one} >= {"n0@x.org"}


def test_more_ids_than_snapshot_pages_read_the_snapshot(sandbox: Sandbox, client: Provider) -> None:
    """12 ids (more than the 10 always looked up one by one) in a one-page audience: one
    snapshot page is cheaper than 12 calls."""
    client.upsert(contacts(12))
    ids = [m.stable_id or "" for m in client.snapshot()]
    template = MC_MEMBER if client.name == "mailchimp" else BV_CONTACT
    before = sandbox.stats.count(client.name, method="GET", template=template)
    assert {m.stable_id for m in client.members_by_id(ids)} == set(ids)
    assert sandbox.stats.count(client.name, method="GET", template=template) == before
