"""What the two pushes share (`audience_sync`, `push_crm_changes`): the mass guards with the
limits of the settings and a run's releases, the push context, the outcome metadata."""

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import dagster as dg
import pandas as pd

from newsletter_pipelines.defs.io_manager import StoredFrame
from newsletter_pipelines.defs.resources import StateDatabaseResource
from newsletter_pipelines.reporting import markdown_table, mask_email
from newsletter_pipelines.settings import AudienceConfig, Settings
from newsletter_pipelines.sync.guards import MassLimits, MassVerdict, push_verdicts
from newsletter_pipelines.sync.push import (
    ACTS_ON,
    CHUNK_SIZE,
    COUNTED,
    CREATE_CHUNK_SIZE,
    CREATES_IN_FLIGHT,
    LEDGER,
    PushContext,
    PushSummary,
    Redecide,
)
from newsletter_pipelines.sync.rules import WRITE_ACTIONS

RESULTS = ("created", "updated", "unchanged", "unsubscribed", "removed", "refused", "held")

_SETTINGS = Settings()


def stored_push_input(diff: StoredFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Of a stored diff: the columns `COUNTED` of every row (planned counts, mass guards; as
    Arrow text, no Python object per value: a re-run of a million rows reads three million), and
    the rows `push_diff` acts on (`acted_on`) with all their columns, the others not decoded
    (nearly every row of a re-run is a contact in sync). Were a write stored without a value
    in `ACTS_ON` (the rules record a ledger row for every write), the whole diff is read. The
    ledger rows stay Arrow-backed (`LEDGER`): the push decodes them where it needs them,
    a first sync's creates chunk by chunk, so its first call waits for one chunk's only."""
    counted = replace(diff.part(columns=COUNTED), arrow_text=True).load()
    whole = replace(diff, arrow_structs=LEDGER)
    rows = whole.part(rows_with=ACTS_ON).load()
    writes = [a.value for a in WRITE_ACTIONS]
    if rows["action"].isin(writes).sum() != counted["action"].isin(writes).sum():
        rows = whole.load()
    return counted, rows


def push_guards(
    diff: pd.DataFrame, config: dict[str, Any], active: int | None = None
) -> dict[str, MassVerdict]:
    """`removal_guard` and `rename_guard` of `diff`; `config` may release them
    (`allow_mass_removal`, `allow_mass_rename`); `active`: the audience's active members when
    the diff covers only some."""
    limits = MassLimits(
        _SETTINGS.removal_max_share,
        _SETTINGS.removal_min_count,
        _SETTINGS.rename_max_share,
        _SETTINGS.rename_min_count,
    )
    return push_verdicts(
        diff,
        limits,
        bool(config.get("allow_mass_removal")),
        bool(config.get("allow_mass_rename")),
        active,
    )


def push_context(
    context: dg.OpExecutionContext,
    audience: AudienceConfig,
    state_db: StateDatabaseResource,
    verdicts: dict[str, MassVerdict],
    unimported: frozenset[str],
    redecide: Redecide | None = None,
) -> PushContext:
    """Where and how a run pushes: its ledger and outcome log, the guards' holds."""
    log: Callable[[str], None] = context.log.info
    return PushContext(
        engine=state_db.engine(),
        audience=audience.key,
        run_id=context.run.run_id,
        chunk_size=CHUNK_SIZE[audience.provider],
        create_chunk_size=CREATE_CHUNK_SIZE[audience.provider],
        creates_in_flight=CREATES_IN_FLIGHT[audience.provider],
        hold_removals=not verdicts["removal_guard"].passed,
        hold_renames=not verdicts["rename_guard"].passed,
        log=log,
        unimported=unimported,
        redecide=redecide,
    )


def push_metadata(
    context: dg.OpExecutionContext, summary: PushSummary, state_db: StateDatabaseResource
) -> dict[str, Any]:
    """A push's outcomes for the UI (also logged): counts, refusals by code, guards' holds."""
    results = {r: summary.results.get(r, 0) for r in RESULTS}
    context.log.info(f"{context.partition_key}: {results}")
    refusals = [{"provider code": c, "contacts": n} for c, n in summary.refused_by_code.items()]
    held = [{**h, "email": mask_email(h["email"])} for h in summary.held[:50]]
    return {
        **{r: dg.MetadataValue.int(n) for r, n in results.items()},
        "refused_by_reason": dg.MetadataValue.md(markdown_table(refusals)),
        "held_by_guards": dg.MetadataValue.md(markdown_table(held)),
        "ledger_rows_refreshed": dg.MetadataValue.int(summary.ledger_refreshed),
        "decided_again": dg.MetadataValue.int(summary.redecided),
        # writes a killed run sent that this run found done: logged in this run's outcome log
        "confirmed_after_interruption": dg.MetadataValue.int(summary.confirmed_after_interruption),
        "outcome_log": f"table sync_outcomes (run_id {context.run.run_id}) in the "
        f"{state_db.describe()}",
    }
