"""The rule set of the three-way reconciliation, as a pure function (one test per rule and per
defect found in review)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pandas as pd
import pytest

from newsletter_pipelines.sync.identity import Intent, LedgerRow, RowState, resolve_intents
from newsletter_pipelines.sync.inputs import crm_exclusions
from newsletter_pipelines.sync.rules import (
    Actual,
    AddressMove,
    Context,
    CrmExclusion,
    Desired,
    Exclusions,
    reconcile,
)
from newsletter_pipelines.sync.tags import TAG_STYLES

SYSTEM = "CRM"
MAILCHIMP = Context(TAG_STYLES["mailchimp"], SYSTEM)
BREVO = Context(TAG_STYLES["brevo"], None)


def want(
    crm_id: str, email: str, first: str = "Anna", tags: frozenset[str] = frozenset()
) -> Desired:
    return Desired(crm_id, email, email.lower(), "Frau", first, "Schmidt", tags)


def have(
    email: str,
    status: str = "subscribed",
    first: str = "Anna",
    tags: frozenset[str] = frozenset({SYSTEM}),
    pid: str | None = None,
) -> Actual:
    key = email.lower()
    return Actual(pid or f"p-{key}", email, key, status, "Frau", first, "Schmidt", tags)


def synced(
    contact: Desired,
    state: RowState = RowState.SUBSCRIBED,
    *,
    email: str | None = None,
    tags: frozenset[str] | None = None,
    **extra: object,
) -> LedgerRow:
    """The ledger row after the sync pushed `contact` (to `email`, when given)."""
    address = email or contact.email
    pushed = (contact.tags | {SYSTEM}) if tags is None else tags
    return LedgerRow(
        member_key=address.lower(),
        email=address,
        owner=contact.crm_id,
        provider_id=f"p-{address.lower()}",
        tags=pushed,
        state=state,
        **extra,  # type: ignore[arg-type]
    )


def excluded(**reasons: tuple[str, str]) -> Exclusions:
    """Exclusions by address: key=(crm_id, reason)."""
    by_key = {
        k.replace("_at_", "@").replace("_", "."): CrmExclusion(*v) for k, v in reasons.items()
    }
    return Exclusions(by_key=by_key, by_id={e.crm_id: e for e in by_key.values()})


def diff(desired=(), members=(), ledger=(), exclusions=None, context=MAILCHIMP) -> pd.DataFrame:
    frame = reconcile(desired, members, ledger, exclusions or Exclusions(), context)
    assert frame["match_key"].is_unique, "every contact and member gets exactly one action"
    return frame.set_index("match_key")


def actions(**kwargs) -> dict[str, tuple[str, str]]:
    frame = diff(**kwargs)
    return {key: (row.action, row.detail) for key, row in frame.iterrows()}


def action_of(key: str, **kwargs) -> str:
    return actions(**kwargs)[key][0]


# --- the common paths ----------------------------------------------------------------------


def test_new_contact_is_created() -> None:
    assert action_of("a@x.de", desired=[want("1", "a@x.de")]) == "create"


def test_nothing_changed_is_unchanged_and_writes_no_ledger_row() -> None:
    contact = want("1", "a@x.de")
    row = diff(desired=[contact], members=[have("a@x.de")], ledger=[synced(contact)]).loc["a@x.de"]
    assert (row.action, row.ledger_after) == ("unchanged", None)


def test_changed_name_is_an_update() -> None:
    contact = want("1", "a@x.de", first="Anne")
    result = action_of(
        "a@x.de", desired=[contact], members=[have("a@x.de")], ledger=[synced(want("1", "a@x.de"))]
    )
    assert result == "update"


def test_first_sync_of_an_existing_identical_member_is_unchanged_and_owned() -> None:
    row = diff(desired=[want("1", "A@X.de")], members=[have("a@x.de")]).loc["a@x.de"]
    assert row.action == "unchanged"
    assert row.ledger_after.owner == "1" and row.ledger_after.state == "subscribed"


def test_tag_added_and_dropped_in_the_crm_are_updates() -> None:
    before = want("1", "a@x.de", tags=frozenset({"VIP"}))
    now = want("1", "a@x.de")
    result = actions(
        desired=[now],
        members=[have("a@x.de", tags=frozenset({SYSTEM, "VIP"}))],
        ledger=[synced(before)],
    )
    assert result["a@x.de"] == ("update", "tags to remove: VIP")
    added = want("1", "a@x.de", tags=frozenset({"Käufer"}))
    result = actions(desired=[added], members=[have("a@x.de")], ledger=[synced(now)])
    assert result["a@x.de"] == ("update", "tags to add: Käufer")


def test_system_tag_missing_at_the_provider_is_an_update() -> None:
    contact = want("1", "a@x.de")
    members = [have("a@x.de", tags=frozenset())]
    assert action_of("a@x.de", desired=[contact], members=members, ledger=[synced(contact)]) == (
        "update"
    )


@pytest.mark.parametrize("status", ["unsubscribed", "cleaned", "blacklisted"])
def test_crm_yes_provider_opted_out_is_blocked_never_resubscribed(status: str) -> None:
    contact = want("1", "a@x.de", first="Changed")  # even with CRM changes: opt-out wins
    for ledger in ([], [synced(want("1", "a@x.de"))]):
        row = diff(desired=[contact], members=[have("a@x.de", status)], ledger=ledger)
        assert row.loc["a@x.de"].action == "blocked_by_provider"
        assert row.loc["a@x.de"].ledger_after.state == "opted_out"  # the ledger remembers it


def test_crm_no_provider_subscribed_is_unsubscribed() -> None:
    result = action_of(
        "a@x.de", members=[have("a@x.de")], exclusions=excluded(a_at_x_de=("1", "opted_out"))
    )
    assert result == "unsubscribe"


@pytest.mark.parametrize("synced_before", [True, False])
def test_private_contact_is_removed_synced_before_or_not(synced_before: bool) -> None:
    ledger = [synced(want("1", "a@x.de"))] if synced_before else []
    result = action_of(
        "a@x.de",
        members=[have("a@x.de")],
        ledger=ledger,
        exclusions=excluded(a_at_x_de=("1", "private")),
    )
    assert result == "remove"


@pytest.mark.parametrize("reason", ["not_opted_in", None])
def test_synced_contact_no_longer_eligible_is_removed(reason: str | None) -> None:
    exclusions = excluded(a_at_x_de=("1", reason)) if reason else None
    result = actions(
        members=[have("a@x.de")], ledger=[synced(want("1", "a@x.de"))], exclusions=exclusions
    )
    assert result["a@x.de"][0] == "remove"
    assert (reason or "address no longer in the CRM") in result["a@x.de"][1]


def test_signups_at_the_provider_are_imported_back() -> None:
    assert action_of("new@x.de", members=[have("new@x.de", tags=frozenset())]) == "import_back"
    result = action_of(
        "a@x.de", members=[have("a@x.de")], exclusions=excluded(a_at_x_de=("1", "not_opted_in"))
    )
    assert result == "import_back"


def test_email_change_updates_the_same_member_and_moves_its_row() -> None:
    old, new = want("1", "old@x.de"), want("1", "new@x.de")
    frame = diff(desired=[new], members=[have("old@x.de")], ledger=[synced(old)])
    assert list(frame.index) == ["new@x.de"]
    row = frame.loc["new@x.de"]
    assert (row.action, row.old_email, row.provider_id) == ("update", "old@x.de", "p-old@x.de")
    assert (row.ledger_before.member_key, row.ledger_after.member_key) == ("old@x.de", "new@x.de")


def test_email_change_to_an_address_already_there_adopts_it_and_removes_the_orphan() -> None:
    old, new = want("1", "old@x.de"), want("1", "new@x.de")
    result = actions(
        desired=[new], members=[have("old@x.de"), have("new@x.de")], ledger=[synced(old)]
    )
    assert result["old@x.de"][0] == "remove"
    assert result["new@x.de"][0] == "unchanged"


def test_email_change_of_an_opted_out_member_is_blocked() -> None:
    old, new = want("1", "old@x.de"), want("1", "new@x.de")
    result = actions(
        desired=[new], members=[have("old@x.de", "unsubscribed")], ledger=[synced(old)]
    )
    assert result == {
        "new@x.de": (
            "blocked_by_provider",
            "unsubscribed at the provider under the previous address: never re-subscribed",
        )
    }


def test_deleted_at_the_provider_is_imported_back_not_recreated() -> None:
    contact = want("1", "a@x.de")
    row = diff(desired=[contact], ledger=[synced(contact)]).loc["a@x.de"]
    assert row.action == "import_back" and row.ledger_after.state == "gone"
    gone = synced(contact, RowState.GONE)
    assert action_of("a@x.de", desired=[contact], ledger=[gone]) == "import_back"
    # once the CRM no longer wants it, the row is released and a later "yes" creates it again
    released = diff(ledger=[gone]).loc["a@x.de"].ledger_after
    assert released.state == "released"
    assert action_of("a@x.de", desired=[contact], ledger=[released]) == "create"


def test_permanent_refusal_is_not_retried_until_the_crm_changes() -> None:
    contact = want("1", "a@x.de")
    planned = diff(desired=[contact]).loc["a@x.de"]
    refused = planned.ledger_after.moved(
        state=RowState.NEW, refusal_code="Forgotten Email Not Subscribed",
        refusal_key=planned.write_key,
    )  # fmt: skip
    assert action_of("a@x.de", desired=[contact], ledger=[refused]) == "blocked_by_provider"
    changed = want("1", "a@x.de", first="Anne")  # new data: the provider may accept it now
    assert action_of("a@x.de", desired=[changed], ledger=[refused]) == "create"


def test_archived_members() -> None:
    contact = want("1", "a@x.de")
    archived = have("a@x.de", "archived")
    removed = synced(contact, RowState.REMOVED)
    assert action_of("a@x.de", desired=[contact], members=[archived], ledger=[removed]) == "create"
    assert action_of("a@x.de", desired=[contact], members=[archived], ledger=[synced(contact)]) == (
        "import_back"
    )
    assert action_of("a@x.de", desired=[contact], members=[archived]) == "blocked_by_provider"


def test_opt_out_at_the_provider_of_a_non_eligible_contact_is_imported_back() -> None:
    result = action_of(
        "a@x.de",
        members=[have("a@x.de", "unsubscribed")],
        ledger=[synced(want("1", "a@x.de"))],
        exclusions=excluded(a_at_x_de=("1", "not_opted_in")),
    )
    assert result == "import_back"


def test_already_unsubscribed_and_crm_no_is_unchanged_but_remembered() -> None:
    row = diff(
        members=[have("a@x.de", "unsubscribed")], exclusions=excluded(a_at_x_de=("1", "opted_out"))
    ).loc["a@x.de"]
    assert row.action == "unchanged" and row.ledger_after.state == "opted_out"


def test_unicode_domain_at_the_provider_matches_the_ascii_crm_address() -> None:
    contact = want("1", "info@xn--bcher-kva.de")
    members = [have("Info@Bücher.de")]
    members = [Actual(m.provider_id, m.email, "info@xn--bcher-kva.de", m.status, m.salutation,
                      m.first_name, m.last_name, m.tags) for m in members]  # fmt: skip
    result = action_of("info@xn--bcher-kva.de", desired=[contact], members=members)
    assert result == "unchanged"


# --- defects found in review -----------------------------------------------------------------


def test_d1_tags_people_added_at_the_provider_survive_an_update() -> None:
    contact = want("1", "a@x.de", first="Anne")  # a field change forces an update
    member = have("a@x.de", tags=frozenset({SYSTEM, "Webinar"}))
    row = diff(desired=[contact], members=[member], ledger=[synced(want("1", "a@x.de"))])
    update = row.loc["a@x.de"]
    assert update.action == "update"
    assert set(update.provider_tags) == {SYSTEM, "Webinar"}  # sent whole: nothing is removed
    assert update.import_tags == ("Webinar",)
    assert update.ledger_after.tags == {SYSTEM}  # only the sync's own tags may be removed later


def test_d1_tags_added_at_the_provider_are_imported_back_and_the_ledger_advances() -> None:
    contact = want("1", "a@x.de")
    member = have("a@x.de", tags=frozenset({SYSTEM, "Webinar"}))
    row = diff(desired=[contact], members=[member], ledger=[]).loc["a@x.de"]
    assert (row.action, row.import_tags) == ("import_back", ("Webinar",))
    assert row.ledger_after is not None and row.ledger_after.owner == "1"


def test_d2_email_change_after_an_opt_out_and_an_archive_stays_blocked() -> None:
    old, new = want("1", "old@x.de"), want("1", "new@x.de")
    # the person unsubscribed; the sync saw it and remembered it
    seen = diff(desired=[old], members=[have("old@x.de", "unsubscribed")], ledger=[synced(old)])
    remembered = seen.loc["old@x.de"].ledger_after
    assert remembered.state == "opted_out"
    # an admin archives (Mailchimp) or deletes (Brevo) the member; the CRM changes the address
    for members in ([have("old@x.de", "archived")], []):
        result = actions(desired=[new], members=members, ledger=[remembered])
        assert result["new@x.de"][0] == "blocked_by_provider", members


def test_d2_an_opt_out_follows_the_contact_to_an_address_the_sync_archived_before() -> None:
    # the contact opted out under old@; its new address is a member the sync itself archived
    # once (which alone would allow re-creating it): the person's opt-out still blocks it
    old, new = want("1", "old@x.de"), want("1", "new@x.de")
    opted_out = synced(old, RowState.OPTED_OUT)
    archived_by_us = synced(want("2", "new@x.de"), RowState.REMOVED)
    for members in (
        [have("new@x.de", "archived")],
        [have("new@x.de", "archived"), have("old@x.de", "unsubscribed")],
    ):
        result = actions(desired=[new], members=members, ledger=[opted_out, archived_by_us])
        assert result["new@x.de"][0] == "blocked_by_provider", members


def test_d3_archived_member_is_not_recreated_through_a_row_of_another_address() -> None:
    contact = want("1", "a@x.de")
    other = synced(contact, RowState.REMOVED, email="b@x.de")  # the sync removed b@x.de once
    result = actions(desired=[contact], members=[have("a@x.de", "archived")], ledger=[other])
    assert result["a@x.de"][0] == "blocked_by_provider"


def test_d4_a_newer_contact_owns_the_address_of_a_stale_row() -> None:
    # contact 1 was synced with shared@; now contact 2 (eligible) has that address and contact 1
    # moved on to another one: the member stays with its address, contact 1 is created anew
    one_before = want("1", "shared@x.de")
    one_now, two = want("1", "one@x.de"), want("2", "shared@x.de")
    frame = diff(desired=[one_now, two], members=[have("shared@x.de")], ledger=[synced(one_before)])
    assert frame.loc["shared@x.de"].action == "unchanged"
    assert frame.loc["shared@x.de"].ledger_after.owner == "2"
    assert frame.loc["one@x.de"].action == "create"
    assert "import_back" not in set(frame["action"])


def test_d5_no_together_with_an_address_change_unsubscribes_the_old_member() -> None:
    old = want("1", "old@x.de")
    exclusions = Exclusions(
        by_key={"new@x.de": CrmExclusion("1", "opted_out")},
        by_id={"1": CrmExclusion("1", "opted_out")},
    )
    result = actions(members=[have("old@x.de")], ledger=[synced(old)], exclusions=exclusions)
    assert result["old@x.de"][0] == "unsubscribe"


def test_d6_private_wins_over_a_no_record_of_the_same_address() -> None:
    # built as the inputs module builds it: private first whatever the order of the rows
    frame = pd.DataFrame(
        {
            "contact_id": [1, 2, 3],
            "reason": ["private", "opted_out", "duplicate"],
            "email_key": ["a@x.de"] * 3,
            "email_ascii": ["a@x.de"] * 3,
            "updated_at": pd.to_datetime(["2026-01-01"] * 3, utc=True),
        }
    )
    for order in ([0, 1, 2], [1, 0, 2], [2, 1, 0]):
        exclusions = crm_exclusions(frame.iloc[order])
        result = action_of(
            "a@x.de", members=[have("a@x.de")], ledger=[synced(want("1", "a@x.de"))],
            exclusions=exclusions,
        )  # fmt: skip
        assert result == "remove", order


def test_d7_a_refused_update_or_removal_is_not_sent_again() -> None:
    contact = want("1", "new@x.de")
    own = synced(want("1", "old@x.de"))
    planned = diff(desired=[contact], members=[have("old@x.de")], ledger=[own]).loc["new@x.de"]
    refused = own.moved(refusal_code="duplicate_parameter", refusal_key=planned.write_key)
    again = diff(desired=[contact], members=[have("old@x.de")], ledger=[refused])
    # never the same rename again: the old member is no longer the contact's, the new address
    # is created if the provider takes it (one address per contact)
    assert again.loc["new@x.de"].action == "create"
    assert again.loc["old@x.de"].action == "remove"
    # a pending member cannot be archived (405): the refusal holds while it stays pending
    pending = have("p@x.de", "pending")
    row = synced(want("2", "p@x.de"))
    planned = diff(members=[pending], ledger=[row]).loc["p@x.de"]
    assert planned.action == "remove"
    refused = row.moved(refusal_code="Method Not Allowed", refusal_key=planned.write_key)
    assert action_of("p@x.de", members=[pending], ledger=[refused]) == "unchanged"
    assert action_of("p@x.de", members=[have("p@x.de")], ledger=[refused]) == "remove"


def test_d7_a_rename_refused_and_then_a_removal_refused_are_not_sent_again() -> None:
    # a pending member takes no new address (Mailchimp), and then cannot be archived either
    # (405): the removal's refusal replaced the rename's in the row; neither is sent again
    contact = want("1", "new@x.de")
    pending = have("old@x.de", "pending")
    own = synced(want("1", "old@x.de"))
    renamed = diff(desired=[contact], members=[pending], ledger=[own]).loc["new@x.de"]
    refused = own.moved(refusal_code="Invalid Resource", refusal_key=renamed.write_key)
    removal = diff(desired=[contact], members=[pending], ledger=[refused]).loc["old@x.de"]
    assert removal.action == "remove"
    given_up = own.moved(refusal_code="Method Not Allowed", refusal_key=removal.write_key)
    again = actions(desired=[contact], members=[pending], ledger=[given_up])
    assert again["new@x.de"] == (
        "create",
        "new address; the previous member could not be removed (Method Not Allowed)",
    )
    assert again["old@x.de"][0] == "unchanged"


@pytest.mark.parametrize("status", ["archived", None])
def test_d8_a_removal_killed_before_its_ledger_write_is_recognised_as_ours(status) -> None:
    contact = want("1", "a@x.de")
    in_flight = synced(contact).moved(intent=Intent.REMOVE)
    members = [have("a@x.de", status)] if status else []
    frame = diff(members=members, ledger=[in_flight])
    assert "import_back" not in set(frame["action"])
    # and a removal that never reached the provider is simply planned again
    again = diff(members=[have("a@x.de")], ledger=[in_flight])
    assert again.loc["a@x.de"].action == "remove"


def test_d8_an_email_change_killed_before_its_ledger_write_keeps_the_pushed_tags() -> None:
    old, new = want("1", "old@x.de", tags=frozenset({"VIP"})), want("1", "new@x.de")
    in_flight = synced(old).moved(intent=Intent.CHANGE_EMAIL, intent_key="new@x.de")
    member = have("new@x.de", tags=frozenset({SYSTEM, "VIP"}))
    result = actions(desired=[new], members=[member], ledger=[in_flight])
    assert result == {"new@x.de": ("update", "tags to remove: VIP")}


def test_d8_an_email_change_is_done_only_if_its_member_is_at_the_new_address() -> None:
    """A killed run's address change is done when the member it moved is at the new address;
    another member there (a person moved ours elsewhere and someone else holds the address)
    proves nothing, and the row stays the member's."""
    old, new = want("1", "old@x.de"), want("1", "new@x.de")
    in_flight = synced(old, stable_id="s1").moved(intent=Intent.CHANGE_EMAIL, intent_key="new@x.de")
    someone = replace(have("new@x.de"), stable_id="s2")
    rows = resolve_intents([in_flight], {"new@x.de": someone})
    assert set(rows) == {"old@x.de"} and rows["old@x.de"].intent is None
    assert rows["old@x.de"].settled is None
    done = resolve_intents([in_flight], {"new@x.de": replace(have("new@x.de"), stable_id="s1")})
    assert set(done) == {"new@x.de"} and done["new@x.de"].moved_from == "old@x.de"
    # the rules: the member moved by the person (found by its stable id) keeps its row
    ours = replace(have("elsewhere@x.de"), stable_id="s1")
    other_row = synced(want("2", "new@x.de"), stable_id="s2")
    frame = diff(desired=[new], members=[someone, ours], ledger=[other_row, in_flight])
    assert frame.loc["elsewhere@x.de"].address_move.old_email == "old@x.de"


