"""Asset `crm_import_back`, one partition per audience: what the CRM learns from the provider."""

from collections.abc import Iterator

import dagster as dg
import pandas as pd

from newsletter_pipelines.crm.writer import CrmWriter
from newsletter_pipelines.defs.providers.partitions import audience_partitions
from newsletter_pipelines.defs.resources import CrmResource
from newsletter_pipelines.reporting import markdown_table, mask_email
from newsletter_pipelines.settings import Settings
from newsletter_pipelines.sync.import_back import (
    Audience,
    CrmView,
    ImportBackPlan,
    plan_import_back,
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
    crm_contacts: pd.DataFrame,
    eligible_subscribers: pd.DataFrame,
    excluded_contacts: pd.DataFrame,
    crm: CrmResource,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Writes into the CRM what people did at the provider, as the diff proves it: opt-outs
    (newsletter no), hard bounces, members archived or deleted (unspecified), sign-ups and
    re-subscriptions (yes, or a new contact), tags added; one activity per change, each
    applied once. NEWSLETTER_CRM_WRITE_BACK=false or dry_run only report."""
    audience = _SETTINGS.audience(context.partition_key)
    plan = plan_import_back(
        reconciliation_diff,
        provider_audience_snapshot,
        CrmView.from_frames(crm_contacts, eligible_subscribers, excluded_contacts),
        Audience(audience.key, audience.provider, audience.system_tag),
        max_vanish_share=_SETTINGS.removal_max_share,
        min_vanish_count=_SETTINGS.removal_min_count,
        allow_mass_vanish=config.allow_mass_vanish,
    )
    context.log.info(f"{audience.key}: import-back planned {dict(plan.counts)}")
    mode = _mode(config.dry_run)
    written: dict[str, int] = {}
    if mode == "write" and len(plan):
        writer = CrmWriter(crm.engine(), crm.crm_schema, _SETTINGS.crm_values, log=context.log.info)
        summary = writer.apply(plan.changes, plan.new_contacts)
        written = {
            "applied": summary.applied,
            "skipped_already_applied": summary.skipped_already_applied,
            "contacts_created": summary.contacts_created,
            "activities": summary.activities,
        }
        context.log.info(f"{audience.key}: written into the {crm.describe()}: {written}")
    elif len(plan):
        context.log.info(f"{audience.key}: {mode}: nothing written into the CRM")
    vanish = plan.vanish
    if not vanish.passed:
        context.log.error(vanish.message)
    yield dg.MaterializeResult(
        metadata={
            "mode": mode,
            **{f"planned_{k}": dg.MetadataValue.int(n) for k, n in sorted(plan.counts.items())},
            **{k: dg.MetadataValue.int(n) for k, n in written.items()},
            "held": dg.MetadataValue.int(len(plan.held)),
            "samples": dg.MetadataValue.md(_samples(plan)),
        }
    )
    yield dg.AssetCheckResult(
        check_name="vanish_guard",
        asset_key="crm_import_back",
        passed=vanish.passed,
        description=vanish.message,
        metadata={"vanished": vanish.count, "active_members": vanish.active_members},
    )


def _mode(dry_run: bool) -> str:
    if dry_run:
        return "dry run"
    return "write" if _SETTINGS.crm_write_back else "report only (NEWSLETTER_CRM_WRITE_BACK=false)"


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
