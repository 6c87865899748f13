"""Plan the import-back: what the CRM learns from the provider-side changes the diff proves.

The rules name each provider-side change once (`rules.ProviderChange`, `import_tags`); this
module turns them into CRM changes, one per CRM contact with the member's address:

- opted out (unsubscribed, blacklisted, spam complaint) → newsletter `no` on every contact with
  that address (an opt-out belongs to the address), activity `newsletter_unsubscribed`;
- cleaned (hard bounce) → activity `hard_bounce`, newsletter unchanged;
- archived or deleted by someone else while the sync had it subscribed → newsletter
  `unspecified` on the contacts that still say `yes`, activity `removed_at_provider`; held
  as a whole when more members vanished than the removal guard's limits allow;
- signed up or re-subscribed at the provider → newsletter `yes` on contacts whose last CRM
  change is older than the provider's (`rules.provider_is_newer`), activity
  `newsletter_subscribed`; an address no contact has becomes a new contact (names, salutation,
  tags from the member);
- tags a person added at the provider (never the system tag) → added to the contact; tags
  the sync had pushed and a person removed there while the CRM kept them → removed;
- the member's address changed at the provider → activity `email_changed_at_provider` on the
  owner contact (old and new address in its details), nothing else: the CRM's address wins and
  the push sends it back.

Every CRM change carries a source key made from the change itself (audience, the member's
address (not the contact's, when it changed under a contact's previous address), kind,
what the ledger knew, the provider's time or id, contact; for an address change the contact,
both addresses and the time), so applying a plan twice writes once.
No provider calls and no Dagster here.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from newsletter_pipelines.bulk import records
from newsletter_pipelines.crm.writer import Activity, ContactChange, NewContact, WriteSummary
from newsletter_pipelines.state.ledger import OutcomeRecord
from newsletter_pipelines.storage.frames import decoded_structs, struct_objects
from newsletter_pipelines.sync.guards import MassGuard, MassVerdict, check_mass
from newsletter_pipelines.sync.identity import BLOCKING, LedgerRow
from newsletter_pipelines.sync.rules import (
    ACTIVE,
    OPTED_OUT,
    WRITE_ACTIONS,
    AddressMove,
    ProviderChange,
    known_opt_out,
    provider_is_newer,
)
from newsletter_pipelines.values import as_datetime

VANISH_GUARD = MassGuard(
    "archived or deleted at the provider since the last sync",
    "allow_mass_vanish",
    "Their import-back (newsletter 'unspecified') is held",
    asset="crm_import_back",
)


ACTING = ("provider_change", "import_tags", "import_untags")
"""The diff's columns of provider-side changes: a row without a value in one of them is no
import-back's concern (`acting_rows`)."""
DIFF_COLUMNS_READ = (
    "action",
    "detail",
    "crm_id",
    "match_key",
    "email",
    "provider_id",
    "provider_status",
    *ACTING,
    "address_move",
    "ledger_before",
    "ledger_after",
)
"""The diff's columns an import-back reads."""
CRM_COLUMNS_READ = ("contact_id", "email_key", "updated_at")
"""The columns `CrmView.for_diff` reads of the eligible subscribers; of the excluded contacts
also `newsletter`."""


def acting_rows(diff: pd.DataFrame) -> pd.DataFrame:
    """The diff's rows that carry a provider-side change or tags to import."""
    return diff[
        diff["provider_change"].notna()
        | diff["import_tags"].notna()
        | diff["import_untags"].notna()
    ]


@dataclass(frozen=True)
class CrmView:
    """What the planner needs to know of the CRM contacts a diff concerns: contacts by address
    key, their newsletter value (`yes`/`no`/`unknown`) and when each last changed."""

    by_key: Mapping[str, tuple[str, ...]]
    newsletter: Mapping[str, str]
    updated_at: Mapping[str, datetime | None]

    @classmethod
    def for_diff(
        cls, diff: pd.DataFrame, eligible: pd.DataFrame, excluded: pd.DataFrame
    ) -> CrmView:
        """From the eligibility frames (every CRM contact is in one of them), only the contacts
        with an address or id of a row that `plan_import_back` acts on."""
        rows = acting_rows(diff)
        after = [r.member_key for r in rows["ledger_after"] if r is not None]
        keys = set(rows["match_key"]) | set(after)
        ids = set(rows["crm_id"].dropna().astype(str))
        ids |= {m.owner for m in rows["address_move"] if m is not None and m.owner is not None}
        by_key: dict[str, list[str]] = {}
        newsletter: dict[str, str] = {}
        updated_at: dict[str, datetime | None] = {}
        for frame in (eligible, excluded):
            concerned = frame["email_key"].isin(keys)
            if ids:
                concerned |= _has_id(frame["contact_id"], ids)
            part = frame[concerned]
            said = part["newsletter"] if frame is excluded else ["yes"] * len(part)
            for crm_id, key, updated, value in zip(
                part["contact_id"].astype(str),
                part["email_key"],
                part["updated_at"],
                said,
                strict=True,
            ):
                if key in keys:
                    by_key.setdefault(key, []).append(crm_id)
                newsletter[crm_id] = value
                updated_at[crm_id] = as_datetime(updated)
        return cls(
            by_key={k: tuple(sorted(v)) for k, v in by_key.items()},
            newsletter=newsletter,
            updated_at=updated_at,
        )


