"""The one Definitions object, loaded by workspace.yaml and the tests."""

from __future__ import annotations

import dagster as dg

from newsletter_pipelines.defs.crm.assets import crm_contacts, eligible_subscribers
from newsletter_pipelines.defs.resources import build_resources

defs = dg.Definitions(
    assets=[crm_contacts, eligible_subscribers],
    resources=build_resources(),
)
