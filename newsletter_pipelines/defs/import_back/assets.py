"""Asset `crm_import_back`, one partition per audience: what the CRM learns from the provider."""

from collections.abc import Iterator

import dagster as dg
import pandas as pd

from newsletter_pipelines.defs.import_back.writing import import_back
from newsletter_pipelines.defs.io_manager import COLUMNS, LAZY, ROWS_WITH, StoredFrame
from newsletter_pipelines.defs.providers.accounts import checked_account_runs
from newsletter_pipelines.defs.providers.partitions import audience_partitions
from newsletter_pipelines.defs.resources import CrmResource, StateDatabaseResource
from newsletter_pipelines.providers.resources import BrevoResource
from newsletter_pipelines.settings import Settings
from newsletter_pipelines.sync.import_back import (
    ACTING,
    CRM_COLUMNS_READ,
    DIFF_COLUMNS_READ,
    CrmView,
    SnapshotView,
    acting_rows,
)
from newsletter_pipelines.sync.rules import ACTIVE

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
    # what the import-back reads of its inputs, and no more (a million rows each in a full sync)
    ins={
        "reconciliation_diff": dg.AssetIn(
            metadata={COLUMNS: list(DIFF_COLUMNS_READ), ROWS_WITH: list(ACTING)}
        ),
        "provider_audience_snapshot": dg.AssetIn(metadata={LAZY: True}),
        # read only for a diff with rows to take in (a re-run without any reads neither)
        "eligible_subscribers": dg.AssetIn(metadata={LAZY: True, COLUMNS: list(CRM_COLUMNS_READ)}),
        "excluded_contacts": dg.AssetIn(
            metadata={LAZY: True, COLUMNS: [*CRM_COLUMNS_READ, "newsletter"]}
        ),
    },
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
    provider_audience_snapshot: StoredFrame,
    eligible_subscribers: StoredFrame,
    excluded_contacts: StoredFrame,
    crm: CrmResource,
    state_db: StateDatabaseResource,
    brevo: BrevoResource,
) -> Iterator[dg.Output[pd.DataFrame] | dg.AssetCheckResult]:
    """Writes into the CRM what people did at the provider, as the diff proves it: opt-outs
    (newsletter no), hard bounces, members archived or deleted (unspecified), sign-ups and
    re-subscriptions (yes, or a new contact), tags added and removed; one activity per change,
    each applied once, every contact's outcome logged (state database table sync_outcomes) and
    the ledger advanced. NEWSLETTER_CRM_WRITE_BACK=false or dry_run only report. Its value: the
    addresses (column `match_key`) whose provider-side change the CRM did not take in, which
    the push leaves to the next run."""
    audience = _SETTINGS.audience(context.partition_key)
    if audience.provider == "brevo":  # it may ask Brevo why members are blocklisted
        checked_account_runs(context, audience)
    done = import_back(
        audience,
        reconciliation_diff,
        snapshot_view(provider_audience_snapshot),
        _crm_view(reconciliation_diff, eligible_subscribers, excluded_contacts),
        run_id=context.run.run_id,
        crm=crm,
        state_db=state_db,
        brevo=brevo,
        dry_run=config.dry_run,
        allow_mass_vanish=config.allow_mass_vanish,
        log=context.log.info,
    )
    vanish = done.plan.vanish
    if not vanish.passed:
        context.log.error(vanish.message)
    unimported = pd.DataFrame({"match_key": sorted(done.unimported)}, dtype=object)
    yield dg.Output(unimported, metadata=done.metadata(context.run.run_id, state_db))
    yield dg.AssetCheckResult(
        check_name="vanish_guard",
        asset_key="crm_import_back",
        passed=vanish.passed,
        description=vanish.message,
        metadata={"vanished": vanish.count, "active_members": vanish.active_members},
    )


def _crm_view(diff: pd.DataFrame, eligible: StoredFrame, excluded: StoredFrame) -> CrmView:
    """The CRM contacts the diff's rows to take in concern; without such rows, none (and the
    eligibility frames are not read)."""
    if acting_rows(diff).empty:
        return CrmView(by_key={}, newsletter={}, updated_at={})
    return CrmView.for_diff(diff, eligible.load(), excluded.load())


def snapshot_view(snapshot: StoredFrame) -> SnapshotView:
    """The stored snapshot as the import-back reads it: its status column for the active count,
    the members at the addresses it acts on when it asks."""
    statuses = snapshot.part(columns=["status"]).load()["status"]
    return SnapshotView(
        int(statuses.isin(ACTIVE).sum()), lambda keys: snapshot.load_where("match_key", keys)
    )
