"""A small world for end-to-end sync tests: CRM rows, one sandbox audience reached through the
real client, and a state database; `sync` runs eligibility, snapshot, diff and push."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from newsletter_pipelines.providers.base import Provider
from newsletter_pipelines.sandbox import PersonEvent, Sandbox, SandboxTransport
from newsletter_pipelines.sandbox.people import brevo_person, mailchimp_person
from newsletter_pipelines.state.ledger import create_tables, load_ledger_frame
from newsletter_pipelines.sync.eligibility import classify
from newsletter_pipelines.sync.guards import MassLimits, push_verdicts
from newsletter_pipelines.sync.inputs import build_diff, members_by_key, redecider, snapshot_frame
from newsletter_pipelines.sync.push import PushContext, PushSummary, push_diff
from newsletter_pipelines_tests.providers.conftest import brevo_account, make_brevo, make_mailchimp
from newsletter_pipelines_tests.test_eligibility import contact, frame

SYSTEM_TAG = {"mailchimp": "CRM", "brevo": None}


@dataclass
class World:
    """A CRM (as raw rows), one sandbox audience and a state database."""

    provider_name: str
    sandbox: Sandbox
    provider: Provider
    engine: sa.Engine
    crm: list[dict[str, object]]

    def sync(
        self,
        log: Callable[[str], None] = lambda _: None,
        guard: MassLimits | None = None,
    ) -> tuple[pd.DataFrame, PushSummary]:
        """One full sync; with `guard`, mass removals and renames are held as the asset does."""
        result = classify(frame(*self.crm))
        members = snapshot_frame(self.provider.snapshot())
        ledger = load_ledger_frame(self.engine, self.provider_name)
        diff = build_diff(
            result.eligible,
            result.excluded,
            members,
            ledger,
            provider=self.provider_name,
            system_tag=SYSTEM_TAG[self.provider_name],
        )
        assert diff["match_key"].is_unique, "one action per contact, member and ledger row"
        verdicts = push_verdicts(diff, guard or MassLimits(), False, False)
        ctx = PushContext(
            self.engine,
            self.provider_name,
            "run",
            chunk_size=20,
            hold_removals=guard is not None and not verdicts["removal_guard"].passed,
            hold_renames=guard is not None and not verdicts["rename_guard"].passed,
            log=log,
            redecide=redecider(
                result.eligible,
                result.excluded,
                members,
                lambda: load_ledger_frame(self.engine, self.provider_name),
                provider=self.provider_name,
                system_tag=SYSTEM_TAG[self.provider_name],
            ),
        )
        summary = push_diff(self.provider, diff, members_by_key(members), ctx)
        return diff, summary

    def writes(self) -> int:
        return self.sandbox.stats.count(self.provider_name, writes=True)

    def members(self) -> dict[str, str]:
        return {m.email.lower(): m.status.value for m in self.provider.snapshot()}

    def act(self, email: str, action: str, **extra: Any) -> None:
        """A person (or an admin) does something at the provider."""
        audience = self.provider.ensure_audience()
        apply = mailchimp_person if self.provider_name == "mailchimp" else brevo_person
        apply(self.sandbox, PersonEvent(list_id=audience.id, email=email, action=action, **extra))

    def set(self, crm_id: int, **values: object) -> None:
        row = next(r for r in self.crm if r["contact_id"] == crm_id)
        row.update({"updated_at": "2026-01-01 00:00:00", **values})


@contextmanager
def open_world(provider_name: str, folder: Path, contacts: int = 50) -> Iterator[World]:
    """A fresh sandbox audience, a state database in `folder` and `contacts` CRM rows."""
    sandbox = Sandbox()
    transport = SandboxTransport(sandbox)
    if provider_name == "mailchimp":
        provider = make_mailchimp(transport, "CRM Newsletter")
    else:
        brevo_account(sandbox)
        provider = make_brevo(transport, "CRM Newsletter")
    engine = sa.create_engine(f"sqlite:///{folder / 'state.sqlite3'}")
    create_tables(engine)
    crm = [
        contact(i, email=f"person{i}@example.de", tags=("Käufer",) if i % 2 else ())
        for i in range(1, contacts + 1)
    ]
    try:
        yield World(provider_name, sandbox, provider, engine, crm)
    finally:
        provider.close()
        sandbox.close()
        engine.dispose()