@pytest.mark.parametrize(("by", "ours"), [(None, True), ("admin", True), ("person", False)])
def test_d8_an_unsubscribe_in_flight_is_ours_unless_the_provider_says_the_person_did_it(
    by: str | None, ours: bool
) -> None:
    """A killed run's unsubscribe is done when the member is unsubscribed, unless the provider
    says the person unsubscribed (Mailchimp's `unsubscribe_reason`): they did so after it (our
    write was the admin's), and the opt-out is theirs to import."""
    contact = want("1", "a@x.de")
    in_flight = synced(contact).moved(intent=Intent.UNSUBSCRIBE)
    member = replace(have("a@x.de", "unsubscribed"), unsubscribed_by=by)
    row = resolve_intents([in_flight], {"a@x.de": member})["a@x.de"]
    assert row.intent is None
    assert (row.settled, row.state) == (
        (Intent.UNSUBSCRIBE, RowState.UNSUBSCRIBED) if ours else (None, RowState.SUBSCRIBED)
    )
    if not ours:
        assert (
            diff(desired=[contact], members=[member], ledger=[in_flight])
            .loc["a@x.de"]
            .provider_change
            == "opted_out"
        )


# --- decisions ---------------------------------------------------------------------------------


def test_mailchimp_tag_names_compare_case_insensitively() -> None:
    contact = want("1", "a@x.de", tags=frozenset({"vip"}))
    member = have("a@x.de", tags=frozenset({"CRM", "VIP"}))
    assert action_of("a@x.de", desired=[contact], members=[member]) == "unchanged"


