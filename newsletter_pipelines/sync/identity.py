"""The ledger's identity model: one row per (audience, provider member).

A provider holds at most one member per address, so a member is known by the match key of its
address. Its ledger row says which CRM contact owns it now, what the sync last pushed to it
(address, provider id, the tags the sync put there: only those may it remove), the provider's
stable id of the member (Mailchimp `contact_id`, Brevo contact id: it survives an address change
at the provider), what the sync knows of its consent (the row's state), the last refused write,
and any write in flight.

States (what the sync knows about the member):
- `subscribed`: at the provider as the sync pushed or last saw it, active;
- `unsubscribed`: the sync unsubscribed it because the CRM said no;
- `opted_out`: the provider held an opt-out (person, admin, bounce, complaint). Kept even after
  the member is archived or deleted there: it blocks the address and its owner for good, until
  the member is seen subscribed again (the person re-subscribed at the provider). An opt-out
  seen by a run that did not write it into the CRM (report only, dry run) is kept all the same,
  with the provider status it had (`unimported_opt_out`): the next run that writes to the CRM
  imports it, whether the member is still there or not;
- `removed`: the sync archived it (Mailchimp) or unlinked it from the list (Brevo);
- `gone`: archived or deleted at the provider by someone else while subscribed; reported as
  `import_back` until the owner is no longer eligible in the CRM, then `released`;
- `released`: not at the provider and nothing to remember but that its consent was no opt-out;
  the address may be created again;
- `resubscribed`: subscribed again at the provider by the person (a form, a re-subscription)
  after the sync knew it as opted out, removed or gone; reported as `import_back` until an
  eligible contact wants it (then `subscribed`), never unsubscribed or removed for it;
- `new`: a create was planned, refused or interrupted; nothing is known of the address.

Transitions are made by `rules` (observations and planned writes) and `push` (confirmed
outcomes). Ownership moves with the address: an eligible contact whose address is a member owns
that member's row (duplicates, swaps, merges); the previous owner is handled by its own address.
A member whose address changed at the provider keeps its row: the rules find it by its stable id
and move it to the new address (`moved_from` names the old one, whose row the ledger then drops).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Protocol


class RowState(StrEnum):
    """What the sync knows about a provider member."""

    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"
    OPTED_OUT = "opted_out"
    REMOVED = "removed"
    GONE = "gone"
    RELEASED = "released"
    RESUBSCRIBED = "resubscribed"
    NEW = "new"


BLOCKING = frozenset({RowState.OPTED_OUT, RowState.UNSUBSCRIBED})
"""States that forbid any create or update of the address."""
MAY_CREATE = frozenset({RowState.REMOVED, RowState.RELEASED})
"""States after which the address may be created again (consent known, no opt-out)."""
SEEN_ACTIVE = frozenset({RowState.SUBSCRIBED, RowState.RESUBSCRIBED})
"""States of a member last seen active at the provider."""


class Intent(StrEnum):
    """A write recorded before the provider call and cleared by its outcome."""

    CREATE = "create"
    UPDATE = "update"
    CHANGE_EMAIL = "change_email"
    UNSUBSCRIBE = "unsubscribe"
    REMOVE = "remove"


@dataclass(frozen=True, kw_only=True)
class LedgerRow:
    """The sync's memory of one provider member."""

    member_key: str
    email: str
    owner: str | None
    provider_id: str | None
    tags: frozenset[str]
    state: RowState
    refusal_code: str | None = None
    refusal_key: str | None = None
    intent: Intent | None = None
    intent_key: str | None = None  # the new address key of an email change in flight
    stable_id: str | None = None  # the provider's id of the member across address changes
    # the provider's time of the member's last change (ISO 8601) when the sync last saw it
    # opted out: a later change of an opted-out member may be a new opt-out
    provider_changed_at: str | None = None
    # the key this row was stored under before its member's address changed (at the provider,
    # or by a write a killed run left in flight): not part of the row (neither stored nor
    # compared); storing the row deletes the row at that key if it is the same member's
    moved_from: str | None = field(default=None, compare=False)
    # the provider status (unsubscribed, cleaned, blacklisted) of an `opted_out` row's opt-out
    # that the CRM has not taken in yet
    unimported_opt_out: str | None = None
    # the write a killed run left in flight that the snapshot shows done (`resolve_intents`):
    # not part of the row; the next push logs its outcome and stores the row, once
    settled: Intent | None = field(default=None, compare=False)

    def moved(self, **changes: object) -> LedgerRow:
        """A copy with `changes`; an unimported opt-out goes when the row is no opt-out.

        The copy's fields are set as pickle sets them: `dataclasses.replace` runs the frozen
        `__init__`, which cost seconds per 100,000 contacts in a sync (rows are copied often)."""
        _check_fields(changes)
        return _copy(self.__dict__, changes)

    def copies(self, **columns: Sequence[object]) -> list[LedgerRow]:
        """`moved` once per position of `columns` (equally long), each copy with the values at
        that position: the bulk form, which checks the field names once."""
        _check_fields(columns)
        names, base = tuple(columns), self.__dict__
        rows = zip(*columns.values(), strict=True)
        return [_copy(base, zip(names, values, strict=True)) for values in rows]


