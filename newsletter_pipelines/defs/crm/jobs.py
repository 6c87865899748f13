"""`crm_eligibility_job`: the CRM read and classified once for a sync of every audience."""

import dagster as dg

crm_eligibility_job = dg.define_asset_job(
    "crm_eligibility_job",
    selection=dg.AssetSelection.groups("crm"),
    description="Reads and classifies the CRM once for a sync of every audience: CRM contacts → "
    "eligible subscribers and excluded contacts, with the blocking checks. On success "
    "audience_syncs_sensor launches audience_sync_job for every audience on this result.",
)
