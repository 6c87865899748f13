"""Apply a reconciliation diff through a provider client; keep the ledger from the outcomes.

Ledger observations of the diff (opt-outs seen, members gone, ownership moved) are stored first,
except those of provider-side changes the CRM has not taken in (`PushContext.unimported`).
Writes then go in chunks: before each provider call the intent of every contact in it is
recorded in the ledger; after the call the outcomes are logged and the ledger rows written, in
one transaction, from confirmed outcomes only (a refusal is remembered with the write it
refused, so the same write is not sent again). A run killed between a call and its ledger write
leaves the intents, and the next diff settles them from what the provider then holds (our own
removal is never mistaken for someone else's). When the removal guard holds removals, the
unsubscribes and removals are logged as `held` and not sent; everything else still goes out.
An address changed at the provider that the CRM has not taken in is not changed back either,
nor its old address taken (created, or updated after someone signed up there), nor its member
written to or adopted by another contact (held by `crm_import_back`): each would erase the
change before the CRM logged it. An unsubscribe or removal of a sign-up at the old address
goes out all the same: the opt-out is stored there, and the CRM is not told of that move.
A refused address change is decided again by the rules within the same push (`redecide`): the
old member is no longer the contact's, and the new address is created if nothing blocks it.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import chain, islice
from typing import Any

import pandas as pd
import sqlalchemy as sa
from more_itertools import chunked, partition

from newsletter_pipelines.bulk import gc_paused, records, records_in_chunks
from newsletter_pipelines.providers.base import (
    Contact,
    ContactRef,
    EmailChange,
    Member,
    MemberStatus,
    MemberWrites,
    Outcome,
    Provider,
    Result,
    email_key,
)
from newsletter_pipelines.providers.trusted import trusted
from newsletter_pipelines.state.ledger import (
    LEDGER_COLUMNS,
    LedgerColumns,
    OutcomeColumns,
    OutcomeRecord,
    record,
)
from newsletter_pipelines.storage.frames import (
    decoded_structs,
    struct_field_missing,
    struct_fields,
    struct_objects,
)
from newsletter_pipelines.sync.email_address import match_key
from newsletter_pipelines.sync.identity import Intent, LedgerRow, RowState
from newsletter_pipelines.sync.import_back import keeps_consent, unimported_consent
from newsletter_pipelines.sync.rules import OPTED_OUT, WRITE_ACTIONS, ProviderChange, SyncAction

HELD = "held"
# Contacts per client call and ledger transaction. Mailchimp: the client packs a chunk's
# member operations (1 or 2 a contact) into `/batches` of 1,000, so only the last of a chunk's
# batches is part full, and splits creates into batch subscribes of ≤ 500. Brevo: one chunk is
# one import process, polled from a 100 requests/hour budget, so chunks are large; the client
# still splits them into bodies of ≤ 8 MB.
CHUNK_SIZE = {"mailchimp": 10_000, "brevo": 40_000}
# Contacts per create call of the client: while one is in flight, the previous chunk's outcomes
# and the next chunk's intents are written. Mailchimp: 5 batch subscribes of 500, one round on a
# run's fixed share of 5 connections; Brevo: one import, as above.
CREATE_CHUNK_SIZE = {"mailchimp": 2_500, "brevo": 40_000}
# Create calls of the client in flight at once. Mailchimp: three, so that on a run's 10
# connections a third chunk's batch subscribes take those the first chunk's last calls leave
# free (the client bounds the calls to its connections; on 5 the third chunk's wait, as the
# second's did: 100,000 creates at 100 ms a call on 10 connections 2.82 -> 2.35 s, on 5 no
# change); Brevo: one import at a time.
CREATES_IN_FLIGHT = {"mailchimp": 3, "brevo": 1}
RELEASED_BY_IMPORT = "a run writing it into the CRM"
_RENAME = "change_email"  # an update that changes the member's address
_MEMBER_WRITES = (SyncAction.UPDATE, SyncAction.UNSUBSCRIBE, SyncAction.REMOVE)
_CONFIRMED = {
    SyncAction.CREATE: (Result.CREATED, Result.UPDATED, Result.UNCHANGED),
    SyncAction.UPDATE: (Result.CREATED, Result.UPDATED, Result.UNCHANGED),
    SyncAction.UNSUBSCRIBE: (Result.UNSUBSCRIBED,),
    SyncAction.REMOVE: (Result.REMOVED, Result.UNCHANGED),
}
# the outcome-log code of a write a killed run sent and the next run found done
INTERRUPTED_RUN = "interrupted_run"
_SETTLED = {
    Intent.CREATE: (SyncAction.CREATE, Result.CREATED),
    Intent.CHANGE_EMAIL: (SyncAction.UPDATE, Result.UPDATED),
    Intent.UNSUBSCRIBE: (SyncAction.UNSUBSCRIBE, Result.UNSUBSCRIBED),
    Intent.REMOVE: (SyncAction.REMOVE, Result.REMOVED),
}
_INTENT = {
    SyncAction.CREATE: Intent.CREATE,
    SyncAction.UPDATE: Intent.UPDATE,
    SyncAction.UNSUBSCRIBE: Intent.UNSUBSCRIBE,
    SyncAction.REMOVE: Intent.REMOVE,
}


Redecide = Callable[[Collection[str], Collection[str]], tuple[pd.DataFrame, Mapping[str, Member]]]
"""The rules' rows again for contacts (by CRM id), restricted to addresses (match keys), from the
ledger as it is now, with the snapshot members of those addresses (`inputs.redecider`)."""


@dataclass
class PushSummary:
    """What a push did: outcomes per result, refusals per provider code, calls, held rows."""

    results: Counter[str] = field(default_factory=Counter)
    refused_by_code: Counter[str] = field(default_factory=Counter)
    ledger_refreshed: int = 0
    chunks_sent: int = 0
    held: list[dict[str, Any]] = field(default_factory=list)
    redecided: int = 0
    confirmed_after_interruption: int = 0  # writes of a killed run found done, logged now

    def add(self, outcomes: Sequence[Outcome]) -> None:
        """Count a batch of outcomes."""
        self.chunks_sent += 1
        counts = Counter(outcome.outcome for outcome in outcomes)
        for result, count in counts.items():
            self.results[result.value] += count
        if Result.REFUSED in counts:
            for outcome in outcomes:
                if outcome.outcome is Result.REFUSED:
                    self.refused_by_code[outcome.code or "unknown"] += 1

    def merge(self, other: PushSummary) -> None:
        """Add the counts of a follow-up push."""
        self.results.update(other.results)
        self.refused_by_code.update(other.refused_by_code)
        self.ledger_refreshed += other.ledger_refreshed
        self.chunks_sent += other.chunks_sent
        self.held += other.held
        self.confirmed_after_interruption += other.confirmed_after_interruption


@dataclass
class PushContext:
    """Where a push writes its bookkeeping, and how."""

    engine: sa.Engine
    audience: str
    run_id: str
    chunk_size: int = 500
    create_chunk_size: int | None = None  # None: chunk_size
    creates_in_flight: int = 1  # create calls of the client sent before the first is answered
    hold_removals: bool = False
    hold_renames: bool = False
    log: Callable[[str], None] = print
    redecide: Redecide | None = None
    # match keys of provider-side changes the CRM did not take in (held by the vanish guard, a
    # dry run, report only): not stored in the ledger, so the next run finds them again
    unimported: frozenset[str] = frozenset()


def push_diff(
    provider: Provider, diff: pd.DataFrame, members: Mapping[str, Member], ctx: PushContext
) -> PushSummary:
    """Send every write action of `diff` to `provider`.

    `members` maps match keys to the snapshot's members (those updated or renamed suffice).
    The ledger rows of `diff` may be Arrow-backed (`LEDGER`).
    The cyclic garbage collector is paused meanwhile (`bulk.gc_paused`): the push makes
    objects by the hundred thousand and no cycles, and its passes over them cost most of the
    client's CPU time.
    """
    with gc_paused():
        return _Push(provider, members, ctx).run(diff)


ACTS_ON = ("ledger_after", "provider_change", "settled_intent", "old_email")
"""The diff's columns of which `push_diff` needs a value to act on a row that is no write: a
row with none of them and no write action (a contact in sync, one blocked with nothing to
store) it passes over, whether it is in the diff or not (`acted_on`)."""
LEDGER = ("ledger_before", "ledger_after")
"""The diff's columns of ledger rows: Arrow-backed ones (`storage.frames.struct_objects`) are
decoded where the push needs them, the creates' chunk by chunk."""
COUNTED = ("action", "provider_status", "old_email")
"""The diff's columns the push's planned counts and mass guards read of every row
(`guards.push_verdicts`)."""


