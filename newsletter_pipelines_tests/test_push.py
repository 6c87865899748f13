"""Full sync of one audience against the sandbox through the real clients: the guarantees."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pandas as pd
import pytest
import sqlalchemy as sa

from newsletter_pipelines.sync.inputs import build_diff, members_by_key, snapshot_frame
from newsletter_pipelines.sync.eligibility import classify
from newsletter_pipelines.providers.base import Provider
from newsletter_pipelines.providers.errors import ProviderError
from newsletter_pipelines.sync.push import PushContext, PushSummary, push_diff
from newsletter_pipelines.sandbox import FaultRule, PersonEvent, Sandbox, SandboxTransport
from newsletter_pipelines.sandbox.people import brevo_person, mailchimp_person
from newsletter_pipelines.state.ledger import create_tables, load_ledger, load_ledger_frame
from newsletter_pipelines_tests.providers.conftest import brevo_account, make_brevo, make_mailchimp
from newsletter_pipelines_tests.test_eligibility import contact, frame

SYSTEM_TAG = {"mailchimp": "CRM", "brevo": None}


@dataclass
class World:
    """A CRM (as raw rows), one sandbox audience and a state database."""

    provider_name: str
    sandbox: Sandbox
    provider: Provider
    engine: sa.Engine
    crm: list[dict[str, object]]

    def sync(self, log: Callable[[str], None] = lambda _: None) -> tuple[pd.DataFrame, PushSummary]:
        result = classify(frame(*self.crm))
        members = snapshot_frame(self.provider.snapshot())
        ledger = load_ledger_frame(self.engine, self.provider_name)
        diff = build_diff(
            result.eligible,
            result.excluded,
            members,
            ledger,
            self.provider_name,
            SYSTEM_TAG[self.provider_name],
        )
        ctx = PushContext(self.engine, self.provider_name, "run", chunk_size=20, log=log)
        summary = push_diff(self.provider, diff, members_by_key(members), ctx)
        return diff, summary

    def writes(self) -> int:
        return self.sandbox.stats.count(self.provider_name, writes=True)

    def members(self) -> dict[str, str]:
        return {m.email.lower(): m.status.value for m in self.provider.snapshot()}

    def person(self, email: str, action: str) -> None:
        audience = self.provider.ensure_audience()
        act = mailchimp_person if self.provider_name == "mailchimp" else brevo_person
        act(self.sandbox, PersonEvent(list_id=audience.id, email=email, action=action))

    def set(self, crm_id: int, **values: object) -> None:
        row = next(r for r in self.crm if r["contact_id"] == crm_id)
        row.update(values, updated_at="2026-01-01 00:00:00")


@pytest.fixture(params=["mailchimp", "brevo"])
def world(request: pytest.FixtureRequest, tmp_path) -> Iterator[World]:
    sandbox = Sandbox()
    transport = SandboxTransport(sandbox)
    if request.param == "mailchimp":
        provider = make_mailchimp(transport, "CRM Newsletter")
    else:
        brevo_account(sandbox)
        provider = make_brevo(transport, "CRM Newsletter")
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.sqlite3'}")
    create_tables(engine)
    crm = [
        contact(i, email=f"person{i}@example.de", tags=("Käufer",) if i % 2 else ())
        for i in range(1, 51)
    ]
    yield World(request.param, sandbox, provider, engine, crm)
    provider.close()
    sandbox.close()


def actions(diff: pd.DataFrame) -> dict[str, int]:
    return diff["action"].value_counts().to_dict()


def test_first_sync_creates_everyone_and_a_second_sync_writes_nothing(world: World) -> None:
    diff, summary = world.sync()
    assert actions(diff) == {"create": 50}
    assert summary.results["created"] == 50
    assert set(world.members().values()) == {"subscribed"}
    assert len(load_ledger(world.engine, world.provider_name)) == 50
    before = world.writes()
    diff, summary = world.sync()
    assert actions(diff) == {"unchanged": 50}
    assert world.writes() == before  # nothing changed: zero write calls
    assert summary.results == {}


def test_provider_unsubscribe_is_never_resubscribed(world: World) -> None:
    world.sync()
    world.person("person3@example.de", "unsubscribe")
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


def test_snapshot_error_fails_instead_of_looking_empty(world: World) -> None:
    world.sync()
    world.sandbox.faults.add(
        FaultRule(kind="server_error", provider=world.provider_name, method="GET", count=10_000)
    )
    with pytest.raises(ProviderError):
        world.sync()
    world.sandbox.faults.clear()
    assert len(world.members()) == 50