def test_brevo_tags_compare_in_the_form_brevo_stores() -> None:
    contact = want("1", "a@x.de", tags=frozenset({"Haus, Garten"}))
    member = have("a@x.de", tags=frozenset({"Haus; Garten"}))
    assert action_of("a@x.de", desired=[contact], members=[member], context=BREVO) == "unchanged"


def test_transactional_members_are_never_subscribed_by_the_sync() -> None:
    contact = want("1", "a@x.de")
    assert action_of("a@x.de", desired=[contact], members=[have("a@x.de", "transactional")]) == (
        "blocked_by_provider"
    )
    assert action_of("t@x.de", members=[have("t@x.de", "transactional")]) == "unchanged"


def test_a_person_who_resubscribed_at_the_provider_is_imported_back_not_unsubscribed() -> None:
    opted_out = synced(want("1", "a@x.de"), RowState.OPTED_OUT)
    exclusions = excluded(a_at_x_de=("1", "opted_out"))
    row = diff(members=[have("a@x.de")], ledger=[opted_out], exclusions=exclusions).loc["a@x.de"]
    assert row.action == "import_back" and row.ledger_after.state == "resubscribed"
    again = diff(members=[have("a@x.de")], ledger=[row.ledger_after], exclusions=exclusions)
    assert again.loc["a@x.de"].action == "import_back"  # until the CRM takes it in


