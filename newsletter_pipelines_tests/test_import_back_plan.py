"""The import-back plan from real diffs: people act at the sandbox provider, a sync sees it, the
plan says what the CRM learns (both providers)."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest

from newsletter_pipelines.state.ledger import load_ledger
from newsletter_pipelines.sync.eligibility import classify
from newsletter_pipelines.sync.import_back import (
    Audience,
    CrmView,
    ImportBackPlan,
    plan_import_back,
)
from newsletter_pipelines.sync.inputs import snapshot_frame
from newsletter_pipelines_tests.test_eligibility import contact, frame
from newsletter_pipelines_tests.world import SYSTEM_TAG, World


def plan(world: World, diff: pd.DataFrame, **limits: object) -> ImportBackPlan:
    result = classify(frame(*world.crm))
    return plan_import_back(
        diff,
        snapshot_frame(world.provider.snapshot()),
        CrmView.for_diff(diff, result.eligible, result.excluded),
        Audience(world.provider_name, world.provider_name, SYSTEM_TAG[world.provider_name]),
        **limits,  # type: ignore[arg-type]
    )


def by_contact(result: ImportBackPlan) -> dict[str, list[tuple[str, str | None]]]:
    found: dict[str, list[tuple[str, str | None]]] = {}
    for change in result.changes:
        found.setdefault(str(change.contact_id), []).append(
            (change.activity.kind, change.newsletter)
        )
    return found


def test_nothing_happened_nothing_to_import(world: World) -> None:
    world.sync()
    diff, _ = world.sync()
    assert len(plan(world, diff)) == 0


def test_an_unsubscribe_at_the_provider_sets_no_on_every_contact_with_the_address(
    world: World,
) -> None:
    world.crm.append({**world.crm[2], "contact_id": 99, "updated_at": "2020-01-01 00:00:00"})
    world.sync()  # contact 99 is an older duplicate of contact 3
    world.act("person3@example.de", "unsubscribe")
    diff, _ = world.sync()
    result = plan(world, diff)
    assert by_contact(result) == {
        "3": [("newsletter_unsubscribed", "no")],
        "99": [("newsletter_unsubscribed", "no")],
    }
    again, _ = world.sync()  # the ledger knows it now: not a new change
    assert len(plan(world, again)) == 0


@pytest.mark.parametrize("world", ["mailchimp"], indirect=True)
def test_a_hard_bounce_is_an_activity_and_leaves_the_newsletter_value(world: World) -> None:
    world.sync()
    world.act("person4@example.de", "clean")
    diff, _ = world.sync()
    assert by_contact(plan(world, diff)) == {"4": [("hard_bounce", None)]}
    assert len(plan(world, diff, record_bounces=False)) == 0  # NEWSLETTER_ACTIVITIES without it
    world.set(4, first_name="Bea")  # still yes, last changed before the bounce
    again, _ = world.sync()  # the member did not change since: no new bounce
    assert len(plan(world, again)) == 0


def test_a_member_removed_at_the_provider_becomes_unspecified(world: World) -> None:
    world.sync()
    world.act("person5@example.de", "archive" if world.provider_name == "mailchimp" else "delete")
    diff, _ = world.sync()
    assert by_contact(plan(world, diff)) == {"5": [("removed_at_provider", "unspecified")]}


def test_a_mass_removal_at_the_provider_is_held(world: World) -> None:
    world.sync()
    removal = "archive" if world.provider_name == "mailchimp" else "delete"
    for n in range(1, 21):
        world.act(f"person{n}@example.de", removal)
    diff, _ = world.sync()
    result = plan(world, diff)
    assert result.vanish is not None and not result.vanish.passed
    assert "run crm_import_back with allow_mass_vanish: true" in result.vanish.message
    assert len(result.held) == 20 and len(result) == 0
    released = plan(world, diff, allow_mass_vanish=True)
    assert len(released.changes) == 20


def test_a_sign_up_of_an_unknown_address_becomes_a_new_contact(world: World) -> None:
    world.sync()
    world.act("neu@example.de", "signup")
    world.act("neu@example.de", "tag", tag="Webinar")
    diff, _ = world.sync()
    result = plan(world, diff)
    assert [c.email for c in result.new_contacts] == ["neu@example.de"]
    assert result.new_contacts[0].tags == {"Webinar"}  # never the system tag
    assert result.new_contacts[0].activity.kind == "newsletter_subscribed"


def test_a_resubscription_sets_yes_unless_the_crm_changed_since(world: World) -> None:
    world.sync()
    world.act("person6@example.de", "unsubscribe")
    world.sync()
    world.set(6, newsletter="no", updated_at="2020-01-01 00:00:00")  # an old CRM change
    world.sync()
    world.act("person6@example.de", "resubscribe")
    diff, _ = world.sync()
    assert by_contact(plan(world, diff)) == {"6": [("newsletter_subscribed", "yes")]}
    world.set(6, newsletter="no", updated_at="2100-01-01 00:00:00")  # the CRM decided later
    assert len(plan(world, diff)) == 0


def test_tags_a_person_added_are_added_to_the_contact(world: World) -> None:
    world.sync()
    world.act("person7@example.de", "tag", tag="Messe")
    diff, _ = world.sync()
    result = plan(world, diff)
    assert [(c.contact_id, c.add_tags) for c in result.changes] == [("7", {"Messe"})]


def test_the_same_change_planned_twice_has_the_same_source_keys(world: World) -> None:
    world.sync()
    world.act("person8@example.de", "unsubscribe")
    world.act("person9@example.de", "tag", tag="Messe")
    diff, _ = world.sync()
    first = [c.activity.source_key for c in plan(world, diff).changes]
    assert len(set(first)) == 2
    assert first == [c.activity.source_key for c in plan(world, diff).changes]


def test_a_tag_a_person_removed_is_removed_from_the_contact_and_not_pushed_again(
    world: World,
) -> None:
    world.set(11, tags=("VIP", "Käufer"))
    world.sync()
    world.act("person11@example.de", "untag", tag="VIP")
    before = world.writes()
    diff, _ = world.sync()
    assert world.writes() == before  # not pushed again
    result = plan(world, diff)
    assert [(c.contact_id, c.remove_tags) for c in result.changes] == [("11", {"VIP"})]
    assert result.changes[0].activity.kind == "tags_removed_at_provider"


def test_a_sign_up_after_the_crm_said_no_sets_yes_and_an_older_one_is_unsubscribed(
    world: World,
) -> None:
    world.set(12, newsletter="no", updated_at="2020-01-01 00:00:00")  # long before the sign-up
    world.set(13, newsletter="no", updated_at="2100-01-01 00:00:00")  # "after" the sign-up
    world.sync()
    world.act("person12@example.de", "signup")
    world.act("person13@example.de", "signup")
    before = world.writes()
    diff, summary = world.sync()
    assert by_contact(plan(world, diff)) == {"12": [("newsletter_subscribed", "yes")]}
    assert summary.results["unsubscribed"] == 1  # only the newer "no" of contact 13
    assert world.writes() - before == 1
    assert world.members()["person12@example.de"] == "subscribed"
    assert world.members()["person13@example.de"] in {"unsubscribed", "blacklisted"}


def ledger_keys(world: World) -> dict[str, str]:
    return {r.member_key: r.state.value for r in load_ledger(world.engine, world.provider_name)}


def test_an_address_changed_at_the_provider_is_an_activity_and_the_crm_address_goes_back(
    world: World,
) -> None:
    world.sync()
    world.sync()  # learns the members' stable ids
    world.act("person3@example.de", "change_email", new_email="neu3@example.de")
    before = world.writes()
    diff, _ = world.sync(import_back=True)
    result = world.imported[-1]
    assert by_contact(result) == {"3": [("email_changed_at_provider", None)]}
    assert not result.new_contacts  # no new contact, no 'unspecified'
    details = result.changes[0].activity.details
    assert (details["old_email"], details["new_email"]) == ("person3@example.de", "neu3@example.de")
    row = diff.set_index("match_key").loc["person3@example.de"]
    assert (row.action, row.old_email) == ("update", "neu3@example.de")
    assert world.writes() - before == 1  # the address change, nothing else
    assert world.members()["person3@example.de"] == "subscribed"
    assert "neu3@example.de" not in world.members()
    keys = ledger_keys(world)
    assert keys["person3@example.de"] == "subscribed" and "neu3@example.de" not in keys
    again, _ = world.sync(import_back=True)
    assert world.writes() - before == 1  # nothing more is sent, nothing more imported
    assert set(again["action"]) <= {"unchanged"} and not again["provider_change"].notna().any()
    assert len(world.imported[-1]) == 0


def test_an_address_change_not_taken_in_is_not_undone_at_the_provider(world: World) -> None:
    """Report only: the CRM's address is not pushed back (that would erase the change before
    the CRM learned it); the first run that writes logs the activity, then renames back."""
    world.sync()
    world.sync()  # learns the members' stable ids
    world.act("person3@example.de", "change_email", new_email="neu3@example.de")
    before = world.writes()
    for _ in range(2):
        _, summary = world.sync(import_back=True, write_back=False)
        assert world.writes() == before
        assert summary.results["held"] == 1
        assert [h["guard"] for h in summary.held] == ["crm_import_back"]
        assert world.members()["neu3@example.de"] == "subscribed"
    world.sync(import_back=True)
    assert by_contact(world.imported[-1]) == {"3": [("email_changed_at_provider", None)]}
    assert world.writes() - before == 1
    assert world.members()["person3@example.de"] == "subscribed"
    assert "neu3@example.de" not in world.members()


def test_a_sign_up_at_the_old_address_of_a_change_not_taken_in_waits_with_it(
    world: World,
) -> None:
    """Report only: someone signs up at the address a member moved away from. Writing the
    contact's fields onto that sign-up would take the old address, where the ledger remembers
    the change until the CRM takes it in: the write waits with the change, run after run, and
    the first run that writes logs the change as the contact's, not as a stranger's sign-up."""
    world.sync()
    world.sync()  # learns the members' stable ids
    world.act("person3@example.de", "change_email", new_email="neu3@example.de")
    world.act("person3@example.de", "signup")
    before = world.writes()
    for _ in range(2):
        diff, summary = world.sync(import_back=True, write_back=False)
        assert world.writes() == before
        assert {h["crm_id"] for h in summary.held} == {"3"}
        changes = diff.set_index("match_key")["provider_change"].dropna()
        assert changes.to_dict() == {"neu3@example.de": "email_changed"}
    world.sync(import_back=True)
    assert by_contact(world.imported[-1]) == {"3": [("email_changed_at_provider", None)]}
    assert not world.imported[-1].new_contacts


@pytest.mark.parametrize(
    "change",
    [{"newsletter": "no", "updated_at": "2100-01-01 00:00:00"}, {"is_private": True}],
    ids=["newsletter no", "private"],
)
def test_an_opt_out_at_the_old_address_of_a_change_not_taken_in_goes_out_at_once(
    world: World, change: dict[str, object]
) -> None:
    """Report only: a member moved onto another contact's address, someone signed up at its
    old address, and the CRM says no (or private) for that address. The unsubscribe (or
    removal) of the sign-up goes out and takes the old address in the ledger, so the move is no
    longer remembered there (the CRM is not told of it later): the other contact's write onto
    the moved member goes out with it, and the next run has nothing to send."""
    world.sync()
    world.sync()  # learns the members' stable ids
    world.crm.append(dict(world.crm[0], contact_id=99, email="neu3@example.de", tags=("VIP",)))
    world.act("person3@example.de", "change_email", new_email="neu3@example.de")
    world.act("person3@example.de", "signup")
    world.set(3, **change)
    world.sync(import_back=True, write_back=False)
    assert world.members().get("person3@example.de") not in {"subscribed", "pending"}
    assert ledger_keys(world)["person3@example.de"] in {"unsubscribed", "removed"}
    sent = world.writes()
    again, summary = world.sync(import_back=True, write_back=False)
    assert world.writes() == sent and not summary.held
    assert set(again["action"]) <= {"unchanged"}


@pytest.mark.parametrize("world", ["brevo"], indirect=True)
def test_an_opted_out_contact_that_changed_its_address_stays_opted_out(world: World) -> None:
    world.sync()
    world.act("person4@example.de", "blacklist")
    world.sync(import_back=True)  # the CRM learns the opt-out
    world.set(4, newsletter="yes")  # someone says yes again in the CRM
    world.act("person4@example.de", "change_email", new_email="neu4@example.de")
    before = world.writes()
    diff, _ = world.sync(import_back=True)
    assert by_contact(world.imported[-1]) == {"4": [("email_changed_at_provider", None)]}
    assert world.writes() == before
    found = diff.set_index("match_key")
    assert found.loc["person4@example.de"].action == "blocked_by_provider"
    assert ledger_keys(world) | {"neu4@example.de": "opted_out"} == ledger_keys(world)
    assert "person4@example.de" not in ledger_keys(world)
    again, _ = world.sync(import_back=True)
    assert world.writes() == before and len(world.imported[-1]) == 0
    assert again.set_index("match_key").loc["person4@example.de"].action == "blocked_by_provider"


@pytest.mark.parametrize("world", ["mailchimp"], indirect=True)
def test_the_crm_view_finds_contacts_by_id_whatever_the_id_column_holds(world: World) -> None:
    world.sync()
    world.act("person3@example.de", "unsubscribe")
    diff, _ = world.sync()
    diff["match_key"] = "elsewhere@example.de"  # only the row's contact id leads to contact 3
    result = classify(frame(*world.crm))
    text = [
        f.assign(contact_id=f["contact_id"].astype(str)) for f in (result.eligible, result.excluded)
    ]
    by_int = CrmView.for_diff(diff, result.eligible, result.excluded)
    assert by_int.newsletter == {"3": "yes"}
    assert CrmView.for_diff(diff, *text) == by_int


def test_an_opt_out_after_a_re_subscribe_between_two_syncs_reaches_the_crm(world: World) -> None:
    """The CRM said yes again after an opt-out it took in; the person re-subscribes and opts out
    again before the next sync: the provider looks as the ledger knew it, yet the opt-out is new
    and newer than the CRM's yes."""
    clock = iter(range(1_900_000_000, 2_000_000_000, 10))
    world.sandbox.now = lambda: float(next(clock))  # type: ignore[method-assign]
    world.sync()
    world.act("person3@example.de", "unsubscribe")
    world.sync(import_back=True)
    assert world.crm[2]["newsletter"] == "no"
    world.crm[2].update(newsletter="yes", updated_at=stamp_of(next(clock)))
    world.act("person3@example.de", "resubscribe")
    world.act("person3@example.de", "unsubscribe")
    world.sync(import_back=True)
    assert world.crm[2]["newsletter"] == "no"
    assert by_contact(world.imported[-1]) == {"3": [("newsletter_unsubscribed", "no")]}


