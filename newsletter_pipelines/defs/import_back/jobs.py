"""`import_back_job`: snapshot → diff → crm_import_back, no push; `provider_events_job`: the
import-back of the addresses webhook events name. Each run carries its audience's provider
account tag (`audience_config`, see `defs.providers.accounts`)."""

import dagster as dg

from newsletter_pipelines.defs.import_back.ops import apply_provider_events
from newsletter_pipelines.defs.providers.partitions import audience_config, audience_partitions

import_back_job = dg.define_asset_job(
    "import_back_job",
    selection=dg.AssetSelection.groups("crm", "import_back")
    | dg.AssetSelection.assets("provider_audience_snapshot", "reconciliation_diff"),
    config=audience_config,
    description="Import-back of one audience without a push: CRM contacts → eligibility → "
    "provider snapshot → reconciliation diff → crm_import_back.",
)


@dg.job(
    partitions_def=audience_partitions,
    config=audience_config,
    description="Applies one audience's webhook events (inbox provider_events) to the CRM with "
    "the import-back rules; launched by provider_events_sensor.",
    tags={"dagster/max_retries": 3},
)
def provider_events_job() -> None:
    apply_provider_events()
