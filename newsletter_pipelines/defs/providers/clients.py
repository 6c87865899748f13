"""The provider client of an audience partition, from the provider resources."""

from newsletter_pipelines.providers.base import Provider
from newsletter_pipelines.providers.resources import BrevoResource, MailchimpResource
from newsletter_pipelines.settings import AudienceConfig


def audience_client(
    audience: AudienceConfig, mailchimp: MailchimpResource, brevo: BrevoResource
) -> Provider:
    """A client for the audience (the caller closes it)."""
    if audience.provider == "mailchimp":
        return mailchimp.client(audience.name)
    return brevo.client(audience.name)


def provider_mode(
    audience: AudienceConfig, mailchimp: MailchimpResource, brevo: BrevoResource
) -> str:
    """Which provider account the audience reaches: live, or the embedded sandbox."""
    return (mailchimp if audience.provider == "mailchimp" else brevo).mode()
