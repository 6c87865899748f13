"""Every import-back rule through the Dagster jobs, on both audiences of the embedded defaults.

After a `full_sync_job`, people act at the embedded sandbox; `import_back_job` writes what they
did into the demo CRM (SQLite; once PostgreSQL) on a real Dagster instance. Each test compares
the whole CRM before and after: exactly the acted contacts change, with exactly the expected
activities; importing again writes nothing, and the next full sync sends the provider nothing
(no echo). `dry_run` and NEWSLETTER_CRM_WRITE_BACK=false are in test_import_back_assets.py.

Every job run costs seconds, so the first `full_sync_job` of each audience runs once per session
(`synced`, on its own Dagster instance) and each test starts from a copy of its NEWSLETTER_HOME:
demo CRM, state database (ledger) and sandbox state file.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from newsletter_pipelines.crm.loader import load_demo
from newsletter_pipelines.crm.schema import CONTACT_FIELDS
from newsletter_pipelines.providers.resources import embedded_sandbox
from newsletter_pipelines.sandbox import PersonEvent, Sandbox
from newsletter_pipelines.sandbox.people import brevo_person, mailchimp_person
from newsletter_pipelines.settings import Settings
from newsletter_pipelines_tests.test_import_back_assets import (
    act,
    an_eligible_address,
    crm,
    run_import_back,
)
from newsletter_pipelines_tests.test_sync_assets import checks, metadata, run_sync

AUDIENCES = ["mailchimp", "brevo"]
CONTACT_COLUMNS = CONTACT_FIELDS[1:]  # every column but the id
TAG_BY_PERSON = "Messe 2026"  # no demo contact has it
SIGNUP_EMAIL = "nora.neumann@example.org"  # a new address
SIGNUP_NAMES = {"first_name": "Nora", "last_name": "Neumann"}
SIGNUP_TAG = "Webinar"
PUSH_ACTIONS = ("created", "updated", "unsubscribed", "removed", "refused", "held")
NOTHING_PUSHED = dict.fromkeys(PUSH_ACTIONS, 0)
NOTHING_WRITTEN = {"applied": 0, "contacts_created": 0, "activities": 0}


# --- the CRM, whole -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CrmState:
    """Every contact (all columns), every contact's tags and every activity row."""

    contacts: dict[int, dict[str, Any]]
    tags: dict[int, frozenset[str]]
    activities: tuple[tuple[Any, ...], ...]  # (id, contact_id, kind, provider, audience, key)

    def kinds(self) -> Counter[tuple[int, str]]:
        """Activities by (contact id, kind)."""
        return Counter((int(row[1]), str(row[2])) for row in self.activities)

    def newsletter(self, contact_id: int) -> Any:
        return self.contacts[contact_id]["newsletter"]


def crm_state(settings: Settings) -> CrmState:
    contacts = {
        int(row[0]): dict(zip(CONTACT_COLUMNS, row[1:], strict=True))
        for row in crm(settings, f"SELECT id, {', '.join(CONTACT_COLUMNS)} FROM contacts")
    }
    tags: dict[int, set[str]] = {}
    for contact_id, tag in crm(settings, "SELECT contact_id, tag FROM contact_tags"):
        tags.setdefault(int(contact_id), set()).add(tag)
    activities = crm(
        settings,
        "SELECT id, contact_id, kind, provider, audience, source_key FROM activities ORDER BY id",
    )
    return CrmState(
        contacts=contacts,
        tags={contact_id: frozenset(t) for contact_id, t in tags.items()},
        activities=tuple(activities),
    )


def changed(before: CrmState, after: CrmState) -> set[int]:
    """Contacts whose row or tags differ, and contacts that are new or gone."""
    ids = before.contacts.keys() | after.contacts.keys()
    return {
        i
        for i in ids
        if before.contacts.get(i) != after.contacts.get(i)
        or before.tags.get(i, frozenset()) != after.tags.get(i, frozenset())
    }


# --- who acts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Actor:
    """An eligible contact the sync subscribed, and every CRM contact with its address."""

    contact_id: int
    email: str
    tags: tuple[str, ...]
    address_contacts: tuple[int, ...]


@dataclass(frozen=True)
class Actors:
    """Eligible contacts with a plain ASCII address (the form the provider holds), in id order:
    those who share their address with other CRM contacts, and those who do not."""

    shared: list[Actor]
    alone: list[Actor]
    eligible: int  # all eligible contacts: the members the first sync created per audience
    said_no: list[Actor]  # newsletter = no, alone with their address: never at the provider


