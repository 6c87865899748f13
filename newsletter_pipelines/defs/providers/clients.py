"""The provider client of an audience partition, from the provider resources."""

from contextlib import AbstractContextManager

import dagster as dg

from newsletter_pipelines.defs.providers.accounts import (
    MAILCHIMP_ACCOUNT_CONNECTIONS,
    account_name,
    checked_account_runs,
    mailchimp_connections,
)
from newsletter_pipelines.providers.base import Provider
from newsletter_pipelines.providers.resources import BrevoResource, MailchimpResource
from newsletter_pipelines.settings import AudienceConfig


def provider_resource(
    audience: AudienceConfig, mailchimp: MailchimpResource, brevo: BrevoResource
) -> MailchimpResource | BrevoResource:
    """The resource of the audience's provider."""
    return mailchimp if audience.provider == "mailchimp" else brevo


def audience_client(
    audience: AudienceConfig, mailchimp: MailchimpResource, brevo: BrevoResource
) -> Provider:
    """A client for the audience (the caller closes it); in a run's step: `run_client`."""
    return provider_resource(audience, mailchimp, brevo).client(audience.name)


def run_client(
    context: dg.OpExecutionContext | dg.AssetExecutionContext,
    audience: AudienceConfig,
    mailchimp: MailchimpResource,
    brevo: BrevoResource,
) -> AbstractContextManager[Provider]:
    """The audience's client for a step of this run, as a context manager: only once the run
    counts against its account's run limit (`accounts.checked_account_runs`). The run's steps
    share it (`shared_client`)."""
    runs = checked_account_runs(context, audience)
    if audience.provider == "mailchimp":
        account = account_name(audience)
        if mailchimp.account_slots() is not None:
            context.log.info(
                f"{audience.key}: this run opens up to {mailchimp.max_connections} connections; "
                f"all processes calling the {account} account share its "
                f"{MAILCHIMP_ACCOUNT_CONNECTIONS} (connection slots in the state database)"
            )
        elif runs is not None:
            context.log.info(
                f"{audience.key}: at most {runs} runs of the {account} account at once, this "
                f"one opens at most {mailchimp_connections(runs, mailchimp.max_connections)} "
                "connections"
            )
    return shared_client(audience, runs, provider_resource(audience, mailchimp, brevo))


def shared_client(
    audience: AudienceConfig, runs: int | None, resource: MailchimpResource | BrevoResource
) -> AbstractContextManager[Provider]:
    """The run's client of the audience from its provider's resource, as a context manager: a
    Mailchimp client opens up to the resource's connections when the account's slots are shared
    in the state database, else at most the run's fixed share of the account's connections when
    the run queue lets `runs` runs of the account run at once (None: no limit). The run's steps
    share it (`_ProviderResource._run_client`): what one step learnt of the audience (its id, its
    fields) the next does not ask again; it is closed at the end of the run."""
    if isinstance(resource, BrevoResource):
        return resource.run_client(audience.name)
    connections = resource.max_connections
    if resource.account_slots() is None:
        connections = mailchimp_connections(runs, connections)
    return resource.run_client(audience.name, max_connections=connections)


def provider_mode(
    audience: AudienceConfig, mailchimp: MailchimpResource, brevo: BrevoResource
) -> str:
    """Which provider account the audience reaches: live, or the embedded sandbox."""
    return provider_resource(audience, mailchimp, brevo).mode()