def changes(**kwargs) -> dict[str, str | None]:
    frame = diff(**kwargs)
    return frame["provider_change"].to_dict()


def test_provider_changes_are_named_once_for_the_import_back() -> None:
    contact = want("1", "a@x.de")
    row = synced(contact)
    # an opt-out the ledger learns now, under the contact's address or first seen
    for status in ("unsubscribed", "cleaned", "blacklisted"):
        assert changes(desired=[contact], members=[have("a@x.de", status)], ledger=[row]) == {
            "a@x.de": "opted_out"
        }
        assert changes(desired=[contact], members=[have("a@x.de", status)]) == {
            "a@x.de": "opted_out"
        }
    # ... but not one it already knew, nor the sync's own unsubscribe
    for state in (RowState.OPTED_OUT, RowState.UNSUBSCRIBED):
        known = synced(contact, state)
        assert changes(
            desired=[contact], members=[have("a@x.de", "unsubscribed")], ledger=[known]
        ) == {"a@x.de": None}
    # archived or deleted while subscribed: once (a `gone` row waits without a new change)
    assert changes(desired=[contact], members=[have("a@x.de", "archived")], ledger=[row]) == {
        "a@x.de": "removed"
    }
    assert changes(desired=[contact], ledger=[row]) == {"a@x.de": "removed"}
    assert changes(desired=[contact], ledger=[synced(contact, RowState.GONE)]) == {"a@x.de": None}
    assert changes(members=[have("a@x.de", "archived")], ledger=[row]) == {"a@x.de": "removed"}
    # a sign-up nobody in the CRM wants, and a re-subscription after an opt-out
    assert changes(members=[have("new@x.de")]) == {"new@x.de": "signed_up"}
    back = synced(contact, RowState.OPTED_OUT)
    assert changes(members=[have("a@x.de")], ledger=[back]) == {"a@x.de": "resubscribed"}
    again = synced(contact, RowState.RESUBSCRIBED)
    assert changes(members=[have("a@x.de")], ledger=[again]) == {"a@x.de": None}
    # in sync: nothing
    assert changes(desired=[contact], members=[have("a@x.de")], ledger=[row]) == {"a@x.de": None}


