"""A small world for end-to-end sync tests: CRM rows, one sandbox audience reached through the
real client, and a state database; `sync` runs eligibility, snapshot, diff and push."""

from __future__ import annotations

import io
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from newsletter_pipelines.providers.base import Member, Provider
from newsletter_pipelines.sandbox import PersonEvent, Sandbox, SandboxTransport
from newsletter_pipelines.sandbox.people import brevo_person, mailchimp_person
from newsletter_pipelines.settings import CrmValues
from newsletter_pipelines.state.events import StoredEvent
from newsletter_pipelines.state.ledger import (
    ledger_rows,
    load_ledger_frame,
    load_ledger_frame_at,
    record,
)
from newsletter_pipelines.state.schema import ensure_schema
from newsletter_pipelines.storage.frames import read_frame, write_frame
from newsletter_pipelines.sync.eligibility import EligibilityResult, classify
from newsletter_pipelines.sync.email_address import raw_match_key
from newsletter_pipelines.sync.event_import import (
    confirmed_deletions,
    deleted_addresses,
    event_addresses,
    provable,
)
from newsletter_pipelines.sync.guards import MassLimits, push_verdicts
from newsletter_pipelines.sync.import_back import (
    Audience,
    CrmView,
    ImportBackPlan,
    plan_import_back,
    provider_change_keys,
    recorded,
    unimported_keys,
)
from newsletter_pipelines.sync.inputs import (
    SNAPSHOT_COLUMNS,
    actual_members,
    build_diff,
    crm_exclusions,
    desired_contacts,
    members_by_key,
    redecider,
    snapshot_frame_of_rows,
)
from newsletter_pipelines.sync.push import (
    COUNTED,
    LEDGER,
    PushContext,
    PushSummary,
    acted_on,
    member_keys,
    push_diff,
)
from newsletter_pipelines.sync.rules import Context, reconcile
from newsletter_pipelines.sync.scope import Scope, close_scope, scope_diff
from newsletter_pipelines.sync.tags import TAG_STYLES
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
    imported: list[ImportBackPlan] = field(default_factory=list)  # plans of import_back syncs
    # per plan: the stable ids of the members it was planned from, by match key (a push after
    # it may move members to other addresses)
    imported_from: list[dict[str, str]] = field(default_factory=list)
    activities: set[str] = field(default_factory=set)  # source keys applied to `crm`
    stamp: Callable[[], str] = lambda: "2026-06-01 00:00:00"  # updated_at of imported changes
    new_id: Callable[[], int] | None = None  # id of an imported contact (default: max + 1)

    def sync(
        self,
        log: Callable[[str], None] = lambda _: None,
        guard: MassLimits | None = None,
        import_back: bool = False,
        write_back: bool = True,
        run_id: str = "run",
    ) -> tuple[pd.DataFrame, PushSummary]:
        """One full sync; with `guard`, mass removals and renames are held as the asset does;
        with `import_back`, the CRM learns the provider-side changes before the push, as in
        `full_sync_job` (without `write_back` they are only planned, as in report-only mode,
        and the push leaves them for the next run)."""
        result, members, diff = self.decide()
        assert diff["match_key"].is_unique, "one action per contact, member and ledger row"
        unimported: frozenset[str] = frozenset()
        if import_back:
            plan = self.import_back(diff, members, apply=write_back)
            unimported = unimported_keys(diff, plan, written=write_back)
        # what `audience_sync` reads of the stored diff: every row's counted columns, and the
        # rows the push acts on (`push.acted_on`); the snapshot members those rows name
        verdicts = push_verdicts(diff[list(COUNTED)], guard or MassLimits(), False, False)
        pushed = as_the_push_reads_it(diff[acted_on(diff)])
        keys = member_keys(pushed)
        ctx = PushContext(
            self.engine,
            self.provider_name,
            run_id,
            chunk_size=20,
            hold_removals=guard is not None and not verdicts["removal_guard"].passed,
            hold_renames=guard is not None and not verdicts["rename_guard"].passed,
            log=log,
            unimported=unimported,
            redecide=redecider(
                result.eligible,
                result.excluded,
                members,
                lambda: load_ledger_frame(self.engine, self.provider_name),
                provider=self.provider_name,
                system_tag=SYSTEM_TAG[self.provider_name],
            ),
        )
        found = members[members["match_key"].isin(set(keys))]
        summary = push_diff(self.provider, pushed, members_by_key(found, keys) if keys else {}, ctx)
        return diff, summary

    def scope(self, keys: Collection[str] = (), contact_ids: Collection[str] = ()) -> Scope:
        """What a run about `keys` and `contact_ids` reads (`sync.scope.close_scope`): from the
        CRM rows, the ledger, and the audience through the client's `members`, as the jobs do."""

        def contacts_at(keys: frozenset[str], ids: frozenset[str]) -> pd.DataFrame:
            rows = [
                r
                for r in self.crm
                if str(r["contact_id"]) in ids or raw_match_key(r["email"]) in keys
            ]
            return frame(*rows)

        def ledger_at(
            keys: frozenset[str], ids: frozenset[str], stable: frozenset[str]
        ) -> pd.DataFrame:
            return load_ledger_frame_at(self.engine, self.provider_name, keys, ids, stable)

        def members_at(emails: Collection[str]) -> list[Member]:
            return self.provider.members(list(emails))

        return close_scope(keys, contacts_at, ledger_at, members_at, contact_ids=contact_ids)

    def push_changes(
        self, contact_ids: Collection[str], run_id: str = "changes"
    ) -> tuple[Scope, pd.DataFrame, PushSummary] | None:
        """What `push_crm_changes` does for the CRM contacts `contact_ids` changed: their
        scope decided as a full sync decides it, the rows of ledger rows whose member is not at
        their address left out, provider-side changes left to the import-back; None for a scope
        that did not close (left to the nightly sync)."""
        scope = self.scope(contact_ids=contact_ids)
        if not scope.closed:
            return None
        name = self.provider_name
        found = scope_diff(scope, CrmValues(), provider=name, system_tag=SYSTEM_TAG[name])
        diff = found.pushable()
        owners = frozenset(scope.contacts["contact_id"].astype(str))
        ctx = PushContext(
            self.engine,
            name,
            run_id,
            chunk_size=20,
            log=lambda _: None,
            unimported=provider_change_keys(diff),
            redecide=redecider(
                found.eligibility.eligible,
                found.eligibility.excluded,
                scope.snapshot,
                lambda: load_ledger_frame_at(self.engine, name, scope.keys, owners),
                provider=name,
                system_tag=SYSTEM_TAG[name],
            ),
        )
        summary = push_diff(self.provider, diff, members_by_key(scope.snapshot), ctx)
        return scope, diff, summary

    def decide(self) -> tuple[EligibilityResult, pd.DataFrame, pd.DataFrame]:
        """Eligibility, snapshot and reconciliation diff as a full sync computes them now."""
        result = classify(frame(*self.crm))
        members = snapshot_frame_of_rows(self.provider.snapshot_rows())  # as the asset reads it
        ledger = load_ledger_frame(self.engine, self.provider_name)
        diff = build_diff(
            result.eligible,
            result.excluded,
            as_the_diff_reads_it(members),
            ledger,
            provider=self.provider_name,
            system_tag=SYSTEM_TAG[self.provider_name],
        )
        # the bulk pass settles only what the rules would leave unchanged (over the snapshot's
        # Python values, as the push reads it): every world checks it
        alone = reconcile(
            desired_contacts(result.eligible),
            actual_members(members),
            ledger_rows(ledger),
            crm_exclusions(result.excluded),
            Context(TAG_STYLES[self.provider_name], SYSTEM_TAG[self.provider_name]),
        )
        pd.testing.assert_frame_equal(by_key(diff), by_key(alone), check_dtype=False)
        return result, members, diff

    def import_back(
        self, diff: pd.DataFrame, members: pd.DataFrame, apply: bool = True
    ) -> ImportBackPlan:
        """Plan the import-back of `diff` and apply it to the CRM rows, each change once (as
        `crm.writer.CrmWriter` does in a database); only plan it unless `apply`."""
        result = classify(frame(*self.crm))
        name = self.provider_name
        plan = plan_import_back(
            diff,
            members,
            CrmView.for_diff(diff, result.eligible, result.excluded),
            Audience(name, name, SYSTEM_TAG[name]),
            min_vanish_count=1_000,  # a small world: never held
        )
        if apply:
            self.apply(plan, members)
        return plan

    def import_only(self, run_id: str = "nightly") -> tuple[pd.DataFrame, ImportBackPlan]:
        """What `import_back_job` does: snapshot, diff, the import-back applied to the CRM rows
        and the ledger advanced for what the CRM took in; nothing pushed."""
        _, members, diff = self.decide()
        plan = self.import_back(diff, members)
        self.record_imported(diff, plan, run_id)
        return diff, plan

    def record_imported(self, diff: pd.DataFrame, plan: ImportBackPlan, run_id: str) -> None:
        """The ledger rows of the provider-side changes an applied plan took in (as
        `defs.import_back.writing.import_back` records them)."""
        record(self.engine, self.provider_name, run_id, recorded(diff, plan, written=True)[1])

    def plan_events(
        self, events: Sequence[StoredEvent]
    ) -> tuple[ImportBackPlan, pd.DataFrame, Scope] | None:
        """What `provider_events_job` plans for `events`, with the diff it planned from and
        the scope; None for a scope that did not close (the job leaves it to the nightly run)."""
        scope = self.scope(event_addresses(events))
        if not scope.closed:
            return None
        name = self.provider_name
        found = scope_diff(scope, CrmValues(), provider=name, system_tag=SYSTEM_TAG[name])
        deleted = confirmed_deletions(scope, deleted_addresses(events), self.provider.members_by_id)
        diff = provable(found.diff, found.outside, deleted)
        result = found.eligibility
        plan = plan_import_back(
            diff,
            scope.snapshot,
            CrmView.for_diff(diff, result.eligible, result.excluded),
            Audience(name, name, SYSTEM_TAG[name]),
        )
        return plan, diff, scope

    def import_events(self, events: Sequence[StoredEvent], run_id: str = "events") -> bool:
        """What `provider_events_job` does for `events`: the plan applied to the CRM rows and
        the ledger advanced for what the CRM took in; False for a scope that did not close."""
        planned = self.plan_events(events)
        if planned is None:
            return False
        plan, diff, scope = planned
        self.apply(plan, scope.snapshot)
        self.record_imported(diff, plan, run_id)
        return True

    def apply(self, plan: ImportBackPlan, members: pd.DataFrame) -> None:
        """Apply an import-back's plan to the CRM rows, each change once (as
        `crm.writer.CrmWriter` does in a database); `members`: the snapshot it was planned
        from."""
        self.imported.append(plan)
        self.imported_from.append(
            dict(zip(members["match_key"], members["stable_id"].astype(str), strict=True))
        )
        now = self.stamp()
        rows = {str(r["contact_id"]): r for r in self.crm}
        for change in plan.changes:
            if change.activity.source_key in self.activities:
                continue
            self.activities.add(change.activity.source_key)
            row = rows[str(change.contact_id)]
            tags = (set(row["tags"]) | change.add_tags) - change.remove_tags  # type: ignore[arg-type]
            if change.newsletter is not None and change.newsletter != row["newsletter"]:
                row.update(newsletter=change.newsletter, updated_at=now)
            if tags != set(row["tags"]):  # type: ignore[arg-type]
                row.update(tags=tuple(sorted(tags)), updated_at=now)
        for new in plan.new_contacts:
            if new.activity.source_key in self.activities:
                continue
            self.activities.add(new.activity.source_key)
            top = max((int(str(r["contact_id"])) for r in self.crm), default=0)
            crm_id = self.new_id() if self.new_id else top + 1
            self.crm.append(
                contact(
                    crm_id,
                    email=new.email,
                    salutation=new.salutation,
                    first_name=new.first_name,
                    last_name=new.last_name,
                    tags=tuple(sorted(new.tags)),
                    updated_at=now,
                )
            )

    def writes(self) -> int:
        return self.sandbox.stats.count(self.provider_name, writes=True)

    def members(self) -> dict[str, str]:
        return {m.email.lower(): m.status.value for m in self.provider.snapshot()}

    def act(self, email: str, action: str, **extra: Any) -> None:
        """A person (or an admin) does something at the provider."""
        audience = self.provider.ensure_audience()
        apply = mailchimp_person if self.provider_name == "mailchimp" else brevo_person
        apply(self.sandbox, PersonEvent(list_id=audience.id, email=email, action=action, **extra))

    def set(self, crm_id: int, **values: object) -> None:
        row = next(r for r in self.crm if r["contact_id"] == crm_id)
        row.update({"updated_at": "2026-01-01 00:00:00", **values})