def _has_id(column: pd.Series, ids: set[str]) -> pd.Series:
    """Which CRM ids of `column` are among `ids` (text): integer ids are compared as integers,
    without turning a million of them into text."""
    if column.dtype.kind in "iu":
        return column.isin({int(i) for i in ids if i.lstrip("-").isdigit()})
    return column.astype(str).isin(ids)


@dataclass
class ImportBackPlan:
    """The CRM changes of one audience's import-back, and what was held or left alone."""

    vanish: MassVerdict  # the guard against a mass archive or delete at the provider
    changes: list[ContactChange] = field(default_factory=list)
    new_contacts: list[NewContact] = field(default_factory=list)
    held: list[dict[str, Any]] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)  # per activity kind

    def __len__(self) -> int:
        return len(self.changes) + len(self.new_contacts)


@dataclass(frozen=True)
class Audience:
    """The audience the diff belongs to."""

    key: str
    provider: str
    system_tag: str | None = None


@dataclass(frozen=True)
class SnapshotView:
    """What the import-back reads of the provider snapshot: how many members are active (the
    vanish guard's base), and the members at some addresses (a million-member snapshot need
    not be read whole)."""

    active: int
    at: Callable[[Collection[str]], pd.DataFrame]  # the members at these match keys

    @classmethod
    def of(cls, snapshot: pd.DataFrame) -> SnapshotView:
        """The view of a whole snapshot frame."""
        return cls(
            int(snapshot["status"].isin(ACTIVE).sum()),
            lambda keys: snapshot[snapshot["match_key"].isin(keys)],
        )


def plan_import_back(
    diff: pd.DataFrame,
    snapshot: pd.DataFrame | SnapshotView,
    crm: CrmView,
    audience: Audience,
    *,
    max_vanish_share: float = 0.1,
    min_vanish_count: int = 10,
    allow_mass_vanish: bool = False,
    bounced: Collection[str] = frozenset(),
    record_bounces: bool = True,
) -> ImportBackPlan:
    """The CRM changes the diff's provider-side changes call for. `bounced`: match keys of
    members the provider blocklisted for a hard bounce (Brevo shows a bounce only as a
    blocklisting, like an opt-out: see `bounce_candidates`). `record_bounces` False: a hard
    bounce, which changes nothing in the CRM, is not recorded as an activity either."""
    rows = acting_rows(diff)
    removed = rows[rows["provider_change"] == ProviderChange.REMOVED.value]
    view = snapshot if isinstance(snapshot, SnapshotView) else SnapshotView.of(snapshot)
    active = view.active + len(removed)
    plan = ImportBackPlan(
        vanish=check_mass(
            VANISH_GUARD,
            len(removed),
            active,
            max_vanish_share,
            min_count=min_vanish_count,
            allow=allow_mass_vanish,
        )
    )
    keys = {address(r) for r in records(rows)}
    # the last one wins; no member is read when nothing acts (a re-run's usual import-back)
    members = {m["match_key"]: m for m in records(view.at(keys))} if keys else {}
    planner = _Planner(
        plan, members, crm, audience, frozenset(bounced), record_bounces=record_bounces
    )
    for row in records(rows):
        change = row["provider_change"]
        if change == ProviderChange.REMOVED.value and not plan.vanish.passed:
            plan.held.append(
                {
                    "email": row["email"],
                    "crm_id": row["crm_id"],
                    "kind": change,
                    "match_key": row["match_key"],
                }
            )
            continue
        if change is not None:
            planner.change(row, ProviderChange(change))
        if row["import_tags"] or row["import_untags"]:
            planner.tags(row)
    return plan


