"""The bulk pass of the reconciliation for new contacts: created without deciding one by one.

A first sync creates every contact, and deciding a million creates one by one was most of its
diff. This pass creates a contact in bulk only where the rules provably create it with nothing
known against it (`rules.NEW_CONTACT`): its address (ASCII, so that its match key is its lower
case, as the rules compute it) is no member's, no ledger row's and not the new address of a
write in flight (so no row can arrive or move there), and the contact owns no ledger row (no
opt-out under another address, no previous member to give the new address). The rules would
then find neither a blocking opt-out nor a row to act on, and `rules._Rules._create` emits
exactly the rows made here; and no other decision of the rules looks at the address, since
they ask only about the addresses of members and ledger rows. Every other contact goes through
the rules.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from newsletter_pipelines.sync.bulk_columns import crm_ids, named, text, true, without
from newsletter_pipelines.sync.identity import LedgerRow, RowState, write_keys
from newsletter_pipelines.sync.rules import DIFF_COLUMNS, NEW_CONTACT, SyncAction
from newsletter_pipelines.sync.tags import TagStyle

# what `rules._Rules.pushed` records of a contact created as new (address, owner and tags aside)
_NEW_ROW = LedgerRow(
    member_key="", email="", owner=None, provider_id=None, tags=frozenset(),
    state=RowState.SUBSCRIBED, stable_id=None,
)  # fmt: skip


@dataclass(frozen=True)
class Created:
    """The diff rows of the contacts created in bulk (one array per column of `DIFF_COLUMNS`)
    and the eligible contacts left for the rules."""

    rows: dict[str, np.ndarray]
    eligible: pd.DataFrame


@dataclass(frozen=True)
class _TagSet:
    """What a create sends and records for one set of CRM tags."""

    tags: tuple[str, ...]  # the CRM's, sorted
    wanted: frozenset[str]  # on the member, in the provider's form (the system tag too)
    provider_tags: tuple[str, ...]  # `wanted`, sorted
    keys: tuple[str, ...]  # the keys of `wanted`, sorted


def split_created(
    eligible: pd.DataFrame,
    snapshot: pd.DataFrame,
    ledger: pd.DataFrame,
    style: TagStyle,
    system_tag: str | None,
) -> Created:
    """Create the new contacts among `eligible` in bulk; the rest is left for the rules.

    `snapshot` and `ledger` are the whole audience's (not what another bulk pass left).
    """
    emails = text(eligible["email"])
    keys = pc.ascii_lower(emails)
    ids = crm_ids(eligible["contact_id"])
    new = (
        true(pc.string_is_ascii(emails))
        & ~named(
            keys,
            text(snapshot["match_key"]),
            text(ledger["member_key"]),
            text(ledger["intent_key"]),
        )
        & ~named(ids, text(ledger["owner"]))
    )
    at = np.flatnonzero(new)
    count = len(at)
    codes, distinct = pd.factorize(eligible["tags"].to_numpy()[at], use_na_sentinel=False)
    system = frozenset({system_tag}) if system_tag else frozenset()
    tag_sets = [_tag_set(frozenset(tags), style, system) for tags in distinct]
    made = [tag_sets[code] for code in codes.tolist()]
    key_list = keys.take(at).to_pylist()
    id_list = ids.take(at).to_pylist()
    email_list = eligible["email"].to_numpy()[at].tolist()
    names = {c: eligible[c].to_numpy()[at] for c in ("salutation", "first_name", "last_name")}
    nothing = np.full(count, None, dtype=object)  # shared: build_diff copies every column
    rows = dict.fromkeys(DIFF_COLUMNS, nothing) | {
        "action": np.full(count, SyncAction.CREATE.value, dtype=object),
        "detail": np.full(count, NEW_CONTACT, dtype=object),
        "crm_id": _objects(id_list),
        "match_key": _objects(key_list),
        "email": _objects(email_list),
        **names,
        "tags": _objects([t.tags for t in made]),
        "provider_tags": _objects([t.provider_tags for t in made]),
        "eligible": np.ones(count, dtype=bool),
        "write_key": _objects(
            write_keys(
                "create",
                (
                    (key, salutation, first, last, *tag_set.keys)
                    for key, salutation, first, last, tag_set in zip(
                        key_list, *names.values(), made, strict=True
                    )
                ),
            )
        ),
        "ledger_after": _objects(
            _NEW_ROW.copies(
                member_key=key_list,
                email=email_list,
                owner=id_list,
                tags=[t.wanted for t in made],
            )
        ),
    }
    return Created(rows, eligible[without(len(eligible), at)])


def _tag_set(tags: frozenset[str], style: TagStyle, system: frozenset[str]) -> _TagSet:
    wanted = style.forms(tags) | system
    return _TagSet(
        tuple(sorted(tags)), wanted, tuple(sorted(wanted)), tuple(sorted(style.keys(wanted)))
    )


def _objects(values: list[object]) -> np.ndarray:
    """`values` as an object array (numpy would unpack tuples)."""
    return np.fromiter(values, dtype=object, count=len(values))
