"""Three-way reconciliation (DESIGN §4) as a pure function."""

from __future__ import annotations

import pytest

from newsletter_pipelines.sync.rules import (
    Actual,
    CrmExclusion,
    Desired,
    LedgerEntry,
    reconcile,
)

SYSTEM = "CRM"


def want(
    crm_id: str, email: str, first: str = "Anna", tags: frozenset[str] = frozenset()
) -> Desired:
    return Desired(crm_id, email, "Frau", first, "Schmidt", tags)


def have(
    email: str,
    status: str = "subscribed",
    first: str = "Anna",
    tags: frozenset[str] = frozenset({SYSTEM}),
    pid: str | None = None,
) -> Actual:
    return Actual(pid or f"p-{email}", email, status, "Frau", first, "Schmidt", tags)


def synced(
    contact: Desired,
    status: str = "subscribed",
    refusal: str | None = None,
    email: str | None = None,
) -> LedgerEntry:
    address = email or contact.email
    return LedgerEntry(
        contact.crm_id,
        address.lower(),
        address,
        f"p-{address}",
        contact.fields_hash,
        contact.tags,
        status,
        refusal,
    )


def actions(desired=(), members=(), ledger=(), exclusions=None) -> dict[str, tuple[str, str]]:
    frame = reconcile(desired, members, ledger, exclusions or {}, SYSTEM).frame()
    assert frame["match_key"].is_unique, "every contact gets exactly one action"
    return {row.match_key: (row.action, row.detail) for row in frame.itertuples()}


def action_of(key: str, **kwargs) -> str:
    return actions(**kwargs)[key][0]


def test_new_contact_is_created() -> None:
    assert action_of("a@x.de", desired=[want("1", "a@x.de")]) == "create"


def test_nothing_changed_is_unchanged() -> None:
    contact = want("1", "a@x.de")
    result = action_of(
        "a@x.de", desired=[contact], members=[have("a@x.de")], ledger=[synced(contact)]
    )
    assert result == "unchanged"


def test_changed_name_is_an_update() -> None:
    contact = want("1", "a@x.de", first="Anne")
    assert (
        action_of(
            "a@x.de",
            desired=[contact],
            members=[have("a@x.de")],
            ledger=[synced(want("1", "a@x.de"))],
        )
        == "update"
    )


def test_first_sync_of_an_existing_identical_member_is_unchanged() -> None:
    # an address differing only in case is the same member: no write
    assert action_of("a@x.de", desired=[want("1", "A@X.de")], members=[have("a@x.de")]) == (
        "unchanged"
    )


def test_tag_added_and_dropped_in_the_crm_are_updates() -> None:
    before = want("1", "a@x.de", tags=frozenset({"VIP"}))
    now = want("1", "a@x.de", tags=frozenset())
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
    assert (
        action_of(
            "a@x.de",
            desired=[contact],
            members=[have("a@x.de", tags=frozenset())],
            ledger=[synced(contact)],
        )
        == "update"
    )


def test_tags_added_at_the_provider_are_imported_back() -> None:
    contact = want("1", "a@x.de")
    result = action_of(
        "a@x.de",
        desired=[contact],
        members=[have("a@x.de", tags=frozenset({SYSTEM, "Webinar"}))],
        ledger=[synced(contact)],
    )
    assert result == "import_back"


@pytest.mark.parametrize("status", ["unsubscribed", "cleaned", "blacklisted"])
def test_crm_yes_provider_opted_out_is_blocked_never_resubscribed(status: str) -> None:
    contact = want("1", "a@x.de", first="Changed")  # even with CRM changes: opt-out wins
    for ledger in ([], [synced(want("1", "a@x.de"))]):
        assert (
            action_of("a@x.de", desired=[contact], members=[have("a@x.de", status)], ledger=ledger)
            == "blocked_by_provider"
        )


def test_crm_no_provider_subscribed_is_unsubscribed() -> None:
    result = action_of(
        "a@x.de", members=[have("a@x.de")], exclusions={"a@x.de": CrmExclusion("1", "opted_out")}
    )
    assert result == "unsubscribe"


def test_private_contact_synced_before_is_removed() -> None:
    contact = want("1", "a@x.de")
    result = action_of(
        "a@x.de",
        members=[have("a@x.de")],
        ledger=[synced(contact)],
        exclusions={"a@x.de": CrmExclusion("1", "private")},
    )
    assert result == "remove"


def test_private_contact_never_synced_is_removed_too() -> None:
    result = action_of(
        "a@x.de", members=[have("a@x.de")], exclusions={"a@x.de": CrmExclusion("1", "private")}
    )
    assert result == "remove"


