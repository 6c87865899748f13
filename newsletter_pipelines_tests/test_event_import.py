"""The import-back of a few addresses named by webhook events (`sync.scope`, `sync.event_import`):
it plans for those addresses what the nightly full import-back plans, and nothing it cannot prove
from them (both providers, the real clients against the sandbox)."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import count
from typing import Any

import pytest

from newsletter_pipelines.state.events import StoredEvent
from newsletter_pipelines.sync.event_import import (
    runs_to_request,
)
from newsletter_pipelines.sync.import_back import (
    Audience,
    CrmView,
    ImportBackPlan,
    plan_import_back,
)
from newsletter_pipelines_tests.test_eligibility import contact
from newsletter_pipelines_tests.world import SYSTEM_TAG, World

_IDS = count(1)


def event(world: World, kind: str, email: str, **data: Any) -> StoredEvent:
    """An event as the receiver stores it (Mailchimp's fields under `data`)."""
    fields = {"email": email, **data}
    payload = {"type": kind, "data": fields} if world.provider_name == "mailchimp" else fields
    return StoredEvent(
        id=next(_IDS),
        audience=world.provider_name,
        provider=world.provider_name,
        type=kind,
        email=email,
        payload=payload,
        received_at=datetime.now(UTC),
        dedupe_key=str(next(_IDS)),
        processed_at=None,
    )


def deletion(world: World, email: str) -> StoredEvent:
    """The event of an admin's deletion at the provider (Mailchimp: an `unsubscribe` with
    action `delete`)."""
    if world.provider_name == "mailchimp":
        return event(world, "unsubscribe", email, action="delete")
    return event(world, "contact_deleted", email)


def scoped_plan(world: World, events: list[StoredEvent]) -> ImportBackPlan | None:
    """What `provider_events_job` plans for the events; None for a scope that did not close
    (the job leaves it to the nightly run)."""
    planned = world.plan_events(events)
    return None if planned is None else planned[0]


def planned(world: World, events: list[StoredEvent]) -> ImportBackPlan:
    plan = scoped_plan(world, events)
    assert plan is not None, "the scope closes"
    return plan


def full_plan(world: World) -> ImportBackPlan:
    """What the nightly import-back plans now (nothing is pushed or stored)."""
    result, snapshot, diff = world.decide()
    name = world.provider_name
    return plan_import_back(
        diff,
        snapshot,
        CrmView.for_diff(diff, result.eligible, result.excluded),
        Audience(name, name, SYSTEM_TAG[name]),
    )


def changes(plan: ImportBackPlan) -> set[tuple[str, str, str | None, str]]:
    """(contact, activity kind, newsletter, source key) of every planned change."""
    found = {
        (str(c.contact_id), c.activity.kind, c.newsletter, c.activity.source_key)
        for c in plan.changes
    }
    return found | {
        ("new", n.activity.kind, "yes", n.activity.source_key) for n in plan.new_contacts
    }


def test_the_events_addresses_get_what_the_nightly_import_back_plans(world: World) -> None:
    world.crm.append({**world.crm[2], "contact_id": 99, "updated_at": "2020-01-01 00:00:00"})
    world.sync()
    world.sync()  # the ledger learns the stable ids
    deleted = "delete" if world.provider_name == "brevo" else "archive"
    world.act("person3@example.de", "unsubscribe")  # also contact 99's address
    world.act("person5@example.de", deleted)
    world.act("person7@example.de", "change_email", new_email="neu7@example.de")
    world.act("neu@example.de", "signup")
    if world.provider_name == "mailchimp":
        events = [
            event(world, "unsubscribe", "person3@example.de", action="unsub", reason="manual"),
            event(world, "unsubscribe", "person5@example.de", action="delete"),
            event(
                world,
                "upemail",
                "person7@example.de",
                old_email="person7@example.de",
                new_email="neu7@example.de",
            ),
            event(world, "subscribe", "neu@example.de"),
        ]
    else:  # Brevo fires no event for an address change: the nightly run finds it
        events = [
            event(world, "unsubscribed", "person3@example.de"),
            event(world, "contact_deleted", "person5@example.de"),
            event(world, "list_addition", "neu@example.de"),
        ]
    nightly = changes(full_plan(world))
    scoped = changes(planned(world, events))
    assert {c[:3] for c in scoped} >= {
        ("3", "newsletter_unsubscribed", "no"),
        ("99", "newsletter_unsubscribed", "no"),
        ("5", "removed_at_provider", "unspecified"),
        ("new", "newsletter_subscribed", "yes"),
    }
    if world.provider_name == "mailchimp":
        assert ("7", "email_changed_at_provider", None) in {c[:3] for c in scoped}
        assert scoped == nightly
    else:
        assert scoped == nightly - {c for c in nightly if c[0] == "7"}


def test_a_member_gone_from_an_address_without_a_deletion_event_is_left_to_the_nightly_run(
    world: World,
) -> None:
    world.sync()
    world.sync()
    world.act("person4@example.de", "change_email", new_email="weg4@example.de")
    events = [event(world, "profile", "person4@example.de")]  # names the old address only
    assert changes(planned(world, events)) == set()
    assert {c[1] for c in changes(full_plan(world))} == {"email_changed_at_provider"}


def test_events_of_the_syncs_own_writes_find_nothing_to_import(world: World) -> None:
    world.sync()
    world.set(6, newsletter="no")
    world.sync()  # the sync unsubscribes contact 6 itself
    kind = "unsubscribe" if world.provider_name == "mailchimp" else "unsubscribed"
    events = [event(world, kind, "person6@example.de"), event(world, kind, "person6@example.de")]
    assert changes(planned(world, events)) == set()


@pytest.mark.parametrize("world", ["mailchimp"], indirect=True)
def test_a_duplicate_of_an_owner_elsewhere_widens_the_scope(world: World) -> None:
    """Contact 8 moved in the CRM from person8@ to neu8@: an event about neu8@ also reads
    the ledger row at person8@ that contact 8 owns, and that member."""
    world.sync()
    world.set(8, email="neu8@example.de")
    scope = world.scope({"neu8@example.de"})
    assert scope.closed
    assert {"neu8@example.de", "person8@example.de"} <= scope.keys
    assert set(scope.snapshot["match_key"]) == {"person8@example.de"}
    assert scope.contact_ids == {"8"}


@pytest.mark.parametrize("world", ["mailchimp"], indirect=True)
def test_a_member_moved_onto_an_events_address_is_known_by_its_stable_id(world: World) -> None:
    """Found by a random long model run (Brevo): a sign-up moved on, and a synced member moved
    onto its address; the event of the sign-up names only that address. The full import-back
    knows the member there by its stable id (an address change of the owner), the run about
    the address took it for a sign-up and created a contact."""
    world.sync()
    world.sync()  # the ledger learns the stable ids
    world.act("neu@example.de", "signup")
    world.act("neu@example.de", "change_email", new_email="weg@example.de")
    world.act("person3@example.de", "change_email", new_email="neu@example.de")
    kind = "subscribe" if world.provider_name == "mailchimp" else "list_addition"
    plan = planned(world, [event(world, kind, "neu@example.de")])
    assert not plan.new_contacts
    assert changes(plan) <= changes(full_plan(world))


def test_a_member_gone_from_a_contacts_previous_address_is_left_to_the_nightly_run(
    world: World,
) -> None:
    """Found by a random long model run (Brevo): the CRM moved a contact to a new address and,
    before a sync, the member at its old address moved at the provider too; an event names the
    old address. The removal the rules report on the contact's new address concerns the ledger
    row at the old one, whose member the run cannot see: not provable, not imported."""
    world.sync()
    world.sync()  # the ledger learns the stable ids
    world.set(3, email="new3@example.de")
    world.act("person3@example.de", "change_email", new_email="moved3@example.de")
    kind = "unsubscribe" if world.provider_name == "mailchimp" else "unsubscribed"
    plan = planned(world, [event(world, kind, "person3@example.de")])
    assert "removed_at_provider" not in plan.counts
    assert changes(plan) <= changes(full_plan(world))


def test_a_member_moved_outside_the_scope_has_no_tag_change_at_its_old_address(
    world: World,
) -> None:
    """Found by a random long model run (Brevo): a tagged member moved to an address outside
    the scope and someone signed its old address up again. The new member there lacks the
    moved one's tags; that proves nothing about the moved member's tags."""
    world.sync()
    world.sync()  # the ledger learns the stable ids
    world.act("person1@example.de", "change_email", new_email="moved1@example.de")
    world.act("person1@example.de", "signup")
    kind = "subscribe" if world.provider_name == "mailchimp" else "list_addition"
    plan = planned(world, [event(world, kind, "person1@example.de")])
    assert "tags_removed_at_provider" not in plan.counts
    assert changes(plan) <= changes(full_plan(world))


def test_an_opt_out_under_a_previous_address_has_one_source_key_in_both_runs(
    world: World,
) -> None:
    """Found by a random long model run (Brevo): the run about the opted-out address reports
    the opt-out on that address, the full import-back (which sees where the other members
    moved) on the contact's new one; the CRM change is the same and must have the same key,
    made from the member's address."""
    world.sync()
    world.sync()  # the ledger learns the stable ids
    world.set(2, email="person1@example.de", newsletter="no")
    world.set(3, email="person2@example.de")
    world.act("person1@example.de", "change_email", new_email="moved1@example.de")
    world.act("person2@example.de", "change_email", new_email="moved2@example.de")
    world.act("person3@example.de", "unsubscribe")
    kind = "unsubscribe" if world.provider_name == "mailchimp" else "unsubscribed"
    plan = planned(world, [event(world, kind, "person3@example.de")])
    assert ("3", "newsletter_unsubscribed") in {(c[0], c[1]) for c in changes(plan)}
    assert changes(plan) <= changes(full_plan(world))


def test_a_scope_that_does_not_close_is_not_decided(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.sync()
    world.set(8, email="neu8@example.de")
    monkeypatch.setattr("newsletter_pipelines.sync.scope.MAX_ROUNDS", 1)
    assert not world.scope({"neu8@example.de"}).closed
    assert scoped_plan(world, [event(world, "profile", "neu8@example.de")]) is None


def test_a_run_per_audience_with_events_newer_than_the_cursor() -> None:
    pending = {"brevo": 7, "mailchimp": 12}
    assert runs_to_request(pending, 0) == ([("brevo", 7), ("mailchimp", 12)], 12)
    assert runs_to_request(pending, 7) == ([("mailchimp", 12)], 12)  # brevo's 7 was submitted
    assert runs_to_request(pending, 12) == ([], 12)
    assert runs_to_request({}, 12) == ([], 12)  # the cursor never goes back


def test_a_deletion_at_an_address_another_member_moved_to_is_not_the_ledger_members(
    world: World,
) -> None:
    """Contact 1's member moves from person1@ to neu1@, contact 2's member to person1@, and an
    admin deletes person1@ for good: the deleted member is contact 2's, not contact 1's (whose
    ledger row names person1@), so contact 1 gets no `removed_at_provider`."""
    world.sync()
    world.sync()  # the ledger learns the stable ids
    world.act("person1@example.de", "change_email", new_email="neu1@example.de")
    world.act("person2@example.de", "change_email", new_email="person1@example.de")
    world.act("person1@example.de", "delete")
    events = [deletion(world, "person1@example.de")]
    scoped, full = changes(planned(world, events)), changes(full_plan(world))
    assert ("1", "removed_at_provider") not in {c[:2] for c in scoped}
    assert scoped <= full


@pytest.mark.parametrize("world", ["brevo"], indirect=True)
def test_an_address_change_has_one_source_key_whichever_row_names_it(world: World) -> None:
    """Contact 4's member moves from person4@ to cem@ while the CRM moved contact 4 onto
    person2@, whose member moved away to ben@ (the events' addresses cannot see where): the
    scoped run names the move on another row than the full run, under the same source key, so
    the nightly run does not write the activity a second time."""
    world.crm[:] = world.crm[:4]
    world.sync()
    world.sync()
    world.act("person2@example.de", "change_email", new_email="ben@example.de")
    world.set(4, email="person2@example.de")
    world.act("person4@example.de", "change_email", new_email="cem@example.de")
    events = [event(world, "list_addition", "cem@example.de")]
    moved = {c for c in changes(planned(world, events)) if c[1] == "email_changed_at_provider"}
    assert {c[0] for c in moved} == {"4"}
    assert moved <= changes(full_plan(world))


@pytest.mark.parametrize("world", ["brevo"], indirect=True)
def test_an_address_change_is_told_to_its_owner_whichever_row_names_it(world: World) -> None:
    """Found by a random long model run (Brevo): contact 1's member moves from person1@ to
    neu1@, where contact 9 (newsletter = no) is; the CRM moved contact 1 onto person2@, whose
    member moved away to weg2@ (outside what the events' addresses can see). The scoped run
    decides contact 1 as gone at person2@ (a removal it cannot prove), so it names the move on
    the member's row at neu1@, which is about contact 9; the full run names it on contact 1's
    update. Both must tell contact 1, the owner, under the same source key."""
    world.crm[:] = world.crm[:3]
    world.sync()
    world.sync()  # the ledger learns the stable ids
    world.act("person2@example.de", "change_email", new_email="weg2@example.de")
    world.set(1, email="person2@example.de")
    world.set(2, email="neu2@example.de")
    world.act("person1@example.de", "change_email", new_email="neu1@example.de")
    world.crm.append(contact(9, email="neu1@example.de", newsletter="no"))
    events = [event(world, "list_addition", "neu1@example.de")]
    scoped, full = changes(planned(world, events)), changes(full_plan(world))
    moved = {c for c in scoped if c[1] == "email_changed_at_provider"}
    assert {c[0] for c in moved} == {"1"}
    assert scoped <= full


def test_a_deletion_before_the_ledger_knows_stable_ids_is_imported_as_the_nightly_run_would(
    world: World,
) -> None:
    """Right after the first sync the ledger may not know the members' stable ids: a deletion
    event is then believed, as the full import-back believes a member gone from its address."""
    world.sync()
    world.act("person5@example.de", "delete")
    events = [deletion(world, "person5@example.de")]
    scoped, full = changes(planned(world, events)), changes(full_plan(world))
    assert ("5", "removed_at_provider", "unspecified") in {c[:3] for c in scoped}
    assert scoped <= full


@pytest.mark.parametrize("world", ["brevo"], indirect=True)  # Mailchimp moves only active members
def test_an_unimported_opt_out_of_a_member_gone_from_its_address_waits_for_the_proof(
    world: World,
) -> None:
    """Found by a random long model run (Brevo): a report-only sync kept an opt-out for the
    CRM to import later; the member then moved at the provider to an address outside the
    events' scope. The scope took it for deleted and imported the opt-out under the old
    address, the nightly run under the new one: two activities for one opt-out. Without a
    confirmed deletion the scope leaves it to the nightly run; with one it imports it as the
    nightly run does."""
    world.sync()
    world.sync()  # the ledger learns the stable ids
    world.act("person4@example.de", "unsubscribe")
    world.sync(import_back=True, write_back=False)  # kept, not imported
    world.act("person4@example.de", "change_email", new_email="weg4@example.de")
    events = [event(world, "profile", "person4@example.de")]  # names the old address only
    assert changes(planned(world, events)) == set()
    assert ("4", "newsletter_unsubscribed", "no") in {c[:3] for c in changes(full_plan(world))}
    world.act("weg4@example.de", "delete")
    gone = [*events, deletion(world, "person4@example.de")]
    assert changes(planned(world, gone)) == changes(full_plan(world))
    assert {c[:3] for c in changes(full_plan(world))} == {("4", "newsletter_unsubscribed", "no")}
