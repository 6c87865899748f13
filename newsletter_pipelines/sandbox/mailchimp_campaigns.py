"""Mailchimp campaigns: sending one to an audience (a control call, see `campaigns`) and its
sent-to report (`GET /reports/{campaign_id}/sent-to`).

A send goes to the audience's members that are `subscribed` at that moment; each is recorded
with status `sent`, or `hard` when it bounces. A hard bounce cleans the member, as Mailchimp
does, and fires `cleaned` (reason `hard`, with the campaign's id). The send fires `campaign`
(`data[id]`, `data[subject]`, `data[status]=sent`, `data[reason]`, `data[list_id]`) to every
webhook of the audience with `events.campaign` on, whatever its sources (Mailchimp cannot limit
campaign events by source).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from newsletter_pipelines.sandbox import mailchimp_members as members
from newsletter_pipelines.sandbox.core import Request, Response, json_response, now_iso
from newsletter_pipelines.sandbox.fields import partial
from newsletter_pipelines.sandbox.mailchimp_members import ProblemError, invalid, not_found
from newsletter_pipelines.sandbox.mailchimp_state import (
    McAccount,
    McCampaign,
    McList,
    McRecipient,
    subscriber_hash,
)

MAX_COUNT = 1000
"""Largest `count` of a report page."""


class CampaignHooks(Protocol):
    """What a send needs from its host: time and webhook delivery."""

    def now(self) -> float: ...

    def mailchimp_event(
        self, lst: McList, kind: str, data: dict[str, Any], source: str
    ) -> None: ...


def send(
    hooks: CampaignHooks,
    account: McAccount,
    lst: McList,
    *,
    subject: str,
    title: str,
    bouncing: Iterable[str] = (),
) -> McCampaign:
    """Send a regular campaign to the audience's subscribed members, now; the members named in
    `bouncing` bounce hard. Refused (nothing changes) when an address in `bouncing` is not a
    subscribed member, or when the audience has no subscribed member."""
    recipients = [m for m in lst.members.values() if m.status == "subscribed"]
    receiving = {m.id for m in recipients}
    bounced = {subscriber_hash(email): email for email in bouncing}
    strangers = [email for key, email in bounced.items() if key not in receiving]
    if strangers:
        raise ProblemError(
            400,
            "Invalid Resource",
            f"Only subscribed members receive the campaign, so these cannot bounce: {strangers}",
        )
    if not recipients:
        raise ProblemError(
            400,
            "Invalid Resource",
            "Your campaign can't be sent: the audience has no subscribed members.",
        )
    now = hooks.now()
    campaign = McCampaign(
        id=_new_id(account),
        web_id=account.new_id(),
        list_id=lst.id,
        subject=subject,
        title=title,
        send_time=now_iso(now),
        recipients=[
            McRecipient(
                email_id=m.id,
                email_address=m.email_address,
                status="hard" if m.id in bounced else "sent",
                merge_fields=dict(m.merge_fields),
            )
            for m in recipients
        ],
    )
    account.campaigns[campaign.id] = campaign
    data = {
        "id": campaign.id,
        "subject": subject,
        "status": "sent",
        "reason": "",
        "list_id": lst.id,
    }
    hooks.mailchimp_event(lst, "campaign", data, "admin")
    for member in recipients:
        if member.id in bounced:
            members.clean(member, now)
            cleaned = members.event_data(lst, member, reason="hard", campaign_id=campaign.id)
            hooks.mailchimp_event(lst, "cleaned", cleaned, "admin")
    return campaign


def _new_id(account: McAccount) -> str:
    while True:
        campaign_id = secrets.token_hex(5)
        if campaign_id not in account.campaigns:
            return campaign_id


class CampaignHandlers:
    """Handlers of the campaign reports."""

    def routes(self) -> list[tuple[str, str, Callable[[McAccount, Request], Response]]]:
        """(method, template, handler) of every endpoint here."""
        return [("GET", "/reports/{campaign_id}/sent-to", self.get_sent_to)]

    def get_sent_to(self, account: McAccount, request: Request) -> Response:
        campaign = account.campaigns.get(request.params["campaign_id"])
        if campaign is None:
            raise not_found()
        count, offset = request.int_arg("count", 10), request.int_arg("offset", 0)
        if not 0 <= count <= MAX_COUNT:
            raise invalid("count", f"Must be between 0 and {MAX_COUNT}.")
        if offset < 0:
            raise invalid("offset", "Must be greater than or equal to 0.")
        rows = campaign.recipients[offset : offset + count]
        body = {
            "sent_to": [_recipient_json(campaign, r) for r in rows],
            "campaign_id": campaign.id,
            "total_items": len(campaign.recipients),
            "_links": [],
        }
        return json_response(200, partial(body, request))


def _recipient_json(campaign: McCampaign, recipient: McRecipient) -> dict[str, Any]:
    return {
        "email_id": recipient.email_id,
        "email_address": recipient.email_address,
        "merge_fields": recipient.merge_fields,
        "vip": False,
        "status": recipient.status,
        "open_count": 0,
        "campaign_id": campaign.id,
        "list_id": campaign.list_id,
        "list_is_active": True,
        "_links": [],
    }
