"""Assets of group `providers`, one partition per audience: snapshot, diff, push."""

import time
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import dagster as dg
import pandas as pd

from newsletter_pipelines.bulk import release_freed_memory
from newsletter_pipelines.crm.changes import changed_after
from newsletter_pipelines.crm.reader import read_contacts_at
from newsletter_pipelines.defs.io_manager import ARROW_TEXT, COLUMNS, LAZY, StoredFrame
from newsletter_pipelines.defs.providers.clients import provider_mode, run_client
from newsletter_pipelines.defs.providers.partitions import audience_partitions
from newsletter_pipelines.defs.providers.pushing import (
    push_context,
    push_guards,
    push_metadata,
    stored_push_input,
)
from newsletter_pipelines.defs.providers.snapshot_read import read_snapshot, take_snapshot_read
from newsletter_pipelines.defs.resources import CrmResource, StateDatabaseResource
from newsletter_pipelines.providers.base import Member
from newsletter_pipelines.providers.resources import BrevoResource, MailchimpResource
from newsletter_pipelines.reporting import diff_samples, explain_diff, markdown_table, mask_email
from newsletter_pipelines.settings import AudienceConfig, Settings
from newsletter_pipelines.state.ledger import load_ledger_frame
from newsletter_pipelines.sync.changes import READ_UPTO, Mark, about_contacts
from newsletter_pipelines.sync.email_address import raw_match_key
from newsletter_pipelines.sync.guards import (
    resubscribe_violations,
)
from newsletter_pipelines.sync.inputs import (
    ELIGIBLE_READ,
    EXCLUDED_READ,
    SNAPSHOT_COLUMNS,
    build_diff,
    members_by_key,
    redecider,
    snapshot_frame_of_columns,
)
from newsletter_pipelines.sync.push import member_keys, push_diff
from newsletter_pipelines.sync.rules import SyncAction
from newsletter_pipelines.sync.snapshot_columns import status_counts

GROUP = "providers"
DIFF_STEP = "reconciliation_diff"
LEDGER_AHEAD_MAX_ROWS = 1_000_000
"""A larger ledger is read by the diff. Read ahead, the ledger is held beside the snapshot: a
re-run of a million members peaked at 1.69-1.72 GiB in the snapshot step, as high as in the
diff (which holds both anyway), and its diff step took 5.7 s instead of 8.2 s."""
RedecideAnswer = tuple[pd.DataFrame, Mapping[str, Member]]
_SETTINGS = Settings()


def _audience(context: dg.AssetExecutionContext) -> AudienceConfig:
    return _SETTINGS.audience(context.partition_key)


@dg.asset(
    group_name=GROUP,
    partitions_def=audience_partitions,
    kinds={"api"},
    # after the CRM's steps, which it does not need: a run that started the read early
    # (`snapshot_read`) reads the CRM meanwhile
    op_tags={"dagster/priority": "-1"},
)
def provider_audience_snapshot(
    context: dg.AssetExecutionContext,
    mailchimp: MailchimpResource,
    brevo: BrevoResource,
    state_db: StateDatabaseResource,
) -> dg.Output[pd.DataFrame]:
    """Every member of the audience as the provider holds it, whatever its status: provider id,
    address, status, names, salutation, tags, last change. Read from the run's start when the
    provider counts at most 200,000 members in the audience (`snapshot_read`), else in the step.
    Meanwhile the ledger of a run that diffs next is read ahead for the diff (PostgreSQL, at
    most a million rows: `LEDGER_AHEAD_MAX_ROWS`).

    A provider error fails the run: a failed read is never an empty audience.
    """
    audience = _audience(context)
    mode = provider_mode(audience, mailchimp, brevo)  # the run's log says it at resource start
    steps = context.run.step_keys_to_execute
    if steps is None or DIFF_STEP in steps:
        try:
            state_db.read_ledger_early(audience.key, LEDGER_AHEAD_MAX_ROWS)
        except Exception as exc:  # the diff reads it, and fails there if it cannot
            context.log.warning(
                f"{audience.key}: the ledger is not read ahead ({type(exc).__name__}); the "
                "diff reads it"
            )
    read = take_snapshot_read(audience, mailchimp, brevo)
    early = read is not None
    if read is None:
        with run_client(context, audience, mailchimp, brevo) as client:
            read = read_snapshot(client, audience)
    else:
        context.log.info(
            f"{audience.key}: snapshot read from the run's start in "
            f"{read.ended - read.started:.2f} s, {time.monotonic() - read.ended:.2f} s before "
            "this step took it"
        )
    for note in read.notes:
        context.log.info(note)
    members = read.members
    statuses = status_counts(members)
    context.log.info(f"{audience.key}: {len(members)} members ({statuses})")
    first = members.texts.slice(0, 10)
    sample = [
        {"email": mask_email(email), "status": status, "tags": ", ".join(tags)}
        for email, status, tags in zip(
            first["email"].to_pylist(), first["status"].to_pylist(), members.tags, strict=False
        )
    ]
    return dg.Output(
        snapshot_frame_of_columns(members),
        metadata={
            "audience": f"{audience.provider} {read.found.name!r} (id {read.found.id})",
            "provider": mode,
            "webhook": read.webhook,
            "read_early": early,
            "member_count": dg.MetadataValue.int(len(members)),
            **{f"status_{s}": dg.MetadataValue.int(n) for s, n in sorted(statuses.items())},
            "sample": dg.MetadataValue.md(markdown_table(sample)),
        },
    )


