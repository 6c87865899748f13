"""Apply a reconciliation diff through a provider client, and keep the ledger from the outcomes.

Writes go in chunks; after each provider call the outcomes are logged and the ledger is updated
in one transaction, from confirmed outcomes only. A run killed half-way therefore resumes
cleanly: the next diff sees what the provider really holds (created members come back as
`unchanged` and get their ledger row then).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import sqlalchemy as sa

from newsletter_pipelines.email_address import match_key
from newsletter_pipelines.providers.base import (
    Contact,
    ContactRef,
    EmailChange,
    Member,
    Outcome,
    Provider,
    Result,
    email_key,
)
from newsletter_pipelines.reconcile import REMOVED_BY_SYNC, LedgerEntry, SyncAction
from newsletter_pipelines.state.ledger import OutcomeRecord, record

CONFIRMED = (Result.CREATED, Result.UPDATED, Result.UNCHANGED)
# Contacts per client call and ledger transaction. Mailchimp: one `/batches` call takes 1,000
# operations (the client splits creates into batch subscribes of ≤ 500). Brevo: one chunk is
# one import process, polled from a 100 requests/hour budget, so chunks are large; the client
# still splits them into bodies of ≤ 8 MB.
CHUNK_SIZE = {"mailchimp": 1_000, "brevo": 40_000}


@dataclass
class PushSummary:
    """What a push did: outcomes per result, refusals per provider code, provider calls made."""

    results: Counter[str] = field(default_factory=Counter)
    refused_by_code: Counter[str] = field(default_factory=Counter)
    ledger_refreshed: int = 0
    chunks_sent: int = 0

    def add(self, outcomes: Sequence[Outcome]) -> None:
        """Count a batch of outcomes."""
        self.chunks_sent += 1
        for outcome in outcomes:
            self.results[outcome.outcome.value] += 1
            if outcome.outcome is Result.REFUSED:
                self.refused_by_code[outcome.code or "unknown"] += 1


@dataclass
class PushContext:
    """Where a push writes its bookkeeping."""

    engine: sa.Engine
    audience: str
    run_id: str
    system_tag: str | None = None
    chunk_size: int = 500
    log: Callable[[str], None] = print


def push_diff(
    provider: Provider,
    diff: pd.DataFrame,
    members: Mapping[str, Member],
    ledger: Mapping[str, LedgerEntry],
    ctx: PushContext,
) -> PushSummary:
    """Send every write action of `diff` to `provider`; returns the counts.

    `members` maps match keys to the snapshot's members, `ledger` CRM ids to ledger entries.
    """
    return _Push(provider, members, ledger, ctx).run(diff)


class _Push:
    def __init__(
        self,
        provider: Provider,
        members: Mapping[str, Member],
        ledger: Mapping[str, LedgerEntry],
        ctx: PushContext,
    ) -> None:
        self.provider = provider
        self.members = members
        self.ledger = ledger
        self.ctx = ctx
        self.summary = PushSummary()

    def run(self, diff: pd.DataFrame) -> PushSummary:
        by_action: dict[str, list[dict[str, Any]]] = {}
        for row in diff.to_dict("records"):
            by_action.setdefault(row["action"], []).append(row)
        ctx, provider = self.ctx, self.provider
        self.refresh_unchanged(by_action.get(SyncAction.UNCHANGED.value, []))
        for chunk in _chunks(by_action.get(SyncAction.CREATE.value, []), ctx.chunk_size):
            ctx.log(f"creating {len(chunk)} contacts")
            contacts = [_contact(r, ctx.system_tag) for r in chunk]
            self.settle(chunk, provider.upsert(contacts, current=None), SyncAction.CREATE)
        updates = by_action.get(SyncAction.UPDATE.value, [])
        for chunk in _chunks([r for r in updates if r["old_email"]], ctx.chunk_size):
            ctx.log(f"changing the address of {len(chunk)} contacts")
            self.change_emails(chunk)
        for chunk in _chunks([r for r in updates if not r["old_email"]], ctx.chunk_size):
            ctx.log(f"updating {len(chunk)} contacts")
            self.update(chunk, {email_key(r["email"]): self.members[r["match_key"]] for r in chunk})
        for action, call in (
            (SyncAction.UNSUBSCRIBE, provider.unsubscribe),
            (SyncAction.REMOVE, provider.remove),
        ):
            for chunk in _chunks(by_action.get(action.value, []), ctx.chunk_size):
                ctx.log(f"{action.value}: {len(chunk)} contacts")
                refs = [
                    ContactRef(email=r["email"], crm_id=r["crm_id"], provider_id=r["provider_id"])
                    for r in chunk
                ]
                self.settle(chunk, call(refs), action)
        return self.summary

    def update(self, chunk: Sequence[dict[str, Any]], current: Mapping[str, Member]) -> None:
        contacts = [_contact(r, self.ctx.system_tag) for r in chunk]
        self.settle(chunk, self.provider.upsert(contacts, current=current), SyncAction.UPDATE)

    def change_emails(self, chunk: Sequence[dict[str, Any]]) -> None:
        """Change addresses first; members whose change was confirmed then get field updates."""
        changes = [
            EmailChange(
                crm_id=r["crm_id"],
                old_email=r["old_email"],
                new_email=r["email"],
                provider_id=r["provider_id"],
            )
            for r in chunk
        ]
        changed = _by_contact(self.provider.change_emails(changes))
        outcomes = [(r, _outcome_for(r, changed)) for r in chunk]
        done = [r for r, outcome in outcomes if outcome.outcome in CONFIRMED]
        refused = [(r, outcome) for r, outcome in outcomes if outcome.outcome not in CONFIRMED]
        if refused:
            self.settle([r for r, _ in refused], [o for _, o in refused], SyncAction.UPDATE)
        if done:
            current = {
                email_key(r["email"]): self.members[match_key(r["old_email"])].model_copy(
                    update={"email": r["email"]}
                )
                for r in done
            }
            self.update(done, current)

    def settle(
        self, chunk: Sequence[Mapping[str, Any]], outcomes: Sequence[Outcome], action: SyncAction
    ) -> None:
        """Log every outcome of a provider call and update the ledger from confirmed ones."""
        found = _by_contact(outcomes)
        matched = [(row, _outcome_for(row, found)) for row in chunk]
        logged = [
            OutcomeRecord(
                crm_id=None if row["crm_id"] is None else str(row["crm_id"]),
                email=row["email"],
                action=action.value,
                outcome=outcome.outcome.value,
                provider_id=outcome.provider_id or row["provider_id"],
                code=outcome.code,
                message=outcome.message,
            )
            for row, outcome in matched
        ]
        entries = [
            entry
            for row, outcome in matched
            if (entry := _ledger_after(row, outcome, self.ledger.get(str(row["crm_id"])), action))
        ]
        self.summary.add([outcome for _, outcome in matched])
        record(self.ctx.engine, self.ctx.audience, self.ctx.run_id, entries, logged=logged)

    def refresh_unchanged(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Give unchanged eligible contacts a current ledger row (first sync, resumed runs)."""
        entries = []
        for row in rows:
            if row["crm_id"] is None or row["fields_hash"] is None:
                continue
            entry = _entry(row, str(row["crm_id"]), row["provider_id"], row["provider_status"])
            if self.ledger.get(entry.crm_id) != entry:
                entries.append(entry)
        for chunk in _chunks(entries, 5_000):
            record(self.ctx.engine, self.ctx.audience, self.ctx.run_id, chunk)
        self.summary.ledger_refreshed += len(entries)


