"""Op `apply_provider_events`: the import-back of the addresses named by an audience's webhook
events (the inbox `provider_events`), with the nightly rules (`sync.event_import`)."""

import dagster as dg

from newsletter_pipelines.bulk import gc_paused
from newsletter_pipelines.defs.import_back.engagements import record_engagements
from newsletter_pipelines.defs.import_back.writing import import_back
from newsletter_pipelines.defs.providers.clients import run_client
from newsletter_pipelines.defs.resources import (
    CrmResource,
    StateDatabaseResource,
)
from newsletter_pipelines.defs.scopes import read_scope
from newsletter_pipelines.providers.resources import BrevoResource, MailchimpResource
from newsletter_pipelines.settings import AudienceConfig, Settings
from newsletter_pipelines.state.events import mark_processed, unprocessed_events
from newsletter_pipelines.sync.event_import import (
    confirmed_deletions,
    deleted_addresses,
    event_addresses,
    provable,
)
from newsletter_pipelines.sync.import_back import CrmView
from newsletter_pipelines.sync.scope import Scope, scope_diff

_SETTINGS = Settings()


class ProviderEventsConfig(dg.Config):
    """The audience's events up to which inbox id (as the sensor submitted them)."""

    up_to_event_id: int


@dg.op(tags={"kind": "import_back"}, out=dg.Out(dg.Nothing))
def apply_provider_events(
    context: dg.OpExecutionContext,
    config: ProviderEventsConfig,
    crm: CrmResource,
    state_db: StateDatabaseResource,
    mailchimp: MailchimpResource,
    brevo: BrevoResource,
) -> dg.Output[None]:
    """Imports into the CRM what the audience's unprocessed events (up to the submitted id)
    prove: their addresses are decided again over the provider's current members, the ledger
    and the CRM, written as the nightly import-back writes, and the events marked processed.
    No value: the output's metadata `processed` counts the events it marked processed."""
    with gc_paused():  # ~100,000 events make millions of objects, none in a cycle
        audience = _SETTINGS.audience(context.partition_key)
        events = unprocessed_events(state_db.engine(), audience.key, up_to=config.up_to_event_id)
        context.log.info(f"{audience.key}: {len(events)} provider events to apply")
        keys = event_addresses(events)
        with run_client(context, audience, mailchimp, brevo) as client:
            engaged = record_engagements(audience, events, client, crm, context.log.info)
            scope = read_scope(audience.key, crm, state_db, client, keys=keys)
            deleted = confirmed_deletions(scope, deleted_addresses(events), client.members_by_id)
        metadata = {
            "audience": audience.key,
            "events": dg.MetadataValue.int(len(events)),
            "addresses": dg.MetadataValue.int(len(keys)),
            "addresses_read": dg.MetadataValue.int(len(scope.keys)),
            **{k: dg.MetadataValue.int(n) for k, n in engaged.items()},
        }
        if scope.closed:
            metadata |= _import_scope(context, audience, scope, deleted, crm, state_db, brevo)
        else:
            context.log.warning(
                f"{audience.key}: the addresses' ownership reaches further than "
                f"{len(scope.keys)} addresses: left to the nightly import-back"
            )
            metadata["left_to_nightly"] = True
        processed = mark_processed(state_db.engine(), [e.id for e in events])
        return dg.Output(None, metadata={**metadata, "processed": dg.MetadataValue.int(processed)})


def _import_scope(
    context: dg.OpExecutionContext,
    audience: AudienceConfig,
    scope: Scope,
    deleted: frozenset[str],
    crm: CrmResource,
    state_db: StateDatabaseResource,
    brevo: BrevoResource,
) -> dict[str, object]:
    """The import-back of a closed scope (`deleted`: addresses whose member's deletion is
    confirmed), observed on `crm_import_back`; its metadata."""
    found = scope_diff(
        scope, _SETTINGS.crm_values, provider=audience.provider, system_tag=audience.system_tag
    )
    diff = provable(found.diff, found.outside, deleted)
    result = found.eligibility
    done = import_back(
        audience,
        diff,
        scope.snapshot,
        CrmView.for_diff(diff, result.eligible, result.excluded),
        run_id=context.run.run_id,
        crm=crm,
        state_db=state_db,
        brevo=brevo,
        dry_run=False,
        allow_mass_vanish=False,
        log=context.log.info,
    )
    metadata = done.metadata(context.run.run_id, state_db)
    context.log_event(
        dg.AssetObservation(
            asset_key="crm_import_back",
            partition=audience.key,
            metadata={"source": "provider events", "audience": audience.key, **metadata},
        )
    )
    return metadata
