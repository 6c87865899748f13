"""The scope of a run about a few addresses or contacts (`sync.scope`), read from the CRM and
state database resources and the audience's provider client: shared by `provider_events_job`
and `incremental_sync_job`."""

from collections.abc import Collection

from newsletter_pipelines.crm.reader import read_contacts_at
from newsletter_pipelines.defs.resources import CrmResource, StateDatabaseResource
from newsletter_pipelines.providers.base import Provider
from newsletter_pipelines.state.ledger import load_ledger_frame_at
from newsletter_pipelines.sync.scope import Scope, close_scope


def read_scope(
    audience: str,
    crm: CrmResource,
    state_db: StateDatabaseResource,
    client: Provider,
    *,
    keys: Collection[str] = (),
    contact_ids: Collection[str] = (),
) -> Scope:
    """Everything the decisions about `keys` and `contact_ids` depend on."""
    engine = state_db.engine()
    return close_scope(
        keys,
        lambda k, ids: read_contacts_at(crm.engine(), crm.crm_schema, k, ids),
        lambda k, ids, stable: load_ledger_frame_at(engine, audience, k, ids, stable),
        client.members,
        contact_ids=contact_ids,
    )