def _check_fields(names: Iterable[str]) -> None:
    """A TypeError naming those of `names` that are no field of `LedgerRow`."""
    unknown = set(names) - _FIELD_NAMES
    if unknown:
        raise TypeError(f"LedgerRow has no field {', '.join(sorted(unknown))}")


def _copy(
    base: Mapping[str, object], changes: Mapping[str, object] | Iterable[tuple[str, object]]
) -> LedgerRow:
    """A row with the fields `base` with `changes`; an unimported opt-out goes when the row is
    no opt-out."""
    row = object.__new__(LedgerRow)
    values = row.__dict__
    values.update(base)
    values.update(changes)
    if row.unimported_opt_out is not None and row.state is not RowState.OPTED_OUT:
        values["unimported_opt_out"] = None
    return row


_FIELD_NAMES = frozenset(f.name for f in fields(LedgerRow))


def write_key(action: str, *parts: object) -> str:
    """Identifies a planned write (action, address, the fields and tags it sends, the member's
    status); a refusal of the same write is not retried."""
    return write_keys(action, (parts,))[0]


def write_keys(action: str, writes: Iterable[Sequence[object]]) -> list[str]:
    """`write_key(action, *parts)` for each of `writes`: the bulk form."""
    sha1, join = hashlib.sha1, "\x1f".join
    return [
        sha1(join([action, *map(str, parts)]).encode(), usedforsecurity=False).hexdigest()
        for parts in writes
    ]


class SeenMember(Protocol):
    """What settling a write in flight reads of a snapshot member."""

    status: str
    stable_id: str | None
    unsubscribed_by: str | None


def resolve_intents(
    rows: Iterable[LedgerRow], members: Mapping[str, SeenMember]
) -> dict[str, LedgerRow]:
    """Rows by member key, with writes left in flight by a killed run settled from the snapshot.

    `members` are the snapshot's by member key. A write whose effect is visible was ours: a
    removal, an unsubscribe (unless the provider says the person unsubscribed: then they did
    so after it, and their opt-out is theirs), a create, an address change (its member, by
    stable id, at the new address). One whose effect is not visible never happened. Either way
    the intent is cleared; a write that happened is marked `settled`.
    """
    resolved: dict[str, LedgerRow] = {}
    for row in rows:
        if row.intent is None:  # most rows: nothing to settle (and no copy to make)
            resolved[row.member_key] = row
            continue
        member = members.get(row.member_key)
        status = member.status if member is not None else None
        done = row.moved(intent=None, intent_key=None, settled=row.intent)
        if row.intent is Intent.REMOVE and status in (None, "archived"):
            resolved[row.member_key] = done.moved(state=RowState.REMOVED)
        elif (
            row.intent is Intent.UNSUBSCRIBE
            and status in ("unsubscribed", "blacklisted")
            and member.unsubscribed_by != "person"
        ):
            resolved[row.member_key] = done.moved(state=RowState.UNSUBSCRIBED)
        elif row.intent is Intent.CREATE and status in ("subscribed", "pending"):
            resolved[row.member_key] = done.moved(state=RowState.SUBSCRIBED)
        elif (
            row.intent is Intent.CHANGE_EMAIL
            and row.intent_key is not None
            and (arrived := members.get(row.intent_key)) is not None
            and arrived.status in ("subscribed", "pending")
            and (
                status is None  # without stable ids: the old address is free, the new one held
                if row.stable_id is None
                else arrived.stable_id == row.stable_id
            )
        ):
            resolved.setdefault(
                row.intent_key, done.moved(member_key=row.intent_key, moved_from=row.member_key)
            )
        else:  # not visible, or an update (which the rules decide again): not known as done
            resolved[row.member_key] = done.moved(settled=None)
    return resolved
