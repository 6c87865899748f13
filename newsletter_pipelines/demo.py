"""`make demo`: a full sync of every audience on the embedded defaults, with a printed summary."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

import dagster as dg
from tabulate import tabulate

from newsletter_pipelines.crm.embedded import ensure_demo_crm
from newsletter_pipelines.definitions import defs
from newsletter_pipelines.eligibility import REASONS
from newsletter_pipelines.reporting import counts_table
from newsletter_pipelines.settings import Settings

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
SYNC_COLUMNS = ("created", "updated", "unsubscribed", "removed", "refused")


@dataclass
class DemoRun:
    """The results of the demo: the CRM run and one run per audience."""

    crm: dg.ExecuteInProcessResult
    audiences: dict[str, dg.ExecuteInProcessResult]

    @property
    def success(self) -> bool:
        """True when every run succeeded."""
        return self.crm.success and all(r.success for r in self.audiences.values())


def _instance() -> dg.DagsterInstance:
    """The instance in DAGSTER_HOME (so `make dev` shows the demo's runs), else an ephemeral one."""
    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    return dg.DagsterInstance.ephemeral()


def run_demo(settings: Settings, instance: dg.DagsterInstance) -> DemoRun:
    """Materialize the `crm` group once, then the `providers` group for every audience."""
    if settings.uses_embedded_crm():
        ensure_demo_crm(settings.resolved_crm_database_url(), settings.demo_data_dir)
    job = defs.resolve_implicit_global_asset_job_def()
    crm = job.execute_in_process(
        instance=instance,
        asset_selection=list(dg.AssetSelection.groups("crm").resolve(defs.resolve_asset_graph())),
        run_config=QUIET,
        raise_on_error=False,
    )
    audiences = {}
    if crm.success:
        providers = dg.AssetSelection.groups("providers").resolve(defs.resolve_asset_graph())
        sync_job = defs.resolve_job_def("full_sync_job")
        for audience in settings.audiences:
            print(f"full sync of audience {audience.key!r} ({audience.provider}) ...")
            audiences[audience.key] = sync_job.execute_in_process(
                instance=instance,
                partition_key=audience.key,
                asset_selection=list(providers),
                run_config=QUIET,
                raise_on_error=False,
            )
    return DemoRun(crm, audiences)


def _metadata(result: dg.ExecuteInProcessResult, node: str, asset: str) -> dict[str, object]:
    events = [
        e for e in result.asset_materializations_for_node(node) if e.asset_key == dg.AssetKey(asset)
    ]
    return {k: v.value for k, v in events[-1].metadata.items()} if events else {}


def summary(run: DemoRun, settings: Settings) -> str:
    """A readable summary: eligibility counts, checks, and one line per audience."""
    lines = [f"CRM run {run.crm.run_id}: {'succeeded' if run.crm.success else 'FAILED'}"]
    meta = _metadata(run.crm, "eligible_subscribers", "eligible_subscribers")
    if meta:
        counts = {"eligible": int(meta["eligible_count"])} | {
            r: int(meta[f"excluded_{r}"]) for r in REASONS
        }
        lines += ["", "CRM contacts -> eligible subscribers", counts_table(counts, fmt="simple")]
    checks = [
        e for r in (run.crm, *run.audiences.values()) for e in r.get_asset_check_evaluations()
    ]
    lines.append("")
    lines += [f"check {e.check_name}: {'passed' if e.passed else 'FAILED'}" for e in checks]
    rows = []
    for key, result in run.audiences.items():
        audience = settings.audience(key)
        diff = _metadata(result, "reconciliation_diff", "reconciliation_diff")
        sync = _metadata(result, "audience_sync", "audience_sync")
        rows.append(
            [key, audience.provider, "ok" if result.success else "FAILED"]
            + [sync.get(c, "-") for c in SYNC_COLUMNS]
            + [
                diff.get(f"action_{a}", "-")
                for a in ("unchanged", "blocked_by_provider", "import_back")
            ]
        )
    if rows:
        headers = [
            "audience",
            "provider",
            "run",
            *SYNC_COLUMNS,
            "in sync",
            "blocked",
            "import back",
        ]
        lines += ["", "Full sync per audience", tabulate(rows, headers=headers, tablefmt="simple")]
    lines += [
        "",
        "providers: embedded sandbox (no API keys set), state in "
        f"{settings.sandbox_state_file or settings.home / 'sandbox.json'}",
        "excluded contacts: table eligibility_exclusions; per-contact outcomes: table "
        "sync_outcomes; ledger: table sync_ledger;",
        f"all in {settings.resolved_state_database_url()}",
        "open the Dagster UI with `make dev` to see lineage, metadata and checks",
    ]
    return "\n".join(lines)


def main() -> int:
    """Run the demo and print its summary; exit status 1 when a run failed."""
    logging.basicConfig(level=logging.WARNING)
    settings = Settings()
    print("materializing the crm group on the embedded defaults ...")
    run = run_demo(settings, _instance())
    print(summary(run, settings))
    return 0 if run.success else 1


if __name__ == "__main__":
    sys.exit(main())
