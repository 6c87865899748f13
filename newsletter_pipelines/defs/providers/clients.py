"""The provider client of an audience partition, from the provider resources."""

from contextlib import AbstractContextManager

import dagster as dg

from newsletter_pipelines.defs.providers.accounts import (
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
    if runs is not None and audience.provider == "mailchimp":
        context.log.info(
            f"{audience.key}: at most {runs} runs of the {account_name(audience)} account at "
            f"once, this one opens at most "
            f"{mailchimp_connections(runs, mailchimp.max_connections)} connections"
        )
    return shared_client(audience, runs, provider_resource(audience, mailchimp, brevo))


def shared_client(
    audience: AudienceConfig, runs: int | None, resource: MailchimpResource | BrevoResource
) -> AbstractContextManager[Provider]:
    """The run's client of the audience from its provider's resource, as a context manager: a
    Mailchimp client opens at most the run's share of the account's connections, when the run
    queue lets `runs` runs of the account run at once (None: no limit). The run's steps share
    it (`_ProviderResource._run_client`): what one step learnt of the audience (its id, its
    fields) the next does not ask again; it is closed at the end of the run."""
    if isinstance(resource, BrevoResource):
        return resource.run_client(audience.name)
    connections = mailchimp_connections(runs, resource.max_connections)
    return resource.run_client(audience.name, max_connections=connections)


def provider_mode(
    audience: AudienceConfig, mailchimp: MailchimpResource, brevo: BrevoResource
) -> str:
    """Which provider account the audience reaches: live, or the embedded sandbox."""
    return provider_resource(audience, mailchimp, brevo).mode()
