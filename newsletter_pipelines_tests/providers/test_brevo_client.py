"""The Brevo client against the sandbox: every operation of the Provider interface, and why
a contact is blocklisted."""

from __future__ import annotations

import json
import logging
import threading
import time
from email.utils import formatdate

import httpx
import pytest

from newsletter_pipelines.providers import brevo as brevo_module
from newsletter_pipelines.providers.base import (
    Contact,
    ContactRef,
    EmailChange,
    MemberStatus,
    Result,
)
from newsletter_pipelines.providers.brevo import BlocklistReason, BrevoClient
from newsletter_pipelines.providers.brevo_attributes import AttributeCodec, AttributeMap, brevo_tag
from newsletter_pipelines.providers.brevo_models import Attribute
from newsletter_pipelines.providers.errors import (
    AuthenticationError,
    ConfigurationError,
    ProviderError,
    UnavailableError,
)
from newsletter_pipelines.providers.http import PollPolicy
from newsletter_pipelines.sandbox import SANDBOX_BREVO_KEY, FaultRule, PersonEvent, Sandbox
from newsletter_pipelines.sandbox.brevo_state import BvAccount, BvAttribute, BvContact
from newsletter_pipelines.sandbox.people import brevo_person
from newsletter_pipelines_tests.providers.conftest import Receiver, brevo_account, make_brevo
from newsletter_pipelines_tests.providers.helpers import RecordingTransport, contacts

CATEGORY = BvAttribute(
    name="SALUTATION",
    category="category",
    type=None,
    enumeration=[{"value": 1, "label": "Herr"}, {"value": 2, "label": "Frau"}],
)


def account(sandbox: Sandbox) -> BvAccount:
    return sandbox.state.brevo[SANDBOX_BREVO_KEY]


def person(sandbox: Sandbox, list_id: str, email: str, action: str, **extra: str) -> None:
    event = PersonEvent(list_id=list_id, email=email, action=action, **extra)  # type: ignore[arg-type]
    brevo_person(sandbox, event)


def test_credentials_are_checked_with_one_clear_error(
    transport: httpx.BaseTransport, sandbox: Sandbox, brevo: BrevoClient
) -> None:
    brevo.check_credentials()
    before = sandbox.stats.count("brevo")
    with pytest.raises(AuthenticationError, match="unauthorized") as caught:
        make_brevo(transport, api_key="xkeysib-wrong-key").check_credentials()
    assert sandbox.stats.count("brevo") == before + 1
    assert "xkeysib-wrong-key" not in str(caught.value)


def test_folder_and_list_are_found_by_paging_or_created(
    transport: httpx.BaseTransport, sandbox: Sandbox, brevo: BrevoClient, http: httpx.Client
) -> None:
    for i in range(60):
        answer = http.post(
            "/brevo/v3/contacts/folders",
            json={"name": f"folder {i}"},
            headers={"api-key": SANDBOX_BREVO_KEY},
        )
        assert answer.status_code == 201
    first = brevo.ensure_audience()
    again = make_brevo(transport).ensure_audience()
    assert again.id == first.id
    assert [f.name for f in account(sandbox).folders.values()].count("newsletter_pipelines") == 1
    assert [lst.name for lst in account(sandbox).lists.values()] == ["Newsletter"]


def test_a_mapped_attribute_the_account_lacks_is_a_clear_error(
    transport: httpx.BaseTransport, sandbox: Sandbox
) -> None:
    brevo_account(sandbox, language="de")
    client = make_brevo(transport)
    with pytest.raises(ConfigurationError) as caught:
        client.upsert(contacts(1))
    message = str(caught.value)
    assert "first_name=FIRSTNAME" in message and "last_name=LASTNAME" in message
    assert "VORNAME" in message and "NACHNAME" in message
    assert sandbox.stats.count("brevo", writes=True) == 0
    german = make_brevo(
        transport, attributes=AttributeMap(first_name="VORNAME", last_name="NACHNAME")
    )
    assert german.upsert(contacts(1))[0].outcome is Result.CREATED
    stored = next(iter(account(sandbox).contacts.values()))
    assert stored.attributes["VORNAME"] == "First0"
    assert german.snapshot()[0].first_name == "First0"


