"""A run about a few addresses (webhook events, CRM changes): what takes part in their decisions.

A full sync decides every contact, member and ledger row at once. A run about a few addresses
decides only those, with the same eligibility and rules, so it must read everything their
decisions depend on: the CRM contacts with those addresses (duplicates decide together), the
ledger rows at those addresses and the rows their owners hold elsewhere (ownership, address
changes), the CRM contacts owning those rows, the provider's members at all of these
addresses, and the ledger rows of those members under another address (a member the sync
knows, moved here at the provider: known by its stable id). `close_scope` widens the
addresses, contacts and members until nothing new comes in.

A scope that did not close within `MAX_ROUNDS` is not decided at all (`Scope.closed`): a
decision over part of what it depends on could be wrong, and the next full sync decides it.

What the scope cannot see is the rest of the audience: a ledger row whose member is not at its
address (none is, or another member is) may have moved to an address outside the scope (the
full snapshot finds it by its stable id). `scope_diff` marks such rows, and the callers leave
them to the next full sync.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import pandas as pd

from newsletter_pipelines.providers.base import Member
from newsletter_pipelines.settings import CrmValues
from newsletter_pipelines.sync.eligibility import EligibilityResult, classify
from newsletter_pipelines.sync.email_address import raw_match_key
from newsletter_pipelines.sync.inputs import build_diff, snapshot_frame

MAX_ROUNDS = 16  # an ownership chain longer than this is left to the next full sync

# raw CRM contacts (columns of `crm.reader.read_contacts`) at these match keys or with these ids
ContactsAt = Callable[[frozenset[str], frozenset[str]], pd.DataFrame]
# ledger rows (`state.ledger.load_ledger_frame` columns) at these member keys, owned by these
# ids or of members with these stable ids
LedgerAt = Callable[[frozenset[str], frozenset[str], frozenset[str]], pd.DataFrame]
# the provider's members at these addresses (`Provider.members`)
MembersAt = Callable[[Sequence[str]], list[Member]]


@dataclass(frozen=True)
class Scope:
    """Addresses, contact ids and what was read for them."""

    keys: frozenset[str]
    contact_ids: frozenset[str]
    contacts: pd.DataFrame
    ledger: pd.DataFrame
    snapshot: pd.DataFrame  # `inputs.snapshot_frame` of the members at `keys`
    closed: bool  # False when `MAX_ROUNDS` did not reach a fixed point


def close_scope(
    keys: Collection[str],
    contacts_at: ContactsAt,
    ledger_at: LedgerAt,
    members_at: MembersAt,
    contact_ids: Collection[str] = (),
) -> Scope:
    """Read everything the decisions about `keys` and the contacts `contact_ids` depend on
    (see the module docstring).

    Each round reads only the addresses, ids and stable ids no earlier round read, and adds
    what it finds to what they found: the reads select rows matching any of them, so the union
    is what one read of every one would give (same rows, order and column types)."""
    found_keys, ids, stable_ids = frozenset(keys), frozenset(contact_ids), frozenset[str]()
    # the first round reads everything; later rounds only what no earlier round read
    ledger = ledger_at(found_keys, ids, stable_ids)
    owners = frozenset(ledger["owner"].dropna().astype(str))
    contacts = contacts_at(found_keys, ids | owners)
    read = (found_keys, ids, stable_ids, ids | owners)  # what the ledger and contacts were read at
    members: dict[str, Member | None] = {}  # by match key; None: nobody there
    for round_ in range(MAX_ROUNDS):
        if round_:
            new_keys, new_ids, new_stable = (
                found_keys - read[0],
                ids - read[1],
                stable_ids - read[2],
            )
            if new_keys or new_ids or new_stable:
                ledger = _ledger_union(ledger, ledger_at(new_keys, new_ids, new_stable))
            owners = frozenset(ledger["owner"].dropna().astype(str))
            new_contact_ids = (ids | owners) - read[3]
            if new_keys or new_contact_ids:
                more = _contacts_union(contacts, contacts_at(new_keys, new_contact_ids))
                # ids the union cannot order as the read does: one read of them all
                contacts = contacts_at(found_keys, ids | owners) if more is None else more
            read = (found_keys, ids, stable_ids, ids | owners)
        wider_keys = found_keys | frozenset(ledger["member_key"]) | _keys_of(contacts)
        wider_ids = ids | owners | frozenset(contacts["contact_id"].astype(str))
        unread = sorted(wider_keys - members.keys())
        members.update(dict.fromkeys(unread))
        members.update({raw_match_key(m.email) or m.email: m for m in members_at(unread)})
        wider_stable = frozenset(m.stable_id for m in members.values() if m and m.stable_id)
        if (wider_keys, wider_ids, wider_stable) == (found_keys, ids, stable_ids):
            return Scope(found_keys, ids, contacts, ledger, _snapshot(members), closed=True)
        found_keys, ids, stable_ids = wider_keys, wider_ids, wider_stable
    return Scope(found_keys, ids, contacts, ledger, snapshot_frame([]), closed=False)


def _ledger_union(read: pd.DataFrame, more: pd.DataFrame) -> pd.DataFrame:
    """The ledger rows of both frames once each (`more`'s where both have one), ordered by
    member key, as `state.ledger.load_ledger_frame_at` builds its frame."""
    if more.empty:
        return read
    both = pd.concat([read, more], ignore_index=True).drop_duplicates("member_key", keep="last")
    return both.sort_values("member_key", ignore_index=True)


def _contacts_union(read: pd.DataFrame, more: pd.DataFrame) -> pd.DataFrame | None:
    """The contacts of both frames once each (by id), ordered by id, with the column types one
    read of all of them gives (`crm.reader` infers them from the driver's rows); None when the
    ids are not all integers (text ids are ordered by the database's collation)."""
    more = more[~more["contact_id"].isin(read["contact_id"])]
    if more.empty:
        return read
    if read.empty:
        return more.reset_index(drop=True)
    ids = pd.concat([read["contact_id"], more["contact_id"]], ignore_index=True)
    if not pd.api.types.is_integer_dtype(ids.dtype) and not all(
        isinstance(i, int) and not isinstance(i, bool) for i in ids.tolist()
    ):
        return None
    order = ids.to_numpy().argsort(kind="stable")
    # a column of the same type in both parts: those values give it that type in one read too;
    # else its type is inferred again from all its values, as the reader inferred it
    same = [c for c in read.columns if read[c].dtype == more[c].dtype]
    both = pd.concat([read[same], more[same]], ignore_index=True)
    other = [c for c in read.columns if c not in same]
    if other:
        values = [_driver_values(read[c]) + _driver_values(more[c]) for c in other]
        inferred = pd.DataFrame.from_records(list(zip(*values, strict=True)), columns=other)
        both = pd.concat([both, inferred], axis=1)[list(read.columns)]
    return both.take(order).reset_index(drop=True)


def _driver_values(column: pd.Series) -> list[object]:
    """The column's values as `pd.DataFrame.from_records` infers the same type from (Python
    scalars, None for missing)."""
    return column.astype(object).where(column.notna(), None).tolist()


def _snapshot(members: dict[str, Member | None]) -> pd.DataFrame:
    return snapshot_frame([m for m in members.values() if m is not None])


def _keys_of(contacts: pd.DataFrame) -> frozenset[str]:
    """The match keys of the contacts' addresses (as the provider would identify them)."""
    return frozenset(map(raw_match_key, contacts["email"])) - {None}


@dataclass(frozen=True)
class ScopeDiff:
    """The rules' rows for a scope, and the eligibility they were decided on."""

    diff: pd.DataFrame
    eligibility: EligibilityResult
    unseen: frozenset[str]  # member keys of ledger rows whose member is not at their address
    outside: frozenset[str]  # those of them whose member the scope has nowhere (`outside_keys`)
    unseen_owners: frozenset[str]  # the CRM contacts owning those rows

    def pushable(self) -> pd.DataFrame:
        """The rows a run about these addresses may push: all but those decided with a ledger
        row whose member is not at its address (the member may have moved outside the scope):
        the row at that address, the rows of its owner, which the rules decide with the member
        that row knows, and the rows of every contact with a row at that address (one the CRM
        gave the address: whether its member may move there depends on where the row's member
        went). The next full sync decides them."""
        diff = self.diff
        at_unseen = diff["match_key"].isin(self.unseen)
        claimants = frozenset(diff.loc[at_unseen, "crm_id"].dropna().astype(str))
        left = at_unseen | diff["crm_id"].astype(str).isin(self.unseen_owners | claimants)
        return diff[~left]


def scope_diff(
    scope: Scope, values: CrmValues, *, provider: str, system_tag: str | None
) -> ScopeDiff:
    """The reconciliation of the scope with the full sync's eligibility and rules."""
    result = classify(scope.contacts, values)
    diff = build_diff(
        result.eligible,
        result.excluded,
        scope.snapshot,
        scope.ledger,
        provider=provider,
        system_tag=system_tag,
    )
    unseen = unseen_keys(scope)
    ledger = scope.ledger
    owners = ledger.loc[ledger["member_key"].isin(unseen), "owner"].dropna().astype(str)
    return ScopeDiff(diff, result, unseen, outside_keys(scope, unseen), frozenset(owners))


def unseen_keys(scope: Scope) -> frozenset[str]:
    """Member keys of the scope's ledger rows whose member is not at their address now: no
    member is, or another one (another stable id: someone signed up with the address after
    the row's member moved away)."""
    at = dict(zip(scope.snapshot["match_key"], scope.snapshot["stable_id"], strict=True))
    return frozenset(
        key
        for key, stable in zip(scope.ledger["member_key"], scope.ledger["stable_id"], strict=True)
        if key not in at or (pd.notna(stable) and pd.notna(at[key]) and at[key] != stable)
    )


def outside_keys(scope: Scope, unseen: frozenset[str]) -> frozenset[str]:
    """Of `unseen` (the scope's `unseen_keys`), the member keys of the rows whose member the
    scope has at no other address either (by stable id; a row without one cannot be found):
    the member may have moved outside the scope, so nothing its address shows is proven."""
    present = frozenset(scope.snapshot["stable_id"].dropna())
    stable_at = dict(zip(scope.ledger["member_key"], scope.ledger["stable_id"], strict=True))
    return frozenset(
        key for key in unseen if pd.isna(stable_at[key]) or stable_at[key] not in present
    )
