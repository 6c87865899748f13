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
from newsletter_pipelines.defs.resources import build_resources
from newsletter_pipelines.demo_people import play_people
from newsletter_pipelines.reporting import counts_table
from newsletter_pipelines.settings import Settings
from newsletter_pipelines.sync.eligibility import REASONS

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
SYNC_COLUMNS = ("created", "updated", "unsubscribed", "removed", "refused")
IMPORT_KINDS = (
    "newsletter_unsubscribed",
    "hard_bounce",
    "removed_at_provider",
    "newsletter_subscribed",
    "contact_created",
    "tags_added_at_provider",
    "tags_removed_at_provider",
)


@dataclass
class DemoRun:
    """The results of the demo: one `full_sync_job` run per audience."""

    audiences: dict[str, dg.ExecuteInProcessResult]
    people: list[str]  # what people did at the sandbox after this run (first demo only)

    @property
    def success(self) -> bool:
        """True when every run succeeded."""
        return all(r.success for r in self.audiences.values())


def _instance() -> dg.DagsterInstance:
    """The instance in DAGSTER_HOME (so `make dev` shows the demo's runs), else an ephemeral one."""
    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    return dg.DagsterInstance.ephemeral()


def run_demo(settings: Settings, instance: dg.DagsterInstance) -> DemoRun:
    """Run `full_sync_job` for every audience partition, as a click in the UI would."""
    if settings.uses_embedded_crm():
        ensure_demo_crm(settings.resolved_crm_database_url(), settings.demo_data_dir)
    resources = build_resources(settings)
    job = defs.resolve_job_def("full_sync_job")
    audiences = {}
    for audience in settings.audiences:
        print(f"full sync of audience {audience.key!r} ({audience.provider}) ...")
        audiences[audience.key] = job.execute_in_process(
            instance=instance,
            partition_key=audience.key,
            resources=resources,
            run_config=QUIET,
            raise_on_error=False,
        )
        if not audiences[audience.key].success:
            break
    run = DemoRun(audiences, [])
    if run.success:
        run.people = play_people(settings)
    return run


def _metadata(result: dg.ExecuteInProcessResult, node: str, asset: str) -> dict[str, object]:
    events = [
        e for e in result.asset_materializations_for_node(node) if e.asset_key == dg.AssetKey(asset)
    ]
    return {k: v.value for k, v in events[-1].metadata.items()} if events else {}


def summary(run: DemoRun, settings: Settings) -> str:
    """A readable summary: eligibility counts, checks, and one line per audience."""
    runs = list(run.audiences.values())
    lines = [f"runs: {', '.join(f'{k} {r.run_id}' for k, r in run.audiences.items())}"]
    meta = _metadata(runs[0], "eligible_subscribers", "eligible_subscribers") if runs else {}
    if meta:
        counts = {"eligible": int(meta["eligible_count"])} | {
            r: int(meta[f"excluded_{r}"]) for r in REASONS
        }
        lines += ["", "CRM contacts -> eligible subscribers", counts_table(counts, fmt="simple")]
    lines.append("")
    for key, result in run.audiences.items():
        checks = ", ".join(
            f"{e.check_name} {'passed' if e.passed else 'FAILED'}"
            for e in result.get_asset_check_evaluations()
        )
        lines.append(f"checks of {key}: {checks}")
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
    imports = []
    for key, result in run.audiences.items():
        back = _metadata(result, "crm_import_back", "crm_import_back")
        if back:
            imports.append(
                [key, back.get("mode", "-")]
                + [back.get(f"planned_{k}", 0) for k in IMPORT_KINDS]
                + [back.get("applied", 0)]
            )
    if imports:
        headers = [
            "audience",
            "mode",
            "unsubscribed",
            "bounced",
            "removed",
            "subscribed",
            "new contact",
            "tags added",
            "tags removed",
            "written",
        ]
        lines += [
            "",
            "Import-back into the CRM (what people did at the provider)",
            tabulate(imports, headers=headers, tablefmt="simple"),
        ]
    if run.people:
        lines += ["", "Meanwhile, at the sandbox providers (run `make demo` again to import it):"]
        lines += [f"  {line}" for line in run.people]
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
    run = run_demo(settings, _instance())
    print(summary(run, settings))
    return 0 if run.success else 1


if __name__ == "__main__":
    sys.exit(main())
