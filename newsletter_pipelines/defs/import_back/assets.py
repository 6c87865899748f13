"""Asset `crm_import_back`, one partition per audience: what the CRM learns from the provider."""

from collections import Counter
from collections.abc import Callable, Iterator

import dagster as dg
import pandas as pd

from newsletter_pipelines.crm.writer import CrmWriter, WriteSummary
from newsletter_pipelines.defs.providers.partitions import audience_partitions
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
    bounce_candidates,
    observations,
    outcome_records,
    plan_import_back,
    unimported_keys,
)

GROUP = "import_back"
_SETTINGS = Settings()


class ImportBackConfig(dg.Config):
    """Run config of `crm_import_back`."""

    dry_run: bool = False
    allow_mass_vanish: bool = False


@dg.asset(
    group_name=GROUP,
    partitions_def=audience_partitions,
    kinds={"sql"},
    check_specs=[
        dg.AssetCheckSpec(
            "vanish_guard",
            asset="crm_import_back",
            description="No more members vanished (archived or deleted) at the provider since "
            "the last sync than NEWSLETTER_REMOVAL_MAX_SHARE of the audience and "
            "NEWSLETTER_REMOVAL_MIN_COUNT. When it fails, their import-back is held (an "
            "'Archive All' or a wiped list never flows into the CRM) until a run sets "
            "crm_import_back's allow_mass_vanish.",
        )
    ],
)
def crm_import_back(
    context: dg.AssetExecutionContext,
    config: ImportBackConfig,
    reconciliation_diff: pd.DataFrame,
    provider_audience_snapshot: pd.DataFrame,
    eligible_subscribers: pd.DataFrame,
    excluded_contacts: pd.DataFrame,
    crm: CrmResource,
    state_db: StateDatabaseResource,
    brevo: BrevoResource,
) -> Iterator[dg.Output[frozenset] | dg.AssetCheckResult]:
    """Writes into the CRM what people did at the provider, as the diff proves it: opt-outs
    (newsletter no), hard bounces, members archived or deleted (unspecified), sign-ups and
    re-subscriptions (yes, or a new contact), tags added and removed; one activity per change,
    each applied once, every contact's outcome logged (state database table sync_outcomes) and
    the ledger advanced. NEWSLETTER_CRM_WRITE_BACK=false or dry_run only report. Its value: the
    addresses whose provider-side change the CRM did not take in, which the push leaves to the
    next run."""
    audience = _SETTINGS.audience(context.partition_key)
    diff = reconciliation_diff
    plan = plan_import_back(
        diff,
        provider_audience_snapshot,
        CrmView.for_diff(diff, eligible_subscribers, excluded_contacts),
        Audience(audience.key, audience.provider, audience.system_tag),
        max_vanish_share=_SETTINGS.removal_max_share,
        min_vanish_count=_SETTINGS.removal_min_count,
        allow_mass_vanish=config.allow_mass_vanish,
        bounced=_bounced(audience, diff, brevo, context.log.info),
    )
    context.log.info(f"{audience.key}: import-back planned {dict(plan.counts)}")
    mode = _mode(config.dry_run)
    summary = None
    if mode == "write" and len(plan):
        writer = CrmWriter(crm.engine(), crm.crm_schema, _SETTINGS.crm_values, log=context.log.info)
        summary = writer.apply(plan.changes, plan.new_contacts)
        context.log.info(f"{audience.key}: written into the {crm.describe()}: {_written(summary)}")
    elif len(plan):
        why = "dry run" if mode == "dry_run" else "NEWSLETTER_CRM_WRITE_BACK=false"
        context.log.info(f"{audience.key}: {why}: nothing written into the CRM")
    unimported = unimported_keys(diff, plan, written=mode == "write")
    ledger_rows = observations(diff, unimported) if mode == "write" else []
    record(
        state_db.engine(),
        audience.key,
        context.run.run_id,
        ledger_rows,
        logged=outcome_records(plan, summary, mode),
    )
    vanish = plan.vanish
    if not vanish.passed:
        context.log.error(vanish.message)
    yield dg.Output(
        unimported,
        metadata={
            "mode": mode,
            **{f"planned_{k}": dg.MetadataValue.int(n) for k, n in sorted(plan.counts.items())},
            **{k: dg.MetadataValue.int(n) for k, n in _written(summary).items()},
            "held": dg.MetadataValue.int(len(plan.held)),
            "left_for_the_next_run": dg.MetadataValue.int(len(unimported)),
            "ledger_rows_advanced": dg.MetadataValue.int(len(ledger_rows)),
            "outcome_log": f"table sync_outcomes (run_id {context.run.run_id}) in the "
            f"{state_db.describe()}",
            "samples": dg.MetadataValue.md(_samples(plan)),
        },
    )
    yield dg.AssetCheckResult(
        check_name="vanish_guard",
        asset_key="crm_import_back",
        passed=vanish.passed,
        description=vanish.message,
        metadata={"vanished": vanish.count, "active_members": vanish.active_members},
    )


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
