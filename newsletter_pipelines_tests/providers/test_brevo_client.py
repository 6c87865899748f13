"""The Brevo client against the sandbox: every operation of the Provider interface."""

from __future__ import annotations

import json

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
from newsletter_pipelines.providers.brevo import BrevoClient
from newsletter_pipelines.providers.brevo_attributes import AttributeMap
from newsletter_pipelines.providers.errors import AuthenticationError, ConfigurationError
from newsletter_pipelines.sandbox import SANDBOX_BREVO_KEY, PersonEvent, Sandbox
from newsletter_pipelines.sandbox.brevo_state import BvAccount, BvAttribute
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


def test_a_few_new_contacts_are_created_directly(sandbox: Sandbox, brevo: BrevoClient) -> None:
    outcomes = brevo.upsert(contacts(3, tags=frozenset({"vip", "news"})))
    assert [o.outcome for o in outcomes] == [Result.CREATED] * 3
    assert sandbox.stats.count("brevo", method="POST", template="/contacts") == 3
    members = {m.email: m for m in brevo.snapshot()}
    sample = members["person1@example.com"]
    assert sample.provider_id == outcomes[1].provider_id
    assert (sample.first_name, sample.last_name, sample.salutation) == ("First1", "Last1", "Frau")
    assert sample.tags == {"vip", "news"} and sample.status is MemberStatus.SUBSCRIBED


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
    assert (stale.outcome, stale.status) == (Result.UPDATED, MemberStatus.BLACKLISTED)
    assert (imported[0].outcome, imported[0].status) == (Result.UPDATED, MemberStatus.BLACKLISTED)
    assert {o.status for o in imported[1:]} == {MemberStatus.SUBSCRIBED}
    stored = {c.email: c for c in account(sandbox).contacts.values()}
    assert all(stored[f"person{i}@example.com"].emailBlacklisted for i in (0, 1, 2))
    assert stored["person2@example.com"].attributes["LASTNAME"] == "New"
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
