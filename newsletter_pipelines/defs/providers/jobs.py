"""`full_sync_job`: CRM eligibility and, per audience partition, snapshot, diff and push;
`audience_sync_job`: the same without the CRM read, on the latest `crm_eligibility_job` result;
`incremental_sync_job`: the push of the CRM contacts that changed. Each run carries its
audience's provider account tag (`audience_config`, see `accounts`)."""

import dagster as dg

from newsletter_pipelines.defs.providers.ops import push_crm_changes
from newsletter_pipelines.defs.providers.partitions import audience_config, audience_partitions

full_sync_job = dg.define_asset_job(
    "full_sync_job",
    selection=dg.AssetSelection.groups("crm", "providers", "import_back"),
    config=audience_config,
    description="Full two-way sync of one audience: CRM contacts → eligible subscribers → "
    "provider snapshot → reconciliation diff → push, and the import-back into the CRM. "
    "Blocking checks stop the push on a suspicious eligible-count drop, a mass removal or a "
    "would-be re-subscription.",
)

audience_sync_job = dg.define_asset_job(
    "audience_sync_job",
    selection=dg.AssetSelection.groups("providers", "import_back"),
    config=audience_config,
    description="Two-way sync of one audience on the latest eligibility (crm_eligibility_job): "
    "provider snapshot → reconciliation diff → push, and the import-back into the CRM; "
    "launched for every audience by audience_syncs_sensor, so a sync of all audiences reads "
    "the CRM once.",
)


@dg.job(
    partitions_def=audience_partitions,
    config=audience_config,
    description="Pushes one audience the CRM contacts changed in a watermark span, decided as "
    "the full sync decides them; launched by crm_changes_sensor.",
    tags={"dagster/max_retries": 3},
)
def incremental_sync_job() -> None:
    push_crm_changes()
