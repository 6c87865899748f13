"""The one rule set of the three-way reconciliation: CRM desired, provider actual, ledger base.

Every eligible contact, every provider member and every ledger row that needs attention gets
exactly one action:
- `create`: eligible, not at the provider, nothing known against it;
- `update`: at the provider, fields or tags differ (the CRM wins on fields; tags people added at
  the provider stay), or the address changed in the CRM (the same member gets the new address);
- `unsubscribe`: subscribed at the provider, newsletter = no in the CRM (a sign-up at the
  provider unknown to the ledger wins only when it is newer than the CRM's last change);
- `remove`: subscribed at the provider and pushed by the sync, no longer eligible for another
  reason (private always wins: even a member the sync never pushed is removed);
- `unchanged`: nothing to send (possibly a ledger observation);
- `blocked_by_provider`: eligible, but the provider holds or held an opt-out (also under a
  previous address of the contact, also after the member was archived or deleted), holds it
  archived with unknown consent or as transactional, or refused this very write before;
- `import_back`: changed at the provider while the CRM did not: opted out, archived or deleted,
  signed up or re-subscribed, tags added.
Identity follows `identity`: a member is its address; an eligible contact whose address is a
member owns it; otherwise the contact's own previous member gets the new address. An address
changed at the provider is found before deciding (`address_moves`: a ledger row whose address is
no member, and the member with its stable id at an address the ledger does not know): the row
moves to the new address with everything it knew (an opt-out stays an opt-out), so the member is
decided as the owner's, the CRM's address is pushed back, and one row reports the change
(`email_changed`). Each row also carries the ledger row before and after (`push` stores the
latter once the write is confirmed; rows without a write store it at once). No provider calls
and no Dagster here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

import pandas as pd

from newsletter_pipelines.sync.identity import (
    BLOCKING,
    MAY_CREATE,
    SEEN_ACTIVE,
    Intent,
    LedgerRow,
    RowState,
    resolve_intents,
    write_key,
)
from newsletter_pipelines.sync.tags import TagStyle
from newsletter_pipelines.values import as_datetime

_SENDS_TAGS = (Intent.CREATE, Intent.UPDATE, Intent.CHANGE_EMAIL)


class SyncAction(StrEnum):
    """The one thing the sync does about a contact."""

    CREATE = "create"
    UPDATE = "update"
    UNSUBSCRIBE = "unsubscribe"
    REMOVE = "remove"
    UNCHANGED = "unchanged"
    BLOCKED_BY_PROVIDER = "blocked_by_provider"
    IMPORT_BACK = "import_back"


class ProviderChange(StrEnum):
    """What someone did at the provider that the diff proves (the import-back acts on it)."""

    OPTED_OUT = "opted_out"  # unsubscribed, cleaned or blacklisted; new to the ledger
    REMOVED = "removed"  # archived or deleted while the sync had it subscribed
    SIGNED_UP = "signed_up"  # active, unknown to the ledger, no eligible contact has it
    RESUBSCRIBED = "resubscribed"  # active again after the sync knew it not subscribed
    EMAIL_CHANGED = "email_changed"  # the member moved to another address (same stable id)


WRITE_ACTIONS = (SyncAction.CREATE, SyncAction.UPDATE, SyncAction.UNSUBSCRIBE, SyncAction.REMOVE)
ACTIVE = frozenset({"subscribed", "pending"})
OPTED_OUT = frozenset({"unsubscribed", "cleaned", "blacklisted"})
ARCHIVED = "archived"
NEW_CONTACT = "eligible, not at the provider"  # the detail of a create with nothing against it
DIFF_COLUMNS = (
    "action",
    "detail",
    "crm_id",
    "match_key",
    "email",
    "old_email",
    "provider_id",
    "provider_status",
    "salutation",
    "first_name",
    "last_name",
    "tags",
    "provider_tags",
    "import_tags",
    "import_untags",
    "provider_change",
    "address_move",
    "eligible",
    "write_key",
    "ledger_before",
    "ledger_after",
    "settled_intent",
)


@dataclass(frozen=True)
class Desired:
    """What the CRM wants at the provider for one eligible contact (`key`: its match key)."""

    crm_id: str
    email: str
    key: str
    salutation: str
    first_name: str
    last_name: str
    tags: frozenset[str]
    updated_at: datetime | None = None  # the CRM's time of the contact's last change


@dataclass(frozen=True)
class Actual:
    """One member as the provider holds it (the snapshot); tags in the provider's form."""

    provider_id: str
    email: str
    key: str
    status: str
    salutation: str = ""
    first_name: str = ""
    last_name: str = ""
    tags: frozenset[str] = frozenset()
    changed_at: datetime | None = None  # the provider's time of the member's last change
    stable_id: str | None = None  # the provider's id of the member across address changes
    unsubscribed_by: str | None = None  # "person" or "admin", where the provider says


