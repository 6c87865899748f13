"""The bulk pass of the reconciliation: contacts on which CRM, ledger and provider agree exactly.

In a nightly run almost every contact is in sync, and deciding those one by one is what made
reconciling a million contacts slow. This pass settles a contact as `unchanged` only where the
rules provably have nothing to do, by construction: its address is a member with an active
status whose names, salutation and tag keys are what the CRM wants, and the member's ledger row
is owned by the contact, is `subscribed`, holds exactly the row the rules would write after an
unchanged comparison (same address, provider id, stable id, tags), and has no refusal, no
write in flight and no `provider_changed_at`; no other row's write in flight (an address
change a killed run left) names the address, since the rules settle that write from the member
there; and the contact owns no other ledger row (the rules may name a change of that row's
member, an address change at the provider, on the contact's row). Under these conditions
`rules._Rules._adopt` finds nothing to add, remove or import and leaves the ledger row as it
is, so settling it here changes no outcome. Everything else, and every member and ledger row
not settled here, goes through `rules`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from newsletter_pipelines.state.columns import STRING
from newsletter_pipelines.sync.bulk_columns import (
    crm_ids,
    key_at,
    named,
    objects,
    per_distinct,
    text,
    true,
    without,
)
from newsletter_pipelines.sync.rules import ACTIVE, DIFF_COLUMNS, SyncAction
from newsletter_pipelines.sync.tags import TagStyle


@dataclass(frozen=True)
class Split:
    """The settled diff rows (one array per column of `DIFF_COLUMNS`) and what is left for the
    rules."""

    settled: dict[str, np.ndarray]
    eligible: pd.DataFrame
    snapshot: pd.DataFrame
    ledger: pd.DataFrame
    claimed: frozenset[str]  # settled contacts' keys that members or rows left here have


def split_settled(
    eligible: pd.DataFrame,
    snapshot: pd.DataFrame,
    ledger: pd.DataFrame,
    style: TagStyle,
    system_tag: str | None,
) -> Split:
    """Settle the contacts in sync; the rest of each input is left for the rules.

    Keys are matched and the ledger's columns compared in Arrow (hash joins and comparisons in
    C, no Python object per ledger value); the CRM's and the provider's values are compared as
    Python compares them, a missing ledger value as None. The snapshot's text columns may be
    `columns.TEXT` (a missing value: None).
    """
    emails = text(eligible["email"])
    # the validator's output is ASCII, where this is the rules' `str.lower`; the rules decide
    # any other address
    keys = pc.ascii_lower(emails)
    # one hash table over the keys; each member's and each ledger row's key looked up in it
    named_keys = [text(snapshot["match_key"]), text(ledger["member_key"])]
    found_at = key_at(keys, pa.concat_arrays(named_keys))
    member_at, row_at = found_at[: len(snapshot)], found_at[len(snapshot) :]
    at_member = _last_of(member_at, len(keys))  # the last member of a key, as `rules` keeps
    at_row = _last_of(row_at, len(keys))  # member keys are unique in the ledger
    ascii_key = true(pc.string_is_ascii(emails))
    candidates = np.flatnonzero((at_member >= 0) & (at_row >= 0) & ascii_key)
    m, r = at_member[candidates], at_row[candidates]

    def want(column: str) -> np.ndarray:
        return eligible[column].to_numpy()[candidates]

    def agrees(column: str) -> np.ndarray:  # the contact's value is the member's
        member = snapshot[column]
        if member.dtype == object:
            return want(column) == member.to_numpy()[m]
        return _equal_as_python(text(member).take(m), want(column))

    def row(column: str) -> pa.Array:
        return text(ledger[column]).take(r)

    def row_null(column: str) -> np.ndarray:
        return ledger[column].isna().to_numpy()[r]

    extra = {system_tag} if system_tag else set()
    tags = want("tags")
    desired_keys = per_distinct(
        tags, lambda t: tuple(sorted({style.key(f) for f in style.forms(t) | extra}))
    )
    member_tags = snapshot["tags"].to_numpy()[m]
    member_keys = per_distinct(member_tags, lambda t: tuple(sorted({style.key(f) for f in t})))
    wanted_json = per_distinct(
        tags, lambda t: json.dumps(sorted(style.forms(t) | extra), ensure_ascii=False)
    )
    ids = crm_ids(eligible["contact_id"]).take(candidates)
    same = (
        _active(snapshot["status"], m)
        & agrees("salutation")
        & agrees("first_name")
        & agrees("last_name")
        & (desired_keys == member_keys)
        & true(pc.equal(row("owner"), ids))
        & (ledger["state"] == "subscribed").to_numpy()[r]
        & row_null("intent")
        & row_null("intent_key")
        & row_null("refusal_code")
        & row_null("refusal_key")
        & true(pc.equal(row("email"), emails.take(candidates)))
        & _equal_at(row("provider_id"), snapshot["provider_id"], m)
        & _equal_at(row("stable_id"), snapshot["stable_id"], m)
        & row_null("provider_changed_at")
        & ~named(keys.take(candidates), text(ledger["intent_key"]))
        & ~_owns_several(text(ledger["owner"]))[r]
        & true(pc.equal(row("tags"), pa.array(wanted_json, STRING)))
    )
    done, done_members, done_rows = candidates[same], m[same], r[same]
    count = len(done)
    nothing = np.full(count, None, dtype=object)  # shared: build_diff copies every column
    settled = dict.fromkeys(DIFF_COLUMNS, nothing) | {
        "action": np.full(count, SyncAction.UNCHANGED.value, dtype=object),
        "detail": np.full(count, "in sync", dtype=object),
        "crm_id": ids.filter(same).to_numpy(zero_copy_only=False),
        # the member's key: equal to the contact's (matched above)
        "match_key": objects(snapshot["match_key"], done_members),
        "provider_id": objects(snapshot["provider_id"], done_members),
        "provider_status": objects(snapshot["status"], done_members, few=True),
        "eligible": np.ones(count, dtype=bool),
    }
    for column in ("email", "salutation", "first_name", "last_name", "tags"):
        settled[column] = eligible[column].to_numpy()[done]
    members_left = without(len(snapshot), done_members)
    rows_left = without(len(ledger), done_rows)
    return Split(
        settled,
        eligible[without(len(eligible), done)],
        snapshot[members_left],
        ledger[rows_left],
        _claimed(keys, done, (member_at[members_left], row_at[rows_left])),
    )


def _last_of(key_at: np.ndarray, count: int) -> np.ndarray:
    """For each of `count` keys, the last position in `key_at` that names it, -1 where none."""
    last = np.full(count, -1, dtype=np.int64)
    found = np.flatnonzero(key_at >= 0)
    np.maximum.at(last, key_at[found], found)
    return last


def _claimed(keys: pa.Array, done: np.ndarray, left_at: Sequence[np.ndarray]) -> frozenset[str]:
    """The keys of the settled contacts that members or ledger rows left to the rules have:
    the keys the rules ask their `Context.settled` about (a duplicate member of an address)."""
    settled = np.zeros(len(keys), dtype=bool)
    settled[done] = True
    at = np.concatenate([a[a >= 0] for a in left_at])
    return frozenset(keys.take(np.unique(at[settled[at]])).to_pylist())


def _active(statuses: pd.Series, at: np.ndarray) -> np.ndarray:
    """Which of the statuses at `at` are active (`ACTIVE`)."""
    if statuses.dtype == object:
        return pd.Series(statuses.to_numpy()[at]).isin(ACTIVE).to_numpy()
    return true(pc.is_in(text(statuses).take(at), value_set=pa.array(sorted(ACTIVE), STRING)))


def _equal_at(texts: pa.Array, column: pd.Series, at: np.ndarray) -> np.ndarray:
    """`text == value` for the values of `column` at `at`, as `_equal_as_python` compares
    them (a `columns.TEXT` column compared in Arrow: its values are str and None)."""
    if column.dtype == object:
        return _equal_as_python(texts, column.to_numpy()[at])
    values = text(column).take(at)
    return true(pc.equal(texts, values)) | (true(pc.is_null(texts)) & true(pc.is_null(values)))


def _equal_as_python(texts: pa.Array, values: np.ndarray) -> np.ndarray:
    """`text == value` as Python compares them, a null text as None: None equals None, NaN
    equals nothing, a string its equal."""
    try:
        strings = pa.array(values, type=STRING, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # a value that is no string equals no text
        strings = pa.array([v if isinstance(v, str) else None for v in values], STRING)
    both_none = true(pc.is_null(texts)) & np.equal(values, None)
    return true(pc.equal(texts, strings)) | both_none


def _owns_several(owners: pa.Array) -> np.ndarray:
    """Which ledger rows' owner owns another row too."""
    codes = pc.dictionary_encode(owners).indices.fill_null(-1).to_numpy(zero_copy_only=False)
    counts = np.bincount(codes[codes >= 0], minlength=1)
    return (codes >= 0) & (counts[np.maximum(codes, 0)] > 1)