@pytest.mark.parametrize("context", [MAILCHIMP, BREVO], ids=["mailchimp", "brevo"])
def test_a_tag_a_person_removed_at_the_provider_is_imported_not_pushed_again(
    context: Context,
) -> None:
    system = {SYSTEM} if context is MAILCHIMP else set()
    contact = want("1", "a@x.de", tags=frozenset({"VIP", "Haus, Garten"}))
    forms = context.style.forms(contact.tags) | system
    row = synced(contact, tags=frozenset(forms))
    kept = frozenset(forms - {"VIP"})  # the person removed VIP at the provider
    frame = diff(
        desired=[contact], members=[have("a@x.de", tags=kept)], ledger=[row], context=context
    )
    found = frame.loc["a@x.de"]
    assert (found.action, found.import_untags) == ("import_back", ("VIP",))
    assert found.ledger_after is None  # the row stays: reported until the CRM drops the tag
    assert found.write_key is None  # nothing is sent
    dropped = want("1", "a@x.de", tags=frozenset({"Haus, Garten"}))  # the import reached the CRM
    again = diff(
        desired=[dropped],
        members=[have("a@x.de", tags=kept)],
        ledger=[row],
        context=context,
    )
    assert again.loc["a@x.de"].action == "unchanged"
    # a tag the CRM added since the last sync is pushed, and the system tag always comes back
    new = want("1", "a@x.de", tags=frozenset({"VIP", "Haus, Garten", "Neu"}))
    pushed = diff(
        desired=[new], members=[have("a@x.de", tags=kept - system)], ledger=[row], context=context
    )
    assert pushed.loc["a@x.de"].action == "update"
    assert set(pushed.loc["a@x.de"].provider_tags) == (kept | {"Neu"})