@dataclass(frozen=True)
class AddressMove:
    """A member's address changed at the provider (the diff's `address_move` of the row whose
    `provider_change` is `email_changed`)."""

    old_email: str
    new_email: str
    changed_at: datetime | None  # the provider's time of the member's last change
    owner: str | None = None  # the contact the ledger knew the member as (not the row's)


@dataclass(frozen=True)
class CrmExclusion:
    """A CRM contact that is not eligible, with its reason (from eligibility) and the time of
    its last change in the CRM."""

    crm_id: str
    reason: str
    updated_at: datetime | None = None


def provider_is_newer(provider_time: datetime | None, crm_time: datetime | None) -> bool:
    """Whether a change at the provider came after the CRM row's last change. Both times must
    be known: otherwise the CRM, the master, stands. Naive times are taken as UTC."""
    if provider_time is None or crm_time is None or pd.isna(provider_time) or pd.isna(crm_time):
        return False
    return _utc(provider_time) > _utc(crm_time)


def _iso(moment: datetime | None) -> str | None:
    """A provider time as the ledger keeps it."""
    return None if moment is None else _utc(moment).isoformat()


def _utc(moment: datetime) -> pd.Timestamp:
    stamp = pd.Timestamp(moment)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


@dataclass(frozen=True)
class Exclusions:
    """Excluded CRM contacts by address key (the deciding one, private first) and by id."""

    by_key: Mapping[str, CrmExclusion] = field(default_factory=dict)
    by_id: Mapping[str, CrmExclusion] = field(default_factory=dict)

    def deciding(self, key: str, owner: str | None) -> CrmExclusion | None:
        """The reason that decides about a member: its address's, or its owner's when that
        says more (private beats opted out beats the rest)."""
        found = [e for e in (self.by_key.get(key), self.by_id.get(owner or "")) if e]
        return min(found, key=lambda e: _PRIORITY.get(e.reason, 2), default=None)


_PRIORITY = {"private": 0, "opted_out": 1}


@dataclass(frozen=True)
class Context:
    """What the rules need besides the three inputs."""

    style: TagStyle
    system_tag: str | None = None
    # keys of eligible contacts settled in bulk; only those of the members and ledger rows
    # passed are asked about (`claimed`)
    settled: frozenset[str] = frozenset()


def reconcile(
    desired: Iterable[Desired],
    members: Iterable[Actual],
    ledger: Iterable[LedgerRow],
    exclusions: Exclusions,
    context: Context,
) -> pd.DataFrame:
    """One row per contact, member and ledger row that needs attention (columns `DIFF_COLUMNS`)."""
    desired = list(desired)
    rules = _Rules(members, ledger, exclusions, context, {d.key for d in desired})
    for contact in desired:
        rules.decide_desired(contact)
    rules.decide_remaining_members()
    rules.decide_remaining_rows()
    rules.report_moves()
    return pd.DataFrame(rules.rows, columns=list(DIFF_COLUMNS)).astype({"eligible": bool})


@dataclass
class _Plan:
    """The tags of a member after an update, and whether anything must be sent."""

    tags: frozenset[str]
    tag_keys: frozenset[str]
    imported: frozenset[str]
    unset: frozenset[str]  # CRM tags a person removed at the provider (CRM names)
    unmarked: frozenset[str]  # the system tag, on a member the sync never marked
    fields_differ: bool
    added: frozenset[str]
    dropped: frozenset[str]

    @property
    def needed(self) -> bool:
        return self.fields_differ or bool(self.added or self.dropped)

    def detail(self) -> str:
        parts = ["fields differ"] if self.fields_differ else []
        if self.added:
            parts.append("tags to add: " + ", ".join(sorted(self.added)))
        if self.dropped:
            parts.append("tags to remove: " + ", ".join(sorted(self.dropped)))
        if self.imported:
            parts.append("tags added at the provider: " + ", ".join(sorted(self.imported)))
        if self.unset:
            parts.append("tags removed at the provider: " + ", ".join(sorted(self.unset)))
        return "; ".join(parts)