def actors(sync: dg.ExecuteInProcessResult) -> Actors:
    """The actors of the demo CRM, from the eligibility frames of a sync."""
    eligible = sync.output_for_node("eligible_subscribers", "eligible_subscribers")
    excluded = sync.output_for_node("eligible_subscribers", "excluded_contacts")
    by_key: dict[str, list[int]] = {}
    for frame in (eligible, excluded):
        rows = frame[frame["email_key"].notna()]
        for contact_id, key in rows[["contact_id", "email_key"]].itertuples(index=False):
            by_key.setdefault(key, []).append(int(contact_id))
    shared: list[Actor] = []
    alone: list[Actor] = []
    for row in eligible.sort_values("contact_id").to_dict("records"):
        email = row["email"]
        if not email.isascii() or email != row["email_key"]:
            continue
        found = Actor(int(row["contact_id"]), email, tuple(row["tags"]), tuple(by_key[email]))
        (shared if len(found.address_contacts) > 1 else alone).append(found)
    no = excluded[excluded["reason"] == "opted_out"].sort_values("contact_id")
    said_no = [
        Actor(int(row["contact_id"]), row["email_key"], (), (int(row["contact_id"]),))
        for row in no.to_dict("records")
        if row["email_key"].isascii() and len(by_key[row["email_key"]]) == 1
    ]
    return Actors(shared, alone, len(eligible), said_no)


@dataclass(frozen=True)
class Synced:
    """A NEWSLETTER_HOME after the first `full_sync_job` of every audience, and its actors."""

    home: Path
    actors: Actors

    def copy_to(self, home: Path) -> Actors:
        shutil.copytree(self.home, home, dirs_exist_ok=True)
        return self.actors


@pytest.fixture(scope="session")
def synced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synced]:
    """The first `full_sync_job` of every audience, once per session, in its own home."""
    home = tmp_path_factory.mktemp("synced") / "home"
    with pytest.MonkeyPatch.context() as env:
        for name in list(os.environ):
            if name.startswith("NEWSLETTER_") and name != "NEWSLETTER_TEST_POSTGRES_URL":
                env.delenv(name)
        env.setenv("NEWSLETTER_HOME", str(home))
        with dg.instance_for_test() as instance:
            results = [run_sync(instance, audience) for audience in AUDIENCES]
            assert all(r.success for r in results)
            eligible = metadata(results[0], "eligible_subscribers")["eligible_count"]
            created = [metadata(r, "audience_sync")["created"] for r in results]
            assert created == [eligible] * len(AUDIENCES)
            found = actors(results[0])
    yield Synced(home, found)


def person(settings: Settings, audience: str, email: str, action: str, **fields: Any) -> None:
    """A person acts at the audience with a tag or names (`act` passes neither)."""
    config = settings.audience(audience)
    sandbox = sandbox_of(settings)
    with sandbox.transaction(write=False) as state:
        accounts = state.mailchimp if config.provider == "mailchimp" else state.brevo
        (list_id,) = [
            str(list_id)
            for account in accounts.values()
            for list_id, lst in account.lists.items()
            if lst.name == config.name
        ]
    apply = mailchimp_person if config.provider == "mailchimp" else brevo_person
    apply(sandbox, PersonEvent(list_id=list_id, email=email, action=action, **fields))


def written(result: dg.ExecuteInProcessResult) -> dict[str, int]:
    """What `crm_import_back` wrote (keys absent when it had nothing to write)."""
    found = metadata(result, "crm_import_back")
    return {k: found.get(k, 0) for k in ("applied", "contacts_created", "activities")}


def planned(result: dg.ExecuteInProcessResult) -> dict[str, int]:
    return {
        k.removeprefix("planned_"): v
        for k, v in metadata(result, "crm_import_back").items()
        if k.startswith("planned_") and v
    }


def pushed(result: dg.ExecuteInProcessResult) -> dict[str, int]:
    found = metadata(result, "audience_sync")
    return {k: found.get(k, 0) for k in PUSH_ACTIONS}


def sandbox_of(settings: Settings) -> Sandbox:
    return embedded_sandbox(settings.home / "sandbox.json")


# --- every rule, both providers -----------------------------------------------------------------