class _Planner:
    def __init__(
        self,
        plan: ImportBackPlan,
        members: Mapping[str, Mapping[str, Any]],
        crm: CrmView,
        audience: Audience,
        bounced: frozenset[str],
        *,
        record_bounces: bool,
    ) -> None:
        self.plan, self.members, self.crm, self.audience = plan, members, crm, audience
        self.bounced, self.record_bounces = bounced, record_bounces

    def member(self, key: str) -> Mapping[str, Any] | None:
        return self.members.get(key)

    def contacts(self, row: Mapping[str, Any]) -> tuple[str, ...]:
        """The CRM contacts a change concerns: those with the member's address (an opt-out
        under a contact's previous address concerns whoever has that address now, not the
        other contacts at the contact's new one), and for an opt-out or a removal the row's
        contact too."""
        found = set(self.crm.by_key.get(address(row), ()))
        kinds = (ProviderChange.REMOVED.value, ProviderChange.OPTED_OUT.value)
        owner = None if row["crm_id"] is None else str(row["crm_id"])
        if owner in self.crm.newsletter and row["provider_change"] in kinds:
            found.add(owner)  # under the contact's previous address (if still in the CRM)
        return tuple(sorted(found))

    def activity(
        self, row: Mapping[str, Any], kind: str, crm_id: str, member: Mapping[str, Any] | None
    ) -> Activity:
        before = row["ledger_before"]
        when = _when(member)
        if member is None and before is not None and before.unimported_opt_out is not None:
            when = as_datetime(before.provider_changed_at)  # when the sync saw the opt-out
        parts = (
            self.audience.key,
            address(row),
            kind,
            before.state.value if before is not None else "-",
            str(when or (member or {}).get("provider_id") or row["provider_id"] or "-"),
            crm_id,
        )
        return Activity(
            kind=kind,
            provider=self.audience.provider,
            audience=self.audience.key,
            occurred_at=when,
            details={
                "email": row["email"],
                "provider_status": row["provider_status"],
                "change": row["provider_change"],
                "detail": row["detail"],
            },
            source_key=hashlib.sha256("\x1f".join(parts).encode()).hexdigest(),
        )

    def add(self, change: ContactChange) -> None:
        self.plan.changes.append(change)
        self.plan.counts[change.activity.kind] += 1

    def change(self, row: Mapping[str, Any], change: ProviderChange) -> None:
        member = self.member(address(row))
        if change is ProviderChange.OPTED_OUT:
            status = seen_opt_out((member or {}).get("status") or row["provider_status"], row)
            bounced = status == "cleaned" or address(row) in self.bounced
            kind = "hard_bounce" if bounced else "newsletter_unsubscribed"
            if bounced and not self.record_bounces:
                return
            by = (member or {}).get("unsubscribed_by")
            again, when = known_opt_out(row["ledger_before"], by), _when(member)
            for crm_id in self.contacts(row):
                if again and not provider_is_newer(when, self.crm.updated_at.get(crm_id)):
                    continue  # changed in the CRM since the person's new opt-out: it stands
                self.add(
                    ContactChange(
                        contact_id=crm_id,
                        activity=self.activity(row, kind, crm_id, member),
                        newsletter=None if bounced else "no",
                    )
                )
        elif change is ProviderChange.REMOVED:
            for crm_id in self.contacts(row):
                still_yes = self.crm.newsletter.get(crm_id) == "yes"
                self.add(
                    ContactChange(
                        contact_id=crm_id,
                        activity=self.activity(row, "removed_at_provider", crm_id, member),
                        newsletter="unspecified" if still_yes else None,
                    )
                )
        elif change is ProviderChange.EMAIL_CHANGED:
            self.email_changed(row)
        else:  # signed up or re-subscribed
            self.subscribed(row, member)

    def email_changed(self, row: Mapping[str, Any]) -> None:
        """Tell the owner contact (if the CRM still has it) its member's new address. The
        contact and the source key are made from the move alone (owner, old and new address,
        when): which row of a diff names the move depends on what else the run decides there,
        and a row about the member at its new address may be about another contact there."""
        move: AddressMove = row["address_move"]
        owner = move.owner if move.owner is not None else row["crm_id"]
        crm_id = None if owner is None else str(owner)
        if crm_id not in self.crm.newsletter:
            return
        base = self.activity(row, "email_changed_at_provider", crm_id, None)
        parts = (
            self.audience.key,
            base.kind,
            crm_id,
            move.old_email,
            move.new_email,
            str(move.changed_at or "-"),
        )
        self.add(
            ContactChange(
                contact_id=crm_id,
                activity=replace(
                    base,
                    occurred_at=move.changed_at,
                    details={
                        **base.details,
                        "old_email": move.old_email,
                        "new_email": move.new_email,
                    },
                    source_key=hashlib.sha256("\x1f".join(parts).encode()).hexdigest(),
                ),
            )
        )

    def subscribed(self, row: Mapping[str, Any], member: Mapping[str, Any] | None) -> None:
        contacts = self.contacts(row)
        if not contacts:
            if member is not None:
                self.new_contact(row, member)
            return
        when = _when(member)
        for crm_id in contacts:
            if not provider_is_newer(when, self.crm.updated_at.get(crm_id)):
                continue  # the CRM changed since (or cannot say when): its value stands
            self.add(
                ContactChange(
                    contact_id=crm_id,
                    activity=self.activity(row, "newsletter_subscribed", crm_id, member),
                    newsletter="yes",
                )
            )

    def new_contact(self, row: Mapping[str, Any], member: Mapping[str, Any]) -> None:
        system = {self.audience.system_tag} if self.audience.system_tag else set()
        contact = NewContact(
            email=member["email"],
            salutation=member["salutation"] or "",
            first_name=member["first_name"] or "",
            last_name=member["last_name"] or "",
            tags=frozenset(member["tags"]) - system,
            activity=self.activity(row, "newsletter_subscribed", "new", member),
        )
        self.plan.new_contacts.append(contact)
        self.plan.counts["contact_created"] += 1

    def tags(self, row: Mapping[str, Any]) -> None:
        """Tags added at the provider are added to the contact, tags removed there removed."""
        system = {self.audience.system_tag} if self.audience.system_tag else set()
        added = frozenset(row["import_tags"] or ()) - system
        removed = frozenset(row["import_untags"] or ())
        if row["crm_id"] is None or not (added or removed):
            return
        crm_id = str(row["crm_id"])
        member = self.member(address(row))
        for kind, tags in (
            ("tags_added_at_provider", added),
            ("tags_removed_at_provider", removed),
        ):
            if not tags:
                continue
            base = self.activity(row, kind, crm_id, member)
            key = "\x1f".join((base.source_key, *sorted(tags)))
            self.add(
                ContactChange(
                    contact_id=crm_id,
                    activity=replace(
                        base,
                        details={**base.details, "tags": sorted(tags)},
                        source_key=hashlib.sha256(key.encode()).hexdigest(),
                    ),
                    add_tags=tags if kind == "tags_added_at_provider" else frozenset(),
                    remove_tags=tags if kind == "tags_removed_at_provider" else frozenset(),
                )
            )


