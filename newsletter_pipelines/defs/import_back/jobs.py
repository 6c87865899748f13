"""`import_back_job`: snapshot → diff → crm_import_back, no push."""

import dagster as dg

import_back_job = dg.define_asset_job(
    "import_back_job",
    selection=dg.AssetSelection.groups("crm", "import_back")
    | dg.AssetSelection.assets("provider_audience_snapshot", "reconciliation_diff"),
    description="Import-back of one audience without a push: CRM contacts → eligibility → "
    "provider snapshot → reconciliation diff → crm_import_back.",
)