def test_a_sign_up_after_the_crm_said_no_wins_and_an_older_one_is_unsubscribed() -> None:
    """A member unknown to the ledger whose address the CRM holds as newsletter = no: the newer
    side wins; without both times the CRM, the master, stands."""
    signed_up = datetime(2026, 5, 2, 12, 0, tzinfo=UTC)

    def decided(crm_time: datetime | None, provider_time: datetime | None) -> tuple[str, str]:
        member = replace(have("a@x.de", tags=frozenset()), changed_at=provider_time)
        no = CrmExclusion("1", "opted_out", crm_time)
        found = diff(
            members=[member], exclusions=Exclusions(by_key={"a@x.de": no}, by_id={"1": no})
        ).loc["a@x.de"]
        return found.action, found.provider_change

    assert decided(datetime(2026, 5, 1), signed_up) == ("import_back", "signed_up")
    assert decided(datetime(2026, 5, 3), signed_up) == ("unsubscribe", None)
    assert (
        decided(datetime(2026, 5, 2, 14, 0), signed_up.astimezone(timezone(timedelta(hours=3))))[0]
        == "unsubscribe"
    )  # naive CRM times are UTC
    assert decided(None, signed_up) == ("unsubscribe", None)
    assert decided(datetime(2026, 5, 1), None) == ("unsubscribe", None)