def address(row: Mapping[str, Any]) -> str:
    """The address of the member a diff row's provider-side change happened at: the ledger
    row's, which differs from the row's (the contact's) when it happened under a contact's
    previous address."""
    after = row["ledger_after"]
    return after.member_key if after is not None else row["match_key"]


def _when(member: Mapping[str, Any] | None) -> datetime | None:
    """The provider's time of the member's last change, if it has one."""
    return as_datetime(member.get("last_changed")) if member else None


def bounce_candidates(diff: pd.DataFrame) -> dict[str, str]:
    """Provider ids of members newly seen blocklisted, to their addresses (`address`): on Brevo
    a hard bounce, a complaint and an unsubscribe all look like this; the provider tells why on
    request."""
    rows = diff[
        (diff["provider_change"] == ProviderChange.OPTED_OUT.value)
        & (diff["provider_status"] == "blacklisted")
        & diff["provider_id"].notna()
    ]
    return {str(r["provider_id"]): address(r) for r in records(rows)}


def unimported_keys(diff: pd.DataFrame, plan: ImportBackPlan, written: bool) -> frozenset[str]:
    """Match keys of provider-side changes the CRM did not take in: those held by the vanish
    guard, or all of them when nothing was written (dry run, report only). The push leaves
    them out of the ledger (`push.PushContext.unimported`), so the next run finds them again."""
    if not written:
        return provider_change_keys(diff)
    return frozenset(held["match_key"] for held in plan.held)


def provider_change_keys(diff: pd.DataFrame) -> frozenset[str]:
    """Match keys of the diff's rows that carry a provider-side change."""
    return frozenset(diff.loc[diff["provider_change"].notna(), "match_key"])