def _contact(row: Mapping[str, Any], system_tag: str | None) -> Contact:
    tags = frozenset(row["tags"] or ()) | ({system_tag} if system_tag else set())
    return Contact(
        crm_id=str(row["crm_id"]),
        email=row["email"],
        first_name=row["first_name"] or "",
        last_name=row["last_name"] or "",
        salutation=row["salutation"] or "",
        tags=tags,
    )


def _by_contact(outcomes: Sequence[Outcome]) -> dict[str, Outcome]:
    found: dict[str, Outcome] = {}
    for outcome in outcomes:
        if outcome.crm_id is not None:
            found[f"id:{outcome.crm_id}"] = outcome
        found[f"key:{match_key(outcome.email)}"] = outcome
    return found


def _outcome_for(row: Mapping[str, Any], found: Mapping[str, Outcome]) -> Outcome:
    outcome = found.get(f"id:{row['crm_id']}") if row["crm_id"] is not None else None
    outcome = outcome or found.get(f"key:{match_key(row['email'])}")
    if outcome is None:  # the client promises one outcome per contact; never lose one silently
        raise RuntimeError(f"the provider client returned no outcome for {row['email']!r}")
    return outcome


def _ledger_after(
    row: Mapping[str, Any], outcome: Outcome, previous: LedgerEntry | None, action: SyncAction
) -> LedgerEntry | None:
    if row["crm_id"] is None:
        return None
    crm_id = str(row["crm_id"])
    provider_id = outcome.provider_id or row["provider_id"]
    if action in (SyncAction.CREATE, SyncAction.UPDATE):
        if outcome.outcome in CONFIRMED:
            status = outcome.status.value if outcome.status else "subscribed"
            return _entry(row, crm_id, provider_id, status)
        if action is SyncAction.CREATE and outcome.outcome is Result.REFUSED:
            return _entry(row, crm_id, provider_id, "refused", outcome.code or "refused")
        return None
    if previous is None:
        return None
    status = {Result.UNSUBSCRIBED: "unsubscribed", Result.REMOVED: REMOVED_BY_SYNC}.get(
        outcome.outcome
    )
    if status is None:
        return None
    return LedgerEntry(
        crm_id=crm_id,
        match_key=previous.match_key,
        email=previous.email,
        provider_id=provider_id or previous.provider_id,
        fields_hash=previous.fields_hash,
        tags=previous.tags,
        provider_status=status,
    )


def _entry(
    row: Mapping[str, Any],
    crm_id: str,
    provider_id: str | None,
    status: str,
    refusal: str | None = None,
) -> LedgerEntry:
    return LedgerEntry(
        crm_id=crm_id,
        match_key=match_key(row["email"]),
        email=row["email"],
        provider_id=provider_id,
        fields_hash=row["fields_hash"],
        tags=frozenset(row["tags"] or ()),
        provider_status=status,
        refusal_code=refusal,
    )


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