class _Rules:
    def __init__(
        self,
        members: Iterable[Actual],
        ledger: Iterable[LedgerRow],
        exclusions: Exclusions,
        context: Context,
        desired_keys: set[str],
    ) -> None:
        self.members = {m.key: m for m in members}
        self.style = context.style
        self.system = frozenset({context.system_tag}) if context.system_tag else frozenset()
        ledger = list(ledger)
        resolved = resolve_intents(ledger, self.members)
        resolved |= self.arrived(ledger, resolved)
        self.moves = address_moves(resolved, self.members)
        self.ledger = _moved_rows(resolved, self.moves, self.members)
        self.exclusions = exclusions
        self.desired_keys = desired_keys
        self.settled = context.settled
        self.live: dict[str, LedgerRow] = {}
        self.opted_out: dict[str, LedgerRow] = {}
        for row in sorted(self.ledger.values(), key=lambda r: r.member_key):
            if row.owner is None:
                continue
            if row.state in SEEN_ACTIVE or row.state is RowState.GONE:
                self.live.setdefault(row.owner, row)
            elif row.state is RowState.OPTED_OUT and not self.subscribed_again(row):
                self.opted_out.setdefault(row.owner, row)
        self.handled: set[str] = set()
        self.rows: list[dict[str, object]] = []

    def subscribed_again(self, row: LedgerRow) -> bool:
        """Whether the member of an opted-out row is active again (the person subscribed
        again): the opt-out no longer blocks the row's owner."""
        member = self.members.get(row.member_key)
        return member is not None and member.status in ACTIVE

    def claimed(self, key: str) -> bool:
        """Whether an eligible contact (settled in bulk or not) has the address `key`."""
        return key in self.desired_keys or key in self.settled

    # --- output ------------------------------------------------------------------------

    def emit(
        self,
        action: SyncAction,
        detail: str,
        key: str,
        *,
        contact: Desired | None = None,
        member: Actual | None = None,
        crm_id: str | None = None,
        before: LedgerRow | None = None,
        after: LedgerRow | None = None,
        old: Actual | None = None,
        plan: _Plan | None = None,
        write: str | None = None,
        change: ProviderChange | None = None,
    ) -> None:
        self.handled.add(key)
        own = self.ledger.get(key)
        settled = own.settled if own is not None else None
        after = _recorded(action, before, after) or (own if settled else None)
        target = old or member
        self.rows.append(
            {
                "action": action.value,
                "detail": detail,
                "crm_id": contact.crm_id if contact else crm_id,
                "match_key": key,
                "email": contact.email if contact else (member.email if member else None),
                "old_email": old.email if old else None,
                "provider_id": target.provider_id if target else None,
                "provider_status": target.status if target else None,
                "salutation": contact.salutation if contact else None,
                "first_name": contact.first_name if contact else None,
                "last_name": contact.last_name if contact else None,
                "tags": tuple(sorted(contact.tags)) if contact else None,
                "provider_tags": tuple(sorted(plan.tags)) if plan else None,
                "import_tags": tuple(sorted(plan.imported)) if plan and plan.imported else None,
                "import_untags": tuple(sorted(plan.unset)) if plan and plan.unset else None,
                "provider_change": change.value if change else None,
                "address_move": None,
                "eligible": contact is not None,
                "write_key": write,
                "ledger_before": before,
                "ledger_after": after,
                "settled_intent": settled.value if settled else None,
            }
        )

    # --- helpers -----------------------------------------------------------------------

    def arrived(
        self, ledger: Iterable[LedgerRow], resolved: Mapping[str, LedgerRow]
    ) -> dict[str, LedgerRow]:
        """Rows of creates, updates and address changes a killed run left in flight, with only
        the tags that arrived: the row held those about to be pushed (so the sync may remove
        them later), but one the member does not have was never sent, not removed by a person
        (else it would be imported as such). The system tag stays: it comes back with the next
        write. An address change that happened is found at its new address."""
        found = {}
        for row in ledger:
            if row.intent not in _SENDS_TAGS:
                continue
            key = row.member_key
            moved = resolved.get(row.intent_key or "")
            if row.intent is Intent.CHANGE_EMAIL and moved and moved.moved_from == key:
                key = str(row.intent_key)
            done, member = resolved.get(key), self.members.get(key)
            if done is None or member is None:
                continue
            present = self.style.keys(member.tags)
            sent = {t for t in done.tags if self.style.keys((t,)) <= present}
            found[key] = done.moved(tags=frozenset(sent) | (done.tags & self.system))
        return found

    def wanted(self, contact: Desired) -> frozenset[str]:
        """The tags the sync puts on the contact's member, in the provider's form."""
        return self.style.forms(contact.tags) | self.system

    @staticmethod
    def sent(contact: Desired, tag_keys: Iterable[str]) -> tuple[str, ...]:
        """What a write sends for the contact: address key, fields, tag keys."""
        fields = (contact.salutation, contact.first_name, contact.last_name)
        return (contact.key, *fields, *sorted(tag_keys))

    def pushed(self, contact: Desired, key: str, member: Actual | None) -> LedgerRow:
        """The ledger row once the contact's member (`member`, None for a new one) holds what
        the CRM wants."""
        return LedgerRow(
            member_key=key,
            email=contact.email,
            owner=contact.crm_id,
            provider_id=member.provider_id if member else None,
            tags=self.wanted(contact),
            state=RowState.SUBSCRIBED,
            stable_id=member.stable_id if member else None,
        )

    def plan(self, contact: Desired, member: Actual, row: LedgerRow | None) -> _Plan:
        """Compare a member with the contact; only tags the sync pushed may be removed, and a
        pushed tag a person removed at the provider while the CRM kept it is not pushed again
        (it is imported: `unset`), except the system tag. The system tag goes along with every
        write and comes back when it went missing, but a member the sync never marked (one
        adopted as it is, e.g. after a sign-up was imported) is not written to just to mark it."""
        key = self.style.key
        wanted = {key(t): t for t in self.wanted(contact)}
        present = {key(t): t for t in member.tags}
        pushed = self.style.keys(row.tags) if row is not None else frozenset()
        crm_names = {key(self.style.form(t)): t for t in contact.tags}
        unset = (pushed & crm_names.keys()) - present.keys()
        added = wanted.keys() - present.keys() - unset
        unmarked = self.style.keys(self.system) - present.keys() - pushed
        dropped = (pushed - wanted.keys()) & present.keys()
        imported = present.keys() - wanted.keys() - pushed
        tags = {present[k] for k in present.keys() - dropped} | {wanted[k] for k in added}
        return _Plan(
            tags=frozenset(tags),
            tag_keys=frozenset(key(t) for t in tags),
            imported=frozenset(present[k] for k in imported),
            unset=frozenset(crm_names[k] for k in unset),
            fields_differ=(member.salutation, member.first_name, member.last_name)
            != (contact.salutation, contact.first_name, contact.last_name),
            added=frozenset(wanted[k] for k in added - unmarked),
            unmarked=frozenset(wanted[k] for k in unmarked),
            dropped=frozenset(present[k] for k in dropped),
        )

    def observed(self, row: LedgerRow | None, member: Actual, owner: str | None) -> LedgerRow:
        """The row after seeing `member` opted out at the provider, with the time of the
        member's last change there."""
        seen = {
            "stable_id": member.stable_id,
            "provider_changed_at": _iso(member.changed_at),
            "unimported_opt_out": None,
        }
        if row is None:
            return _first_seen(member, owner, RowState.OPTED_OUT).moved(**seen)
        if row.state is RowState.UNSUBSCRIBED and not _persons_since(row, member.unsubscribed_by):
            return row.moved(**seen)  # our own unsubscribe: not the person's
        keep_owner = row.state is RowState.OPTED_OUT and row.owner is not None
        return row.moved(state=RowState.OPTED_OUT, owner=row.owner if keep_owner else owner, **seen)

    @staticmethod
    def opt_out_change(row: LedgerRow | None, member: Actual) -> ProviderChange | None:
        """`OPTED_OUT` when a snapshot showing the member opted out tells the ledger something
        new: not the sync's own unsubscribe, not an opt-out it already knew, unless the member
        changed since the sync last saw it opted out. Then the person may have opted out again
        (say, re-subscribed and unsubscribed between two syncs), which the status alone cannot
        tell; the import-back writes it only on contacts the CRM has not changed since
        (`import_back`: an opt-out again). An opt-out the CRM has not taken in yet
        (`LedgerRow.unimported_opt_out`) is new to it still, and so is the person's opt-out
        after the sync's own unsubscribe (`_persons_since`)."""
        if row is None or not known_opt_out(row, member.unsubscribed_by):
            return ProviderChange.OPTED_OUT
        if row.provider_changed_at is None or row.moved_from is not None:
            return None  # a move explains the change (the address change is reported apart)
        again = provider_is_newer(member.changed_at, as_datetime(row.provider_changed_at))
        return ProviderChange.OPTED_OUT if again else None

    @staticmethod
    def unimported_import(row: LedgerRow, key: str) -> dict[str, object]:
        """What a row about address `key` says of `row`, an opt-out that blocks it: the
        opt-out is imported now if the CRM has not taken it in and it is this address's."""
        if row.member_key != key or not _unimported(row):
            return {}
        return {"after": row.moved(unimported_opt_out=None), "change": ProviderChange.OPTED_OUT}

    def refused_before(self, row: LedgerRow | None, write: str) -> bool:
        return row is not None and row.refusal_key == write

    def blocked_refused(self, key: str, contact: Desired, row: LedgerRow, **kw: object) -> None:
        self.emit(
            SyncAction.BLOCKED_BY_PROVIDER,
            f"refused by the provider ({row.refusal_code}); retried when the CRM or the "
            "provider changes",
            key,
            contact=contact,
            before=row,
            **kw,
        )

    # --- eligible CRM contacts ---------------------------------------------------------

    def decide_desired(self, contact: Desired) -> None:
        key = contact.key
        member = self.members.get(key)
        row = self.ledger.get(key)
        if member is None:
            self._absent(contact, row)
        elif member.status in OPTED_OUT:
            self.emit(
                SyncAction.BLOCKED_BY_PROVIDER,
                f"{member.status} at the provider: never re-subscribed",
                key,
                contact=contact,
                member=member,
                before=row,
                after=self.observed(row, member, contact.crm_id),
                change=self.opt_out_change(row, member),
            )
        elif member.status == ARCHIVED:
            self._archived(contact, member, row)
        elif member.status in ACTIVE:
            self._adopt(contact, member, row)
        else:
            self.emit(
                SyncAction.BLOCKED_BY_PROVIDER,
                f"{member.status} at the provider (no marketing consent there); the sync never "
                "sets a subscription status",
                key,
                contact=contact,
                member=member,
                before=row,
            )

    def _consent_blocked(self, contact: Desired, key: str) -> LedgerRow | None:
        """The row of an opt-out that blocks creating `key` for `contact`."""
        row = self.ledger.get(key)
        if row is not None and row.state in BLOCKING:
            return row
        return self.opted_out.get(contact.crm_id)

    def _adopt(self, contact: Desired, member: Actual, row: LedgerRow | None) -> None:
        plan = self.plan(contact, member, row)
        after = self.pushed(contact, member.key, member)
        if not plan.needed:
            found = plan.imported or plan.unset
            after = after.moved(tags=after.tags - plan.unmarked)  # nothing is written
            self.emit(
                SyncAction.IMPORT_BACK if found else SyncAction.UNCHANGED,
                plan.detail() or "in sync",
                member.key,
                contact=contact,
                member=member,
                before=row,
                after=after,
                plan=plan,
            )
            return
        write = write_key("update", *self.sent(contact, plan.tag_keys), member.status)
        if self.refused_before(row, write):
            assert row is not None
            self.blocked_refused(member.key, contact, row, member=member)
            return
        self.emit(
            SyncAction.UPDATE,
            plan.detail(),
            member.key,
            contact=contact,
            member=member,
            before=row,
            after=after,
            plan=plan,
            write=write,
        )

    def _archived(self, contact: Desired, member: Actual, row: LedgerRow | None) -> None:
        key = member.key
        blocker = self._consent_blocked(contact, key)
        if blocker is not None:
            self.emit(
                SyncAction.BLOCKED_BY_PROVIDER,
                f"archived at the provider after an opt-out under {blocker.email}: "
                "never re-subscribed",
                key,
                contact=contact,
                member=member,
                before=row,
                **self.unimported_import(blocker, key),
            )
        elif row is not None and row.state in MAY_CREATE:
            self._create(contact, row, member, "eligible again after it left the audience")
        elif row is not None and row.state in SEEN_ACTIVE:
            self.emit(
                SyncAction.IMPORT_BACK,
                "archived at the provider since the last sync",
                key,
                contact=contact,
                member=member,
                before=row,
                after=row.moved(
                    state=RowState.GONE, owner=contact.crm_id, stable_id=member.stable_id
                ),
                change=ProviderChange.REMOVED,
            )
        elif row is not None and row.state is RowState.GONE:
            self.emit(
                SyncAction.IMPORT_BACK,
                "archived at the provider; waiting for the CRM",
                key,
                contact=contact,
                member=member,
                before=row,
            )
        else:
            self.emit(
                SyncAction.BLOCKED_BY_PROVIDER,
                "archived at the provider before the sync knew it: its consent is unknown",
                key,
                contact=contact,
                member=member,
                before=row,
            )

    def _absent(self, contact: Desired, row: LedgerRow | None) -> None:
        key = contact.key
        blocker = self._consent_blocked(contact, key)
        if blocker is not None:
            where = "" if blocker.member_key == key else f" under {blocker.email}"
            self.emit(
                SyncAction.BLOCKED_BY_PROVIDER,
                f"{blocker.state} at the provider{where}: never re-subscribed",
                key,
                contact=contact,
                before=row,
                **self.unimported_import(blocker, key),
            )
            return
        if row is not None and (row.state in SEEN_ACTIVE or row.state is RowState.GONE):
            self._gone(contact, row, key)
            return
        own = self.live.get(contact.crm_id)
        if own is None or own.member_key == key or self.claimed(own.member_key):
            self._create(contact, row, None, NEW_CONTACT)
            return
        old = self.members.get(own.member_key)
        self.handled.add(own.member_key)
        if old is not None and old.status in ACTIVE:
            self._change_email(contact, own, old)
        elif old is not None and old.status in OPTED_OUT:
            self.emit(
                SyncAction.BLOCKED_BY_PROVIDER,
                f"{old.status} at the provider under the previous address: never re-subscribed",
                key,
                contact=contact,
                member=old,
                before=own,
                after=self.observed(own, old, contact.crm_id),
                change=self.opt_out_change(own, old),
            )
        elif own.state in SEEN_ACTIVE or own.state is RowState.GONE:
            self._gone(contact, own, key)
        else:
            self._create(contact, row, None, "new address, the previous one left the audience")

    def _gone(self, contact: Desired, row: LedgerRow, key: str) -> None:
        where = "" if row.member_key == key else f" under the previous address {row.email}"
        if row.state is RowState.GONE:
            detail = f"removed at the provider{where}; waiting for the CRM"
        else:
            detail = f"archived or deleted at the provider{where} since the last sync"
        self.emit(
            SyncAction.IMPORT_BACK,
            detail,
            key,
            contact=contact,
            before=row,
            after=row.moved(state=RowState.GONE, owner=contact.crm_id),
            change=None if row.state is RowState.GONE else ProviderChange.REMOVED,
        )

    def _create(
        self, contact: Desired, row: LedgerRow | None, member: Actual | None, detail: str
    ) -> None:
        key = contact.key
        after = self.pushed(contact, key, member)
        write = write_key("create", *self.sent(contact, self.style.keys(after.tags)))
        if self.refused_before(row, write):
            assert row is not None
            self.blocked_refused(key, contact, row, member=member)
            return
        self.emit(
            SyncAction.CREATE,
            detail,
            key,
            contact=contact,
            member=member,
            before=row,
            after=after,
            plan=self.created(after.tags, member, row),
            write=write,
        )

    def created(
        self, wanted: frozenset[str], member: Actual | None, row: LedgerRow | None
    ) -> _Plan:
        """The tags of a member after a create: those the sync wants, and, when the member
        comes back from the archive (which keeps its tags), the tags it still has except those
        the sync pushed before and the CRM no longer wants (`dropped`: the create removes
        them, or the next sync would take them for a person's)."""
        key = self.style.key
        present = {key(t): t for t in member.tags} if member is not None else {}
        pushed = self.style.keys(row.tags) if row is not None else frozenset()
        dropped = (pushed - self.style.keys(wanted)) & present.keys()
        kept = {present[k] for k in present.keys() - dropped - self.style.keys(wanted)}
        tags = wanted | kept
        return _Plan(
            tags=tags,
            tag_keys=self.style.keys(tags),
            imported=frozenset(),
            unset=frozenset(),
            unmarked=frozenset(),
            fields_differ=True,
            added=wanted,
            dropped=frozenset(present[k] for k in dropped),
        )

    def _change_email(self, contact: Desired, own: LedgerRow, old: Actual) -> None:
        plan = self.plan(contact, old, own)
        after = self.pushed(contact, contact.key, old)
        write = write_key("change_email", old.key, *self.sent(contact, plan.tag_keys))
        given_up = self.refused_before(own, write_key(SyncAction.REMOVE.value, old.key, old.status))
        if self.refused_before(own, write) or given_up:
            # the member cannot take the new address (or, given up after that, could not even
            # be removed: that refusal replaced the rename's): it is no longer the contact's
            # (it is removed as such), and the new address is created if the provider takes it
            self.handled.discard(old.key)
            why = "could not be removed" if given_up else "was refused it"
            detail = f"new address; the previous member {why} ({own.refusal_code})"
            self._create(contact, self.ledger.get(contact.key), None, detail)
            return
        by_provider = old.key in self.moves  # the member moved away at the provider
        self.emit(
            SyncAction.UPDATE,
            "the CRM's address wins: the same member gets it"
            if by_provider
            else "email changed in the CRM: the same member gets the new address",
            contact.key,
            contact=contact,
            old=old,
            before=own,
            after=after,
            plan=plan,
            write=write,
        )

    # --- provider members no eligible contact claims -------------------------------------

    def decide_remaining_members(self) -> None:
        for key, member in self.members.items():
            if key in self.handled or self.claimed(key):
                continue
            row = self.ledger.get(key)
            owner = row.owner if row else None
            exclusion = self.exclusions.deciding(key, owner)
            crm_id = exclusion.crm_id if exclusion else owner
            common = {"member": member, "crm_id": crm_id, "before": row}
            if member.status in ACTIVE:
                self._unwanted_active(member, row, exclusion, common)
            elif member.status in OPTED_OUT:
                was_ours = row is not None and row.state in SEEN_ACTIVE
                self.emit(
                    SyncAction.IMPORT_BACK if was_ours else SyncAction.UNCHANGED,
                    f"{member.status} at the provider"
                    + (" since the last sync" if was_ours else ", not eligible"),
                    key,
                    after=self.observed(row, member, crm_id),
                    change=self.opt_out_change(row, member),
                    **common,
                )
            elif member.status == ARCHIVED and row is not None and row.state in SEEN_ACTIVE:
                self.emit(
                    SyncAction.IMPORT_BACK,
                    "archived at the provider since the last sync",
                    key,
                    after=row.moved(state=RowState.GONE, stable_id=member.stable_id),
                    change=ProviderChange.REMOVED,
                    **common,
                )
            elif row is not None and _unimported(row):
                self.emit(
                    SyncAction.UNCHANGED,
                    f"{member.status} at the provider after an opt-out, not eligible",
                    key,
                    **self.unimported_import(row, key),
                    **common,
                )
            elif member.status == ARCHIVED and row is not None and row.state is RowState.GONE:
                self.emit(
                    SyncAction.UNCHANGED,
                    "archived at the provider, not eligible",
                    key,
                    after=row.moved(state=RowState.RELEASED, stable_id=member.stable_id),
                    **common,
                )
            else:
                self.emit(
                    SyncAction.UNCHANGED,
                    f"{member.status} at the provider, not eligible",
                    key,
                    **common,
                )

    def _unwanted_active(
        self,
        member: Actual,
        row: LedgerRow | None,
        exclusion: CrmExclusion | None,
        common: dict[str, object],
    ) -> None:
        key = member.key
        reason = exclusion.reason if exclusion else None
        if reason == "private":
            self._write(
                SyncAction.REMOVE,
                "private in the CRM: never at a provider",
                member,
                row,
                common,
                change=ProviderChange.SIGNED_UP if row is None else None,
            )
        elif row is not None and row.state is not RowState.SUBSCRIBED:
            # the sync knew it as not subscribed: a person subscribed it again at the provider
            again = "after an opt-out" if row.state in BLOCKING else "again"
            self.emit(
                SyncAction.IMPORT_BACK,
                f"subscribed at the provider {again}"
                + (f" ({reason} in the CRM)" if reason else ""),
                key,
                after=row.moved(state=RowState.RESUBSCRIBED, stable_id=member.stable_id),
                change=None if row.state is RowState.RESUBSCRIBED else ProviderChange.RESUBSCRIBED,
                **common,
            )
        elif reason == "opted_out" and not (
            row is None and self._signed_up_since(member, exclusion)
        ):
            self._write(SyncAction.UNSUBSCRIBE, "newsletter = no in the CRM", member, row, common)
        elif row is not None:
            why = reason or "address no longer in the CRM"
            self._write(SyncAction.REMOVE, f"no longer eligible ({why})", member, row, common)
        else:
            known = f" ({reason} in the CRM)" if reason else ", unknown to the CRM"
            if reason == "opted_out":
                known = " after the CRM's newsletter = no"
            self.emit(
                SyncAction.IMPORT_BACK,
                f"signed up at the provider{known}",
                key,
                change=ProviderChange.SIGNED_UP,
                **common,
            )

    @staticmethod
    def _signed_up_since(member: Actual, exclusion: CrmExclusion | None) -> bool:
        """Whether a member unknown to the ledger signed up after the CRM said no."""
        return exclusion is not None and provider_is_newer(member.changed_at, exclusion.updated_at)

    def _write(
        self,
        action: SyncAction,
        detail: str,
        member: Actual,
        row: LedgerRow | None,
        common: dict[str, object],
        *,
        change: ProviderChange | None = None,
    ) -> None:
        write = write_key(action.value, member.key, member.status)
        if self.refused_before(row, write):
            assert row is not None
            self.emit(
                SyncAction.UNCHANGED,
                f"{action.value} refused by the provider ({row.refusal_code}); retried when "
                "the provider changes",
                member.key,
                **common,
            )
            return
        base = row or _first_seen(member, common["crm_id"], RowState.SUBSCRIBED)  # type: ignore[arg-type]
        state = RowState.UNSUBSCRIBED if action is SyncAction.UNSUBSCRIBE else RowState.REMOVED
        self.emit(
            action,
            detail,
            member.key,
            after=base.moved(state=state, stable_id=member.stable_id),
            write=write,
            change=change,
            **common,
        )

    # --- addresses changed at the provider -----------------------------------------------

    def report_moves(self) -> None:
        """Name each address change at the provider once: on the row about the owner (the one
        deciding the moved member first), else on the member's row. A row that names another
        change already (an opt-out) only says it in its detail."""
        if not self.moves:
            return
        index: dict[tuple[str, str], list[dict[str, object]]] = {}
        for row in self.rows:
            before = row["ledger_before"]
            if isinstance(before, LedgerRow) and before.moved_from is not None:
                index.setdefault(("member", before.member_key), []).append(row)
            if row["crm_id"] is not None:
                index.setdefault(("owner", str(row["crm_id"])), []).append(row)
        for key, old in self.moves.items():
            about = index.get(("member", key), [])
            mine = index.get(("owner", old.owner), []) if old.owner is not None else []
            ranked = [r for r in mine if any(r is a for a in about)] + mine + about
            if ranked:
                new = self.members[key]
                move = AddressMove(old.email, new.email, new.changed_at, old.owner)
                self.report_move(ranked, move)

    @staticmethod
    def report_move(ranked: list[dict[str, object]], move: AddressMove) -> None:
        free = [r for r in ranked if r["provider_change"] is None]
        row = free[0] if free else ranked[0]
        changed = f"address changed at the provider from {move.old_email} to {move.new_email}"
        row["detail"] = f"{changed}; {row['detail']}"
        if free:
            row["provider_change"] = ProviderChange.EMAIL_CHANGED.value
            row["address_move"] = move

    # --- ledger rows of members that are gone ------------------------------------------

    def decide_remaining_rows(self) -> None:
        for key, row in self.ledger.items():
            if key in self.handled or self.claimed(key) or key in self.members:
                continue
            if row.state in SEEN_ACTIVE or row.state is RowState.GONE:
                self.emit(
                    SyncAction.UNCHANGED,
                    "gone at the provider and no longer eligible in the CRM",
                    key,
                    crm_id=row.owner,
                    before=row,
                    after=row.moved(state=RowState.RELEASED),
                )
            elif row.settled is not None:
                self.emit(
                    SyncAction.UNCHANGED,
                    f"{row.settled.value} of an interrupted run: done at the provider",
                    key,
                    crm_id=row.owner,
                    before=row,
                    after=row,
                )
            elif _unimported(row):
                self.emit(
                    SyncAction.UNCHANGED,
                    f"{row.unimported_opt_out} at the provider, since archived or deleted; "
                    "no longer eligible in the CRM",
                    key,
                    crm_id=row.owner,
                    before=row,
                    **self.unimported_import(row, key),
                )


