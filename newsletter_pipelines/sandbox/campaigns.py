"""An account admin sends a campaign to a list, in the provider's app (outside the API).

`send_mailchimp_campaign` / `send_brevo_campaign` (and the control API's
`POST /_sandbox/{mailchimp,brevo}/campaigns`, body `CampaignSend`) send to the members subscribed
at that moment; the addresses in `bouncing` bounce hard. Each returns the campaign's `id` with
its recipients; the webhooks the provider fires go out before the call returns. Rules and
payloads: `mailchimp_campaigns` (the `campaign` event, cleaning, the sent-to report) and
`brevo_campaigns` (`delivered` / `hardBounce` events; `open` and `click` are person actions).

Refused with the provider's error before anything changes: an unknown list (404), a list without
subscribed members, an address in `bouncing` the campaign does not go to (400).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from newsletter_pipelines.sandbox import brevo_campaigns, mailchimp_campaigns
from newsletter_pipelines.sandbox.brevo_rules import BrevoError
from newsletter_pipelines.sandbox.mailchimp_members import ProblemError

if TYPE_CHECKING:
    from newsletter_pipelines.sandbox.engine import Sandbox


class CampaignSend(BaseModel):
    """A campaign an admin sends to one list (a Mailchimp audience id or a Brevo list id)."""

    model_config = ConfigDict(coerce_numbers_to_str=True)

    list_id: str
    subject: str = "News from the sandbox"
    name: str = "Sandbox campaign"
    """Mailchimp's campaign title, Brevo's campaign name (`campaign name` in its events)."""
    tag: str = ""
    """Brevo's campaign tag (`tag` in its events); Mailchimp has none."""
    bouncing: list[str] = []
    """Addresses that bounce hard (each must be a recipient)."""
    api_key: str | None = None
    """The account; may be left out when the sandbox has one account of the provider."""


def send_mailchimp_campaign(sandbox: Sandbox, send: CampaignSend) -> dict[str, Any]:
    """Send a campaign to a Mailchimp audience; returns `{"id", "list_id", "recipients":
    [{"email_address", "status"}]}` (status `sent` or `hard`)."""
    try:
        with sandbox.transaction():
            account = sandbox.state.mailchimp[send.api_key or _only(sandbox.state.mailchimp)]
            lst = account.lists.get(send.list_id)
            if lst is None:
                raise ProblemError(404, "Resource Not Found", f"no audience {send.list_id}")
            campaign = mailchimp_campaigns.send(
                sandbox, account, lst, subject=send.subject, title=send.name, bouncing=send.bouncing
            )
            return {
                "id": campaign.id,
                "list_id": lst.id,
                "recipients": [
                    {"email_address": r.email_address, "status": r.status}
                    for r in campaign.recipients
                ],
            }
    finally:
        sandbox.flush_webhooks()


def send_brevo_campaign(sandbox: Sandbox, send: CampaignSend) -> dict[str, Any]:
    """Send an email campaign to a Brevo list; returns `{"id", "list_id", "recipients":
    [{"email", "status"}]}` (`id` and `list_id` numbers, status `delivered` or `hardBounce`)."""
    try:
        with sandbox.transaction():
            account = sandbox.state.brevo[send.api_key or _only(sandbox.state.brevo)]
            if not send.list_id.isdigit():
                raise BrevoError(404, "document_not_found", "List ID does not exist")
            campaign = brevo_campaigns.send(
                sandbox,
                account,
                int(send.list_id),
                name=send.name,
                subject=send.subject,
                tag=send.tag,
                bouncing=send.bouncing,
            )
            return {
                "id": campaign.id,
                "list_id": int(send.list_id),
                "recipients": [{"email": r.email, "status": r.status} for r in campaign.recipients],
            }
    finally:
        sandbox.flush_webhooks()


def _only(accounts: dict[str, Any]) -> str:
    if len(accounts) != 1:
        raise ValueError("several accounts: name the api_key")
    return next(iter(accounts))