def _sync_config(context: dg.AssetExecutionContext) -> dict[str, Any]:
    """`audience_sync`'s run config, so the guards honour its releases in the same run."""
    ops = (context.run.run_config or {}).get("ops", {})
    return ops.get("audience_sync", {}).get("config", {}) or {}


@dg.asset(
    group_name=GROUP,
    partitions_def=audience_partitions,
    kinds={"pandas"},
    # read in the step, only the columns the diff reads, and let go once used; the snapshot's
    # texts Arrow-backed (a million members' addresses and ids as Python str: ~0.4 GiB more)
    ins={
        "eligible_subscribers": dg.AssetIn(metadata={LAZY: True, COLUMNS: list(ELIGIBLE_READ)}),
        "excluded_contacts": dg.AssetIn(metadata={LAZY: True, COLUMNS: list(EXCLUDED_READ)}),
        "provider_audience_snapshot": dg.AssetIn(
            metadata={LAZY: True, COLUMNS: list(SNAPSHOT_COLUMNS), ARROW_TEXT: True}
        ),
    },
    check_specs=[
        dg.AssetCheckSpec(
            "removal_guard",
            asset="reconciliation_diff",
            description="The push would not unsubscribe/remove more than the configured share "
            "of the audience (NEWSLETTER_REMOVAL_MAX_SHARE) and more than "
            "NEWSLETTER_REMOVAL_MIN_COUNT contacts, unless audience_sync's allow_mass_removal is "
            "set for the run. When it fails, audience_sync holds those unsubscribes and removals "
            "(creates and updates still go out).",
        ),
        dg.AssetCheckSpec(
            "rename_guard",
            asset="reconciliation_diff",
            description="The push would not move more than NEWSLETTER_RENAME_MAX_SHARE of the "
            "audience to other addresses and more than NEWSLETTER_RENAME_MIN_COUNT contacts "
            "(a wrongly mapped email column), unless audience_sync's allow_mass_rename is set "
            "for the run. When it fails, audience_sync holds those address changes.",
        ),
        dg.AssetCheckSpec(
            "never_resubscribe",
            asset="reconciliation_diff",
            blocking=True,
            description="No create or update targets a member the provider holds as "
            "unsubscribed, cleaned or blacklisted, an archived member of unknown consent, or an "
            "address or contact with an opt-out in the ledger.",
        ),
    ],
)
def reconciliation_diff(
    context: dg.AssetExecutionContext,
    eligible_subscribers: StoredFrame,
    excluded_contacts: StoredFrame,
    provider_audience_snapshot: StoredFrame,
    crm: CrmResource,
    state_db: StateDatabaseResource,
) -> Iterator[dg.Output[pd.DataFrame] | dg.AssetCheckResult]:
    """Three-way comparison of the CRM, the provider snapshot and the sync ledger: one action
    per contact (create, update, unsubscribe, remove, unchanged, blocked_by_provider,
    import_back). Contacts the CRM changed since its read are left to the change sensor's runs
    (this diff would send their values from before)."""
    audience = _audience(context)
    # each input is held only while needed: the inputs, the ledger and the diff of a million
    # contacts are each several hundred MiB
    ledger, ledger_read = state_db.ledger_frame(audience.key)
    context.log.info(f"{audience.key}: {len(ledger)} ledger rows, {ledger_read}")
    release_freed_memory()  # what the driver's read left in Arrow's pool
    eligible, excluded = eligible_subscribers.load(), excluded_contacts.load()
    diff = build_diff(
        eligible,
        excluded,
        provider_audience_snapshot.load(),  # let go when the diff is built
        ledger,
        provider=audience.provider,
        system_tag=audience.system_tag,
    )
    ids, keys = _changed_since_read(crm, eligible, excluded)
    del eligible, excluded
    later = about_contacts(diff, ids, keys) if ids else pd.Series(False, index=diff.index)
    if later.any():
        context.log.info(
            f"{audience.key}: {len(ids)} CRM contacts changed since the CRM read; their "
            f"{int(later.sum())} rows are left to crm_changes_sensor's runs"
        )
        diff = diff[~later]
    actions = diff["action"].value_counts()
    context.log.info(f"{audience.key}: " + ", ".join(f"{a} {n}" for a, n in actions.items()))
    verdicts = push_guards(diff, _sync_config(context))
    risky = resubscribe_violations(diff, ledger)
    ledger_count = len(ledger)
    del ledger
    yield dg.Output(
        diff,
        metadata={
            **{
                f"action_{a.value}": dg.MetadataValue.int(int(actions.get(a.value, 0)))
                for a in SyncAction
            },
            "why_the_numbers_differ": dg.MetadataValue.md(explain_diff(diff)),
            "samples": dg.MetadataValue.md(diff_samples(diff)),
            "ledger_rows": dg.MetadataValue.int(ledger_count),
            "ledger_read": ledger_read,
            "left_to_change_sensor": dg.MetadataValue.int(len(ids)),
        },
    )
    for name, verdict in verdicts.items():
        if not verdict.passed:
            context.log.error(verdict.message)
        yield dg.AssetCheckResult(
            check_name=name,
            asset_key="reconciliation_diff",
            passed=verdict.passed,
            description=verdict.message,
            metadata={
                "contacts": verdict.count,
                "active_members": verdict.active_members,
                "share": verdict.share,
            },
        )
    yield dg.AssetCheckResult(
        check_name="never_resubscribe",
        asset_key="reconciliation_diff",
        passed=risky.empty,
        metadata={"violations": len(risky)},
    )


