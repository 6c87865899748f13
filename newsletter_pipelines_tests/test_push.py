"""Full sync of one audience against the sandbox through the real clients: the guarantees."""

from __future__ import annotations

import threading
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from newsletter_pipelines.providers.base import Member
from newsletter_pipelines.providers.errors import ProviderError
from newsletter_pipelines.sandbox import FaultRule
from newsletter_pipelines.state.ledger import (
    LEDGER_COLUMNS,
    OutcomeColumns,
    ledger,
    load_ledger,
    record,
)
from newsletter_pipelines.sync.eligibility import classify
from newsletter_pipelines.sync.identity import Intent, LedgerRow, RowState
from newsletter_pipelines.sync.inputs import redecider, snapshot_frame
from newsletter_pipelines_tests.test_eligibility import contact, frame
from newsletter_pipelines_tests.world import World


def actions(diff: pd.DataFrame) -> dict[str, int]:
    return diff["action"].value_counts().to_dict()


def test_first_sync_creates_everyone_and_a_second_sync_writes_nothing(world: World) -> None:
    diff, summary = world.sync()
    assert actions(diff) == {"create": 50}
    assert summary.results["created"] == 50
    assert set(world.members().values()) == {"subscribed"}
    rows = load_ledger(world.engine, world.provider_name)
    assert len(rows) == 50
    # the create's answer names each member's stable id: the next run settles them in bulk
    stable = {m.key: m.stable_id for m in world.provider.snapshot()}
    assert all(r.stable_id is not None and r.stable_id == stable[r.member_key] for r in rows)
    before = world.writes()
    diff, summary = world.sync()
    assert actions(diff) == {"unchanged": 50}
    assert world.writes() == before  # nothing changed: zero write calls
    assert summary.results == {}


def test_provider_unsubscribe_is_never_resubscribed(world: World) -> None:
    world.sync()
    world.act("person3@example.de", "unsubscribe")
    world.set(3, first_name="Changed")  # the CRM changes too: the opt-out still wins
    diff, _ = world.sync()
    row = diff.set_index("match_key").loc["person3@example.de"]
    assert row.action == "blocked_by_provider"
    assert world.members()["person3@example.de"] in ("unsubscribed", "blacklisted")
    again, _ = world.sync()
    assert again.set_index("match_key").loc["person3@example.de"].action == "blocked_by_provider"
    assert world.members()["person3@example.de"] in ("unsubscribed", "blacklisted")


def test_crm_email_change_moves_the_same_contact(world: World) -> None:
    world.sync()
    world.set(4, email="new.address@example.de")
    diff, summary = world.sync()
    row = diff.set_index("match_key").loc["new.address@example.de"]
    assert (row.action, row.old_email) == ("update", "person4@example.de")
    members = world.members()
    assert "person4@example.de" not in members  # no orphan left subscribed
    assert members["new.address@example.de"] == "subscribed"
    assert len(members) == 50  # no new contact
    assert summary.results.get("created", 0) == 0


def test_crm_no_unsubscribes_and_private_is_removed(world: World) -> None:
    world.sync()
    world.set(5, newsletter="no")
    world.set(6, is_private=True)
    diff, summary = world.sync()
    by_key = diff.set_index("match_key")
    assert by_key.loc["person5@example.de"].action == "unsubscribe"
    assert by_key.loc["person6@example.de"].action == "remove"
    members = world.members()
    assert members["person5@example.de"] in ("unsubscribed", "blacklisted")
    assert members.get("person6@example.de") in (None, "archived")
    assert summary.results["unsubscribed"] == 1 and summary.results["removed"] == 1
    before = world.writes()
    world.sync()
    assert world.writes() == before


@pytest.mark.parametrize("world", ["mailchimp"], indirect=True)
def test_renames_updates_unsubscribes_and_removals_share_one_batch(world: World) -> None:
    """16 member operations of four kinds (more than the 10 sent one by one) go out as one
    `POST /batches`, not as a call or batch per kind."""
    world.sync()
    for i in range(1, 5):
        world.set(i, email=f"moved{i}@example.de")
        world.set(i + 4, first_name=f"Renamed {i}")
        world.set(i + 8, newsletter="no")
        world.set(i + 12, is_private=True)
    world.sandbox.stats.reset()
    diff, summary = world.sync()
    assert actions(diff) == {"update": 8, "unsubscribe": 4, "remove": 4, "unchanged": 34}
    assert world.sandbox.stats.count("mailchimp", writes=True) == 1
    assert world.sandbox.stats.count("mailchimp", method="POST", template="/batches") == 1
    assert summary.results == {"updated": 8, "unsubscribed": 4, "removed": 4}
    members = world.members()
    assert {members[f"moved{i}@example.de"] for i in range(1, 5)} == {"subscribed"}
    assert {members[f"person{i + 8}@example.de"] for i in range(1, 5)} == {"unsubscribed"}
    assert {members[f"person{i + 12}@example.de"] for i in range(1, 5)} == {"archived"}
    assert world.sync()[0]["action"].eq("unchanged").all()