def test_member_count_is_the_lists_own_count(
    transport: httpx.BaseTransport, brevo: BrevoClient
) -> None:
    """The list's unique subscribers as the folder's lists give them when it is found (the count
    a snapshot's size is judged by); 0 for a list the client creates."""
    assert brevo.member_count() == 0  # created
    brevo.upsert(contacts(12))
    assert make_brevo(transport).member_count() == 12


def test_a_few_new_contacts_are_created_directly(sandbox: Sandbox, brevo: BrevoClient) -> None:
    outcomes = brevo.upsert(contacts(3, tags=frozenset({"vip", "news"})))
    assert [o.outcome for o in outcomes] == [Result.CREATED] * 3
    assert sandbox.stats.count("brevo", method="POST", template="/contacts") == 3
    members = {m.email: m for m in brevo.snapshot()}
    sample = members["person1@example.com"]
    assert sample.provider_id == outcomes[1].provider_id
    assert (sample.first_name, sample.last_name, sample.salutation) == ("First1", "Last1", "Frau")
    assert sample.tags == {"vip", "news"} and sample.status is MemberStatus.SUBSCRIBED


def test_import_polls_stay_within_the_hourly_budget(
    sandbox: Sandbox, transport: httpx.BaseTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The processes endpoint shares Brevo's 100 requests/hour: a client polls its imports
    within `per_hour` (after a burst of `PROCESS_POLLS_BURST`), skipping rounds when none is
    left, and gives up at the deadline rather than overdraw."""
    brevo_account(sandbox)
    monkeypatch.setattr(brevo_module, "IMPORT_MAX_BYTES", 40_000)
    monkeypatch.setattr(brevo_module, "PROCESS_POLLS_BURST", 2)
    poll = PollPolicy(initial=0.0, maximum=0.01, deadline=1.0, per_hour=0.001)
    client = make_brevo(transport, poll=poll)
    try:
        with pytest.raises(ProviderError, match="not done within"):
            client.upsert(contacts(1200))  # several imports, polls for two
    finally:
        client.close()
    assert sandbox.stats.count("brevo", template="/contacts/import") > 2
    assert sandbox.stats.count("brevo", template="/processes/{processId}") == 2


def test_many_new_contacts_are_imported_and_read_back(
    sandbox: Sandbox, brevo: BrevoClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(brevo_module, "IMPORT_MAX_BYTES", 40_000)
    people = contacts(1200)
    outcomes = brevo.upsert(people)
    assert [o.outcome for o in outcomes] == [Result.CREATED] * 1200
    imports = sandbox.stats.count("brevo", template="/contacts/import")
    assert imports >= 3
    assert sandbox.stats.count("brevo", template="/processes/{processId}") == imports
    ids = {m.email: m.provider_id for m in brevo.snapshot()}
    assert len(ids) == 1200
    assert all(ids[o.email] == o.provider_id for o in outcomes)


def test_import_chunks_stay_under_the_size_limit(
    sandbox: Sandbox, transport: httpx.BaseTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    brevo_account(sandbox)
    monkeypatch.setattr(brevo_module, "IMPORT_MAX_BYTES", 20_000)
    recorder = RecordingTransport(transport)
    make_brevo(recorder).upsert(contacts(500))
    sizes = [len(r.content) for r in recorder.requests if r.url.path.endswith("/contacts/import")]
    assert len(sizes) >= 3 and max(sizes) <= 20_000


class DatedTransport(httpx.BaseTransport):
    """The sandbox with a `Date` on every answer, from the sandbox's clock (as servers send)."""

    def __init__(self, inner: httpx.BaseTransport, sandbox: Sandbox) -> None:
        self.inner = inner
        self.sandbox = sandbox

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Forward, then stamp the answer."""
        response = self.inner.handle_request(request)
        response.headers["date"] = formatdate(self.sandbox.now(), usegmt=True)
        return response


def test_an_import_is_read_back_from_brevos_time_not_earlier_imports(
    sandbox: Sandbox, transport: httpx.BaseTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A push imports in chunks; each chunk's read-back starts at Brevo's `Date` on its import,
    so it reads its own contacts only. Brevo's clock runs 10 minutes ahead of ours here, and
    30 s pass between the chunks: from our clock less a minute, the second read-back read the
    first chunk's contacts again."""
    brevo_account(sandbox)
    ahead = [600.0]
    monkeypatch.setattr(sandbox, "now", lambda: time.time() + ahead[0])
    client = make_brevo(DatedTransport(transport, sandbox))
    assert {o.outcome for o in client.upsert(contacts(1200))} == {Result.CREATED}
    ahead[0] += 30
    before = sandbox.stats.count("brevo", template="/contacts/lists/{listId}/contacts")
    assert {o.outcome for o in client.upsert(contacts(600, start=1200))} == {Result.CREATED}
    pages = sandbox.stats.count("brevo", template="/contacts/lists/{listId}/contacts")
    assert (before, pages - before) == (3, 2)  # 500 contacts a page
    assert sandbox.stats.count("brevo", method="GET", template="/contacts/{identifier}") == 0


def test_existing_contacts_are_updated_in_batches_of_100(
    sandbox: Sandbox, brevo: BrevoClient
) -> None:
    people = contacts(250, tags=frozenset({"old"}))
    brevo.upsert(people)
    current = {m.key: m for m in brevo.snapshot()}
    changed = [c.model_copy(update={"tags": frozenset({"new"})}) for c in people[:230]]
    outcomes = brevo.upsert(changed + people[230:], current)
    assert [o.outcome for o in outcomes] == [Result.UPDATED] * 230 + [Result.UNCHANGED] * 20
    assert sandbox.stats.count("brevo", template="/contacts/batch") == 3
    after = {m.email: m for m in brevo.snapshot()}
    assert after["person3@example.com"].tags == {"new"}
    assert after["person240@example.com"].tags == {"old"}
    writes = sandbox.stats.count("brevo", writes=True)
    brevo.upsert(changed + people[230:], {m.key: m for m in after.values()})
    assert sandbox.stats.count("brevo", writes=True) == writes


def test_a_blacklist_is_never_cleared(
    sandbox: Sandbox, transport: httpx.BaseTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    brevo_account(sandbox)
    recorder = RecordingTransport(transport)
    client = make_brevo(recorder)
    client.upsert(contacts(15))
    list_id = client.ensure_audience().id
    for i in (0, 1, 2):
        person(sandbox, list_id, f"person{i}@example.com", "unsubscribe")
    current = {m.key: m for m in client.snapshot()}
    renamed = [c.model_copy(update={"last_name": "New"}) for c in contacts(15)]
    known = client.upsert(renamed[:1], current)[0]
    stale = client.upsert(renamed[1:2], current={})[0]
    monkeypatch.setattr(brevo_module, "IMPORT_MAX_BYTES", 2_000)
    imported = client.upsert(renamed[2:], current={})
    assert (known.outcome, known.status) == (Result.UPDATED, MemberStatus.BLACKLISTED)
    # A create that meets a blacklisted contact (here: a stale snapshot) writes nothing.
    for refused in (stale, imported[0]):
        assert (refused.outcome, refused.code, refused.status) == (
            Result.REFUSED,
            "blacklisted",
            MemberStatus.BLACKLISTED,
        )
    assert {(o.outcome, o.status) for o in imported[1:]} == {
        (Result.UPDATED, MemberStatus.SUBSCRIBED)
    }
    stored = {c.email: c for c in account(sandbox).contacts.values()}
    assert all(stored[f"person{i}@example.com"].emailBlacklisted for i in (0, 1, 2))
    assert stored["person0@example.com"].attributes["LASTNAME"] == "New"
    assert stored["person1@example.com"].attributes["LASTNAME"] == "Last1"
    assert stored["person2@example.com"].attributes["LASTNAME"] == "Last2"
    assert stored["person3@example.com"].attributes["LASTNAME"] == "New"
    # The import cannot tell whether it linked a blacklisted contact or found it linked, so it
    # unlinks it either way; a direct create sees the membership and leaves it.
    assert int(list_id) in stored["person1@example.com"].listIds
    assert int(list_id) not in stored["person2@example.com"].listIds
    sent = [json.dumps(json.loads(r.content)) for r in recorder.requests if r.content]
    assert not [body for body in sent if '"emailBlacklisted": false' in body]
    assert not [body for body in sent if '"emailBlacklist": false' in body]


def test_a_category_salutation_is_written_as_its_value(
    sandbox: Sandbox, transport: httpx.BaseTransport
) -> None:
    brevo_account(sandbox, salutation=CATEGORY)
    client = make_brevo(transport)
    wrong = Contact(crm_id="x", email="x@example.com", salutation="Dr.")
    outcomes = client.upsert([*contacts(2), wrong])
    assert [o.outcome for o in outcomes] == [Result.CREATED, Result.CREATED, Result.REFUSED]
    assert "SALUTATION" in (outcomes[2].message or "")
    values = {c.email: c.attributes.get("SALUTATION") for c in account(sandbox).contacts.values()}
    assert values == {"person0@example.com": 1, "person1@example.com": 2}
    assert {m.salutation for m in client.snapshot()} == {"Herr", "Frau"}


def test_email_changes_keep_the_contact_and_refusals_are_per_contact(
    sandbox: Sandbox, brevo: BrevoClient
) -> None:
    created = brevo.upsert(contacts(3))
    outcomes = brevo.change_emails(
        [
            EmailChange(
                crm_id="0",
                old_email="person0@example.com",
                new_email="new0@example.com",
                provider_id=created[0].provider_id,
            ),
            EmailChange(
                crm_id="1", old_email="person1@example.com", new_email="person2@example.com"
            ),
        ]
    )
    assert (outcomes[0].outcome, outcomes[0].provider_id) == (
        Result.UPDATED,
        created[0].provider_id,
    )
    assert (outcomes[1].outcome, outcomes[1].code) == (Result.REFUSED, "duplicate_parameter")
    assert {m.email for m in brevo.snapshot()} == {
        "new0@example.com",
        "person1@example.com",
        "person2@example.com",
    }


def test_snapshot_stable_id_is_the_contact_id_across_address_changes(
    sandbox: Sandbox, brevo: BrevoClient
) -> None:
    brevo.upsert(contacts(2))
    list_id = brevo.ensure_audience().id
    first = {m.stable_id: m for m in brevo.snapshot()}
    assert set(first) == {str(c.id) for c in account(sandbox).contacts.values()}
    assert all(m.provider_id == stable_id for stable_id, m in first.items())
    person(sandbox, list_id, "person0@example.com", "change_email", new_email="moved@example.com")
    after = {m.stable_id: m.email for m in brevo.snapshot()}
    renamed = {
        "person0@example.com": "moved@example.com",
        "person1@example.com": "person1@example.com",
    }
    assert after == {stable_id: renamed[m.email] for stable_id, m in first.items()}


def test_unsubscribe_blacklists_and_remove_unlinks(sandbox: Sandbox, brevo: BrevoClient) -> None:
    brevo.upsert(contacts(170))
    refs = [c.ref() for c in contacts(5)] + [ContactRef(email="ghost@example.com", crm_id="g")]
    unsubscribed = brevo.unsubscribe(refs)
    assert [o.outcome for o in unsubscribed[:5]] == [Result.UNSUBSCRIBED] * 5
    assert (unsubscribed[5].outcome, unsubscribed[5].code) == (Result.REFUSED, "document_not_found")
    removed = brevo.remove([c.ref() for c in contacts(160, start=10)] + [refs[5]])
    assert [o.outcome for o in removed[:160]] == [Result.REMOVED] * 160
    assert removed[160].outcome is Result.UNCHANGED
    assert sandbox.stats.count("brevo", template="/contacts/lists/{listId}/contacts/remove") == 2
    members = {m.email: m.status for m in brevo.snapshot()}
    assert len(members) == 10
    assert members["person0@example.com"] is MemberStatus.BLACKLISTED
    assert len(account(sandbox).contacts) == 170


def test_webhook_with_bearer_token_hears_people(
    sandbox: Sandbox, brevo: BrevoClient, receiver: Receiver
) -> None:
    first = brevo.register_webhook("https://hooks.example.com/brevo", "t0ken")
    assert brevo.register_webhook("https://hooks.example.com/brevo", "t0ken") == first
    hook = next(iter(account(sandbox).webhooks.values()))
    assert (hook.type, hook.auth) == ("marketing", {"type": "bearer", "token": "t0ken"})
    brevo.upsert(contacts(2))
    ours = [json.loads(r.content) for r in receiver.posts()]
    assert {e["event"] for e in ours} == {"list_addition"}
    assert {e["api_key_name"] for e in ours} == {"sandbox-key"}
    list_id = brevo.ensure_audience().id
    person(sandbox, list_id, "person0@example.com", "unsubscribe")
    delivered = receiver.posts()[-1]
    assert delivered.headers["authorization"] == "Bearer t0ken"
    event = json.loads(delivered.content)
    assert (event["event"], event["email"]) == ("unsubscribed", "person0@example.com")
    assert "api_key_name" not in event


def test_addresses_with_plus_are_found_again(brevo: BrevoClient) -> None:
    plus = Contact(crm_id="p", email="first+news@example.com", first_name="Plus")
    created = brevo.upsert([plus])[0]
    again = brevo.upsert([plus.model_copy(update={"first_name": "Again"})], current={})[0]
    assert (again.outcome, again.provider_id) == (Result.UPDATED, created.provider_id)
    assert brevo.unsubscribe([plus.ref()])[0].outcome is Result.UNSUBSCRIBED
    assert brevo.snapshot()[0].first_name == "Again"


def existing(
    sandbox: Sandbox,
    email: str,
    *,
    lists: tuple[int, ...] = (),
    unsubscribed_from: tuple[int, ...] = (),
    blacklisted: bool = False,
    **attributes: object,
) -> int:
    """Put a contact into the account directly, as an earlier day (or person) left it."""
    with sandbox.transaction():
        state = account(sandbox)
        day_ago = sandbox.now() - 86_400
        contact = BvContact(
            id=state.new_id(),
            email=email,
            attributes=dict(attributes),
            emailBlacklisted=blacklisted,
            listIds=list(lists),
            listUnsubscribed=list(unsubscribed_from),
            createdAt=day_ago,
            modifiedAt=day_ago,
        )
        state.add_contact(contact)
        return contact.id


def stored(sandbox: Sandbox, email: str) -> BvContact:
    found = account(sandbox).by_email(email)
    assert found is not None
    return found


PATHS = pytest.mark.parametrize("direct_max", [10, 0], ids=["direct", "import"])


@PATHS
def test_a_contact_blacklisted_outside_the_list_is_neither_written_nor_added(
    sandbox: Sandbox, transport: httpx.BaseTransport, direct_max: int
) -> None:
    brevo_account(sandbox)
    recorder = RecordingTransport(transport)
    client = make_brevo(recorder, direct_max=direct_max)
    list_id = int(client.ensure_audience().id)
    blocked = existing(sandbox, "person0@example.com", blacklisted=True, LASTNAME="Kept")
    other = existing(sandbox, "person1@example.com", FIRSTNAME="Old", NEWSLETTER_TAGS="theirs")
    assert client.snapshot() == []
    outcomes = client.upsert(contacts(3, tags=frozenset({"news"})), current={})
    refused = outcomes[0]
    assert (refused.outcome, refused.code, refused.status) == (
        Result.REFUSED,
        "blacklisted",
        MemberStatus.BLACKLISTED,
    )
    assert (outcomes[1].outcome, outcomes[1].provider_id) == (Result.UPDATED, str(other))
    assert outcomes[2].outcome is Result.CREATED
    blacklisted = stored(sandbox, "person0@example.com")
    assert list_id not in blacklisted.listIds and blacklisted.emailBlacklisted
    assert blacklisted.attributes == {"LASTNAME": "Kept"}
    assert {m.email for m in client.snapshot()} == {"person1@example.com", "person2@example.com"}
    updated = stored(sandbox, "person1@example.com")
    assert updated.attributes["FIRSTNAME"] == "First1"
    assert updated.attributes["NEWSLETTER_TAGS"] == "news"
    sent = [json.loads(r.content) for r in recorder.requests if r.content]
    assert not [b for b in sent if b.get("updateEnabled") or b.get("updateExistingContacts", 0)]
    assert not [r for r in recorder.requests if r.method == "PUT" and str(blocked) in r.url.path]
    batched = [e for b in recorder.bodies("POST", "/contacts/batch") for e in b["contacts"]]
    assert not [e for e in batched if e.get("id") == blocked]


@PATHS
def test_a_contact_unsubscribed_from_the_list_is_not_in_the_snapshot_and_never_re_added(
    sandbox: Sandbox, transport: httpx.BaseTransport, direct_max: int
) -> None:
    brevo_account(sandbox)
    client = make_brevo(transport, direct_max=direct_max)
    list_id = int(client.ensure_audience().id)
    # After a per-list unsubscription Brevo keeps the list in `listUnsubscribed`, not `listIds`
    # (the spec's example of the list's contacts never shows a list in both).
    existing(sandbox, "person0@example.com", unsubscribed_from=(list_id,), LASTNAME="Kept")
    assert client.snapshot() == []
    outcomes = client.upsert(contacts(2), current={})
    assert (outcomes[0].outcome, outcomes[0].code, outcomes[0].status) == (
        Result.REFUSED,
        "list_unsubscribed",
        MemberStatus.UNSUBSCRIBED,
    )
    assert outcomes[1].outcome is Result.CREATED
    kept = stored(sandbox, "person0@example.com")
    assert kept.listIds == [] and kept.listUnsubscribed == [list_id]
    assert kept.attributes == {"LASTNAME": "Kept"}
    assert [m.email for m in client.snapshot()] == ["person1@example.com"]


def test_a_list_unsubscribed_contact_still_linked_shows_as_unsubscribed(
    sandbox: Sandbox, brevo: BrevoClient
) -> None:
    list_id = int(brevo.ensure_audience().id)
    existing(sandbox, "person0@example.com", lists=(list_id,), unsubscribed_from=(list_id,))
    (member,) = brevo.snapshot()
    assert member.status is MemberStatus.UNSUBSCRIBED


def test_a_cleared_category_salutation_is_cleared_once(
    sandbox: Sandbox, transport: httpx.BaseTransport
) -> None:
    brevo_account(sandbox, salutation=CATEGORY)
    client = make_brevo(transport)
    herr = Contact(crm_id="h", email="h@example.com", first_name="H", salutation="Herr")
    client.upsert([herr])
    assert stored(sandbox, "h@example.com").attributes["SALUTATION"] == 1
    cleared = herr.model_copy(update={"salutation": ""})
    current = {m.key: m for m in client.snapshot()}
    assert client.upsert([cleared], current)[0].outcome is Result.UPDATED
    assert "SALUTATION" not in stored(sandbox, "h@example.com").attributes
    current = {m.key: m for m in client.snapshot()}
    assert current["h@example.com"].salutation == ""
    writes = sandbox.stats.count("brevo", writes=True)
    assert client.upsert([cleared], current)[0].outcome is Result.UNCHANGED
    assert sandbox.stats.count("brevo", writes=True) == writes


def test_tags_with_commas_round_trip_in_brevo_form(sandbox: Sandbox, brevo: BrevoClient) -> None:
    tags = frozenset({"a,b", " spaced ", "plain", "x, y"})
    person = Contact(crm_id="t", email="t@example.com", tags=tags)
    brevo.upsert([person])
    (member,) = brevo.snapshot()
    assert member.tags == {brevo_tag(t) for t in tags} == {"a;b", "spaced", "plain", "x; y"}
    writes = sandbox.stats.count("brevo", writes=True)
    outcome = brevo.upsert([person], {member.key: member})[0]
    assert outcome.outcome is Result.UNCHANGED
    assert sandbox.stats.count("brevo", writes=True) == writes


def test_an_email_change_onto_an_address_outside_the_list_is_refused_per_contact(
    sandbox: Sandbox, brevo: BrevoClient
) -> None:
    created = brevo.upsert(contacts(2))
    existing(sandbox, "taken@example.com")
    outcomes = brevo.change_emails(
        [
            EmailChange(
                crm_id="0",
                old_email="person0@example.com",
                new_email="taken@example.com",
                provider_id=created[0].provider_id,
            ),
            EmailChange(
                crm_id="1",
                old_email="person1@example.com",
                new_email="new1@example.com",
                provider_id=created[1].provider_id,
            ),
        ]
    )
    assert (outcomes[0].outcome, outcomes[0].code) == (Result.REFUSED, "duplicate_parameter")
    assert outcomes[1].outcome is Result.UPDATED
    assert {m.email for m in brevo.snapshot()} == {"person0@example.com", "new1@example.com"}


def test_encode_then_decode_round_trips_brevo_tag_forms() -> None:
    names = ("FIRSTNAME", "LASTNAME", "SALUTATION", "NEWSLETTER_TAGS")
    codec = AttributeCodec(AttributeMap(), [Attribute(name=n, category="normal") for n in names])
    tags = frozenset({"a,b", " spaced ", "semi;colon", "x , y", "plain", "trailing,"})
    forms = frozenset(brevo_tag(t) for t in tags)
    assert forms == {"a;b", "spaced", "semi;colon", "x ; y", "plain", "trailing;"}
    contact = Contact(crm_id="1", email="a@example.com", tags=tags)
    assert codec.decode(codec.encode(contact))["tags"] == forms
    in_form = contact.model_copy(update={"tags": forms})
    assert codec.encode(in_form) == codec.encode(contact)
    assert codec.decode(codec.encode(in_form))["tags"] == forms


def test_a_create_repeated_against_a_stale_snapshot_writes_nothing(
    sandbox: Sandbox, brevo: BrevoClient
) -> None:
    first = brevo.upsert(contacts(1))[0]
    again = brevo.upsert(contacts(1), current={})[0]
    assert (again.outcome, again.provider_id) == (Result.UNCHANGED, first.provider_id)
    assert sandbox.stats.count("brevo", method="PUT") == 0


def test_an_import_refuses_the_rows_it_did_not_take(
    sandbox: Sandbox, transport: httpx.BaseTransport
) -> None:
    brevo_account(sandbox)
    client = make_brevo(transport, direct_max=0)
    odd = Contact(crm_id="odd", email="no-domain@localhost")
    outcomes = client.upsert([*contacts(2), odd])
    assert [o.outcome for o in outcomes[:2]] == [Result.CREATED] * 2
    assert (outcomes[2].outcome, outcomes[2].code) == (Result.REFUSED, "import_rejected")


# --- why a contact is blocklisted --------------------------------------------------------


def contact_id(sandbox: Sandbox, email: str) -> str:
    found = account(sandbox).by_email(email)
    assert found is not None
    return str(found.id)


class PeakTransport(httpx.BaseTransport):
    """Passes requests on, counting the contact reads and the most in flight at once."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.reads: list[httpx.URL] = []
        self.peak = 0
        self._in_flight = 0
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Count, then forward."""
        with self._lock:
            self._in_flight += 1
            self.peak = max(self.peak, self._in_flight)
            if request.method == "GET" and request.url.path.count("/") == 4:
                self.reads.append(request.url)  # /brevo/v3/contacts/{identifier}
        try:
            return self.inner.handle_request(request)
        finally:
            with self._lock:
                self._in_flight -= 1


def test_blocklist_reasons_tell_hard_bounces_from_opt_outs(
    sandbox: Sandbox, brevo: BrevoClient
) -> None:
    brevo.upsert(contacts(9))
    list_id = brevo.ensure_audience().id
    steps = [
        ["clean"],
        ["unsubscribe"],
        ["blacklist"],  # an admin blocklists the contact in Brevo's app
        ["complain"],
        ["clean", "unsubscribe"],
        ["unsubscribe", "complain"],
        [],  # never blocklisted: no statistics to tell
        ["delete"],
    ]
    for i, actions in enumerate(steps):
        for action in actions:
            person(sandbox, list_id, f"person{i}@example.com", action)
    brevo.unsubscribe([contacts(9)[8].ref()])  # the sync's own opt-out, through the API
    ids = [contact_id(sandbox, f"person{i}@example.com") for i in (0, 1, 2, 3, 4, 5, 6, 8)]
    reasons = brevo.blocklist_reasons([*ids, "999999", "not-an-id"])
    assert reasons == dict(
        zip(
            ids,
            [
                BlocklistReason.HARD_BOUNCE,
                BlocklistReason.UNSUBSCRIBED,
                BlocklistReason.UNSUBSCRIBED,
                BlocklistReason.COMPLAINT,
                BlocklistReason.UNSUBSCRIBED,
                BlocklistReason.COMPLAINT,
                BlocklistReason.UNKNOWN,
                BlocklistReason.UNSUBSCRIBED,
            ],
            strict=True,
        )
    )
    assert brevo.blocklist_reasons([]) == {}


def test_a_blocklisting_older_than_brevos_90_days_of_statistics_is_unknown(
    sandbox: Sandbox, brevo: BrevoClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    brevo.upsert(contacts(1))
    person(sandbox, brevo.ensure_audience().id, "person0@example.com", "clean")
    bounced = contact_id(sandbox, "person0@example.com")
    assert brevo.blocklist_reasons([bounced]) == {bounced: BlocklistReason.HARD_BOUNCE}
    later = time.time() + 91 * 86400
    monkeypatch.setattr(sandbox, "now", lambda: later)
    assert brevo.blocklist_reasons([bounced]) == {bounced: BlocklistReason.UNKNOWN}


def test_blocklist_reasons_of_30_contacts_are_read_concurrently_within_the_limits(
    sandbox: Sandbox,
    transport: httpx.BaseTransport,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    brevo_account(sandbox)
    peak = PeakTransport(transport)
    client = make_brevo(peak, max_connections=3)
    client.upsert(contacts(30))
    list_id = client.ensure_audience().id
    for i in range(30):
        person(sandbox, list_id, f"person{i}@example.com", "clean" if i % 3 else "unsubscribe")
    ids = [contact_id(sandbox, f"person{i}@example.com") for i in range(30)]
    sandbox.faults.add(
        FaultRule(kind="latency", provider="brevo", method="GET", rate=1.0, seconds=0.02)
    )
    monkeypatch.setattr(brevo_module, "REASONS_LOG_EVERY", 10)
    caplog.set_level(logging.INFO, logger="newsletter_pipelines.providers")
    peak.reads, peak.peak = [], 0
    reasons = client.blocklist_reasons([*ids, *ids[:5]])
    assert reasons == {
        provider_id: BlocklistReason.HARD_BOUNCE if i % 3 else BlocklistReason.UNSUBSCRIBED
        for i, provider_id in enumerate(ids)
    }
    assert sorted(url.path.rsplit("/", 1)[1] for url in peak.reads) == sorted(ids)
    assert {url.params["identifierType"] for url in peak.reads} == {"contact_id"}
    assert peak.peak == 3
    assert [m for m in caplog.messages if "blocklist" in m] == [
        f"brevo: read why {n}/30 contacts are blocklisted" for n in (10, 20, 30)
    ]


def test_blocklist_reasons_raise_the_clients_errors(
    sandbox: Sandbox, transport: httpx.BaseTransport, brevo: BrevoClient
) -> None:
    with pytest.raises(AuthenticationError):
        make_brevo(transport, api_key="xkeysib-wrong-key").blocklist_reasons(["1"])
    sandbox.faults.add(FaultRule(kind="server_error", provider="brevo", count=100))
    with pytest.raises(UnavailableError, match="503"):
        brevo.blocklist_reasons(["1"])


def test_an_import_read_back_over_many_pages_settles_every_contact(
    sandbox: Sandbox, transport: httpx.BaseTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    brevo_account(sandbox)
    monkeypatch.setattr(brevo_module, "CONTACT_PAGE", 100)
    client = make_brevo(transport, direct_max=0)
    list_id = int(client.ensure_audience().id)
    existing(sandbox, "person0@example.com", blacklisted=True, LASTNAME="Kept")
    existing(sandbox, "person1@example.com", unsubscribed_from=(list_id,))
    other = existing(sandbox, "person2@example.com", FIRSTNAME="Old")
    outcomes = client.upsert(contacts(350), current={})
    assert sandbox.stats.count("brevo", template="/contacts/lists/{listId}/contacts") >= 4
    assert [(o.outcome, o.code) for o in outcomes[:2]] == [
        (Result.REFUSED, "blacklisted"),
        (Result.REFUSED, "list_unsubscribed"),
    ]
    assert (outcomes[2].outcome, outcomes[2].provider_id) == (Result.UPDATED, str(other))
    assert [o.outcome for o in outcomes[3:]] == [Result.CREATED] * 347
    assert all(o.stable_id == o.provider_id for o in outcomes[3:])
    assert stored(sandbox, "person2@example.com").attributes["FIRSTNAME"] == "First2"
    members = {m.email: m.provider_id for m in client.snapshot()}
    assert set(members) == {f"person{i}@example.com" for i in range(2, 350)}
    assert all(members[o.email] == o.provider_id for o in outcomes[2:])
