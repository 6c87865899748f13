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
address may have moved to an address outside the scope (the full snapshot finds it by its
stable id). `scope_diff` marks such rows, and the callers leave them to the next full sync.
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
    (see the module docstring)."""
    found_keys, ids, stable_ids = frozenset(keys), frozenset(contact_ids), frozenset[str]()
    contacts = ledger = pd.DataFrame()
    members: dict[str, Member | None] = {}  # by match key; None: nobody there
    for _ in range(MAX_ROUNDS):
        ledger = ledger_at(found_keys, ids, stable_ids)
        owners = frozenset(ledger["owner"].dropna().astype(str))
        contacts = contacts_at(found_keys, ids | owners)
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
    unseen: frozenset[str]  # match keys of ledger rows whose member may be outside the scope


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
    present = frozenset(scope.snapshot["match_key"])
    unseen = frozenset(scope.ledger["member_key"]) - present
    return ScopeDiff(diff, result, unseen)