@pytest.mark.parametrize("reason", ["not_opted_in", None])
def test_synced_contact_no_longer_eligible_is_removed(reason: str | None) -> None:
    contact = want("1", "a@x.de")
    exclusions = {"a@x.de": CrmExclusion("1", reason)} if reason else {}
    result = actions(members=[have("a@x.de")], ledger=[synced(contact)], exclusions=exclusions)
    assert result["a@x.de"][0] == "remove"
    assert (reason or "deleted_in_crm") in result["a@x.de"][1]


def test_signup_unknown_to_the_crm_is_imported_back() -> None:
    assert action_of("new@x.de", members=[have("new@x.de", tags=frozenset())]) == "import_back"


def test_signup_of_a_not_opted_in_crm_contact_is_imported_back() -> None:
    result = action_of(
        "a@x.de", members=[have("a@x.de")], exclusions={"a@x.de": CrmExclusion("1", "not_opted_in")}
    )
    assert result == "import_back"


def test_email_change_updates_the_same_member() -> None:
    old = want("1", "old@x.de")
    new = want("1", "new@x.de")
    frame = reconcile([new], [have("old@x.de")], [synced(old)], {}, SYSTEM).frame()
    assert len(frame) == 1
    row = frame.iloc[0]
    assert (row.action, row.old_email, row.provider_id) == ("update", "old@x.de", "p-old@x.de")
    assert row.email == "new@x.de"


def test_email_change_to_an_address_already_there_removes_the_orphan() -> None:
    old, new = want("1", "old@x.de"), want("1", "new@x.de")
    result = actions(
        desired=[new], members=[have("old@x.de"), have("new@x.de")], ledger=[synced(old)]
    )
    assert result["old@x.de"][0] == "remove"
    assert result["new@x.de"][0] in ("unchanged", "update")


def test_email_change_of_an_opted_out_member_is_blocked() -> None:
    old, new = want("1", "old@x.de"), want("1", "new@x.de")
    result = actions(
        desired=[new], members=[have("old@x.de", "unsubscribed")], ledger=[synced(old)]
    )
    assert result == {
        "new@x.de": (
            "blocked_by_provider",
            "unsubscribed at the provider under the previous address old@x.de",
        )
    }


def test_deleted_at_the_provider_is_imported_back_not_recreated() -> None:
    contact = want("1", "a@x.de")
    assert action_of("a@x.de", desired=[contact], ledger=[synced(contact)]) == "import_back"


def test_permanent_refusal_is_not_retried() -> None:
    contact = want("1", "a@x.de")
    entry = synced(contact, status="refused", refusal="Forgotten Email Not Subscribed")
    assert action_of("a@x.de", desired=[contact], ledger=[entry]) == "blocked_by_provider"
    changed = want("1", "a@x.de", first="Anne")  # new data: the provider may accept it now
    assert action_of("a@x.de", desired=[changed], ledger=[entry]) == "create"


def test_archived_members() -> None:
    contact = want("1", "a@x.de")
    archived = have("a@x.de", "archived")
    assert (
        action_of(
            "a@x.de",
            desired=[contact],
            members=[archived],
            ledger=[synced(contact, status="removed")],
        )
        == "create"
    )
    assert (
        action_of("a@x.de", desired=[contact], members=[archived], ledger=[synced(contact)])
        == "import_back"
    )
    assert action_of("a@x.de", desired=[contact], members=[archived]) == "blocked_by_provider"


def test_opt_out_at_the_provider_of_a_non_eligible_contact_is_imported_back() -> None:
    contact = want("1", "a@x.de")
    result = action_of(
        "a@x.de",
        members=[have("a@x.de", "unsubscribed")],
        ledger=[synced(contact)],
        exclusions={"a@x.de": CrmExclusion("1", "not_opted_in")},
    )
    assert result == "import_back"


def test_already_unsubscribed_and_crm_no_is_unchanged() -> None:
    result = action_of(
        "a@x.de",
        members=[have("a@x.de", "unsubscribed")],
        exclusions={"a@x.de": CrmExclusion("1", "opted_out")},
    )
    assert result == "unchanged"


def test_unicode_domain_at_the_provider_matches_the_ascii_crm_address() -> None:
    contact = want("1", "info@xn--bcher-kva.de")
    assert (
        action_of(
            "info@xn--bcher-kva.de",
            desired=[contact],
            members=[have("Info@Bücher.de")],
            ledger=[synced(contact)],
        )
        == "unchanged"
    )