# what a diff row decides (the bulk pass leaves what is only shown, such as the member's tags)
DECIDED = [
    "match_key",
    "action",
    "detail",
    "crm_id",
    "email",
    "old_email",
    "provider_change",
    "import_tags",
    "import_untags",
    "write_key",
    "ledger_after",
    "settled_intent",
]


def by_key(diff: pd.DataFrame) -> pd.DataFrame:
    return diff.sort_values("match_key", kind="stable").reset_index(drop=True)[DECIDED]


@contextmanager
def open_world(provider_name: str, folder: Path, contacts: int = 50) -> Iterator[World]:
    """A fresh sandbox audience, a state database in `folder` and `contacts` CRM rows."""
    sandbox = Sandbox()
    transport = SandboxTransport(sandbox)
    if provider_name == "mailchimp":
        provider = make_mailchimp(transport, "CRM Newsletter")
    else:
        brevo_account(sandbox)
        provider = make_brevo(transport, "CRM Newsletter")
    engine = sa.create_engine(f"sqlite:///{folder / 'state.sqlite3'}")
    ensure_schema(engine, upgrade=True)
    crm = [
        contact(i, email=f"person{i}@example.de", tags=("Käufer",) if i % 2 else ())
        for i in range(1, contacts + 1)
    ]
    try:
        yield World(provider_name, sandbox, provider, engine, crm)
    finally:
        provider.close()
        sandbox.close()
        engine.dispose()


def as_the_diff_reads_it(snapshot: pd.DataFrame) -> pd.DataFrame:
    """The snapshot frame stored and read back as `reconciliation_diff` reads it (its text
    columns Arrow-backed)."""
    buffer = io.BytesIO()
    write_frame(snapshot, buffer)
    buffer.seek(0)
    return read_frame(buffer, list(SNAPSHOT_COLUMNS), arrow_text=True)


def as_the_push_reads_it(diff: pd.DataFrame) -> pd.DataFrame:
    """The diff stored and read back as `audience_sync` reads it (its ledger rows Arrow-backed,
    decoded by the push where it needs them)."""
    buffer = io.BytesIO()
    write_frame(diff, buffer)
    buffer.seek(0)
    return read_frame(buffer, arrow_structs=LEDGER)
