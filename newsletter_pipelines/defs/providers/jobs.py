"""The full sync: CRM eligibility and, per audience partition, snapshot, diff and push."""

import dagster as dg

full_sync_job = dg.define_asset_job(
    "full_sync_job",
    selection=dg.AssetSelection.groups("crm", "providers", "import_back"),
    description="Full two-way sync of one audience: CRM contacts → eligible subscribers → "
    "provider snapshot → reconciliation diff → push, and the import-back into the CRM. "
    "Blocking checks stop the push on a suspicious eligible-count drop, a mass removal or a "
    "would-be re-subscription.",
)
