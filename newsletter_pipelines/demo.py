"""`make demo`: materialize the pipeline on the embedded defaults and print a summary."""

from __future__ import annotations

import logging
import os
import sys

import dagster as dg

from newsletter_pipelines.crm.embedded import ensure_demo_crm
from newsletter_pipelines.defs.crm.assets import crm_contacts, eligible_subscribers
from newsletter_pipelines.defs.resources import build_resources
from newsletter_pipelines.eligibility import REASONS
from newsletter_pipelines.reporting import counts_table
from newsletter_pipelines.settings import Settings


def _instance() -> dg.DagsterInstance:
    """The instance in DAGSTER_HOME (so `make dev` shows the demo's runs), else an ephemeral one."""
    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    return dg.DagsterInstance.ephemeral()


def run_demo(settings: Settings, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """Materialize the `crm` group and return the run result."""
    if settings.uses_embedded_crm():
        ensure_demo_crm(settings.resolved_crm_database_url(), settings.demo_data_dir)
    return dg.materialize(
        [crm_contacts, eligible_subscribers],
        resources=build_resources(settings),
        instance=instance,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        raise_on_error=False,
    )


def summary(result: dg.ExecuteInProcessResult, settings: Settings) -> str:
    """A readable summary of the run: counts per exclusion reason, checks, where to look next."""
    events = [
        e
        for e in result.asset_materializations_for_node("eligible_subscribers")
        if e.asset_key == dg.AssetKey("eligible_subscribers")
    ]
    lines = [f"run {result.run_id}: {'succeeded' if result.success else 'FAILED'}"]
    if events:
        meta = events[-1].metadata
        counts = {"eligible": int(meta["eligible_count"].value)} | {
            r: int(meta[f"excluded_{r}"].value) for r in REASONS
        }
        lines += ["", "CRM contacts -> eligible subscribers", counts_table(counts, fmt="simple")]
    lines.append("")
    for evaluation in result.get_asset_check_evaluations():
        state = "passed" if evaluation.passed else "FAILED"
        lines.append(f"check {evaluation.check_name}: {state}")
    lines += [
        "",
        f"excluded contacts with their reason: table eligibility_exclusions in "
        f"{settings.resolved_state_database_url()}",
        "open the Dagster UI with `make dev` to see lineage, metadata and checks",
    ]
    return "\n".join(lines)


def main() -> int:
    """Run the demo and print its summary; exit status 1 when the run failed."""
    logging.basicConfig(level=logging.WARNING)
    settings = Settings()
    print("materializing crm_contacts and eligible_subscribers on the embedded defaults ...")
    result = run_demo(settings, _instance())
    print(summary(result, settings))
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