class Expectations:
    """Collects every deviation of one scenario, so one run reports all broken rules at once."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def __call__(self, what: str, actual: Any, expected: Any) -> None:
        if actual != expected:
            self.failures.append(f"{what}:\n    got      {actual!r}\n    expected {expected!r}")

    def assert_all(self) -> None:
        if self.failures:
            pytest.fail("\n".join(["rules broken:", *self.failures]), pytrace=False)


@pytest.mark.parametrize("audience", AUDIENCES)
def test_every_import_back_rule_through_the_jobs(
    audience: str, settings: Settings, synced: Synced, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the first full sync, ten people act, each on a different contact; one
    `import_back_job` writes exactly what the rules say, a second writes nothing, and the next
    `full_sync_job` sends the provider nothing but the unsubscribe of a sign-up older than the
    CRM's newsletter = no. Hard bounces are recorded (NEWSLETTER_ACTIVITIES=hard_bounce)."""
    monkeypatch.setattr(
        "newsletter_pipelines.defs.import_back.writing._SETTINGS",
        Settings(activities="hard_bounce"),
    )
    provider = settings.audience(audience).provider
    system_tag = settings.audience(audience).system_tag
    found = synced.copy_to(settings.home)
    unsubscriber = found.shared[0]  # every contact with that address says no afterwards
    untagged = next(a for a in found.alone if any(map(plain_tag, a.tags)))  # tags were pushed
    removed_tag = next(filter(plain_tag, untagged.tags))
    cleaned, archived, deleted, tagged = [a for a in found.alone if a is not untagged][:4]
    said_no_before, said_no_after = found.said_no[:2]  # the CRM's no is older / newer
    assert len(unsubscriber.address_contacts) > 1
    assert TAG_BY_PERSON.casefold() not in {t.casefold() for t in tagged.tags}
    expect = Expectations()
    stamp(settings, said_no_before.contact_id, "2020-01-01 00:00:00")
    stamp(settings, said_no_after.contact_id, "2100-01-01 00:00:00")
    with dg.instance_for_test() as instance:
        act(settings, audience, unsubscriber.email, "unsubscribe")
        act(settings, audience, cleaned.email, "clean")
        act(settings, audience, archived.email, "archive")
        act(settings, audience, deleted.email, "delete")
        person(settings, audience, tagged.email, "tag", tag=TAG_BY_PERSON)
        person(settings, audience, untagged.email, "untag", tag=removed_tag)
        person(settings, audience, SIGNUP_EMAIL, "signup", **SIGNUP_NAMES)
        person(settings, audience, SIGNUP_EMAIL, "tag", tag=SIGNUP_TAG)
        if system_tag:  # a person puts the system tag on the sign-up: never imported
            person(settings, audience, SIGNUP_EMAIL, "tag", tag=system_tag)
        person(settings, audience, said_no_before.email, "signup")
        person(settings, audience, said_no_after.email, "signup")

        before = crm_state(settings)
        assert before.activities == ()
        first = run_import_back(instance, audience)
        assert first.success
        after = crm_state(settings)
        new_ids = after.contacts.keys() - before.contacts.keys()
        assert len(new_ids) == 1, f"the sign-up makes one new contact: {sorted(new_ids)}"
        (new_id,) = new_ids

        unsubscribed = unsubscriber.address_contacts
        assert "vanish_guard" in checks(first)
        expect("failed checks of the import-back", falsy(checks(first)), set())
        expect(
            "activities (contact, kind)",
            after.kinds(),
            Counter(
                {(i, "newsletter_unsubscribed"): 1 for i in unsubscribed}
                | {
                    (cleaned.contact_id, "hard_bounce"): 1,
                    (archived.contact_id, "removed_at_provider"): 1,
                    (deleted.contact_id, "removed_at_provider"): 1,
                    (tagged.contact_id, "tags_added_at_provider"): 1,
                    (untagged.contact_id, "tags_removed_at_provider"): 1,
                    (new_id, "newsletter_subscribed"): 1,
                    (said_no_before.contact_id, "newsletter_subscribed"): 1,
                }
            ),
        )
        expect(
            "activities' provider and audience",
            {row[3:5] for row in after.activities},
            {(provider, audience)},
        )
        newsletter = {
            **{i: "no" for i in unsubscribed},  # on every contact with that address
            cleaned.contact_id: before.newsletter(cleaned.contact_id),  # a bounce is no opt-out
            archived.contact_id: "unspecified",
            deleted.contact_id: "unspecified",
            new_id: "yes",
            said_no_before.contact_id: "yes",  # signed up after the CRM said no
            said_no_after.contact_id: "no",  # the CRM said no after the sign-up
        }
        expect("newsletter", {i: after.newsletter(i) for i in newsletter}, newsletter)
        tags = {
            tagged.contact_id: before.tags.get(tagged.contact_id, frozenset()) | {TAG_BY_PERSON},
            untagged.contact_id: before.tags[untagged.contact_id] - {removed_tag},
            new_id: frozenset({SIGNUP_TAG}),  # never the system tag
        }
        expect("tags", {i: after.tags.get(i, frozenset()) for i in tags}, tags)
        new = after.contacts[new_id]
        expect(
            "the new contact",
            {k: new[k] for k in ("email", "first_name", "last_name", "is_private")},
            {"email": SIGNUP_EMAIL, **SIGNUP_NAMES, "is_private": False},
        )
        # nothing more: exactly the acted contacts changed
        expect(
            "contacts changed (row or tags)",
            changed(before, after),
            {i for i in unsubscribed if before.newsletter(i) != "no"}
            | {archived.contact_id, deleted.contact_id, tagged.contact_id}
            | {untagged.contact_id, new_id, said_no_before.contact_id},
        )
        expect(
            "planned",
            planned(first),
            {
                "newsletter_unsubscribed": len(unsubscribed),
                "hard_bounce": 1,
                "removed_at_provider": 2,
                "tags_added_at_provider": 1,
                "tags_removed_at_provider": 1,
                "contact_created": 1,
                "newsletter_subscribed": 1,
            },
        )
        expect(
            "written",
            written(first),
            {
                "applied": len(unsubscribed) + 6,
                "contacts_created": 1,
                "activities": len(unsubscribed) + 7,
            },
        )
        expect("held", metadata(first, "crm_import_back")["held"], 0)

        # importing again writes nothing
        again = run_import_back(instance, audience)
        assert again.success
        expect("failed checks of the second import-back", falsy(checks(again)), set())
        expect("written by the second import-back", written(again), NOTHING_WRITTEN)
        expect("CRM changed by the second import-back", changed(after, crm_state(settings)), set())
        expect("CRM after the second import-back", crm_state(settings), after)

        # the next full sync echoes nothing, and the CRM stays as it is
        calls_before = sandbox_of(settings).stats.count(provider)
        echo = run_sync(instance, audience)
        assert echo.success
        assert sandbox_of(settings).stats.count(provider) > calls_before  # the sandbox counted
        expect("failed checks of the next full sync", falsy(checks(echo)), set())
        # the member who signed up after the CRM's no gets the CRM's names (the CRM wins on
        # fields); the one who signed up before it is unsubscribed; nothing else is written
        expect(
            "pushed by the next full sync",
            pushed(echo),
            {**NOTHING_PUSHED, "unsubscribed": 1, "updated": 1},
        )
        expect(
            "outcomes of the next full sync",
            outcomes(settings, echo.run_id),
            {
                (said_no_before.contact_id, "update", "updated"),
                (said_no_after.contact_id, "unsubscribe", "unsubscribed"),
            },
        )
        expect("written by the next full sync's import-back", written(echo), NOTHING_WRITTEN)
        expect("CRM changed by the next full sync", changed(after, crm_state(settings)), set())
        expect("CRM after the next full sync", crm_state(settings), after)
    expect.assert_all()


