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
from dataclasses import dataclass

import numpy as np
import pandas as pd

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


def split_settled(
    eligible: pd.DataFrame,
    snapshot: pd.DataFrame,
    ledger: pd.DataFrame,
    style: TagStyle,
    system_tag: str | None,
) -> Split:
    """Settle the contacts in sync; the rest of each input is left for the rules."""
    keys = eligible["email"].str.lower().to_numpy()  # validator output: ASCII, lower = key
    # one hash pass over the three inputs' keys; then each key's member and ledger row by code
    codes, uniques = pd.factorize(
        np.concatenate([keys, snapshot["match_key"].to_numpy(), ledger["member_key"].to_numpy()])
    )
    key_codes = codes[: len(keys)]
    member_codes = codes[len(keys) : len(keys) + len(snapshot)]
    row_codes = codes[len(keys) + len(snapshot) :]
    last = np.flatnonzero(~pd.Series(member_codes).duplicated(keep="last").to_numpy())
    member_of = np.full(len(uniques), -1)
    member_of[member_codes[last]] = last  # the last member of a key, as `rules` keeps
    row_of = np.full(len(uniques), -1)
    row_of[row_codes] = np.arange(len(ledger))  # member keys are unique in the ledger
    at_member, at_row = member_of[key_codes], row_of[key_codes]
    candidates = np.flatnonzero((at_member >= 0) & (at_row >= 0))
    m, r = at_member[candidates], at_row[candidates]

    def want(column: str) -> np.ndarray:
        return eligible[column].to_numpy()[candidates]

    def have(column: str) -> np.ndarray:
        return snapshot[column].to_numpy()[m]

    def row(column: str) -> np.ndarray:
        return ledger[column].to_numpy()[r]

    extra = {system_tag} if system_tag else set()
    wanted = {t: style.forms(t) | extra for t in set(want("tags"))}
    wanted_keys = {t: tuple(sorted({style.key(f) for f in forms})) for t, forms in wanted.items()}
    wanted_json = {t: json.dumps(sorted(f), ensure_ascii=False) for t, f in wanted.items()}
    member_tag_keys = {t: tuple(sorted({style.key(f) for f in t})) for t in set(have("tags"))}
    tags = want("tags")
    desired_tag_keys = [wanted_keys[t] for t in tags]
    crm_ids = want("contact_id").astype(str)
    same = (
        pd.Series(have("status")).isin(ACTIVE).to_numpy()
        & (want("salutation") == have("salutation"))
        & (want("first_name") == have("first_name"))
        & (want("last_name") == have("last_name"))
        & np.fromiter(
            (d == member_tag_keys[t] for d, t in zip(desired_tag_keys, have("tags"), strict=True)),
            dtype=bool,
            count=len(candidates),
        )
        & (row("owner") == crm_ids)
        & (row("state") == "subscribed")
        & pd.isna(row("intent"))
        & pd.isna(row("refusal_code"))
        & pd.isna(row("refusal_key"))
        & (row("email") == want("email"))
        & (row("provider_id") == have("provider_id"))
        & (row("stable_id") == have("stable_id"))
        & pd.isna(row("provider_changed_at"))
        & ~_named_in_flight(keys[candidates], ledger["intent_key"])
        & ~ledger["owner"].duplicated(keep=False).to_numpy()[r]  # owns several rows
        & (row("tags") == np.array([wanted_json[t] for t in tags], dtype=object))
    )
    done, done_members, done_rows = candidates[same], m[same], r[same]
    count = len(done)
    nothing = np.full(count, None, dtype=object)  # shared: build_diff copies every column
    settled = dict.fromkeys(DIFF_COLUMNS, nothing) | {
        "action": np.full(count, SyncAction.UNCHANGED.value, dtype=object),
        "detail": np.full(count, "in sync", dtype=object),
        "crm_id": crm_ids[same],
        "match_key": keys[done],
        "provider_id": snapshot["provider_id"].to_numpy()[done_members],
        "provider_status": snapshot["status"].to_numpy()[done_members],
        "eligible": np.ones(count, dtype=bool),
    }
    for column in ("email", "salutation", "first_name", "last_name", "tags"):
        settled[column] = eligible[column].to_numpy()[done]
    return Split(
        settled,
        eligible[_without(len(eligible), done)],
        snapshot[_without(len(snapshot), done_members)],
        ledger[_without(len(ledger), done_rows)],
    )


def _named_in_flight(keys: np.ndarray, intent_keys: pd.Series) -> np.ndarray:
    """Which of `keys` a write in flight names (almost never any: most runs end)."""
    named = intent_keys.dropna()
    if named.empty:
        return np.zeros(len(keys), dtype=bool)
    return pd.Series(keys).isin(named).to_numpy()


def _without(length: int, positions: np.ndarray) -> np.ndarray:
    """A mask of `length` rows that is false at `positions`."""
    keep = np.ones(length, dtype=bool)
    keep[positions] = False
    return keep
