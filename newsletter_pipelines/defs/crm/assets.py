"""Assets of group `crm`: the CRM contacts and the eligible subscribers."""

from collections.abc import Iterator

import dagster as dg
import pandas as pd
from pydantic import Field

from newsletter_pipelines.crm.changes import latest_change
from newsletter_pipelines.crm.errors import CrmError
from newsletter_pipelines.defs.crm.checks import (
    CHECK_SPECS,
    count_drop_judge,
    eligibility_check_results,
)
from newsletter_pipelines.defs.resources import CrmResource, StateDatabaseResource
from newsletter_pipelines.reporting import contacts_preview, counts_table
from newsletter_pipelines.settings import Settings
from newsletter_pipelines.state.exclusions import record_eligibility
from newsletter_pipelines.sync.changes import READ_UPTO
from newsletter_pipelines.sync.eligibility import REASONS, classify

GROUP = "crm"
_SETTINGS = Settings()


@dg.asset(group_name=GROUP, kinds={"sql", "pandas"})
def crm_contacts(context: dg.AssetExecutionContext, crm: CrmResource) -> dg.Output[pd.DataFrame]:
    """Every CRM contact with its tags, values as stored (wrong types included); the latest
    change before the read is kept with them (`READ_UPTO`), so a run that decides on them later
    can tell which contacts changed since."""
    context.log.info(f"reading contacts from the {crm.describe()}")
    try:
        upto = latest_change(crm.engine(), crm.crm_schema)
    except CrmError as exc:
        context.log.warning(f"the CRM's latest change is unknown: {exc}")
        upto = None
    contacts = crm.read_contacts()
    contacts.attrs[READ_UPTO] = upto.text() if upto else None
    context.log.info(f"read {len(contacts)} contacts")
    return dg.Output(
        contacts,
        metadata={
            "row_count": dg.MetadataValue.int(len(contacts)),
            "tagged_contacts": dg.MetadataValue.int(int(contacts["tags"].map(bool).sum())),
            "source": crm.describe(),
            "changes_read_upto": str(contacts.attrs[READ_UPTO]),
            "preview": dg.MetadataValue.md(contacts_preview(contacts)),
        },
    )


class EligibilityConfig(dg.Config):
    """Run config of `eligible_subscribers`."""

    max_drop_share: float = Field(
        default=_SETTINGS.eligible_max_drop_share,
        description="Largest tolerated drop of the eligible count against the last accepted run.",
    )
    accept_drop: bool = Field(
        default=False, description="Accept a larger drop for this run (after checking the CRM)."
    )


@dg.multi_asset(
    outs={
        "eligible_subscribers": dg.AssetOut(
            group_name=GROUP,
            kinds={"pandas"},
            description="Contacts that may receive the newsletter: not private, valid unique "
            "email, newsletter yes.",
        ),
        "excluded_contacts": dg.AssetOut(
            group_name=GROUP,
            kinds={"pandas"},
            description="Every other CRM contact with its one exclusion reason, its newsletter "
            "value (yes/no/unknown) and updated_at (id, reason, email and detail also in the "
            "state database table eligibility_exclusions).",
        ),
    },
    check_specs=CHECK_SPECS,
)
def eligible_subscribers(
    context: dg.AssetExecutionContext,
    config: EligibilityConfig,
    crm_contacts: pd.DataFrame,
    state_db: StateDatabaseResource,
) -> Iterator[dg.Output[pd.DataFrame] | dg.AssetCheckResult]:
    """Eligibility: eligible subscribers and excluded contacts with their reason; the newsletter
    column is read through NEWSLETTER_CRM_VALUES__*, the values the import-back writes."""
    result = classify(crm_contacts, _SETTINGS.crm_values)
    for frame in (result.eligible, result.excluded):
        frame.attrs[READ_UPTO] = crm_contacts.attrs.get(READ_UPTO)
    counts = result.counts
    context.log.info(
        "eligibility: " + ", ".join(f"{name} {count}" for name, count in counts.items())
    )
    judge = count_drop_judge(context, result.eligible, config)
    stored, verdict = record_eligibility(
        state_db.engine(), result.excluded, context.run.run_id, judge
    )
    context.log.info(f"stored {stored} excluded contacts in the {state_db.describe()}")
    checks = eligibility_check_results(context, result.eligible, verdict)
    baseline = verdict.baseline
    excluded_counts = {f"excluded_{r}": dg.MetadataValue.int(counts[r]) for r in REASONS}
    metadata: dict[str, dg.RawMetadataValue] = {
        "eligible_count": dg.MetadataValue.int(counts["eligible"]),
        **excluded_counts,
        "crm_rows": dg.MetadataValue.int(len(crm_contacts)),
        "eligible_baseline": dg.MetadataValue.int(baseline),
        "profile_fields_cleaned": dg.MetadataValue.int(result.profile_fields_cleaned),
        "counts": dg.MetadataValue.md(counts_table(counts)),
        "excluded_rows": dg.MetadataValue.text(
            f"table eligibility_exclusions in the {state_db.describe()}"
        ),
    }
    yield dg.Output(result.eligible, output_name="eligible_subscribers", metadata=metadata)
    yield dg.Output(
        result.excluded,
        output_name="excluded_contacts",
        metadata={"row_count": dg.MetadataValue.int(len(result.excluded)), **excluded_counts},
    )
    yield from checks
