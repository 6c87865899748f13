"""Webhook events → the import-back of the addresses they name, with the nightly rules.

An event is a hint, never the truth: it says which addresses to look at. What the CRM learns is
what the rules prove for those addresses over the provider's current members, the ledger and
the CRM (`scope`), so a duplicate, late or out-of-order delivery changes nothing, and an event
of the sync's own writes finds nothing to import. Only what a few addresses cannot prove is
left to the nightly full import-back: a member gone from its address may have moved to one
outside the scope, so nothing its old address shows is taken for it, and `removed` is believed
only where an event says a member was deleted at the address and the provider no longer has
the ledger's member (looked up by its stable id).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from newsletter_pipelines.providers.base import Member
from newsletter_pipelines.state.columns import python_values
from newsletter_pipelines.state.events import StoredEvent
from newsletter_pipelines.sync.email_address import raw_match_key
from newsletter_pipelines.sync.engagements import is_engagement
from newsletter_pipelines.sync.rules import ProviderChange
from newsletter_pipelines.sync.scope import Scope, unseen_keys

_MAILCHIMP_DELETING = frozenset({"delete", "archive"})  # `data[action]` of an `unsubscribe`
_VANISHED = (ProviderChange.REMOVED.value, ProviderChange.OPTED_OUT.value)  # see `provable`


def event_addresses(events: Iterable[StoredEvent]) -> frozenset[str]:
    """Match keys of every address the events name (a Mailchimp `upemail` names two); events
    of campaign engagement (`sync.engagements`) name none: they change no member."""
    found = set()
    for event in events:
        if is_engagement(event):
            continue
        data = _data(event)
        found |= {
            raw_match_key(v) for v in (event.email, data.get("new_email"), data.get("old_email"))
        }
    return frozenset(found - {None})


def deleted_addresses(events: Iterable[StoredEvent]) -> frozenset[str]:
    """Match keys of members the events say were deleted or archived at the provider."""
    return frozenset({raw_match_key(e.email) for e in events if _says_deleted(e)} - {None})


def _says_deleted(event: StoredEvent) -> bool:
    if event.provider == "brevo":
        return event.type == "contact_deleted"
    return event.type == "unsubscribe" and _data(event).get("action") in _MAILCHIMP_DELETING


def _data(event: StoredEvent) -> Mapping[str, Any]:
    """Mailchimp's `data[...]` (Brevo events are flat)."""
    data = event.payload.get("data") if event.provider == "mailchimp" else event.payload
    return data if isinstance(data, Mapping) else {}


def confirmed_deletions(
    scope: Scope, deleted: frozenset[str], members_by_id: Callable[[Sequence[str]], list[Member]]
) -> frozenset[str]:
    """Of the addresses the events say a member was deleted at, those where the ledger's
    member is gone from the audience. An event names an address, not a member: the member
    deleted there may be another one that had moved to it, while the ledger's member moved
    elsewhere (`members_by_id` finds it by its stable id). A ledger row without a stable id
    (not yet learned, e.g. right after the first sync) is taken as deleted, as the nightly
    import-back takes it: without one, neither can tell a move from a deletion."""
    ledger = scope.ledger
    doubtful = ledger[ledger["member_key"].isin(unseen_keys(scope) & deleted)]
    stable_ids = python_values(doubtful["stable_id"])  # a missing one as None, not NaN
    pairs = list(zip(stable_ids, doubtful["member_key"], strict=True))
    ids = {str(stable): key for stable, key in pairs if stable}
    present = {m.stable_id for m in members_by_id(sorted(ids))} if ids else set()
    unknown = {key for stable, key in pairs if not stable}
    return frozenset({key for stable, key in ids.items() if stable not in present} | unknown)


def provable(diff: pd.DataFrame, outside: frozenset[str], deleted: frozenset[str]) -> pd.DataFrame:
    """`diff` without what a run of a few addresses cannot prove: a ledger row whose member the
    scope has nowhere (`outside`: it may have moved to an address outside the scope) has no
    provider-side change (no opt-out, removal or tag change; its address may show another
    member), unless its member's deletion is confirmed (`confirmed_deletions`): then its
    removal, or an opt-out the CRM did not take in, stands. The full import-back finds the rest.
    The row's address is the ledger row's (a removal under a contact's previous address is
    reported on the contact's current one)."""
    ledger_keys = pd.Series(
        [
            row.member_key if row is not None else key
            for row, key in zip(diff["ledger_before"], diff["match_key"], strict=True)
        ],
        index=diff.index,
        dtype=object,
    )
    unproven = ledger_keys.isin(outside) & ~(
        ledger_keys.isin(deleted) & diff["provider_change"].isin(_VANISHED)
    )
    if not unproven.any():
        return diff
    kept = diff.copy()
    kept.loc[unproven, ["provider_change", "ledger_after", "import_tags", "import_untags"]] = None
    return kept


def runs_to_request(pending: Mapping[str, int], cursor: int) -> tuple[list[tuple[str, int]], int]:
    """(audience, last event id) of each audience with events newer than `cursor` (the last id
    submitted), and the new cursor. Events at or below the cursor were submitted; a failed run
    is retried by Dagster, and the next event of the audience takes the rest along."""
    due = [(audience, last) for audience, last in sorted(pending.items()) if last > cursor]
    return due, max([cursor, *(last for _, last in due)])
