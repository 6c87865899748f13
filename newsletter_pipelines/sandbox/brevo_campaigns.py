"""Brevo email campaigns: sending one to a list (a control call, see `campaigns`) and what its
recipients do with it (the person actions `open` and `click`, see `people`).

A send goes to the list's contacts that are subscribed to it at that moment (the list in
`listIds`, not in `listUnsubscribed`, not blacklisted). Each recipient fires `delivered`, or
`hardBounce` when named as bouncing; a hard bounce blocklists the contact as Brevo does
(`emailBlacklisted`, a `hardBounces` statistics entry naming the campaign). Opens and clicks
need a delivered recipient. Every event goes, one POST per event and webhook, to the marketing
webhooks subscribed to it (as all the sandbox's Brevo events; `batched` is not emulated).

Payloads (the webhook's `id` is added on delivery; dates UTC, `YYYY-MM-DD HH:MM:SS`):
`event` (`delivered`, `hard_bounce`, `opened`, `click`), `email`, `camp_id`, `campaign name`,
`date_sent`, `date_event`, `ts_sent`, `ts_event`, `ts`, `tag`; `delivered` and `hard_bounce`
add `sending_ip`, `hard_bounce` adds `reason`, `click` adds `URL`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

from newsletter_pipelines.sandbox.brevo_rules import BrevoError, BrevoHooks
from newsletter_pipelines.sandbox.brevo_state import (
    BvAccount,
    BvCampaign,
    BvContact,
    BvEvent,
    BvRecipient,
)

SENDING_IP = "192.0.2.25"
"""The address the sandbox "sends" from (a documentation range, RFC 5737)."""
BOUNCE_REASON = "unknown user"


def subscribed_to(contact: BvContact, list_id: int) -> bool:
    """Whether a campaign to the list reaches the contact."""
    return (
        not contact.emailBlacklisted
        and list_id in contact.listIds
        and list_id not in contact.listUnsubscribed
    )


def hard_bounce(contact: BvContact, now: float, campaign_id: int) -> None:
    """Blocklist the contact for a hard bounce of the campaign, as Brevo does."""
    contact.emailBlacklisted, contact.modifiedAt = True, now
    contact.statistics.hardBounces.append(BvEvent(campaignId=campaign_id, eventTime=now))


def send(
    hooks: BrevoHooks,
    account: BvAccount,
    list_id: int,
    *,
    name: str,
    subject: str,
    tag: str = "",
    bouncing: Iterable[str] = (),
) -> BvCampaign:
    """Send an email campaign to the list, now; the contacts named in `bouncing` bounce hard.
    Refused (nothing changes) for an unknown list, a list nobody is subscribed to, and an
    address in `bouncing` the campaign does not go to."""
    if list_id not in account.lists:
        raise BrevoError(404, "document_not_found", "List ID does not exist")
    recipients = sorted(
        (c for c in account.contacts.values() if subscribed_to(c, list_id)), key=lambda c: c.id
    )
    receiving = {c.email.lower() for c in recipients}
    bounced = {email.lower() for email in bouncing}
    strangers = sorted(bounced - receiving)
    if strangers:
        raise BrevoError(
            400,
            "invalid_parameter",
            f"Only contacts subscribed to the list receive the campaign: {strangers}",
        )
    if not recipients:
        raise BrevoError(400, "invalid_parameter", "The list has no subscribed contact")
    now = hooks.now()
    campaign = BvCampaign(
        id=account.new_id(), name=name, subject=subject, tag=tag, listIds=[list_id], sentDate=now
    )
    for contact in recipients:
        bounces = contact.email.lower() in bounced
        status = "hardBounce" if bounces else "delivered"
        campaign.recipients.append(
            BvRecipient(contact_id=contact.id, email=contact.email, status=status)
        )
        if bounces:
            hard_bounce(contact, now, campaign.id)
            payload = event_payload(
                "hard_bounce", contact, campaign, now, sending_ip=SENDING_IP, reason=BOUNCE_REASON
            )
        else:
            payload = event_payload("delivered", contact, campaign, now, sending_ip=SENDING_IP)
        hooks.brevo_event(account, status, payload)
    account.campaigns[campaign.id] = campaign
    return campaign


def react(
    hooks: BrevoHooks,
    account: BvAccount,
    contact: BvContact,
    *,
    list_id: int,
    campaign_id: int,
    action: Literal["open", "click"],
    url: str | None = None,
) -> None:
    """The contact opens the campaign, or clicks `url` in it: fires `opened` / `click`.
    Refused for an unknown campaign (404), a campaign not sent to the list, a contact it did
    not reach (not a recipient, or bounced) and a click without `url` (400)."""
    campaign = account.campaigns.get(campaign_id)
    if campaign is None:
        raise BrevoError(404, "document_not_found", "Campaign ID does not exist")
    if list_id not in campaign.listIds:
        raise BrevoError(400, "invalid_parameter", f"The campaign was not sent to list {list_id}")
    recipient = campaign.recipient(contact.id)
    if recipient is None or recipient.status != "delivered":
        raise BrevoError(400, "invalid_parameter", "The campaign was not delivered to the contact")
    if action == "click" and not url:
        raise BrevoError(400, "missing_parameter", "url is missing")
    now = hooks.now()
    if action == "open":
        hooks.brevo_event(account, "opened", event_payload("opened", contact, campaign, now))
    else:
        hooks.brevo_event(account, "click", event_payload("click", contact, campaign, now, URL=url))


def event_payload(
    event: str, contact: BvContact, campaign: BvCampaign, now: float, **extra: Any
) -> dict[str, Any]:
    """A marketing campaign event as Brevo posts it, without the webhook's `id`."""
    return {
        "event": event,
        "email": contact.email,
        "camp_id": campaign.id,
        "campaign name": campaign.name,
        "date_sent": _date(campaign.sentDate),
        "date_event": _date(now),
        "ts_sent": int(campaign.sentDate),
        "ts_event": int(now),
        "ts": int(now),
        "tag": campaign.tag,
        **extra,
    }


def _date(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")