def test_killed_push_resumes_to_the_same_state(world: World) -> None:
    calls = []

    def kill_on_third_chunk(message: str) -> None:
        calls.append(message)
        if len(calls) == 3:  # two chunks went through; now every connection drops
            world.sandbox.faults.add(
                FaultRule(kind="drop", provider=world.provider_name, count=10_000)
            )

    with pytest.raises(ProviderError):
        world.sync(log=kill_on_third_chunk)
    world.sandbox.faults.clear()
    partial = len(world.members())
    assert 0 < partial < 50
    diff, _ = world.sync()
    assert actions(diff) == {"unchanged": partial, "create": 50 - partial}
    members = world.members()
    assert len(members) == 50 and set(members.values()) == {"subscribed"}
    ledger = load_ledger(world.engine, world.provider_name)
    assert sorted(int(e.owner) for e in ledger) == list(range(1, 51))
    assert {e.state for e in ledger} == {"subscribed"}
    before = world.writes()
    assert actions(world.sync()[0]) == {"unchanged": 50}
    assert world.writes() == before


def test_a_chunks_outcomes_are_written_while_the_next_create_call_is_in_flight(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50 creates in chunks of 20: each create call finds its chunk's intents in the ledger,
    and a chunk's outcomes are written only once the next chunk's call has started (it waits
    up to 10 s for it; written before the call, as a serial push would, the test fails)."""
    started: list[int] = []
    call_started = threading.Condition()
    inner = world.provider

    class Spy:
        def __getattr__(self, name: str) -> Any:
            return getattr(inner, name)

        def upsert(self, contacts: Any, **kwargs: Any) -> Any:
            # Python's sqlite3, as the writes: the ledger's column-wise read links a SQLite of
            # its own, whose connection must not close while this process holds a transaction
            with world.engine.connect() as conn:
                intents = dict(conn.execute(sa.select(ledger.c.member_key, ledger.c.intent)).all())
            assert all(intents[c.email.lower()] == Intent.CREATE.value for c in contacts)
            with call_started:
                started.append(len(contacts))
                call_started.notify_all()
            return inner.upsert(contacts, **kwargs)

    settled: list[int] = []

    def record_after_next_call(engine: Any, audience: str, run_id: str, rows: Any, **kw: Any):
        logged = kw.get("logged", ())
        actions = (
            logged.action if isinstance(logged, OutcomeColumns) else [o.action for o in logged]
        )
        created = [a for a in actions if a == "create"]
        if created and len(settled) < 2:  # the last chunk has no next call
            with call_started:
                assert call_started.wait_for(lambda: len(started) > len(settled) + 1, 10)
            settled.append(len(created))
        return record(engine, audience, run_id, rows, **kw)

    world.provider = Spy()  # type: ignore[assignment]
    monkeypatch.setattr("newsletter_pipelines.sync.push.record", record_after_next_call)
    _, summary = world.sync()
    assert started == [20, 20, 10] and settled == [20, 20]
    assert summary.results["created"] == 50
    assert {r.intent for r in load_ledger(world.engine, world.provider_name)} == {None}


def test_snapshot_error_fails_instead_of_looking_empty(world: World) -> None:
    world.sync()
    world.sandbox.faults.add(
        FaultRule(kind="server_error", provider=world.provider_name, method="GET", count=10_000)
    )
    with pytest.raises(ProviderError):
        world.sync()
    world.sandbox.faults.clear()
    assert len(world.members()) == 50


def test_deciding_again_keeps_other_contacts_addresses_claimed() -> None:
    """`redecider` answers only for the addresses asked, and an address another eligible contact
    has is never treated as unwanted (nothing removed, no second owner)."""
    result = classify(
        frame(contact(1, email="new@example.de"), contact(2, email="other@example.de"))
    )
    members = [
        Member(provider_id=f"id-{n}", email=f"{n}@example.de", status="subscribed")
        for n in ("old", "other")
    ]
    owned = [
        LedgerRow(
            member_key=f"{n}@example.de",
            email=f"{n}@example.de",
            owner=owner,
            provider_id=f"id-{n}",
            tags=frozenset({"CRM"}),
            state=RowState.SUBSCRIBED,
        )
        for n, owner in (("old", "1"), ("other", "2"))
    ]
    ledger = pd.DataFrame(
        [
            (r.member_key, r.email, r.owner, r.provider_id, '["CRM"]', r.state.value)
            + (None,) * (len(LEDGER_COLUMNS) - 6)
            for r in owned
        ],
        columns=list(LEDGER_COLUMNS),
    )
    decide = redecider(
        result.eligible,
        result.excluded,
        snapshot_frame(members),
        lambda: ledger,
        provider="mailchimp",
        system_tag="CRM",
    )
    keys = ("new@example.de", "old@example.de", "other@example.de")
    diff, found = decide(["1"], keys)
    assert set(diff["match_key"]) <= set(keys)
    assert "other@example.de" not in set(diff["match_key"])  # contact 2's: not decided here
    assert set(found) == {"old@example.de", "other@example.de"}
    assert diff.set_index("match_key").loc["new@example.de"].action == "update"  # the rename