def test_an_opt_out_again_is_written_on_the_contacts_the_crm_did_not_change_since(
    world: World,
) -> None:
    """Found by a random long model run: after an opt-out the CRM took in, the person
    re-subscribes and opts out again; meanwhile one contact of the address was edited in the
    CRM. That contact's newer word stands; the other one, unchanged since, gets the `no`."""
    clock = iter(range(1_900_000_000, 2_000_000_000, 10))
    world.sandbox.now = lambda: float(next(clock))  # type: ignore[method-assign]
    world.sync()
    world.act("person3@example.de", "unsubscribe")
    world.sync(import_back=True)
    world.crm[2].update(newsletter="yes", updated_at=stamp_of(next(clock)))
    world.crm.append(contact(60, email="person3@example.de", updated_at=stamp_of(next(clock))))
    world.act("person3@example.de", "resubscribe")
    world.act("person3@example.de", "unsubscribe")
    world.crm[2].update(first_name="Edited", updated_at=stamp_of(next(clock) + 5))
    world.sync(import_back=True)
    assert by_contact(world.imported[-1]) == {"60": [("newsletter_unsubscribed", "no")]}
    assert (world.crm[2]["newsletter"], world.crm[-1]["newsletter"]) == ("yes", "no")


def stamp_of(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


@pytest.mark.parametrize("world", ["mailchimp", "brevo"], indirect=True)
def test_tags_the_sync_pushed_before_it_archived_a_member_are_not_imported(world: World) -> None:
    world.crm.append(contact(102, email="anna@example.de", tags=("Käufer",)))
    world.sync()
    world.crm[-1].update(is_private=True, updated_at="2026-01-02 00:00:00")
    world.sync(import_back=True)  # the sync archives the member: private in the CRM
    world.crm.append(contact(105, email="anna@example.de", tags=("VIP",)))
    world.sync(import_back=True)  # eligible again: the member is added back
    diff, _ = world.sync(import_back=True)
    assert diff["import_tags"].isna().all()
    assert next(r for r in world.crm if r["contact_id"] == 105)["tags"] == ("VIP",)
    member = next(m for m in world.provider.snapshot() if m.email == "anna@example.de")
    assert member.tags == {"VIP", SYSTEM_TAG[world.provider_name]} - {None}


def test_an_opt_out_under_a_previous_address_is_not_the_new_addresses_other_contacts(
    world: World,
) -> None:
    """Found by a random long model run (Mailchimp): two contacts moved in the CRM to one new
    address, and the member at the old address of one of them opted out before the sync. The
    opt-out is that address's and that contact's, not the other contact's at the new one."""
    world.sync()
    world.set(3, email="shared@example.de")
    world.set(5, email="shared@example.de", updated_at="2026-01-02 00:00:00")  # the newer
    world.act("person5@example.de", "unsubscribe")
    world.sync(import_back=True)
    assert next(r for r in world.crm if r["contact_id"] == 5)["newsletter"] == "no"
    assert next(r for r in world.crm if r["contact_id"] == 3)["newsletter"] == "yes"


@pytest.mark.parametrize("world", ["mailchimp"], indirect=True)
def test_a_report_only_sync_keeps_what_it_did_not_import_when_a_rename_takes_the_address(
    world: World,
) -> None:
    """Found by a random long model run: in a report-only sync a CRM rename onto an address
    whose member moved away at the provider (and bounced there) overwrote that address's
    ledger row, which still held what the CRM had not taken in; the bounce was forgotten and
    the next sync created the contact at its new address. The ledger now keeps the bounce it
    saw with the member at its new address, unimported, so the rename can go out at once."""
    world.sync()
    world.sync()  # the ledger learns the stable ids
    world.act("person2@example.de", "change_email", new_email="moved2@example.de")
    world.act("moved2@example.de", "clean")
    world.set(1, email="person2@example.de")  # the CRM renames contact 1 onto contact 2's address
    world.set(2, email="new2@example.de", updated_at="2026-01-02 00:00:00")
    world.sync(import_back=True, write_back=False)
    writes = world.writes()
    world.sync(import_back=True, write_back=False)
    assert world.writes() == writes
    members = world.members()
    assert members.get("person2@example.de") == "subscribed" and "new2@example.de" not in members
    world.sync(import_back=True)  # the CRM takes the bounce in
    assert by_contact(world.imported[-1]) == {"2": [("hard_bounce", None)]}
    assert "new2@example.de" not in world.members()


@pytest.mark.parametrize("world", ["mailchimp", "brevo"], indirect=True)
def test_a_report_only_sync_leaves_a_moved_member_and_its_old_address_to_the_import(
    world: World,
) -> None:
    """Found by random long model runs: a member moved away at the provider, and the CRM
    renamed a newer contact onto the address it left, so the moved member's contact became a
    duplicate. A report-only sync held the rename onto the address the member left but removed
    the moved member, which stored its row at the new address: the move was lost for the CRM,
    and the next report-only sync sent the rename after all. Both now wait for the run that
    tells the CRM of the move, and that run sends them."""
    world.sync()
    world.sync()  # the ledger learns the stable ids
    world.act("person2@example.de", "change_email", new_email="moved2@example.de")
    world.set(1, email="person2@example.de", updated_at="2026-01-02 00:00:00")
    writes = world.writes()
    diff, summary = world.sync(import_back=True, write_back=False)
    assert diff.set_index("crm_id").loc["2", "action"] == "remove"
    assert {(h["crm_id"], h["action"]) for h in summary.held} == {("1", "update"), ("2", "remove")}
    assert world.writes() == writes
    world.sync(import_back=True, write_back=False)
    assert world.writes() == writes
    world.sync(import_back=True)
    assert world.imported[-1].counts.get("email_changed_at_provider") == 1, world.imported[-1]
    members = world.members()
    assert members.get("moved2@example.de") in (None, "archived")  # removed
    assert "person2@example.de" in members and "person1@example.de" not in members
    writes = world.writes()
    world.sync(import_back=True)
    assert world.writes() == writes


def contact_row(world: World, crm_id: int) -> dict[str, object]:
    return next(r for r in world.crm if r["contact_id"] == crm_id)


@pytest.mark.parametrize(
    ("world", "removal"),
    [("mailchimp", "archive"), ("mailchimp", "delete"), ("brevo", "delete")],
    indirect=["world"],
)
def test_an_opt_out_a_report_only_sync_saw_survives_the_members_removal(
    world: World, removal: str
) -> None:
    """Found by a random long model run (Brevo): a report-only sync saw an opt-out and left it
    out of the ledger, for a later run to import; an admin then deleted the member, so the next
    run took it for a removal (`unspecified`), the opt-out was lost, and a later CRM `yes`
    created the address again. The ledger now keeps an opt-out it saw even when the CRM does
    not take it in, and a run that writes to the CRM imports it later, member or not."""
    world.sync()
    world.act("person3@example.de", "unsubscribe")
    world.sync(import_back=True, write_back=False)
    assert contact_row(world, 3)["newsletter"] == "yes"  # report only: the CRM is not written
    world.act("person3@example.de", removal)
    world.sync(import_back=True)
    assert contact_row(world, 3)["newsletter"] == "no"  # the opt-out, not a removal
    assert world.imported[-1].counts == {"newsletter_unsubscribed": 1}
    world.set(3, newsletter="yes", updated_at="2026-07-01 00:00:00")  # the CRM says yes again
    world.sync(import_back=True)
    assert world.members().get("person3@example.de") in (None, "archived")
    again, _ = world.sync(import_back=True)
    assert len(world.imported[-1]) == 0  # imported once
    assert again.set_index("crm_id").loc["3", "action"] == "blocked_by_provider"


def test_an_opt_out_a_report_only_sync_saw_is_imported_by_the_next_writing_sync(
    world: World,
) -> None:
    world.sync()
    world.act("person3@example.de", "unsubscribe")
    world.sync(import_back=True, write_back=False)
    world.sync(import_back=True, write_back=False)
    world.sync(import_back=True)
    assert contact_row(world, 3)["newsletter"] == "no"
    assert world.imported[-1].counts == {"newsletter_unsubscribed": 1}
    world.sync(import_back=True)
    assert len(world.imported[-1]) == 0


@pytest.mark.parametrize("world", ["brevo"], indirect=True)  # Mailchimp moves only active members
def test_an_opted_out_member_a_report_only_sync_saw_move_is_not_subscribed_after_its_deletion(
    world: World,
) -> None:
    """An opted-out member moved to another address at the provider; a report-only sync saw
    it there and left the move for a later run to tell the CRM, so its ledger row stayed at the
    old address. The member was then deleted: nothing said its new address was opted out, and
    a CRM contact with that address was created. The row now moves with the member at once."""
    world.sync()
    world.sync()  # the ledger learns the stable ids
    world.act("person3@example.de", "unsubscribe")
    world.sync(import_back=True)  # the CRM says no
    world.act("person3@example.de", "change_email", new_email="neu3@example.de")
    world.sync(import_back=True, write_back=False)
    world.act("neu3@example.de", "delete")
    world.crm.append(contact(99, email="neu3@example.de", updated_at="2026-07-01 00:00:00"))
    diff, _ = world.sync(import_back=True)
    assert "neu3@example.de" not in world.members()
    assert diff.set_index("crm_id").loc["99", "action"] == "blocked_by_provider"


def test_a_report_only_sync_keeps_every_address_change_for_the_next_writing_run(
    world: World,
) -> None:
    """Found by a random long model run (Mailchimp): two CRM contacts swapped addresses while
    both members moved at the provider, and new contacts took the addresses. A report-only
    sync archived one moved member and stored another contact's adoption of the other, which
    erased both moves: the CRM never learnt them, and the next report-only sync wrote."""
    world.sync()
    world.sync()  # the ledger learns the stable ids
    world.act("person2@example.de", "change_email", new_email="moved2@example.de")
    world.set(1, email="person2@example.de")
    world.set(2, email="person1@example.de")
    world.act("person1@example.de", "change_email", new_email="moved1@example.de")
    world.crm.append(contact(91, email="person1@example.de", updated_at="2026-07-01 00:00:00"))
    world.crm.append(contact(92, email="moved1@example.de", updated_at="2026-07-01 00:00:00"))
    world.sync(import_back=True, write_back=False)
    writes = world.writes()
    world.sync(import_back=True, write_back=False)
    assert world.writes() == writes
    world.sync(import_back=True)
    assert world.imported[-1].counts.get("email_changed_at_provider") == 2, world.imported[-1]
