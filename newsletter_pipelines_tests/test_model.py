"""The consent guarantees, proven over random sequences (hypothesis `RuleBasedStateMachine`).

The real code runs: eligibility, the real clients against the in-process sandbox, the rules,
the push and the ledger on SQLite. Steps are CRM changes (inserts, names, addresses with swaps
and collisions, newsletter yes/no/other, private, deletes, tags), what people and admins do at
the provider (unsubscribe, re-subscribe through the provider's form, sign up, archive, delete,
clean, tag, untag, change the address, Brevo blacklist and list unsubscribe, Mailchimp
pending), and syncs, full or killed at a random provider call. Each sequence starts from a
synced audience of a few contacts, and people act on the audience's members, so most steps
reach states that matter.
After every complete sync:

- nobody the provider held as opted out when a sync looked is subscribed again, unless the
  person re-subscribed at the provider; nor at the address the member moved to since, unless
  it was deleted there before a sync could see it there;
- no address that only private contacts have is subscribed;
- every eligible contact whose addresses no person touched at the provider is subscribed, and
  every subscribed address is an eligible contact's or one a person subscribed;
- tags a person set at the provider are still on the member, unless the CRM took them in:
  imported, or held by the contact deciding the member's address when a sync looked (both
  sides added the tag: the CRM wins, and may later remove it);
- a second sync with nothing changed sends no write call;
- every `import_back` is backed by something a person did at the provider;
- the import-back (run before each push, into the CRM rows) sets `no` on every contact with an
  address a person opted out of, unless the contact changed since, and changes the CRM only
  where a person did something at the provider;
- the import-back of the addresses named by the webhooks the sandbox fired since (parsed by
  the receiver's parser) plans nothing the full import-back would not plan; applied as a step
  of its own (`provider_events_job`), it changes the CRM only where a person acted.

The nightly import-back without a push is a step, with the sync's import-back checks. The
change sensor's run for the contacts the CRM changed since its last one is a step too: it
decides every row of its scope as a full sync would decide it then, and removes no tag a person
set.

`make test` runs a bounded, derandomised profile; `HYPOTHESIS_PROFILE=long` runs at least
10,000 steps (see the README).
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from newsletter_pipelines.sandbox.brevo_rules import BrevoError
from newsletter_pipelines.sandbox.mailchimp_members import ProblemError
from newsletter_pipelines.sandbox.webhooks import WebhookSender
from newsletter_pipelines.state.events import StoredEvent
from newsletter_pipelines.sync.eligibility import classify
from newsletter_pipelines.sync.email_address import match_key
from newsletter_pipelines.sync.rules import DIFF_COLUMNS
from newsletter_pipelines.webhooks.parse import brevo_events, mailchimp_events
from newsletter_pipelines_tests.test_consent import Killed, KilledAfter
from newsletter_pipelines_tests.test_eligibility import contact, frame
from newsletter_pipelines_tests.test_event_import import changes, full_plan, scoped_plan
from newsletter_pipelines_tests.world import World, open_world

settings.register_profile(
    "default",
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    max_examples=400,
    stateful_step_count=40,
    deadline=None,
    derandomize=False,  # the "default" registered above is every profile's parent: not this one
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(  # a seed a long run reported, replayed without shrinking
    "replay", parent=settings.get_profile("long"), phases=(Phase.explicit, Phase.generate)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
# a long run's machine may take over the suite's limit of 10 minutes a test (about 9 on
# average, and over 10 for Mailchimp once)
pytestmark = pytest.mark.timeout(1800 if settings.default.max_examples > 40 else 600)

ADDRESSES = [f"{name}@example.de" for name in ("anna", "ben", "cem", "dora", "emil", "fay")]
CRM_TAGS = ["Käufer", "VIP", "Haus, Garten"]
PERSON_TAGS = ["Webinar", "Messe"]  # never CRM tags, in any case: a person's own tags
NEWSLETTER = ["yes", "yes", "no", "unspecified"]
WRITES = ("upsert", "write_members")  # the push's calls (creates; then writes to members)
OPTED_OUT = ("unsubscribed", "cleaned", "blacklisted")
STATS: Counter[str] = Counter()
"""What the runs of this session did (printed in pytest's summary by conftest)."""
SUBSCRIBING = ("signup", "resubscribe", "pending")
PERSON_OPT_OUTS = ("unsubscribe", "blacklist", "list_unsubscribe")


class ConsentMachine(RuleBasedStateMachine):
    """One audience of `PROVIDER`, a CRM of a few contacts, and what people do."""

    PROVIDER: ClassVar[str]
    OPT_OUTS: ClassVar[list[str]]
    SUBSCRIBES: ClassVar[list[str]]
    REMOVALS: ClassVar[list[str]]

    def __init__(self) -> None:
        super().__init__()
        self.stack = ExitStack()
        folder = Path(self.stack.enter_context(tempfile.TemporaryDirectory()))
        self.world: World = self.stack.enter_context(open_world(self.PROVIDER, folder, 0))
        self.next_id = 1
        self.history: dict[int, set[str]] = {}  # every address a contact had
        self.touched: set[str] = set()  # addresses a person acted on at the provider
        self.person_subscribed: set[str] = set()  # addresses a person (re)subscribed
        self.opted_out: set[str] = set()  # held as opted out when a sync looked
        # addresses an opt-out came to only with its member's move since a sync last looked
        self.moved_unseen: set[str] = set()
        self.person_tags: set[tuple[str, str]] = set()  # (member's stable id, tag key)
        self.seen_tags: dict[str, set[str]] = {}  # the members' tags when a sync last looked
        self.seen_person_tags: set[tuple[str, str]] = set()  # person_tags then
        self.dirty = False  # something changed since the last complete sync
        self.step = 0  # a clock: what happened when
        self.crm_changed: dict[int, int] = {}  # CRM contact → step of its last change
        self.opted_out_at: dict[str, int] = {}  # address → step a person opted out there
        self.clock = datetime.now(UTC).replace(microsecond=0)
        self.world.stamp = self.stamp
        self.world.new_id = self.new_id
        self.world.sandbox.now = self.now  # type: ignore[method-assign]
        answer = httpx.MockTransport(lambda _: httpx.Response(200))  # a receiver that takes all
        self.world.sandbox.webhooks = WebhookSender(answer)
        self.delivered = 0  # webhook calls whose events an import-back has taken in
        self.plans_seen = 0  # import-back plans whose imported tags are the CRM's already
        self.pushed_upto = ""  # the change sensor's watermark: the last CRM change it pushed

    def new_id(self) -> int:
        crm_id, self.next_id = self.next_id, self.next_id + 1
        return crm_id

    def tick(self) -> None:
        """One step of the clock the CRM and the sandbox share: a second, the provider's
        precision, so whatever happens next is strictly newer and every run compares alike."""
        self.step += 1
        self.clock += timedelta(seconds=1)

    def now(self) -> float:
        """The sandbox's time (epoch seconds)."""
        return self.clock.timestamp()

    def stamp(self) -> str:
        """The next CRM `updated_at` (every CRM change, also an imported one)."""
        self.tick()
        return self.clock.strftime("%Y-%m-%d %H:%M:%S.%f")

    def teardown(self) -> None:
        moves = sum(p.counts["email_changed_at_provider"] for p in self.world.imported)
        STATS[f"{self.PROVIDER} address changes imported"] += moves
        self.stack.close()

    # --- the CRM ------------------------------------------------------------------------

    @initialize(
        emails=st.lists(st.sampled_from(ADDRESSES), min_size=1, max_size=4, unique=True),
        tagged=st.booleans(),
    )
    def start(self, emails: list[str], tagged: bool) -> None:
        """Most sequences that matter start from a synced audience: a few contacts, one sync."""
        self.world.provider.ensure_audience()
        self.world.provider.register_webhook(f"http://receiver/{self.PROVIDER}", "secret")
        for email in emails:
            self.crm_insert(email, "yes", False, {CRM_TAGS[0]} if tagged else set())
        self.sync()

    @rule(
        email=st.sampled_from(ADDRESSES),
        newsletter=st.sampled_from(NEWSLETTER),
        private=st.booleans(),
        tags=st.sets(st.sampled_from(CRM_TAGS), max_size=2),
    )
    def crm_insert(self, email: str, newsletter: str, private: bool, tags: set[str]) -> None:
        crm_id = self.new_id()
        row = contact(crm_id, email=email, newsletter=newsletter, is_private=private)
        row.update(tags=tuple(sorted(tags)), updated_at=self.stamp())
        self.world.crm.append(row)
        self.history[crm_id] = {email}
        self.crm_changed[crm_id] = self.step
        self.dirty = True

    def rows(self) -> st.SearchStrategy[dict[str, Any]]:
        return st.sampled_from(self.world.crm)

    def touch(self, row: dict[str, Any], **values: Any) -> None:
        note(f"CRM contact {row['contact_id']}: {values}")
        self.dirty = True
        row.update(values, updated_at=self.stamp())
        self.crm_changed[row["contact_id"]] = self.step

    @precondition(lambda self: self.world.crm)
    @rule(data=st.data(), first=st.sampled_from(["Anna", "Ben", "Ünal"]))
    def crm_rename(self, data: st.DataObject, first: str) -> None:
        self.touch(data.draw(self.rows()), first_name=first)

    @precondition(lambda self: self.world.crm)
    @rule(data=st.data(), email=st.sampled_from(ADDRESSES))
    def crm_change_email(self, data: st.DataObject, email: str) -> None:
        row = data.draw(self.rows())
        self.touch(row, email=email)
        self.history[row["contact_id"]].add(email)

    @precondition(lambda self: len(self.world.crm) >= 2)
    @rule(data=st.data())
    def crm_swap_emails(self, data: st.DataObject) -> None:
        one, two = data.draw(st.lists(self.rows(), min_size=2, max_size=2, unique_by=id))
        first, second = one["email"], two["email"]
        self.touch(one, email=second)
        self.touch(two, email=first)
        self.history[one["contact_id"]].add(second)
        self.history[two["contact_id"]].add(first)

    @precondition(lambda self: self.world.crm)
    @rule(data=st.data(), newsletter=st.sampled_from(NEWSLETTER))
    def crm_newsletter(self, data: st.DataObject, newsletter: str) -> None:
        self.touch(data.draw(self.rows()), newsletter=newsletter)

    @precondition(lambda self: self.world.crm)
    @rule(data=st.data(), private=st.booleans())
    def crm_private(self, data: st.DataObject, private: bool) -> None:
        self.touch(data.draw(self.rows()), is_private=private)

    @precondition(lambda self: self.world.crm)
    @rule(data=st.data(), tags=st.sets(st.sampled_from(CRM_TAGS), max_size=2))
    def crm_tags(self, data: st.DataObject, tags: set[str]) -> None:
        self.touch(data.draw(self.rows()), tags=tuple(sorted(tags)))

    @precondition(lambda self: self.world.crm)
    @rule(data=st.data())
    def crm_delete(self, data: st.DataObject) -> None:
        row = data.draw(self.rows())
        note(f"CRM contact {row['contact_id']} deleted")
        self.world.crm.remove(row)
        self.dirty = True

    # --- people at the provider ---------------------------------------------------------

    def members(self) -> st.SearchStrategy[str]:
        """The audience's members (people act on what they receive), any address if none."""
        return st.sampled_from(sorted(self.world.members()) or ADDRESSES)

    @rule(data=st.data())
    def person_opts_out(self, data: st.DataObject) -> None:
        email = data.draw(self.members())
        self.person(email, data.draw(st.sampled_from(self.OPT_OUTS)))

    @rule(data=st.data(), email=st.sampled_from(ADDRESSES))
    def person_subscribes(self, data: st.DataObject, email: str) -> None:
        self.person(email, data.draw(st.sampled_from(self.SUBSCRIBES)))

    @rule(data=st.data())
    def admin_removes(self, data: st.DataObject) -> None:
        email = data.draw(self.members())
        self.person(email, data.draw(st.sampled_from(self.REMOVALS)))

    @rule(data=st.data(), untag=st.booleans(), tag=st.sampled_from(PERSON_TAGS))
    def person_tags_member(self, data: st.DataObject, untag: bool, tag: str) -> None:
        self.person(data.draw(self.members()), "untag" if untag else "tag", tag)

    @rule(data=st.data())
    def person_changes_email(self, data: st.DataObject) -> None:
        """A person moves a member to another address, mostly one not on the audience (the
        provider refuses those; Mailchimp also a member that is not subscribed)."""
        email = data.draw(self.members())
        on_audience = self.world.members()
        free = [a for a in ADDRESSES if a not in on_audience and a != email]
        new_email = data.draw(st.sampled_from(free or ADDRESSES))
        self.person(email, "change_email", new_email=new_email)

    def person(
        self, email: str, action: str, tag: str | None = None, new_email: str | None = None
    ) -> None:
        """A person or an admin acts at the provider; impossible actions change nothing."""
        stable = self.stable_id(email)
        was = self.provider_status(email)
        had_tag = tag is not None and tag.casefold() in self.tags_by_stable_id().get(stable, set())
        note(f"person at the provider: {action} {email} {tag or new_email or ''}")
        self.tick()
        try:
            self.world.act(email, action, tag=tag, new_email=new_email)
        except (ProblemError, BrevoError):
            return
        self.touched.add(email)
        if new_email is not None:
            self.moved(email, new_email)
        if action == "delete" and email in self.moved_unseen:
            self.opted_out.discard(email)
            self.moved_unseen.discard(email)
        self.dirty = True
        if action in PERSON_OPT_OUTS and was not in OPTED_OUT:  # a new opt-out
            self.opted_out_at[email] = self.step
        STATS[f"{self.PROVIDER} person actions"] += 1
        STATS[f"{self.PROVIDER} {action}"] += 1
        if action in SUBSCRIBING:
            self.person_subscribed.add(email)
            if self.provider_status(email) in ("subscribed", "pending"):
                self.opted_out.discard(email)
                self.opted_out_at.pop(email, None)  # subscribed again since: no opt-out now
        if action == "tag" and tag and (stable := self.stable_id(email)) and not had_tag:
            key = (stable, tag.casefold())
            if tag.casefold() not in self.seen_tags.get(stable, set()):
                self.person_tags.add(key)
            elif key in self.seen_person_tags:  # untagged and tagged again since a sync looked:
                self.person_tags.add(key)  # no change the sync can see, whoever's it was
        elif action == "untag" and tag and stable:
            self.person_tags.discard((stable, tag.casefold()))

    def moved(self, email: str, new_email: str) -> None:
        """The member moved to `new_email`: both addresses are touched; an active member there
        is the person's subscription, an opt-out moved with the member (Brevo: a blacklisted
        contact). Deleted there before a sync saw it there, the opt-out is gone with it: no
        sync can tell where the member went (`person`)."""
        self.touched.add(new_email)
        if self.provider_status(new_email) in ("subscribed", "pending"):
            self.person_subscribed.add(new_email)
            self.opted_out.discard(new_email)
        elif email in self.opted_out:
            if new_email not in self.opted_out or new_email in self.moved_unseen:
                self.moved_unseen.add(new_email)
            self.opted_out.add(new_email)
        self.opted_out.discard(email)
        self.moved_unseen.discard(email)

    # --- syncs --------------------------------------------------------------------------

    def look(self, tags: bool = True) -> dict[str, str]:
        """The audience as a snapshot shows it; opt-outs seen are remembered, and with `tags`
        the tags as the sync now knows them."""
        statuses = self.world.members()
        self.opted_out |= {email for email, status in statuses.items() if status in OPTED_OUT}
        self.moved_unseen.clear()
        if tags:
            self.seen_tags, self.seen_person_tags = self.tags_by_stable_id(), set(self.person_tags)
        return statuses

    @rule(write_back=st.sampled_from([True, True, True, False]))
    def sync(self, write_back: bool = True) -> None:
        """A full sync; one in four only reports the import-back (NEWSLETTER_CRM_WRITE_BACK
        false), which must leave every provider-side change to a later sync."""
        self.dirty = False
        self.look()
        self.check_webhook_import()
        tags_before = self.tags_by_stable_id()
        crm_before = {r["contact_id"]: dict(r) for r in self.world.crm}
        addresses = self.addresses_by_stable_id()
        diff, summary = self.world.sync(import_back=True, write_back=write_back)
        self.forget_agreed_tags(list(crm_before.values()), addresses)
        if write_back:
            self.delivered = len(self.world.sandbox.webhooks.calls)
        statuses = self.look()
        STATS[f"{self.PROVIDER} checked syncs"] += 1
        pending: set[str] = set()  # addresses whose contacts the import-back just changed
        if write_back:
            self.check_import_back(diff, crm_before, statuses)
            pending = self.imported_addresses(crm_before)
        else:  # nothing imported: a person's (re)subscription stays as it is until a sync does,
            # and so do the writes onto addresses whose member moved away in a change the CRM
            # has not taken in (held by `crm_import_back`)
            pending = set(self.person_subscribed) | held_addresses(diff, summary.held)
        self.check_after_sync(diff, statuses, tags_before, pending)
        if not write_back:
            STATS[f"{self.PROVIDER} report-only syncs"] += 1
            assert [dict(r) for r in self.world.crm] == list(crm_before.values())
            writes = self.world.writes()
            again, _ = self.world.sync(import_back=True, write_back=False)
            assert self.world.writes() == writes, self.explain("a re-sync wrote", again)
            return
        tags_before, crm_rows = self.tags_by_stable_id(), list(crm_before.values())
        for _ in range(3):  # what the import-back changed in the CRM goes out with the next sync
            crm = [dict(r) for r in self.world.crm]
            if crm == crm_rows:
                break
            crm_rows = crm
            addresses = self.addresses_by_stable_id()
            diff, _ = self.world.sync(import_back=True)
            self.forget_agreed_tags(crm, addresses)
            self.register_imported_contacts()
            self.forget_imported_tags()
        self.check_after_sync(diff, self.look(), tags_before, set())
        writes = self.world.writes()
        again, _ = self.world.sync()
        assert self.world.writes() == writes, self.explain("a re-sync wrote", again)
        planned = again[again["action"].isin(["create", "update", "unsubscribe", "remove"])]
        assert planned.empty, self.explain("a re-sync planned writes", planned)

    def crm_changes(self) -> set[str]:
        """The CRM contacts changed since the change sensor's last run (deleted ones aside: a
        watermark on `updated_at` does not see them)."""
        return {str(r["contact_id"]) for r in self.world.crm if r["updated_at"] > self.pushed_upto}

    @precondition(lambda self: self.crm_changes())
    @rule(killed_at=st.sampled_from([None, None, None, 1, 2]), before=st.booleans())
    def crm_changes_pushed(self, killed_at: int | None = None, before: bool = False) -> None:
        """The change sensor's run (`push_crm_changes`) for the contacts the CRM changed since
        its last one, complete or killed at a write call (`killed_at`, right `before` it or
        after): every row it decides, it decides as a full sync would decide it now, and it
        removes no tag a person set."""
        ids = self.crm_changes()
        self.pushed_upto = max(str(r["updated_at"]) for r in self.world.crm)
        full = self.world.decide()[2].set_index("match_key")
        tags_before, crm = self.tags_by_stable_id(), [dict(r) for r in self.world.crm]
        addresses = self.addresses_by_stable_id()
        provider = self.world.provider
        if killed_at:
            self.world.provider = KilledAfter(provider, killed_at, WRITES, before)  # type: ignore[assignment]
        try:
            done = self.world.push_changes(ids)
        except Killed:
            STATS[f"{self.PROVIDER} change runs killed"] += 1
            self.check_tags_kept(tags_before, pd.DataFrame(columns=list(DIFF_COLUMNS)))
            return
        finally:
            self.world.provider = provider
        if done is None:
            STATS[f"{self.PROVIDER} change scopes not closed"] += 1
            return
        scope, diff, _ = done
        STATS[f"{self.PROVIDER} change runs checked"] += 1
        STATS[f"{self.PROVIDER} change runs' rows"] += len(diff)
        for row in diff.itertuples():
            want = full.loc[row.match_key]
            decided = (row.action, row.write_key, row.ledger_after)
            assert decided == (want.action, want.write_key, want.ledger_after), self.explain(
                f"the change run decided {row.match_key} otherwise than a full sync would "
                f"({want.action}, {want.detail})",
                diff,
            )
        tags_after = self.check_tags_kept(tags_before, diff)
        # the run saw its members' tags: for them, as a full sync that looked
        seen = set(scope.snapshot["stable_id"].dropna())
        elsewhere = {(stable, tag) for stable, tag in self.person_tags if stable not in seen}
        self.forget_agreed_tags(crm, addresses)
        self.person_tags |= elsewhere
        for stable in seen:
            self.seen_tags[stable] = tags_after.get(stable, set())
        self.seen_person_tags = {p for p in self.seen_person_tags if p[0] not in seen} | {
            p for p in self.person_tags if p[0] in seen
        }

    @precondition(lambda self: self.dirty)
    @rule(calls=st.sampled_from([1, 1, 2, 3]), before=st.booleans())
    def killed_sync(self, calls: int, before: bool) -> None:
        STATS[f"{self.PROVIDER} sync kill attempts"] += 1
        self.look()
        provider = self.world.provider
        self.world.provider = KilledAfter(provider, calls, WRITES, before)  # type: ignore[assignment]
        killed = False
        crm, addresses = [dict(r) for r in self.world.crm], self.addresses_by_stable_id()
        try:
            self.world.sync(import_back=True)  # the import-back runs before the first write
        except Killed:
            STATS[f"{self.PROVIDER} killed syncs"] += 1
            killed = True
        finally:
            self.world.provider = provider
            self.register_imported_contacts()
            self.forget_imported_tags()
            self.forget_agreed_tags(crm, addresses)
            self.delivered = len(self.world.sandbox.webhooks.calls)
        # a killed sync knows the tags its snapshot showed, not what its writes did: a tag it
        # was removing when killed and a person then set again is, to it, still its own
        self.look(tags=not killed)

    # --- the guarantees -----------------------------------------------------------------

    @precondition(lambda self: self.dirty)
    @rule()
    def nightly_import_back(self) -> None:
        """`import_back_job` (snapshot, diff, import-back, no push): an opt-out at the provider
        ends as `no` in the CRM unless the contact changed since, and the CRM changes only where
        a person did something at the provider."""
        self.check_webhook_import()
        statuses = self.look()
        crm_before = {r["contact_id"]: dict(r) for r in self.world.crm}
        diff, _ = self.world.import_only()
        self.delivered = len(self.world.sandbox.webhooks.calls)
        STATS[f"{self.PROVIDER} nightly import-backs"] += 1
        self.check_import_back(diff, crm_before, statuses)

    def events_since(self) -> list[StoredEvent]:
        """The events of the webhooks fired since the last import, as the receiver stores them
        (parsed by its parser)."""
        calls = self.world.sandbox.webhooks.calls[self.delivered :]
        parse = mailchimp_events if self.PROVIDER == "mailchimp" else brevo_events
        return [
            StoredEvent(i, e.audience, e.provider, e.type, e.email, e.payload, datetime.now(UTC),
                        e.dedupe_key, None)
            for i, e in enumerate(
                (e for call in calls for e in parse(call.body, self.PROVIDER)), start=1
            )
        ]  # fmt: skip

    @precondition(lambda self: len(self.world.sandbox.webhooks.calls) > self.delivered)
    @rule()
    def webhook_events_imported(self) -> None:
        """`provider_events_job` for the webhooks fired since the last import: it imports
        nothing the full import-back would not import now, and changes the CRM only where a
        person did something at the provider."""
        events = self.events_since()
        self.delivered = len(self.world.sandbox.webhooks.calls)
        if not events:
            return
        full = changes(full_plan(self.world))
        crm_before = {r["contact_id"]: dict(r) for r in self.world.crm}
        if not self.world.import_events(events):
            STATS[f"{self.PROVIDER} webhook scopes not closed"] += 1
            return
        scoped = changes(self.world.imported[-1])
        STATS[f"{self.PROVIDER} webhook imports applied"] += 1
        STATS[f"{self.PROVIDER} webhook changes applied"] += len(scoped)
        assert scoped <= full, f"webhook import beyond the full import-back: {scoped - full}"
        self.register_imported_contacts()
        self.forget_imported_tags()
        self.check_crm_changes(crm_before)

    def check_webhook_import(self) -> None:
        """What `provider_events_job` would plan for the addresses of the webhooks fired since
        the last import-back is planned by the full import-back too."""
        events = self.events_since()
        if not events:
            return
        plan = scoped_plan(self.world, events)
        if plan is None:
            STATS[f"{self.PROVIDER} webhook scopes not closed"] += 1
            return
        scoped, full = changes(plan), changes(full_plan(self.world))
        STATS[f"{self.PROVIDER} webhook imports checked"] += 1
        STATS[f"{self.PROVIDER} webhook changes planned"] += len(scoped)
        assert scoped <= full, f"webhook import beyond the full import-back: {scoped - full}"

    def register_imported_contacts(self) -> None:
        for row in self.world.crm:
            if row["contact_id"] not in self.history:
                self.history[row["contact_id"]] = {str(row["email"])}
                self.crm_changed[row["contact_id"]] = self.step

    def forget_imported_tags(self) -> None:
        """A tag imported into the CRM is the CRM's now: by every import-back applied, also
        those of killed syncs and of the syncs that follow a checked one."""
        plans = self.world.imported[self.plans_seen :]
        for plan, members in zip(plans, self.world.imported_from[self.plans_seen :], strict=True):
            added = [(c.activity.details.get("email"), c.add_tags) for c in plan.changes]
            added += [(c.email, c.tags) for c in plan.new_contacts]
            for email, tags in added:  # the member it came from, wherever the push moved it
                key = match_key(str(email))
                stable = members.get(key) or self.stable_id(key)
                self.person_tags -= {(stable, t.casefold()) for t in tags}
        self.plans_seen = len(self.world.imported)

    def addresses_by_stable_id(self) -> dict[str, str]:
        return {
            stable: email for email in self.world.members() if (stable := self.stable_id(email))
        }

    def forget_agreed_tags(self, crm: list[dict[str, Any]], addresses: dict[str, str]) -> None:
        """A tag a person set that the contact deciding the member's address (in `crm`, as a
        sync saw it, at the member's address then or now) holds too is the CRM's from then on."""
        eligible = classify(frame(*crm)).eligible
        held = {
            key: {t.casefold() for t in tags}
            for key, tags in zip(eligible["email_key"], eligible["tags"], strict=True)
        }
        now = self.addresses_by_stable_id()
        self.person_tags = {
            (stable, tag)
            for stable, tag in self.person_tags
            if tag not in held.get(addresses.get(stable, ""), set())
            and tag not in held.get(now.get(stable, ""), set())
        }

    def check_import_back(
        self, diff: pd.DataFrame, crm_before: dict[int, dict[str, Any]], statuses: dict[str, str]
    ) -> None:
        """An opt-out at the provider ends as `no` in the CRM (unless the CRM changed since),
        and the CRM changes only where a person did something at the provider."""
        self.register_imported_contacts()
        self.forget_imported_tags()
        for row in self.world.crm:
            email = str(row["email"]).lower()
            when = self.opted_out_at.get(email)
            if when is None or statuses.get(email) not in ("unsubscribed", "blacklisted"):
                continue
            if self.crm_changed[row["contact_id"]] < when:
                assert row["newsletter"] == "no", self.explain(
                    f"opt-out of {email} not in the CRM (contact {row['contact_id']})", diff
                )
        self.check_crm_changes(crm_before)

    def check_crm_changes(self, crm_before: dict[int, dict[str, Any]]) -> None:
        """The import-back changed the CRM only where a person did something at the provider."""
        for row in self.world.crm:
            before = crm_before.get(row["contact_id"])
            changed = before is None or any(before[k] != row[k] for k in ("newsletter", "tags"))
            if changed:
                STATS[f"{self.PROVIDER} CRM changes imported"] += 1
                addresses = self.history[row["contact_id"]] | {str(row["email"]).lower()}
                assert addresses & self.touched, f"CRM contact {row} changed, nobody did it"

    @invariant()
    def nobody_opted_out_is_subscribed_again(self) -> None:
        STATS[f"{self.PROVIDER} steps"] += 1
        statuses = self.world.members()
        again = {e for e in self.opted_out if statuses.get(e) == "subscribed"}
        assert not again, f"re-subscribed after an opt-out: {sorted(again)}"

    def imported_addresses(self, crm_before: dict[int, dict[str, Any]]) -> set[str]:
        """Every address of the contacts the import-back changed or created: the push of the
        same sync decided on the CRM before that, so their consequences go out with the next."""
        found: set[str] = set()
        for row in self.world.crm:
            before = crm_before.get(row["contact_id"])
            if before is None or any(before[k] != row[k] for k in ("newsletter", "tags")):
                found |= self.history[row["contact_id"]] | {str(row["email"]).lower()}
        return found

    def check_after_sync(
        self,
        diff: pd.DataFrame,
        statuses: dict[str, str],
        tags_before: dict[str, set[str]],
        pending: set[str],
    ) -> None:
        result = classify(frame(*self.world.crm))
        eligible = dict(
            zip(result.eligible["email_key"], result.eligible["contact_id"], strict=True)
        )
        private = set(result.excluded.loc[result.excluded["reason"] == "private", "email_key"])
        subscribed = {e for e, s in statuses.items() if s == "subscribed"}
        leaked = (private - set(eligible)) & subscribed - pending  # pending: the next sync's
        assert not leaked, self.explain(f"private addresses subscribed: {leaked}", diff)
        unexpected = subscribed - set(eligible) - self.person_subscribed - pending
        assert not unexpected, self.explain(f"subscribed, not wanted: {unexpected}", diff)
        missing = {
            email
            for email, crm_id in eligible.items()
            if email not in subscribed and not (self.history[crm_id] & self.touched)
            and email not in self.opted_out
        }  # fmt: skip
        assert not missing, self.explain(f"eligible, untouched, not subscribed: {missing}", diff)
        imports = diff[diff["action"] == "import_back"]
        for row in imports.itertuples():
            addresses = {row.match_key} | self.history.get(_int(row.crm_id), set())
            assert addresses & self.touched, self.explain("import_back nobody did", imports)
        self.check_tags_kept(tags_before, diff)

    def check_tags_kept(
        self, tags_before: dict[str, set[str]], diff: pd.DataFrame
    ) -> dict[str, set[str]]:
        """No tag a person set (and the CRM did not take in) was removed since `tags_before`;
        the members' tags now."""
        tags_after = self.tags_by_stable_id()
        lost = {
            (stable, tag)
            for stable, tag in self.person_tags
            if stable in tags_before and stable in tags_after
            and tag in tags_before[stable] and tag not in tags_after[stable]
        }  # fmt: skip
        assert not lost, self.explain(f"tags people set were removed: {lost}", diff)
        return tags_after

    # --- reading the sandbox ------------------------------------------------------------

    def provider_status(self, email: str) -> str | None:
        return self.world.members().get(email)

    def explain(self, problem: str, diff: pd.DataFrame) -> str:
        columns = ["action", "detail", "crm_id", "match_key", "old_email", "provider_status"]
        return f"{problem}\n{diff[columns].to_string()}\nCRM: {self.world.crm}"


def held_addresses(diff: pd.DataFrame, held: list[dict[str, Any]]) -> set[str]:
    """Both addresses of the contacts whose writes the import-back held."""
    ids = {str(h["crm_id"]) for h in held if h["guard"] == "crm_import_back"}
    rows = diff[diff["crm_id"].astype(str).isin(ids)]
    return set(rows["match_key"]) | set(rows["old_email"].dropna().map(str.lower))


class MailchimpConsent(ConsentMachine):
    PROVIDER = "mailchimp"
    OPT_OUTS: ClassVar[list[str]] = ["unsubscribe", "clean"]
    SUBSCRIBES: ClassVar[list[str]] = ["signup", "resubscribe", "pending"]
    REMOVALS: ClassVar[list[str]] = ["archive", "delete"]

    def audience(self) -> Any:
        account = next(iter(self.world.sandbox.state.mailchimp.values()))
        return account.lists[self.world.provider.ensure_audience().id]

    def stable_id(self, email: str) -> str | None:
        member = next(
            (m for m in self.audience().members.values() if m.email_address.lower() == email),
            None,
        )
        return member.contact_id if member else None

    def tags_by_stable_id(self) -> dict[str, set[str]]:
        return {
            m.contact_id: {t.casefold() for t in m.tags}
            for m in self.audience().members.values()
            if m.status != "archived"
        }


class BrevoConsent(ConsentMachine):
    PROVIDER = "brevo"
    OPT_OUTS: ClassVar[list[str]] = ["unsubscribe", "blacklist", "list_unsubscribe"]
    SUBSCRIBES: ClassVar[list[str]] = ["signup", "resubscribe"]
    REMOVALS: ClassVar[list[str]] = ["delete"]

    def account(self) -> Any:
        return next(iter(self.world.sandbox.state.brevo.values()))

    def stable_id(self, email: str) -> str | None:
        found = self.account().by_email(email)
        return str(found.id) if found else None

    def tags_by_stable_id(self) -> dict[str, set[str]]:
        list_id = int(self.world.provider.ensure_audience().id)
        return {
            str(c.id): {
                t.strip().casefold()
                for t in str(c.attributes.get("NEWSLETTER_TAGS") or "").split(",")
            }
            for c in self.account().contacts.values()
            if list_id in c.listIds
        }


def _int(value: object) -> int:
    return int(str(value)) if value is not None and str(value).isdigit() else -1


TestMailchimpConsent = MailchimpConsent.TestCase
TestBrevoConsent = BrevoConsent.TestCase