def recorded(
    diff: pd.DataFrame, plan: ImportBackPlan, written: bool
) -> tuple[frozenset[str], list[LedgerRow]]:
    """What an import-back leaves in the ledger: the match keys of the changes the CRM did not
    take in (`unimported_keys`), and the rows it records, the observations of the rest when
    it wrote (`observations`) and what `unimported_consent` keeps either way."""
    unimported = unimported_keys(diff, plan, written)
    rows = observations(diff, unimported) if written else []
    return unimported, rows + unimported_consent(diff, unimported)


def observations(diff: pd.DataFrame, unimported: frozenset[str]) -> list[LedgerRow]:
    """The ledger rows of the provider-side changes the CRM took in and no write concerns (what
    the push would store for them): recorded by the import-back, each change is found once."""
    rows = diff[
        diff["provider_change"].notna()
        & diff["ledger_after"].notna()
        & ~diff["action"].isin([a.value for a in WRITE_ACTIONS])
        & ~diff["match_key"].isin(unimported)
    ]
    return rows["ledger_after"].tolist()


def keeps_consent(diff: pd.DataFrame) -> pd.Series:
    """Which rows' ledger rows are stored even when the CRM does not take their provider-side
    change in (report only, dry run): those that carry what the sync knows of consent, an
    opt-out new to the CRM and the row of an opted-out member that moved at the provider. The
    rest waits, so the next run that writes to the CRM finds the change again."""
    changes = (ProviderChange.OPTED_OUT.value, ProviderChange.EMAIL_CHANGED.value)
    changed = diff["provider_change"].isin(changes).to_numpy()
    rows = diff[changed]
    keep = np.zeros(len(diff), dtype=bool)
    keep[changed] = [
        change == ProviderChange.OPTED_OUT.value
        or (after is not None and after.moved_from is not None and after.state in BLOCKING)
        for change, after in zip(
            rows["provider_change"], struct_objects(rows["ledger_after"]), strict=True
        )
    ]
    return pd.Series(keep, index=diff.index)


def unimported_consent(diff: pd.DataFrame, unimported: frozenset[str]) -> list[LedgerRow]:
    """The ledger rows `keeps_consent` keeps among the changes the CRM did not take in: an
    opt-out marked as such (`LedgerRow.unimported_opt_out`, with the status the member had),
    which the next run that writes to the CRM imports, whether the member is still there or
    not; an opted-out member's row moved to its new address, so the opt-out follows the member
    even if it is deleted there (its address change is then not told to the CRM later: the
    opt-out is what must never be lost)."""
    rows = diff[keeps_consent(diff) & diff["match_key"].isin(unimported)]
    kept = []
    columns = ["provider_change", "ledger_before", "ledger_after", "provider_status"]
    for row in records(decoded_structs(rows[columns])):
        after = row["ledger_after"]
        if row["provider_change"] != ProviderChange.OPTED_OUT.value:
            kept.append(after)
            continue
        kept.append(after.moved(unimported_opt_out=seen_opt_out(row["provider_status"], row)))
    return kept


def seen_opt_out(status: str | None, row: Mapping[str, Any]) -> str | None:
    """The opt-out status a diff row's opt-out stands for: the member's, or, when it was
    archived or deleted since, the one its ledger row kept (`LedgerRow.unimported_opt_out`)."""
    before = row["ledger_before"]
    if status in OPTED_OUT or before is None:
        return status
    return before.unimported_opt_out


def outcome_records(
    plan: ImportBackPlan, summary: WriteSummary | None, mode: str
) -> list[OutcomeRecord]:
    """The outcome log (`state.ledger.record`) of an import-back: one row per planned CRM change
    and per held vanishing, the activity kind as the action, what the writer did as the outcome
    (`crm.writer.ItemOutcome`), or `mode` (dry_run, report_only) when nothing was written."""
    results = {item.source_key: item for item in summary.items} if summary else {}
    logged = []
    for item in [*plan.changes, *plan.new_contacts]:
        activity = item.activity
        done = results.get(activity.source_key)
        crm_id = done.contact_id if done else getattr(item, "contact_id", None)
        logged.append(
            OutcomeRecord(
                crm_id=None if crm_id is None else str(crm_id),
                email=activity.details.get("email"),
                action=activity.kind,
                outcome=str(done.result) if done else mode,
            )
        )
    logged += [
        OutcomeRecord(
            crm_id=held["crm_id"],
            email=held["email"],
            action="removed_at_provider",
            outcome="held",
            message="held by vanish_guard; released by allow_mass_vanish",
        )
        for held in plan.held
    ]
    return logged