def acted_on(diff: pd.DataFrame) -> pd.Series:
    """Which rows of `diff` `push_diff` acts on: its writes and the rows with a value in one of
    `ACTS_ON`. Pushing only these rows is pushing the whole diff (what is planned and guarded
    aside: `COUNTED`)."""
    is_write = diff["action"].isin([a.value for a in WRITE_ACTIONS])
    return is_write | diff[list(ACTS_ON)].notna().any(axis=1)


def member_keys(diff: pd.DataFrame) -> list[str]:
    """The match keys of the snapshot members `push_diff` needs of `diff` (its `members`): those
    it updates, those it creates again (archived, or of another contact), and the old addresses
    of its address changes."""
    action = diff["action"]
    writes = (action == SyncAction.UPDATE.value) | (
        (action == SyncAction.CREATE.value) & diff["provider_status"].notna()
    )
    keys = diff.loc[writes, "match_key"].tolist()
    return keys + diff["old_email"].dropna().map(match_key).tolist()


class _Push:
    def __init__(self, provider: Provider, members: Mapping[str, Member], ctx: PushContext) -> None:
        self.provider = provider
        self.members = members
        self.ctx = ctx
        self.summary = PushSummary()
        self.refused_renames: list[Mapping[str, Any]] = []
        self.sent: set[str] = set()  # match keys whose write went out (its intent recorded)
        self.vacated: frozenset[str] = frozenset()

    def run(self, diff: pd.DataFrame) -> PushSummary:
        is_write = diff["action"].isin([a.value for a in WRITE_ACTIONS])
        pending = diff["provider_change"].notna() & diff["match_key"].isin(self.ctx.unimported)
        # an address change the CRM has not taken in lives on in its member's ledger row at the
        # old address: a row that would store the member at its new address (a write to it, a
        # contact adopting it) waits for the import, or the change would never reach the CRM
        keep = keeps_consent(diff)
        # a move whose member's row is stored at its new address all the same (it keeps an
        # opt-out), or whose old address an unsubscribe or removal sent now takes (someone
        # signed up there since), is no longer remembered at the old address: nothing waits
        # for it there (the CRM is not told of that move later; the opt-out must be stored)
        waiting = _moves_waiting(diff[pending & ~keep]) - _moved_from(diff[pending & keep])
        if waiting:  # only then: a first sync's diff is all writes, a million rows
            waiting -= self.opting_out(diff.loc[is_write, ["action", "match_key"]])
        consumes = _consuming(diff["ledger_after"], waiting)
        stored = diff["ledger_after"].notna() & ~pending & ~consumes
        self.observe(diff[~is_write & stored])
        kept = unimported_consent(diff, self.ctx.unimported)
        record(self.ctx.engine, self.ctx.audience, self.ctx.run_id, kept)
        pending &= ~keep  # stored (moved with its member): nothing waits there
        for action, rows in diff[is_write & consumes].groupby("action"):
            self.hold(records(rows), SyncAction(action), "crm_import_back", RELEASED_BY_IMPORT)
        self.vacated = _vacated(diff[pending]) | waiting
        self.send(_rows(diff, is_write & ~consumes))
        if self.refused_renames and self.ctx.redecide is not None:
            self.redecide(self.ctx.redecide)
        self.log_settled(
            diff[
                diff["settled_intent"].notna()
                & ((~is_write & stored) | diff["match_key"].isin(self.sent))
            ]
        )
        return self.summary

    def send(self, writes: pd.DataFrame) -> None:
        """Send `writes`: creates first, then address changes, updates, unsubscribes and
        removals together (`Provider.write_members`: one provider's batches carry them all)."""
        creating = writes["action"] == SyncAction.CREATE.value
        onto_vacated = creating & writes["match_key"].isin(self.vacated)
        self.hold(
            records(writes[onto_vacated]), SyncAction.CREATE, "crm_import_back", RELEASED_BY_IMPORT
        )
        self.create(_rows(writes, creating & ~onto_vacated))
        by_action: dict[str, list[dict[str, Any]]] = {}
        for row in records(decoded_structs(writes[~creating])):
            by_action.setdefault(row["action"], []).append(row)
        ctx = self.ctx
        held = lambda r: self.undoes_unimported_move(r) or self.takes_vacated(r)  # noqa: E731
        updates, for_import = map(list, partition(held, by_action.get(SyncAction.UPDATE.value, [])))
        self.hold(for_import, SyncAction.UPDATE, "crm_import_back", RELEASED_BY_IMPORT)
        renames = [r for r in updates if r["old_email"]]
        if ctx.hold_renames:
            self.hold(renames, SyncAction.UPDATE, "rename_guard", "allow_mass_rename")
            renames = []
        others = {action: by_action.get(action.value, []) for action in _MEMBER_WRITES}
        if ctx.hold_removals:
            for action in (SyncAction.UNSUBSCRIBE, SyncAction.REMOVE):
                self.hold(others[action], action, "removal_guard", "allow_mass_removal")
                others[action] = []
        others[SyncAction.UPDATE] = [r for r in updates if not r["old_email"]]
        tagged = [(_RENAME, r) for r in renames]
        tagged += [(action, r) for action in _MEMBER_WRITES for r in others[action]]
        for chunk in chunked(tagged, ctx.chunk_size):
            self.write_members(chunk)

    def create(self, rows: pd.DataFrame) -> None:
        """Create `rows` chunk by chunk, up to `creates_in_flight` create calls in flight: the
        chunks' intents and outcomes are written meanwhile by one ledger writer thread
        (`_LedgerWriter`), so the bookkeeping overlaps the provider's latency and the
        database's. A chunk's call waits for its intents to be committed, so they are queued
        as soon as the call before it is sent, ahead of the outcomes that came back meanwhile.
        Contacts new to the provider and to the ledger go column-wise (`_FreshCreates`), the
        others as dicts, made only when their chunk is (a million at once would hold
        gigabytes)."""
        size = self.ctx.create_chunk_size or self.ctx.chunk_size
        depth = max(1, self.ctx.creates_in_flight)
        in_flight: deque[tuple[_Creates, Future[list[Outcome]]]] = deque()
        fresh = _fresh(rows)
        others = records_in_chunks(
            _rows(rows, ~fresh), size, per_chunk=dict.fromkeys(LEDGER, struct_objects)
        )
        new = _rows(rows, fresh)
        chunks = chain(
            (_RowCreates(self, chunk) for chunk in others),
            (_FreshCreates(self, new.iloc[at : at + size]) for at in range(0, len(new), size)),
        )
        progress = _Progress(len(rows), self.ctx.log)
        with (
            _LedgerWriter(self.ctx) as writer,
            ThreadPoolExecutor(max_workers=depth, thread_name_prefix="create") as sender,
        ):
            upcoming = self.intend_next(chunks, writer, progress)
            while upcoming is not None:
                chunk, intended = upcoming
                answered = None
                if len(in_flight) == depth:
                    oldest, call = in_flight.popleft()
                    answered = (oldest, call.result())
                in_flight.append((chunk, sender.submit(self.upsert_chunk, chunk, intended)))
                upcoming = self.intend_next(chunks, writer, progress)
                if answered is not None:
                    writer.write(answered[0].settled(answered[1]))
            while in_flight:
                oldest, call = in_flight.popleft()
                writer.write(oldest.settled(call.result()))

    def intend_next(
        self, chunks: Iterator[_Creates], writer: _LedgerWriter, progress: _Progress
    ) -> tuple[_Creates, Future[None]] | None:
        """The next chunk of creates and the future of its intents' write (queued now); None
        after the last."""
        chunk = next(chunks, None)
        if chunk is None:
            return None
        progress.sending(len(chunk))
        return chunk, writer.write(chunk.intents())

    def upsert_chunk(self, chunk: _Creates, intended: Future[None]) -> list[Outcome]:
        """Create the contacts of `chunk` once `intended`, the write of their intents, is done
        (it raises if they were not written: nothing is sent)."""
        intended.result()
        return chunk.upsert()

    def write_members(self, chunk: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Record the intents of `chunk` ((action or `_RENAME`, row) pairs), send them in one
        `Provider.write_members` and settle each kind's outcomes."""
        rows = {kind: [r for k, r in chunk if k == kind] for kind in (_RENAME, *_MEMBER_WRITES)}
        renames = rows[_RENAME]
        counts = ", ".join(f"{kind}: {len(found)}" for kind, found in rows.items() if found)
        self.ctx.log(f"writing {len(chunk)} members ({counts})")
        intents = [_intent(r, SyncAction.UPDATE, moving_to=r["match_key"]) for r in renames]
        intents += [_intent(r, a) for a in _MEMBER_WRITES for r in rows[a]]
        record(self.ctx.engine, self.ctx.audience, self.ctx.run_id, intents)
        self.sent.update(r["match_key"] for _, r in chunk)
        updates = rows[SyncAction.UPDATE]
        outcomes = self.provider.write_members(
            MemberWrites(
                renames=tuple(_email_change(r) for r in renames),
                updates=tuple(_contact(r) for r in updates),
                current={email_key(r["email"]): self.members[r["match_key"]] for r in updates},
                unsubscribes=tuple(_ref(r) for r in rows[SyncAction.UNSUBSCRIBE]),
                removes=tuple(_ref(r) for r in rows[SyncAction.REMOVE]),
            )
        )
        answered = iter(outcomes)
        by_kind = {kind: list(islice(answered, len(found))) for kind, found in rows.items()}
        for action in _MEMBER_WRITES:
            if rows[action]:
                self.settle(rows[action], by_kind[action], action)
        if renames:
            self.renamed(renames, by_kind[_RENAME])

    def redecide(self, redecide: Redecide) -> None:
        """Push what the rules now decide for the contacts whose address change was refused."""
        rows = self.refused_renames
        keys = {r["match_key"] for r in rows} | {match_key(r["old_email"]) for r in rows}
        diff, members = redecide([r["crm_id"] for r in rows], keys)
        self.ctx.log(f"address change refused for {len(rows)} contacts: deciding them again")
        again = _Push(self.provider, members, replace(self.ctx, redecide=None)).run(diff)
        self.summary.merge(again)
        self.summary.redecided += len(rows)

    def opting_out(self, writes: pd.DataFrame) -> frozenset[str]:
        """The addresses of the unsubscribes and removals among `writes` this push sends."""
        if self.ctx.hold_removals:
            return frozenset()
        opting_out = writes["action"].isin([SyncAction.UNSUBSCRIBE.value, SyncAction.REMOVE.value])
        return frozenset(writes.loc[opting_out, "match_key"])

    def undoes_unimported_move(self, row: Mapping[str, Any]) -> bool:
        """Whether `row` changes back an address the provider changed and the CRM has not
        taken in (dry run, report only)."""
        moved = row["provider_change"] == ProviderChange.EMAIL_CHANGED.value
        return bool(row["old_email"]) and moved and row["match_key"] in self.ctx.unimported

    def takes_vacated(self, row: Mapping[str, Any]) -> bool:
        """Whether `row` writes onto an address whose member moved away at the provider in a
        change the CRM has not taken in: its ledger row still holds what the sync knew of
        that member (e.g. a bounce), which the write would overwrite."""
        return row["match_key"] in self.vacated

    # --- ledger bookkeeping ------------------------------------------------------------

    def observe(self, rows: pd.DataFrame) -> None:
        """Store what the diff observed without a write (opt-outs, members gone, owners)."""
        after = struct_objects(rows["ledger_after"])
        for chunk in chunked(after, 5_000):
            record(self.ctx.engine, self.ctx.audience, self.ctx.run_id, chunk)
        self.summary.ledger_refreshed += len(after)

    def log_settled(self, rows: pd.DataFrame) -> None:
        """Log the writes a killed run sent that this run's snapshot shows done (their rows
        were stored with this run's other writes, so each is logged once)."""
        if rows.empty:  # nearly every push: no transaction for nothing
            return
        logged = [
            OutcomeRecord(
                crm_id=_crm_id(row) or row["ledger_after"].owner,
                email=row["email"] or row["ledger_after"].email,
                action=_SETTLED[intent][0].value,
                outcome=_SETTLED[intent][1].value,
                provider_id=row["provider_id"] or row["ledger_after"].provider_id,
                code=INTERRUPTED_RUN,
                message="sent by an interrupted run; done at the provider when this run looked",
            )
            for row in records(decoded_structs(rows))
            for intent in [Intent(row["settled_intent"])]
        ]
        record(self.ctx.engine, self.ctx.audience, self.ctx.run_id, [], logged=logged)
        self.summary.confirmed_after_interruption += len(logged)

    def intents(self, chunk: Sequence[Mapping[str, Any]], action: SyncAction) -> _Write:
        """The ledger rows recording the write about to be sent for every row of `chunk`."""
        rows = [_intent(r, action) for r in chunk]
        self.sent.update(r["match_key"] for r in chunk)
        return _Write(rows, intents=True)

    def hold(
        self, rows: Sequence[Mapping[str, Any]], action: SyncAction, guard: str, release: str
    ) -> None:
        """Log writes a guard holds; nothing is sent and the ledger stays as it is."""
        if not rows:
            return
        self.ctx.log(f"{action.value}: {len(rows)} contacts held by {guard}")
        logged = [
            OutcomeRecord(
                crm_id=_crm_id(r),
                email=r["email"],
                action=action.value,
                outcome=HELD,
                provider_id=r["provider_id"],
                message=f"held by {guard}; released by {release}",
            )
            for r in rows
        ]
        record(self.ctx.engine, self.ctx.audience, self.ctx.run_id, [], logged=logged)
        self.summary.results[HELD] += len(rows)
        self.summary.held += [
            {"guard": guard, "action": action.value, "crm_id": _crm_id(r), "email": r["email"]}
            for r in rows
        ]

    # --- writes ------------------------------------------------------------------------

    def upsert(self, chunk: Sequence[Mapping[str, Any]]) -> list[Outcome]:
        """Create the contacts of `chunk`; an archived member comes back with the tags the
        rules decided (the client removes those the archive kept but the sync dropped)."""
        current = {
            email_key(r["email"]): self.members[r["match_key"]]
            for r in chunk
            if r["provider_status"] is not None and r["match_key"] in self.members
        }
        return self.provider.upsert([_contact(r) for r in chunk], current=current)

    def renamed(self, chunk: Sequence[dict[str, Any]], answered: Sequence[Outcome]) -> None:
        """Settle address changes; members whose change was confirmed then get field updates."""
        changed = _by_contact(answered)
        outcomes = [(r, _outcome_for(r, changed)) for r in chunk]
        done = [r for r, o in outcomes if o.outcome in _CONFIRMED[SyncAction.UPDATE]]
        refused = [(r, o) for r, o in outcomes if o.outcome not in _CONFIRMED[SyncAction.UPDATE]]
        if refused:
            self.settle([r for r, _ in refused], [o for _, o in refused], SyncAction.UPDATE)
            self.refused_renames += [r for r, o in refused if o.outcome is Result.REFUSED]
        if done:  # the members have their new address: the rows move before the field update
            moved = [_moved(r) for r in done]
            old_keys = [r["ledger_before"].member_key for r in done]
            record(self.ctx.engine, self.ctx.audience, self.ctx.run_id, moved, deleted=old_keys)
            done = [{**r, "ledger_before": m} for r, m in zip(done, moved, strict=True)]
            current = {
                email_key(r["email"]): self.members[match_key(r["old_email"])].model_copy(
                    update={"email": r["email"]}
                )
                for r in done
            }
            answered = self.provider.upsert([_contact(r) for r in done], current=current)
            # nothing else to change is still an update: the member has its new address
            self.settle(done, [_as_updated(o) for o in answered], SyncAction.UPDATE)

    def settle(
        self, chunk: Sequence[Mapping[str, Any]], outcomes: Sequence[Outcome], action: SyncAction
    ) -> None:
        """Log every outcome of a provider call and write the ledger rows it decides."""
        write = self.settled(chunk, outcomes, action)
        record(self.ctx.engine, self.ctx.audience, self.ctx.run_id, write.rows, logged=write.logged)

    def settled(
        self, chunk: Sequence[Mapping[str, Any]], outcomes: Sequence[Outcome], action: SyncAction
    ) -> _Write:
        """The outcome log and ledger rows of a provider call's outcomes (counted)."""
        matched = _matched(chunk, outcomes)
        logged = [
            OutcomeRecord(
                crm_id=_crm_id(row),
                email=row["email"],
                action=action.value,
                outcome=outcome.outcome.value,
                provider_id=outcome.provider_id or row["provider_id"],
                code=outcome.code,
                message=outcome.message,
            )
            for row, outcome in matched
        ]
        rows = [_after(row, outcome, action) for row, outcome in matched]
        self.summary.add([outcome for _, outcome in matched])
        return _Write(rows, logged)


@dataclass(frozen=True)
class _Write:
    """The arguments of one `record` transaction: ledger rows and logged outcomes; `intents`:
    the rows are intents, written before their call; `fresh`: their keys are new to the ledger
    (as far as the diff knew)."""

    rows: Sequence[LedgerRow] | LedgerColumns
    logged: Sequence[OutcomeRecord] | OutcomeColumns = ()
    intents: bool = False
    fresh: bool = False


class _Progress:
    """Logs how many of a push's creates are on their way: at the first chunk and then at
    each further tenth (a line per chunk would be 400 of the run's events at a million)."""

    def __init__(self, total: int, log: Callable[[str], None]) -> None:
        self.total, self.log, self.sent, self.tenths = total, log, 0, -1

    def sending(self, count: int) -> None:
        """Count a chunk about to be sent; log if it starts a new tenth."""
        tenths = self.sent * 10 // max(self.total, 1)
        self.sent += count
        if tenths > self.tenths:
            self.tenths = tenths
            self.log(f"creating contacts {self.sent - count + 1:,}–{self.sent:,} of {self.total:,}")


class _RowCreates:
    """A chunk of creates as dicts (`records`): the rules' rows one by one."""

    def __init__(self, push: _Push, rows: list[dict[str, Any]]) -> None:
        self.push, self.rows = push, rows

    def __len__(self) -> int:
        return len(self.rows)

    def intents(self) -> _Write:
        return self.push.intents(self.rows, SyncAction.CREATE)

    def upsert(self) -> list[Outcome]:
        return self.push.upsert(self.rows)

    def settled(self, outcomes: Sequence[Outcome]) -> _Write:
        return self.push.settled(self.rows, outcomes, SyncAction.CREATE)


_CONTACT_COLUMNS = ("crm_id", "email", "first_name", "last_name", "salutation", "provider_tags")


def _rows(frame: pd.DataFrame, mask: pd.Series) -> pd.DataFrame:
    """The rows of `frame` where `mask` holds; `frame` itself when it holds for all, a slice
    when for none (a first sync's writes are all creates: copying a stored diff's columns
    costs up to 0.1 s per 100,000 rows, before the first call)."""
    if bool(mask.all()):
        return frame
    return frame[mask] if bool(mask.any()) else frame.iloc[:0]


def _fresh(rows: pd.DataFrame) -> pd.Series:
    """Which creates are of contacts new to the provider and to the ledger: no member at the
    address, no ledger row before, and a ledger row after that moved from no other key and
    settles no write in flight (`_FreshCreates`)."""
    after = rows["ledger_after"]
    plain = struct_field_missing(after, "moved_from") & struct_field_missing(after, "settled")
    new = rows["ledger_before"].isna() & rows["provider_status"].isna()
    return new & pd.Series(plain, index=rows.index, dtype=bool)


class _FreshCreates:
    """A chunk of creates of contacts new to the provider and to the ledger (`_fresh`),
    column-wise: their intents and, when every outcome is the contact's at its position and
    confirms its create, the ledger rows and outcome log are made field by field, as
    `_intent` and `_after` make them for such rows (no dict, no `LedgerRow` per contact);
    any other answer is settled row by row (`_Push.settled`)."""

    def __init__(self, push: _Push, rows: pd.DataFrame) -> None:
        self.push, self.rows = push, rows
        self.after = struct_fields(rows["ledger_after"], LEDGER_COLUMNS)
        self.keys: list[str] = rows["match_key"].tolist()

    def __len__(self) -> int:
        return len(self.keys)

    def intents(self) -> _Write:
        after, n = self.after, len(self)
        self.push.sent.update(self.keys)
        # `_intent` of a create without a row before: the row after, still new, the create in
        # flight, no refusal (and so no unimported opt-out either)
        columns = {name: after[name] for name in LEDGER_COLUMNS}
        columns.update(
            state=[RowState.NEW] * n,
            refusal_code=[None] * n,
            refusal_key=[None] * n,
            intent=[Intent.CREATE] * n,
            unimported_opt_out=[None] * n,
        )
        return _Write(LedgerColumns(**columns), intents=True, fresh=True)

    def upsert(self) -> list[Outcome]:
        columns = [self.rows[name].tolist() for name in _CONTACT_COLUMNS]
        contacts = [_contact_of(values) for values in zip(*columns, strict=True)]
        return self.push.provider.upsert(contacts)

    def settled(self, outcomes: Sequence[Outcome]) -> _Write:
        crm_ids = [None if c is None else str(c) for c in self.rows["crm_id"].tolist()]
        emails: list[str] = self.rows["email"].tolist()
        confirmed = _CONFIRMED[SyncAction.CREATE]
        if not (
            len(outcomes) == len(self)
            and all(
                o.email == email and o.crm_id == crm_id and o.outcome in confirmed
                for o, email, crm_id in zip(outcomes, emails, crm_ids, strict=True)
            )
            and len(set(self.keys)) == len(self)
        ):
            rows = records(decoded_structs(self.rows))
            return self.push.settled(rows, outcomes, SyncAction.CREATE)
        after = self.after  # below: `_after` of a confirmed create, field by field
        states = [
            _confirmed_state(state, o.status)
            for o, state in zip(outcomes, after["state"], strict=True)
        ]
        unimported = [  # as `LedgerRow.moved` keeps it: on opt-out rows only
            opt_out if state is RowState.OPTED_OUT else None
            for state, opt_out in zip(states, after["unimported_opt_out"], strict=True)
        ]
        provider_ids = [
            o.provider_id or known for o, known in zip(outcomes, after["provider_id"], strict=True)
        ]
        stable_ids = [
            known or o.stable_id for o, known in zip(outcomes, after["stable_id"], strict=True)
        ]
        columns = {name: after[name] for name in LEDGER_COLUMNS}
        columns.update(
            provider_id=provider_ids,
            state=states,
            stable_id=stable_ids,
            unimported_opt_out=unimported,
        )
        known_ids = self.rows["provider_id"].tolist()
        logged = OutcomeColumns(
            crm_id=crm_ids,
            email=emails,
            action=[SyncAction.CREATE.value] * len(self),
            outcome=[o.outcome.value for o in outcomes],
            provider_id=[
                o.provider_id or known for o, known in zip(outcomes, known_ids, strict=True)
            ],
            code=[o.code for o in outcomes],
            message=[o.message for o in outcomes],
        )
        self.push.summary.add(outcomes)
        return _Write(LedgerColumns(**columns), logged)


_Creates = _RowCreates | _FreshCreates


class _LedgerWriter:
    """Writes `record` transactions one after the other, in the order given, on a thread of
    its own (the database's time then overlaps the push's Python work and the provider's
    latency). Once one fails, no later intents are written (each raises): the create calls
    waiting for them are never sent; outcomes are still written. Leaving the context waits
    for every write and raises the first failure (unless an exception is already on its way).
    """

    def __init__(self, ctx: PushContext) -> None:
        self._ctx = ctx
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")
        self._failure: BaseException | None = None

    def __enter__(self) -> _LedgerWriter:
        return self

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        self._thread.shutdown(wait=True)
        if kind is None and self._failure is not None:
            raise self._failure

    def write(self, write: _Write) -> Future[None]:
        """Queue the transaction of `write`; its future is done once it is committed."""
        return self._thread.submit(self._record, write)

    def _record(self, write: _Write) -> None:
        if write.intents and self._failure is not None:
            raise RuntimeError("an earlier ledger write of this push failed") from self._failure
        try:
            ctx = self._ctx
            record(
                ctx.engine,
                ctx.audience,
                ctx.run_id,
                write.rows,
                logged=write.logged,
                fresh=write.fresh,
            )
        except BaseException as exc:
            if self._failure is None:
                self._failure = exc
            raise


def _consuming(after: pd.Series, waiting: frozenset[str]) -> pd.Series:
    """Which rows' ledger rows (`after`) are stored at the new address of a move in `waiting`;
    without any, none (and no ledger row is decoded)."""
    if not waiting:
        return pd.Series(False, index=after.index)
    rows = struct_objects(after)
    return pd.Series([r is not None and r.moved_from in waiting for r in rows], index=after.index)


def _vacated(pending: pd.DataFrame) -> frozenset[str]:
    """Addresses whose ledger row a provider-side change not taken in moves elsewhere."""
    rows = [r for r in struct_objects(pending["ledger_before"]) if r is not None]
    return frozenset(r.moved_from for r in rows if r.moved_from and r.moved_from != r.member_key)


def _moved_from(rows: pd.DataFrame) -> frozenset[str]:
    """The old addresses of the members whose ledger rows `rows` store at a new address."""
    after = struct_objects(rows["ledger_after"])
    return frozenset(r.moved_from for r in after if r is not None and r.moved_from)


def _moves_waiting(pending: pd.DataFrame) -> frozenset[str]:
    """The old addresses of the address changes at the provider among `pending`."""
    moves = pending["address_move"].dropna()
    return frozenset(match_key(move.old_email) for move in moves)


def _crm_id(row: Mapping[str, Any]) -> str | None:
    return None if row["crm_id"] is None else str(row["crm_id"])


def _email_change(row: Mapping[str, Any]) -> EmailChange:
    return EmailChange(
        crm_id=row["crm_id"],
        old_email=row["old_email"],
        new_email=row["email"],
        provider_id=row["provider_id"],
    )


def _ref(row: Mapping[str, Any]) -> ContactRef:
    return ContactRef(email=row["email"], crm_id=row["crm_id"], provider_id=row["provider_id"])


def _contact(row: Mapping[str, Any]) -> Contact:
    """The `Contact` of a diff row (`_contact_of`)."""
    return _contact_of([row[name] for name in _CONTACT_COLUMNS])


def _contact_of(row: Sequence[Any]) -> Contact:
    """The `Contact` of a diff row's values of `_CONTACT_COLUMNS`: made unvalidated
    (`trusted`) when every value is a plain `str` (what validating would keep as it is), else
    validated (which raises on a value of another type, as it always did)."""
    crm_id, email, first_name, last_name, salutation, tags = row
    values = {
        "crm_id": str(crm_id),
        "email": email,
        "first_name": first_name or "",
        "last_name": last_name or "",
        "salutation": salutation or "",
        "tags": frozenset(tags or ()),
    }
    if (
        type(values["email"]) is str
        and type(values["first_name"]) is str
        and type(values["last_name"]) is str
        and type(values["salutation"]) is str
        and all(type(tag) is str for tag in values["tags"])
    ):
        return trusted(Contact, values)
    return Contact(**values)


def _intent(row: Mapping[str, Any], action: SyncAction, moving_to: str | None = None) -> LedgerRow:
    """The ledger row while the write of `row` is in flight.

    It keeps the state from before (the write may not have happened) and widens the tags to
    those about to be pushed (the sync may remove them later, whether the write happened or not).
    Made by one copy of the row it starts from (a copy per step cost a second per 100,000
    creates, counting the settling's, which made the intent again).
    """
    before: LedgerRow | None = row["ledger_before"]
    after: LedgerRow = row["ledger_after"]
    if moving_to is not None and before is not None:
        return before.moved(
            intent=Intent.CHANGE_EMAIL, intent_key=moving_to, tags=before.tags | after.tags
        )
    refusal_code, refusal_key = (
        (before.refusal_code, before.refusal_key) if before else (None, None)
    )
    if action is SyncAction.CREATE:
        state, pushed = (before.state, before.tags) if before else (RowState.NEW, frozenset())
        base, changes = after, {"state": state, "tags": after.tags | pushed}
    elif before is not None:
        base, changes = before, {"tags": before.tags | after.tags}
    else:
        base, changes = after, {"state": RowState.SUBSCRIBED, "tags": after.tags}
    return base.moved(
        **changes, intent=_INTENT[action], refusal_code=refusal_code, refusal_key=refusal_key
    )


def _moved(row: Mapping[str, Any]) -> LedgerRow:
    """The row of a member whose address change was confirmed, before its field update."""
    after: LedgerRow = row["ledger_after"]
    before: LedgerRow = row["ledger_before"]
    return after.moved(tags=before.tags | after.tags)


def _after(row: Mapping[str, Any], outcome: Outcome, action: SyncAction) -> LedgerRow:
    """The ledger row once a write's outcome is known."""
    after: LedgerRow = row["ledger_after"]
    if outcome.outcome in _CONFIRMED[action]:
        state = after.state
        if action in (SyncAction.CREATE, SyncAction.UPDATE):
            state = _confirmed_state(state, outcome.status)
        return after.moved(
            provider_id=outcome.provider_id or after.provider_id,
            state=state,
            stable_id=after.stable_id or outcome.stable_id,  # learnt at once from a create
        )
    intent = _intent(row, action).moved(intent=None, intent_key=None)
    if outcome.outcome is Result.REFUSED:
        refused = intent.moved(refusal_code=outcome.code or "refused", refusal_key=row["write_key"])
        before: LedgerRow | None = row["ledger_before"]
        if action is SyncAction.UPDATE and row.get("old_email") and before is not None:
            # an address change sends the address alone: the member has the tags it had (were
            # the new ones kept, the rules would decide the change again instead of giving up)
            refused = refused.moved(tags=before.tags)
        if outcome.status is not None and outcome.status.value in OPTED_OUT:
            return refused.moved(state=RowState.OPTED_OUT)  # e.g. blacklisted outside the list
        return refused
    return intent


def _confirmed_state(state: RowState, status: MemberStatus | None) -> RowState:
    """The state of a row after a confirmed create or update whose answer shows the member
    with `status`: an opt-out since the snapshot is kept (never overwritten), an archived
    member is gone, otherwise the row's `state`."""
    if status is not None:
        if status.value in OPTED_OUT:
            return RowState.OPTED_OUT
        if status is MemberStatus.ARCHIVED:
            return RowState.GONE
    return state


def _as_updated(outcome: Outcome) -> Outcome:
    if outcome.outcome is Result.UNCHANGED:
        return outcome.model_copy(update={"outcome": Result.UPDATED})
    return outcome


def _by_contact(outcomes: Sequence[Outcome]) -> dict[str, Outcome]:
    found: dict[str, Outcome] = {}
    for outcome in outcomes:
        key = match_key(outcome.email)
        if outcome.crm_id is not None:
            found[f"id:{outcome.crm_id}"] = outcome
            found[f"id:{outcome.crm_id} key:{key}"] = outcome
        found[f"key:{key}"] = outcome
    return found


def _matched(
    chunk: Sequence[Mapping[str, Any]], outcomes: Sequence[Outcome]
) -> list[tuple[Mapping[str, Any], Outcome]]:
    """Each row of `chunk` with the outcome of its write (`_outcome_for`). Clients answer in
    the order of the contacts: when every outcome names the contact (same id) at the address
    (same text) of the row at its position, and no two rows share an address, that outcome is
    the one `_outcome_for` finds, and no lookup is made."""
    if len(outcomes) == len(chunk) and all(
        o.email == row["email"] and o.crm_id == _crm_id(row)
        for row, o in zip(chunk, outcomes, strict=True)
    ):
        keys = {match_key(row["email"]) for row in chunk}
        if len(keys) == len(chunk):
            return list(zip(chunk, outcomes, strict=True))
    found = _by_contact(outcomes)
    return [(row, _outcome_for(row, found)) for row in chunk]


def _outcome_for(row: Mapping[str, Any], found: Mapping[str, Outcome]) -> Outcome:
    """The outcome of `row`'s write: the one for its contact at its address (a contact may
    have two rows, e.g. two members archived), else its contact's (an address change may
    answer under the old address), else its address's."""
    key = match_key(row["email"])
    crm_id = row["crm_id"]
    outcome = None
    if crm_id is not None:
        outcome = found.get(f"id:{crm_id} key:{key}") or found.get(f"id:{crm_id}")
    outcome = outcome or found.get(f"key:{key}")
    if outcome is None:  # the client promises one outcome per contact; never lose one silently
        raise RuntimeError(f"the provider client returned no outcome for {row['email']!r}")
    return outcome
