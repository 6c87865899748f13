"""The webhook receiver: provider events (Mailchimp, Brevo) into the durable inbox
`provider_events` of the state database (see `app` for the endpoints and answers)."""

from newsletter_pipelines.webhooks.app import create_app

__all__ = ["create_app"]