def _changed_since_read(
    crm: CrmResource, eligible: pd.DataFrame, excluded: pd.DataFrame
) -> tuple[frozenset[str], frozenset[str]]:
    """The CRM contacts changed after the latest change the frames' read saw, and their
    addresses then and now."""
    upto = eligible.attrs.get(READ_UPTO)
    if not upto:
        return frozenset(), frozenset()
    engine, schema = crm.engine(), crm.crm_schema
    ids = frozenset(m.contact_id for m in changed_after(engine, schema, Mark.parse(upto)))
    if not ids:
        return ids, frozenset()
    then = [f.loc[f["contact_id"].astype(str).isin(ids), "email"] for f in (eligible, excluded)]
    now = read_contacts_at(engine, schema, (), ids)["email"]
    keys = {raw_match_key(email) for emails in (*then, now) for email in emails}
    return ids, frozenset(k for k in keys if k)


class SyncConfig(dg.Config):
    """Run config of `audience_sync`."""

    dry_run: bool = False
    allow_mass_removal: bool = False
    allow_mass_rename: bool = False


@dg.asset(
    group_name=GROUP,
    partitions_def=audience_partitions,
    kinds={"api"},
    # read only if needed: the snapshot for the members the push updates, all three for the
    # contacts whose address change the provider refuses; of the diff, the rows the push acts
    # on and the columns it counts (`stored_push_input`)
    ins={
        name: dg.AssetIn(metadata={LAZY: True})
        for name in (
            "reconciliation_diff",
            "eligible_subscribers",
            "excluded_contacts",
            "provider_audience_snapshot",
        )
    },
)
def audience_sync(
    context: dg.AssetExecutionContext,
    config: SyncConfig,
    reconciliation_diff: StoredFrame,
    eligible_subscribers: StoredFrame,
    excluded_contacts: StoredFrame,
    provider_audience_snapshot: StoredFrame,
    crm_import_back: pd.DataFrame,  # match_key: provider-side changes the CRM did not take in
    state_db: StateDatabaseResource,
    mailchimp: MailchimpResource,
    brevo: BrevoResource,
) -> dg.MaterializeResult:
    """Apply the diff through the provider client in bulk, after the import-back of the same
    diff (a failed import-back stops the push, so no provider-side change is lost; those the CRM
    did not take in stay out of the ledger for the next run); the ledger follows confirmed
    outcomes and every contact's outcome is logged (state database table sync_outcomes).
    Contacts whose address change the provider refuses are decided again by the same rules in
    the same run (from the CRM and snapshot inputs)."""
    audience = _audience(context)

    def redecide(crm_ids: Collection[str], keys: Collection[str]) -> RedecideAnswer:
        decide = redecider(
            eligible_subscribers.load(),
            excluded_contacts.load(),
            provider_audience_snapshot.load(),
            lambda: load_ledger_frame(state_db.engine(), audience.key),
            provider=audience.provider,
            system_tag=audience.system_tag,
        )
        return decide(crm_ids, keys)

    counted, diff = stored_push_input(reconciliation_diff)
    planned = counted["action"].value_counts()
    planned_meta = {f"planned_{a}": dg.MetadataValue.int(int(n)) for a, n in planned.items()}
    if config.dry_run:
        context.log.info(f"dry run: nothing sent to {audience.key}")
        return dg.MaterializeResult(metadata={"dry_run": True, **planned_meta})
    verdicts = push_guards(counted, config.model_dump())
    del counted
    for verdict in verdicts.values():
        if not verdict.passed:
            context.log.error(verdict.message)
    with run_client(context, audience, mailchimp, brevo) as client:
        # the fields' check, which the snapshot started once its pages were read (Mailchimp),
        # done before any write: a layout the sync cannot write to fails here
        client.ensure_audience()
        keys = member_keys(diff)
        members = (
            members_by_key(provider_audience_snapshot.load_where("match_key", set(keys)), keys)
            if keys
            else {}
        )
        summary = push_diff(
            client,
            diff,
            members,
            push_context(
                context,
                audience,
                state_db,
                verdicts,
                frozenset(crm_import_back["match_key"]),
                redecide,
            ),
        )
    return dg.MaterializeResult(
        metadata={
            "dry_run": False,
            **push_metadata(context, summary, state_db),
            **planned_meta,
        }
    )
