"""Plan, write and record an import-back: shared by `crm_import_back` (the nightly diff) and
`provider_events_job` (the addresses of webhook events)."""

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg
import pandas as pd

from newsletter_pipelines.crm.writer import CrmWriter, WriteSummary
from newsletter_pipelines.defs.resources import CrmResource, StateDatabaseResource
from newsletter_pipelines.providers.brevo import BlocklistReason
from newsletter_pipelines.providers.resources import BrevoResource
from newsletter_pipelines.reporting import markdown_table, mask_email
from newsletter_pipelines.settings import AudienceConfig, Settings
from newsletter_pipelines.state.ledger import record
from newsletter_pipelines.sync.import_back import (
    Audience,
    CrmView,
    ImportBackPlan,
    SnapshotView,
    bounce_candidates,
    outcome_records,
    plan_import_back,
    recorded,
)

_SETTINGS = Settings()


@dataclass(frozen=True)
class ImportBack:
    """What an import-back planned and did."""

    plan: ImportBackPlan
    summary: WriteSummary | None
    mode: str  # write, dry_run or report_only
    unimported: frozenset[str]  # match keys of provider-side changes the CRM did not take in
    ledger_rows: int  # ledger rows advanced

    def metadata(self, run_id: str, state_db: StateDatabaseResource) -> dict[str, object]:
        """Counts, samples and where the outcome log is, for the UI."""
        plan = self.plan
        return {
            "mode": self.mode,
            **{f"planned_{k}": dg.MetadataValue.int(n) for k, n in sorted(plan.counts.items())},
            **{k: dg.MetadataValue.int(n) for k, n in _written(self.summary).items()},
            "held": dg.MetadataValue.int(len(plan.held)),
            "left_for_the_next_run": dg.MetadataValue.int(len(self.unimported)),
            "ledger_rows_advanced": dg.MetadataValue.int(self.ledger_rows),
            "outcome_log": f"table sync_outcomes (run_id {run_id}) in the {state_db.describe()}",
            "samples": dg.MetadataValue.md(_samples(plan)),
        }


def import_back(
    audience: AudienceConfig,
    diff: pd.DataFrame,
    snapshot: pd.DataFrame | SnapshotView,
    crm_view: CrmView,
    *,
    run_id: str,
    crm: CrmResource,
    state_db: StateDatabaseResource,
    brevo: BrevoResource,
    dry_run: bool,
    allow_mass_vanish: bool,
    log: Callable[[str], None],
) -> ImportBack:
    """Plan the CRM changes `diff` proves, write them (unless dry run or report only), log
    every contact's outcome and advance the ledger for what the CRM took in."""
    plan = plan_import_back(
        diff,
        snapshot,
        crm_view,
        Audience(audience.key, audience.provider, audience.system_tag),
        max_vanish_share=_SETTINGS.removal_max_share,
        min_vanish_count=_SETTINGS.removal_min_count,
        allow_mass_vanish=allow_mass_vanish,
        bounced=_bounced(audience, diff, brevo, log),
        record_bounces="hard_bounce" in _SETTINGS.activities,
    )
    log(f"{audience.key}: import-back planned {dict(plan.counts)}")
    mode = _mode(dry_run)
    summary = None
    if mode == "write" and len(plan):
        writer = CrmWriter(crm.engine(), crm.crm_schema, _SETTINGS.crm_values, log=log)
        summary = writer.apply(plan.changes, plan.new_contacts)
        log(f"{audience.key}: written into the {crm.describe()}: {_written(summary)}")
    elif len(plan):
        why = "dry run" if mode == "dry_run" else "NEWSLETTER_CRM_WRITE_BACK=false"
        log(f"{audience.key}: {why}: nothing written into the CRM")
    unimported, ledger_rows = recorded(diff, plan, written=mode == "write")
    record(
        state_db.engine(),
        audience.key,
        run_id,
        ledger_rows,
        logged=outcome_records(plan, summary, mode),
    )
    return ImportBack(plan, summary, mode, unimported, len(ledger_rows))


def _bounced(
    audience: AudienceConfig, diff: pd.DataFrame, brevo: BrevoResource, log: Callable[[str], None]
) -> frozenset[str]:
    """Match keys of members Brevo blocklisted for a hard bounce: Brevo shows a bounce only as
    a blocklisting, like an opt-out, so it is asked why for each member newly seen blocklisted
    (Mailchimp says `cleaned`)."""
    candidates = bounce_candidates(diff)
    if audience.provider != "brevo" or not candidates:
        return frozenset()
    log(f"{audience.key}: asking Brevo why {len(candidates)} newly blocklisted members are")
    client = brevo.client(audience.name)
    try:
        reasons = client.blocklist_reasons(list(candidates))
    finally:
        client.close()
    log(f"{audience.key}: blocklisted because of " + str(dict(Counter(reasons.values()))))
    return frozenset(
        candidates[pid] for pid, why in reasons.items() if why is BlocklistReason.HARD_BOUNCE
    )


def _mode(dry_run: bool) -> str:
    """`write`, `dry_run` (run config) or `report_only` (NEWSLETTER_CRM_WRITE_BACK=false)."""
    if dry_run:
        return "dry_run"
    return "write" if _SETTINGS.crm_write_back else "report_only"


def _written(summary: WriteSummary | None) -> dict[str, int]:
    if summary is None:
        return {}
    return {
        "applied": summary.applied,
        "skipped_already_applied": summary.skipped_already_applied,
        "contacts_created": summary.contacts_created,
        "activities": summary.activities,
    }


def _samples(plan: ImportBackPlan, rows: int = 10) -> str:
    """The first planned changes, addresses masked."""
    records = [
        {
            "contact": change.contact_id,
            "activity": change.activity.kind,
            "newsletter": change.newsletter or "",
            "tags added": ", ".join(sorted(change.add_tags)),
            "email": mask_email(change.activity.details.get("email")),
        }
        for change in plan.changes[:rows]
    ] + [
        {
            "contact": "new",
            "activity": c.activity.kind,
            "newsletter": "yes",
            "tags added": ", ".join(sorted(c.tags)),
            "email": mask_email(c.email),
        }
        for c in plan.new_contacts[:rows]
    ]
    return markdown_table(records)