def known_opt_out(row: LedgerRow | None, unsubscribed_by: str | None) -> bool:
    """Whether the ledger already knew the opt-out a snapshot shows, and the CRM took it in:
    `row` blocks the address, holds no opt-out the CRM has not taken in, and is not the sync's
    own unsubscribe of a member the provider says the person unsubscribed since (`unsubscribed_by`;
    they subscribed again, say pending through a form, which no sync saw). An opt-out seen
    then is new only if the member changed since (`_Rules.opt_out_change`), and the
    import-back writes it only on contacts the CRM has not changed since."""
    return (
        row is not None
        and row.state in BLOCKING
        and not _unimported(row)
        and not _persons_since(row, unsubscribed_by)
    )


def _persons_since(row: LedgerRow, unsubscribed_by: str | None) -> bool:
    """Whether the provider says the person unsubscribed a member the sync had unsubscribed
    itself; the sync's own unsubscribe leaves the admin's reason."""
    return row.state is RowState.UNSUBSCRIBED and unsubscribed_by == "person"


def _unimported(row: LedgerRow) -> bool:
    """Whether `row` holds an opt-out the CRM has not taken in yet."""
    return row.state is RowState.OPTED_OUT and row.unimported_opt_out is not None


def _recorded(
    action: SyncAction, before: LedgerRow | None, after: LedgerRow | None
) -> LedgerRow | None:
    """The ledger row a diff row stores: none when nothing changed and nothing is written; a
    row moved to a new address always, with the key it moved from (whose row then goes)."""
    if before is not None and before.moved_from is not None:
        if after is None or after.member_key == before.member_key:
            return (after or before).moved(moved_from=before.moved_from)
        return after
    if after == before and action not in WRITE_ACTIONS:
        return None
    return after