def test_a_sign_up_of_a_private_address_is_removed_and_reported_for_the_import_back() -> None:
    private = CrmExclusion("1", "private", datetime(2026, 1, 1))
    found = diff(
        members=[replace(have("a@x.de"), changed_at=datetime(2026, 5, 1, tzinfo=UTC))],
        exclusions=Exclusions(by_key={"a@x.de": private}, by_id={"1": private}),
    ).loc["a@x.de"]
    assert (found.action, found.provider_change, found.crm_id) == ("remove", "signed_up", "1")


def test_an_opt_out_again_is_new_also_when_the_address_is_decided_by_an_excluded_contact() -> None:
    """A known opt-out whose member changed at the provider since the sync saw it is an opt-out
    again, whoever decides the address (here an excluded contact that says no) and whenever
    the CRM last changed: the import-back writes it on each contact the CRM has not changed
    since (`test_import_back_plan`)."""
    seen, person, crm = (datetime(2026, 5, d, tzinfo=UTC) for d in (1, 3, 2))
    row = synced(want("4", "a@x.de"), RowState.OPTED_OUT, provider_changed_at=seen.isoformat())
    member = replace(have("a@x.de", "unsubscribed"), changed_at=person)
    says_no = excluded(a_at_x_de=("4", "opted_out"))
    says_no = Exclusions(
        by_key={k: replace(e, updated_at=crm) for k, e in says_no.by_key.items()},
        by_id={k: replace(e, updated_at=crm) for k, e in says_no.by_id.items()},
    )
    again = diff(members=[member], ledger=[row], exclusions=says_no).loc["a@x.de"]
    assert again.provider_change == "opted_out"
    unchanged = replace(member, changed_at=seen)  # the opt-out the sync knew, nothing since
    known = diff(members=[unchanged], ledger=[row], exclusions=says_no).loc["a@x.de"]
    assert known.provider_change is None
    before_crm = replace(member, changed_at=datetime(2026, 5, 1, 12, tzinfo=UTC))
    assert (
        diff(members=[before_crm], ledger=[row], exclusions=says_no).loc["a@x.de"].provider_change
        == "opted_out"
    )


# --- an address changed at the provider ------------------------------------------------------


def moved(email: str, status: str = "subscribed", stable_id: str = "c1") -> Actual:
    """The member whose address a person changed at the provider to `email`."""
    return replace(have(email, status), stable_id=stable_id)


def test_members_and_the_rows_derived_from_them_carry_the_stable_id() -> None:
    contact = want("1", "a@x.de")
    adopted = diff(desired=[contact], members=[moved("a@x.de")]).loc["a@x.de"]
    assert adopted.ledger_after.stable_id == "c1"
    # a ledger without stable ids learns them once, with nothing sent
    learnt = diff(desired=[contact], members=[moved("a@x.de")], ledger=[synced(contact)])
    assert (learnt.loc["a@x.de"].action, learnt.loc["a@x.de"].ledger_after.stable_id) == (
        "unchanged",
        "c1",
    )
    seen = diff(members=[moved("b@x.de", "unsubscribed", "c2")]).loc["b@x.de"].ledger_after
    assert (seen.state, seen.stable_id) == ("opted_out", "c2")


def test_an_address_changed_at_the_provider_keeps_the_member_and_the_crm_address_wins() -> None:
    contact = want("1", "a@x.de")
    frame = diff(
        desired=[contact], members=[moved("b@x.de")], ledger=[synced(contact, stable_id="c1")]
    )
    assert list(frame.index) == ["a@x.de"]  # no removal, no sign-up, no second member
    row = frame.loc["a@x.de"]
    assert (row.action, row.old_email, row.crm_id) == ("update", "b@x.de", "1")
    assert row.provider_change == "email_changed"
    assert row.address_move == AddressMove("a@x.de", "b@x.de", None, "1")
    assert row.detail.startswith("address changed at the provider from a@x.de to b@x.de; ")
    before, after = row.ledger_before, row.ledger_after
    assert (before.member_key, before.moved_from, before.provider_id) == (
        "b@x.de",
        "a@x.de",
        "p-b@x.de",
    )
    assert (after.member_key, after.stable_id, after.owner) == ("a@x.de", "c1", "1")


