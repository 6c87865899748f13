"""Op `push_crm_changes`: the push of the CRM contacts changed in a watermark span, decided with
the full sync's eligibility and rules over just what those contacts' decisions depend on
(`sync.scope`)."""

import dagster as dg

from newsletter_pipelines.crm.changes import changed_between
from newsletter_pipelines.defs.providers.clients import run_client
from newsletter_pipelines.defs.providers.pushing import push_context, push_guards, push_metadata
from newsletter_pipelines.defs.resources import (
    CrmResource,
    StateDatabaseResource,
)
from newsletter_pipelines.defs.scopes import read_scope
from newsletter_pipelines.providers.resources import BrevoResource, MailchimpResource
from newsletter_pipelines.settings import Settings
from newsletter_pipelines.state.ledger import active_count, load_ledger_frame_at
from newsletter_pipelines.sync.changes import Mark
from newsletter_pipelines.sync.import_back import provider_change_keys
from newsletter_pipelines.sync.inputs import members_by_key, redecider
from newsletter_pipelines.sync.push import push_diff
from newsletter_pipelines.sync.scope import scope_diff

_SETTINGS = Settings()


class CrmChangesConfig(dg.Config):
    """The watermark span of the run (`sync.changes.Mark` as text; `after` None: from the
    start; an empty id in `after`: at or after its time)."""

    after: str | None = None
    upto: str


@dg.op(tags={"kind": "push"}, out=dg.Out(dg.Nothing))
def push_crm_changes(
    context: dg.OpExecutionContext,
    config: CrmChangesConfig,
    crm: CrmResource,
    state_db: StateDatabaseResource,
    mailchimp: MailchimpResource,
    brevo: BrevoResource,
) -> dg.Output[None]:
    """Sends the audience what the CRM contacts changed in the span call for: those contacts,
    every contact sharing their addresses and the ledger rows of their previous addresses are
    decided as a full sync decides them (provider-side changes found there are left to the
    import-back, members the scope cannot place to the nightly sync). No value (nothing reads
    one, and every executor can run it): the output's metadata `changed_contacts` counts them."""
    audience = _SETTINGS.audience(context.partition_key)
    after = Mark.parse(config.after) if config.after else None
    marks = changed_between(crm.engine(), crm.crm_schema, after, Mark.parse(config.upto))
    ids = {m.contact_id for m in marks}
    context.log.info(f"{audience.key}: {len(ids)} CRM contacts changed in the span")
    metadata: dict[str, object] = {"audience": audience.key, "changed_contacts": len(ids)}
    if not ids:
        return dg.Output(None, metadata=metadata)
    engine = state_db.engine()
    with run_client(context, audience, mailchimp, brevo) as client:
        scope = read_scope(audience.key, crm, state_db, client, contact_ids=ids)
        metadata["addresses_read"] = len(scope.keys)
        if not scope.closed:
            context.log.warning(
                f"{audience.key}: the contacts' addresses reach further than {len(scope.keys)} "
                "addresses: left to the nightly sync"
            )
            return dg.Output(None, metadata={**metadata, "left_to_nightly": True})
        found = scope_diff(
            scope, _SETTINGS.crm_values, provider=audience.provider, system_tag=audience.system_tag
        )
        diff = found.pushable()
        verdicts = push_guards(diff, {}, active_count(engine, audience.key))
        for verdict in verdicts.values():
            if not verdict.passed:
                context.log.error(verdict.message)
        owners = frozenset(scope.contacts["contact_id"].astype(str))
        redecide = redecider(
            found.eligibility.eligible,
            found.eligibility.excluded,
            scope.snapshot,
            lambda: load_ledger_frame_at(engine, audience.key, scope.keys, owners),
            provider=audience.provider,
            system_tag=audience.system_tag,
        )
        summary = push_diff(
            client,
            diff,
            members_by_key(scope.snapshot),
            # provider-side changes: the import-back takes them in, not this run (the push
            # leaves their observations out of the ledger)
            push_context(
                context, audience, state_db, verdicts, provider_change_keys(diff), redecide
            ),
        )
    metadata |= {
        **{f"planned_{a}": int(n) for a, n in diff["action"].value_counts().items()},
        **push_metadata(context, summary, state_db),
        "left_to_nightly": len(found.diff) - len(diff),
    }
    context.log_event(
        dg.AssetObservation(
            asset_key="audience_sync",
            partition=audience.key,
            metadata={"source": "CRM changes", **metadata},
        )
    )
    return dg.Output(None, metadata=metadata)