def address_moves(
    ledger: Mapping[str, LedgerRow], members: Mapping[str, Actual]
) -> dict[str, LedgerRow]:
    """Ledger rows whose member's address changed at the provider, by the member's new key: the
    row has a stable id, its address holds no member or another one (someone signed up with it
    since), and the member with that stable id has an address the ledger does not know."""
    by_stable = {m.stable_id: m for m in members.values() if m.stable_id is not None}
    moves: dict[str, LedgerRow] = {}
    for key, row in ledger.items():
        member = by_stable.get(row.stable_id) if row.stable_id is not None else None
        if member is not None and member.key != key and member.key not in ledger:
            moves.setdefault(member.key, row)
    return moves


def _moved_rows(
    ledger: Mapping[str, LedgerRow], moves: Mapping[str, LedgerRow], members: Mapping[str, Actual]
) -> dict[str, LedgerRow]:
    """The ledger with each moved row at its member's new address (what it knew kept)."""
    rows = dict(ledger)
    for key, row in moves.items():
        member = members[key]
        del rows[row.member_key]
        rows[key] = row.moved(
            member_key=key,
            email=member.email,
            provider_id=member.provider_id,
            moved_from=row.member_key,
        )
    return rows


def _first_seen(member: Actual, owner: str | None, state: RowState) -> LedgerRow:
    """The first ledger row of a member the sync never pushed anything to."""
    return LedgerRow(
        member_key=member.key,
        email=member.email,
        owner=owner,
        provider_id=member.provider_id,
        tags=frozenset(),
        state=state,
        stable_id=member.stable_id,
    )