def test_no_address_change_is_found_without_stable_ids_or_when_the_new_address_has_a_row() -> None:
    contact = want("1", "a@x.de")
    without = changes(desired=[contact], members=[have("b@x.de")], ledger=[synced(contact)])
    assert without == {"a@x.de": "removed", "b@x.de": "signed_up"}
    known = LedgerRow(
        member_key="b@x.de",
        email="b@x.de",
        owner=None,
        provider_id="p-b@x.de",
        tags=frozenset(),
        state=RowState.RELEASED,
    )
    rows = [synced(contact, stable_id="c1"), known]
    found = changes(desired=[contact], members=[moved("b@x.de")], ledger=rows)
    assert "email_changed" not in found.values()


def test_a_member_moved_away_keeps_its_row_when_another_member_takes_its_old_address() -> None:
    """A person moved the member to b@x.de, then someone signed up with a@x.de: the row follows
    its member (stable id) to b@x.de, and the member now at a@x.de is a sign-up, never the row's
    (so never removed for the row's owner, no longer in the CRM)."""
    gone = want("1", "a@x.de")
    rows = [synced(gone, stable_id="c1")]
    frame = diff(members=[moved("b@x.de"), moved("a@x.de", stable_id="c2")], ledger=rows)
    assert (frame.loc["a@x.de"].action, frame.loc["a@x.de"].crm_id) == ("import_back", None)
    assert frame.loc["b@x.de"].address_move.old_email == "a@x.de"
    # the same with the address change a killed run left in flight (the CRM's, done)
    in_flight = rows[0].moved(intent=Intent.CHANGE_EMAIL, intent_key="b@x.de")
    members = {"a@x.de": moved("a@x.de", stable_id="c2"), "b@x.de": moved("b@x.de")}
    done = resolve_intents([in_flight], members)
    assert set(done) == {"b@x.de"} and done["b@x.de"].settled is Intent.CHANGE_EMAIL


@pytest.mark.parametrize("context", [MAILCHIMP, BREVO], ids=["mailchimp", "brevo"])
def test_an_opt_out_moves_with_the_member_and_still_blocks_its_owner(context: Context) -> None:
    contact = want("1", "a@x.de")
    opted_out = synced(contact, RowState.OPTED_OUT, stable_id="c1")
    frame = diff(
        desired=[contact],
        members=[moved("b@x.de", "blacklisted")],
        ledger=[opted_out],
        context=context,
    )
    assert frame.loc["a@x.de"].action == "blocked_by_provider"
    assert (
        frame.loc["a@x.de"].detail == "opted_out at the provider under b@x.de: never re-subscribed"
    )
    member = frame.loc["b@x.de"]
    assert (member.action, member.provider_change, member.crm_id) == (
        "unchanged",
        "email_changed",
        "1",
    )
    stored = member.ledger_after
    assert (stored.member_key, stored.moved_from, stored.state, stored.owner) == (
        "b@x.de",
        "a@x.de",
        "opted_out",
        "1",
    )


def test_an_opt_out_at_the_new_address_is_imported_as_the_opt_out() -> None:
    contact = want("1", "a@x.de")
    frame = diff(
        desired=[contact],
        members=[moved("b@x.de", "unsubscribed")],
        ledger=[synced(contact, stable_id="c1")],
    )
    row = frame.loc["a@x.de"]
    assert (row.action, row.provider_change) == ("blocked_by_provider", "opted_out")
    assert row.detail.startswith("address changed at the provider from a@x.de to b@x.de; ")
    assert (row.ledger_after.member_key, row.ledger_after.state) == ("b@x.de", "opted_out")
    assert row.ledger_after.moved_from == "a@x.de"


def test_an_address_changed_to_another_eligible_contacts_address() -> None:
    # the member goes with its address to the contact who has it; the owner is created anew
    mine, theirs = want("1", "a@x.de"), want("2", "b@x.de")
    frame = diff(
        desired=[theirs, mine], members=[moved("b@x.de")], ledger=[synced(mine, stable_id="c1")]
    )
    assert (frame.loc["b@x.de"].action, frame.loc["b@x.de"].crm_id) == ("unchanged", "2")
    assert frame.loc["b@x.de"].ledger_after.moved_from == "a@x.de"
    owner = frame.loc["a@x.de"]
    assert (owner.action, owner.provider_change, owner.crm_id) == ("create", "email_changed", "1")


def test_a_moved_ledger_row_is_a_new_equal_row_with_the_changes() -> None:
    row = synced(want("1", "a@x.de"), RowState.OPTED_OUT, unimported_opt_out="unsubscribed")
    same = row.moved()
    assert same == row and same is not row and hash(same) == hash(row)
    moved = row.moved(member_key="b@x.de", moved_from="a@x.de")
    assert (moved.member_key, moved.moved_from, row.member_key) == ("b@x.de", "a@x.de", "a@x.de")
    assert moved == replace(row, member_key="b@x.de")  # moved_from is not compared
    assert row.moved(state=RowState.SUBSCRIBED).unimported_opt_out is None
    with pytest.raises(TypeError, match="no field colour"):
        row.moved(colour="red")
