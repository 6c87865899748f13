"""Turn the assets' data (eligibility frames, provider snapshot, ledger) into the diff."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from newsletter_pipelines.bulk import gc_paused
from newsletter_pipelines.providers.base import MEMBER_ROW_FIELDS, Member, MemberRow, member_row
from newsletter_pipelines.state.columns import python_values, text_frame
from newsletter_pipelines.state.ledger import ledger_rows
from newsletter_pipelines.sync.created import split_created
from newsletter_pipelines.sync.email_address import match_key
from newsletter_pipelines.sync.rules import (
    Actual,
    Context,
    CrmExclusion,
    Desired,
    Exclusions,
    reconcile,
)
from newsletter_pipelines.sync.settled import split_settled
from newsletter_pipelines.sync.snapshot_columns import MemberColumns
from newsletter_pipelines.sync.tags import TAG_STYLES
from newsletter_pipelines.values import as_datetime

ELIGIBLE_READ = (
    "contact_id",
    "email",
    "salutation",
    "first_name",
    "last_name",
    "tags",
    "updated_at",
)
"""The columns of `eligible_subscribers` the diff reads (`desired_contacts`, the bulk passes)."""
EXCLUDED_READ = ("contact_id", "reason", "email", "email_key", "email_ascii", "updated_at")
"""The columns of `excluded_contacts` the diff reads (`crm_exclusions`; `email`: the addresses
of contacts changed since the CRM read)."""


def desired_contacts(eligible: pd.DataFrame) -> Iterator[Desired]:
    """One `Desired` per eligible subscriber (columns `ELIGIBLE_READ` of
    `eligible_subscribers`)."""
    for crm_id, email, salutation, first, last, tags, updated_at in eligible[
        list(ELIGIBLE_READ)
    ].itertuples(index=False, name=None):
        key = email.lower()  # the validator's ASCII output: lower-casing is its match key
        yield Desired(str(crm_id), email, key, salutation, first, last, frozenset(tags), updated_at)


def crm_exclusions(excluded: pd.DataFrame) -> Exclusions:
    """Excluded contacts by address key and by id.

    By key: the deciding contact of each address (duplicates speak through it), and private
    contacts, which win over any other reason for their address. By id: every excluded contact.
    """
    columns = ["contact_id", "reason", "updated_at"]
    by_id = {
        str(crm_id): CrmExclusion(str(crm_id), reason, as_datetime(updated))
        for crm_id, reason, updated in excluded[columns].itertuples(index=False, name=None)
    }
    rows = excluded[excluded["email_key"].notna() & (excluded["reason"] != "duplicate")]
    by_key: dict[str, CrmExclusion] = {}
    for crm_id, email in rows[["contact_id", "email_ascii"]].itertuples(index=False, name=None):
        key = match_key(email)
        if by_key.get(key, CrmExclusion("", "")).reason != "private":
            by_key[key] = by_id[str(crm_id)]
    return Exclusions(by_key=by_key, by_id=by_id)


SNAPSHOT_COLUMNS = (*MEMBER_ROW_FIELDS[:2], "match_key", *MEMBER_ROW_FIELDS[2:])
"""The snapshot frame's columns: a member's row with its match key after its address."""
_SNAPSHOT_TEXTS = tuple(c for c in SNAPSHOT_COLUMNS if c != "last_changed")  # all but one


def snapshot_frame(members: Iterable[Member]) -> pd.DataFrame:
    """The provider snapshot as a frame (what the `provider_audience_snapshot` asset holds),
    with each member's match key."""
    return snapshot_frame_of_rows([member_row(m) for m in members])


def snapshot_frame_of_rows(rows: Sequence[MemberRow]) -> pd.DataFrame:
    """`snapshot_frame` of the members' rows (`Provider.snapshot_rows`), built column by
    column (the cyclic garbage collector paused: it would walk every row at each pass), each
    an object array taken as it is (pandas converting the tuples itself took three times as
    long: 0.94 s against 0.30 s for a million members)."""
    if not rows:
        return pd.DataFrame([], columns=list(SNAPSHOT_COLUMNS))
    with gc_paused():
        columns = dict(zip(MEMBER_ROW_FIELDS, zip(*rows, strict=True), strict=True))
        columns["match_key"] = tuple(map(match_key, columns["email"]))
        changed = _as_inferred(columns.pop("last_changed"))
        arrays = {name: np.fromiter(columns[name], object, len(rows)) for name in _SNAPSHOT_TEXTS}
        frame = pd.DataFrame(arrays, columns=[*_SNAPSHOT_TEXTS], copy=False)
        frame.insert(SNAPSHOT_COLUMNS.index("last_changed"), "last_changed", changed)
        return frame


def snapshot_frame_of_columns(members: MemberColumns) -> pd.DataFrame:
    """`snapshot_frame_of_rows` of members read as columns (`snapshot_columns`), stored the
    same: its text columns `columns.TEXT` (a missing value NaN), their strings not copied."""
    if not len(members):
        return snapshot_frame_of_rows([])
    with gc_paused():
        frame = text_frame(members.texts)
        for name in members.texts.column_names:  # None only: stored as the rows' frame stores it
            if members.texts[name].null_count == len(members):
                frame[name] = np.full(len(members), None, dtype=object)
        frame["tags"] = np.fromiter(members.tags, object, len(members))
        frame["last_changed"] = _as_inferred(members.last_changed)
        return frame[list(SNAPSHOT_COLUMNS)]


