"""What a *person* does at a provider (outside the API): sign up, unsubscribe, get deleted,
bounce, get a tag. Each action changes the state like the provider's UI would and fires the
webhooks the provider would fire (Mailchimp with source `user` or `admin`, Brevo marketing
events without `api_key_name`).

Mailchimp sends no webhook for tag changes (its webhook events have none); a tag only bumps
`last_changed`, which the nightly snapshot sees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from newsletter_pipelines.sandbox import mailchimp_members as members
from newsletter_pipelines.sandbox.brevo_rules import BrevoError, contact_json, stamp
from newsletter_pipelines.sandbox.brevo_state import LANGUAGE_NAME_ATTRIBUTES, BvContact
from newsletter_pipelines.sandbox.core import now_iso
from newsletter_pipelines.sandbox.mailchimp_members import ProblemError

if TYPE_CHECKING:
    from newsletter_pipelines.sandbox.engine import Sandbox

PersonAction = Literal["signup", "unsubscribe", "archive", "delete", "clean", "tag", "untag"]


class PersonEvent(BaseModel):
    """One thing a person (or an account admin in the provider's UI) does to a contact."""

    list_id: str
    email: str
    action: PersonAction
    tag: str | None = None
    first_name: str = ""
    last_name: str = ""
    api_key: str | None = None
    tags_attribute: str = "NEWSLETTER_TAGS"


def mailchimp_person(sandbox: Sandbox, event: PersonEvent) -> dict[str, Any]:
    """Apply `event` to a Mailchimp audience; returns the member afterwards (or `{}`)."""
    try:
        return _mailchimp_person(sandbox, event)
    finally:
        sandbox.flush_webhooks()


def brevo_person(sandbox: Sandbox, event: PersonEvent) -> dict[str, Any]:
    """Apply `event` to a Brevo list; returns the contact afterwards (or `{}`)."""
    try:
        return _brevo_person(sandbox, event)
    finally:
        sandbox.flush_webhooks()


def _mailchimp_person(sandbox: Sandbox, event: PersonEvent) -> dict[str, Any]:
    with sandbox.transaction():
        account = sandbox.state.mailchimp[event.api_key or _only(sandbox.state.mailchimp)]
        lst = account.lists.get(event.list_id)
        if lst is None:
            raise ProblemError(404, "Resource Not Found", f"no audience {event.list_id}")
        now = sandbox.now()
        key = members.subscriber_hash(event.email)
        member = lst.members.get(key)
        if event.action == "signup":
            merge = {"FNAME": event.first_name, "LNAME": event.last_name}
            if member is None or member.status == "archived":
                payload = {"email_address": event.email, "merge_fields": merge}
                member = members.create(
                    account, lst, payload, "subscribed", now, source="Hosted Signup Form"
                )
            else:
                member.status, member.last_changed = "subscribed", now_iso(now)
                member.merge_fields.update(merge)
            _mc_event(sandbox, lst, "subscribe", member, "user")
            return members.representation(lst, member, lst.segments)
        if member is None:
            raise ProblemError(404, "Resource Not Found", f"{event.email} is not on the audience")
        if event.action == "unsubscribe":
            member.status, member.last_changed = "unsubscribed", now_iso(now)
            member.unsubscribe_reason = "N/A (Unsubscribed by the contact)"
            _mc_event(sandbox, lst, "unsubscribe", member, "user", action="unsub", reason="manual")
        elif event.action == "archive":
            members.archive(lst, member, now)
            _mc_event(
                sandbox, lst, "unsubscribe", member, "admin", action="delete", reason="manual"
            )
        elif event.action == "delete":
            members.forget(lst, member)
            _mc_event(
                sandbox, lst, "unsubscribe", member, "admin", action="delete", reason="manual"
            )
            return {}
        elif event.action == "clean":
            member.status, member.last_changed = "cleaned", now_iso(now)
            _mc_event(sandbox, lst, "cleaned", member, "admin", reason="hard")
        else:
            status = "active" if event.action == "tag" else "inactive"
            members.set_tags(member, [{"name": event.tag or "", "status": status}], now)
            lst.segments.setdefault(event.tag or "", account.new_id())
        return members.representation(lst, member, lst.segments)


def _mc_event(
    sandbox: Sandbox, lst: Any, kind: str, member: Any, source: str, **extra: Any
) -> None:
    data = {
        "id": member.id,
        "list_id": lst.id,
        "email": member.email_address,
        "email_type": "html",
        "merges": {"EMAIL": member.email_address, **member.merge_fields},
        **extra,
    }
    sandbox.mailchimp_event(lst, kind, data, source)


def _brevo_person(sandbox: Sandbox, event: PersonEvent) -> dict[str, Any]:
    with sandbox.transaction():
        account = sandbox.state.brevo[event.api_key or _only(sandbox.state.brevo)]
        list_id = int(event.list_id)
        if list_id not in account.lists:
            raise BrevoError(404, "document_not_found", "List ID does not exist")
        now = sandbox.now()
        contact = account.by_email(event.email)
        common = {"email": event.email, "key": "", "date": stamp(now), "ts": int(now)}
        if event.action == "signup":
            if contact is None:
                contact = BvContact(
                    id=account.new_id(), email=event.email, createdAt=now, modifiedAt=now
                )
                account.add_contact(contact)
            first, last = LANGUAGE_NAME_ATTRIBUTES[account.language]
            contact.attributes.update({first: event.first_name, last: event.last_name})
            if list_id not in contact.listIds:
                contact.listIds.append(list_id)
            contact.modifiedAt = now
            sandbox.brevo_event(
                account, "listAddition", {"event": "list_addition", "list_id": [list_id], **common}
            )
            return contact_json(contact)
        if contact is None:
            raise BrevoError(404, "document_not_found", "Contact does not exist")
        if event.action == "unsubscribe":
            contact.emailBlacklisted, contact.modifiedAt = True, now
            payload = {
                "event": "unsubscribed",
                "list_id": [list_id],
                "camp_id": 0,
                "date_event": stamp(now),
                "ts_event": int(now),
                **common,
            }
            sandbox.brevo_event(account, "unsubscribed", payload)
        elif event.action in ("delete", "archive"):
            account.delete(contact)
            sandbox.brevo_event(
                account,
                "contactDeleted",
                {"event": "contact_deleted", "list_id": contact.listIds, **common},
            )
            return {}
        elif event.action == "clean":
            contact.emailBlacklisted, contact.modifiedAt = True, now
            sandbox.brevo_event(
                account, "hardBounce", {"event": "hard_bounce", "reason": "unknown user", **common}
            )
        else:
            tags = [
                t for t in str(contact.attributes.get(event.tags_attribute, "")).split(",") if t
            ]
            tags = sorted(
                {*tags, event.tag or ""} if event.action == "tag" else set(tags) - {event.tag}
            )
            contact.attributes[event.tags_attribute] = ",".join(tags)
            contact.modifiedAt = now
            sandbox.brevo_event(
                account,
                "contactUpdated",
                {"event": "contact_updated", "content": [contact.attributes], **common},
            )
        return contact_json(contact)


def _only(accounts: dict[str, Any]) -> str:
    if len(accounts) != 1:
        raise ValueError("several accounts: name the api_key")
    return next(iter(accounts))