def outcomes(settings: Settings, run_id: str) -> set[tuple[int, str, str]]:
    """(contact, action, outcome) of a run's writes in the state database's outcome log."""
    engine = sa.create_engine(settings.resolved_state_database_url())
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT crm_id, action, outcome FROM sync_outcomes WHERE run_id = :run "
                "AND outcome != 'unchanged'"
            ),
            {"run": run_id},
        ).all()
    engine.dispose()
    return {(int(crm_id), action, outcome) for crm_id, action, outcome in rows}


def stamp(settings: Settings, contact_id: int, updated_at: str) -> None:
    """Set a CRM contact's last change."""
    engine = sa.create_engine(settings.resolved_crm_database_url())
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE contacts SET updated_at = :at WHERE id = :id"),
            {"at": updated_at, "id": contact_id},
        )
    engine.dispose()


def plain_tag(tag: str) -> bool:
    """A tag both providers hold as the CRM spells it (no commas, no outer spaces)."""
    return tag.strip() == tag and tag.replace(" ", "").isalnum()


def falsy(found: dict[str, bool]) -> set[str]:
    return {name for name, passed in found.items() if not passed}


# --- vanish_guard -------------------------------------------------------------------------------

VANISHED = 5


@pytest.mark.parametrize("between", ["nothing", "full_sync_job"])
def test_a_mass_archive_is_held_until_a_run_allows_it(
    between: str, settings: Settings, synced: Synced, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More members archived than NEWSLETTER_REMOVAL_MIN_COUNT and NEWSLETTER_REMOVAL_MAX_SHARE
    allow: held (vanish_guard fails, the run does not), nothing written for them; a run with
    `allow_mass_vanish` imports them, also after a full sync ran in between."""
    monkeypatch.setenv("NEWSLETTER_REMOVAL_MIN_COUNT", str(VANISHED - 2))
    monkeypatch.setenv("NEWSLETTER_REMOVAL_MAX_SHARE", "0.001")
    limited = Settings()
    for module in ("import_back.assets", "import_back.writing", "providers.pushing"):
        monkeypatch.setattr(f"newsletter_pipelines.defs.{module}._SETTINGS", limited)
    found = synced.copy_to(settings.home)
    archived = found.alone[:VANISHED]
    assert VANISHED / found.eligible > limited.removal_max_share
    with dg.instance_for_test() as instance:
        for actor in archived:
            act(settings, "mailchimp", actor.email, "archive")
        ids = {a.contact_id for a in archived}
        before = crm_state(settings)

        held = run_import_back(instance, "mailchimp")
        assert held.success  # the check is not blocking
        assert checks(held)["vanish_guard"] is False
        assert metadata(held, "crm_import_back")["held"] == VANISHED
        assert "removed_at_provider" not in planned(held)
        assert crm_state(settings) == before

        if between == "full_sync_job":
            full = run_sync(instance, "mailchimp")  # holds them again, pushes nothing
            assert full.success
            assert checks(full)["vanish_guard"] is False
            assert metadata(full, "crm_import_back")["held"] == VANISHED
            assert pushed(full) == NOTHING_PUSHED
            assert crm_state(settings) == before

        released = run_import_back(instance, "mailchimp", allow_mass_vanish=True)
        assert released.success
        assert checks(released)["vanish_guard"] is True
        meta = metadata(released, "crm_import_back")
        assert (meta["held"], planned(released)) == (0, {"removed_at_provider": VANISHED}), (
            f"the release run planned {planned(released)}; the sync ledger holds the archived "
            f"members as {ledger_states(settings, 'mailchimp', [a.email for a in archived])}"
        )
        after = crm_state(settings)
        assert changed(before, after) == ids
        assert {after.newsletter(i) for i in ids} == {"unspecified"}
        assert after.kinds() == Counter({(i, "removed_at_provider"): 1 for i in ids})


def ledger_states(settings: Settings, audience: str, emails: list[str]) -> Counter[str]:
    """The sync ledger's states of these members."""
    engine = sa.create_engine(settings.resolved_state_database_url())
    with engine.connect() as conn:
        states = conn.execute(
            sa.text(
                "SELECT state FROM sync_ledger WHERE audience = :audience AND member_key IN :keys"
            ).bindparams(sa.bindparam("keys", expanding=True)),
            {"audience": audience, "keys": emails},
        ).scalars()
        found = Counter(states)
    engine.dispose()
    return found


# --- the CRM on PostgreSQL ----------------------------------------------------------------------


@pytest.mark.postgres
def test_import_back_job_into_a_postgres_crm(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo CRM on PostgreSQL: sync, an unsubscribe and a sign-up at the provider, then
    `import_back_job` writes exactly those two changes."""
    monkeypatch.setenv("NEWSLETTER_CRM_DATABASE_URL", postgres_url)
    settings = Settings()
    load_demo(postgres_url, settings.demo_data_dir)
    with dg.instance_for_test() as instance:
        assert run_sync(instance, "mailchimp").success
        contact_id, email = an_eligible_address(settings)
        act(settings, "mailchimp", email, "unsubscribe")
        person(settings, "mailchimp", SIGNUP_EMAIL, "signup", **SIGNUP_NAMES)
        before = crm_state(settings)
        result = run_import_back(instance, "mailchimp")
        assert result.success
        assert all(checks(result).values())
        after = crm_state(settings)

    (new_id,) = after.contacts.keys() - before.contacts.keys()
    same_address = {
        i for i, row in before.contacts.items() if (row["email"] or "").strip().lower() == email
    }
    assert contact_id in same_address
    assert {after.newsletter(i) for i in same_address} == {"no"}
    new = after.contacts[new_id]
    assert (new["email"], new["first_name"], new["last_name"], new["newsletter"]) == (
        SIGNUP_EMAIL,
        SIGNUP_NAMES["first_name"],
        SIGNUP_NAMES["last_name"],
        "yes",
    )
    assert after.tags.get(new_id) is None
    assert after.kinds() == Counter(
        {(i, "newsletter_unsubscribed"): 1 for i in same_address}
        | {(new_id, "newsletter_subscribed"): 1}
    )
    assert changed(before, after) == {i for i in same_address if before.newsletter(i) != "no"} | {
        new_id
    }