def _as_inferred(values: Sequence[object]) -> pd.Series:
    """The column pandas infers from `values` (datetimes in one zone: datetime64, None as
    NaT), inferred and converted once per distinct object (the reader's times are shared per
    distinct text, a page's members share a few; pandas converts a datetime in microseconds)."""
    column = np.array(values, dtype=object)
    _, first, codes = np.unique([id(v) for v in values], return_index=True, return_inverse=True)
    inferred = pd.Series(list(column[first]))  # each distinct object (equal times in two zones
    if inferred.dtype == object:  # are two): the same inference as over them all
        return pd.Series(column, dtype=object)
    return inferred.take(codes).reset_index(drop=True)


def actual_members(snapshot: pd.DataFrame) -> Iterator[Actual]:
    """The snapshot in reconciliation values (its text columns may be `columns.TEXT`: a missing
    value is None)."""
    for pid, email, key, status, salutation, first, last, tags, changed, stable, by in _objects(
        snapshot[list(SNAPSHOT_COLUMNS)]
    ).itertuples(index=False, name=None):
        yield Actual(
            pid,
            email,
            key,
            status,
            salutation,
            first,
            last,
            frozenset(tags),
            as_datetime(changed),
            stable,
            by,
        )


def _objects(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with its `columns.TEXT` columns as object columns of str and None."""
    texts = [c for c, dtype in frame.dtypes.items() if isinstance(dtype, pd.StringDtype)]
    if not texts:
        return frame
    return frame.assign(
        **{c: pd.Series(python_values(frame[c]), index=frame.index, dtype=object) for c in texts}
    )


def members_by_key(snapshot: pd.DataFrame, keys: Iterable[str] | None = None) -> dict[str, Member]:
    """Snapshot members as the clients take them, by match key (only `keys`, when given)."""
    wanted = None if keys is None else set(keys)
    found: dict[str, Member] = {}
    for row in snapshot.itertuples(index=False):
        key = row.match_key
        if wanted is None or key in wanted:
            found[key] = Member(
                provider_id=row.provider_id,
                email=row.email,
                status=row.status,
                salutation=row.salutation,
                first_name=row.first_name,
                last_name=row.last_name,
                tags=frozenset(row.tags),
                last_changed=None if pd.isna(row.last_changed) else row.last_changed,
                stable_id=row.stable_id,
            )
    return found


def build_diff(
    eligible: pd.DataFrame,
    excluded: pd.DataFrame,
    snapshot: pd.DataFrame,
    ledger: pd.DataFrame,
    *,
    provider: str,
    system_tag: str | None,
) -> pd.DataFrame:
    """The reconciliation of one audience as a frame (columns `rules.DIFF_COLUMNS`).

    `ledger` is `state.ledger.load_ledger_frame`. Contacts on which CRM, ledger and provider
    agree are settled in bulk (`settled`), and new contacts are created in bulk (`created`);
    every other contact, member and ledger row goes through the rules. The cyclic garbage
    collector is paused meanwhile (`bulk.gc_paused`).
    """
    with gc_paused():
        style = TAG_STYLES[provider]
        split = split_settled(eligible, snapshot, ledger, style, system_tag)
        created = split_created(split.eligible, snapshot, ledger, style, system_tag)
        rest = reconcile(
            desired_contacts(created.eligible),
            actual_members(split.snapshot),
            ledger_rows(split.ledger),
            crm_exclusions(excluded),
            Context(style, system_tag, settled=split.claimed),
        )
        # column by column and unconsolidated: pd.concat would test a million settled rows
        # for all-NA columns, and consolidating the object columns copies them all once more;
        # each settled column is let go once copied
        columns = {
            c: np.concatenate([split.settled.pop(c), created.rows.pop(c), rest[c].to_numpy()])
            for c in rest
        }
        columns["eligible"] = columns["eligible"].astype(bool)
        return pd.DataFrame(columns, copy=False)


def redecider(
    eligible: pd.DataFrame,
    excluded: pd.DataFrame,
    snapshot: pd.DataFrame,
    ledger: Callable[[], pd.DataFrame],
    *,
    provider: str,
    system_tag: str | None,
) -> Callable[[Collection[str], Collection[str]], tuple[pd.DataFrame, dict[str, Member]]]:
    """What `push.PushContext.redecide` calls: the rules again, for a few contacts, mid-push.

    Called with the ids of eligible contacts whose ledger rows a push just changed without a
    provider change (a refused address change) and the addresses that concern them; answers
    the rules' rows for those addresses over the ledger as it is now (`ledger()`) and the
    snapshot of those addresses, and the snapshot members to update them from. Every other
    eligible contact keeps its address claimed, as in the full diff.
    """

    def decide(
        crm_ids: Collection[str], keys: Collection[str]
    ) -> tuple[pd.DataFrame, dict[str, Member]]:
        ids, wanted = set(crm_ids), set(keys)
        mine = eligible["contact_id"].astype(str).isin(ids).to_numpy()
        others = set(eligible.loc[~mine, "email"].str.lower()) & wanted
        rows = ledger()
        rows = rows[rows["member_key"].isin(wanted) | rows["owner"].isin(ids)]
        members = snapshot[snapshot["match_key"].isin(wanted)]
        diff = reconcile(
            desired_contacts(eligible[mine]),
            actual_members(members),
            ledger_rows(rows),
            crm_exclusions(excluded),
            Context(TAG_STYLES[provider], system_tag, settled=frozenset(others)),
        )
        return diff[diff["match_key"].isin(wanted)], members_by_key(members)

    return decide
