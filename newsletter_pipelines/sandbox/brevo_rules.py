"""Brevo rules shared by the emulated endpoints: error shape, contact representation,
lookups, paging limits and how an update body changes a contact.

Faithful quirks kept on purpose: unknown attributes are silently ignored (so a wrong attribute
name loses data unless the client checks), and `emailBlacklisted: false` clears a blacklist.

Attribute values: an empty string clears an attribute (the contact no longer has it), for a
category attribute too; a value that does not fit the attribute (null, a category label or an
unknown category value) is ignored, as the spec says of values of the wrong type. Linking a
contact to a list (`listIds`, list add, import) leaves its `listUnsubscribed` as it is.

Statistics: a contact keeps every event; `GET /contacts/{identifier}` shows those of the last
90 days (its default window). Blacklisting through the API (`emailBlacklisted: true`, an
import's `emailBlacklist`) is recorded as an `adminUnsubscription`, as Brevo records blocklisting
a contact by hand (assumed: the API counts as the account's admin, like the app).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Protocol

from newsletter_pipelines.sandbox.brevo_state import (
    BvAccount,
    BvAttribute,
    BvContact,
    BvEvent,
    BvList,
    BvStatistics,
)
from newsletter_pipelines.sandbox.core import Request, Response, json_response

_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
STATISTICS_SECONDS = 90 * 86400
"""How far back `GET /contacts/{identifier}` shows a contact's statistics by default."""


class BrevoError(Exception):
    """A Brevo error answer: `{"code", "message"}`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.metadata = metadata


def duplicate_email() -> BrevoError:
    """Brevo's answer when an address already belongs to another contact."""
    return BrevoError(
        400,
        "duplicate_parameter",
        "email is already associated with another Contact",
        metadata={"duplicate_identifiers": ["email"]},
    )


class BrevoHooks(Protocol):
    """What the API needs from its host."""

    def now(self) -> float: ...

    def process_delay(self) -> float: ...

    def brevo_event(self, account: BvAccount, event: str, payload: dict[str, Any]) -> None: ...


def error(exc: BrevoError) -> Response:
    """A Brevo error response."""
    body: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.metadata is not None:
        body["metadata"] = exc.metadata
    return json_response(exc.status, body, headers=exc.headers)


@lru_cache(maxsize=256)  # contacts written together share their times
def stamp(timestamp: float) -> str:
    """Brevo's timestamp format: milliseconds and a `+00:00` offset."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def contact_json(contact: BvContact) -> dict[str, Any]:
    """A contact as Brevo returns it (`getContactDetails`)."""
    return {
        "email": contact.email,
        "id": contact.id,
        "emailBlacklisted": contact.emailBlacklisted,
        "smsBlacklisted": contact.smsBlacklisted,
        "createdAt": stamp(contact.createdAt),
        "modifiedAt": stamp(contact.modifiedAt),
        "listIds": list(contact.listIds),
        "listUnsubscribed": list(contact.listUnsubscribed),
        "attributes": dict(contact.attributes),
    }


def statistics_json(statistics: BvStatistics, now: float) -> dict[str, Any]:
    """The statistics of the last 90 days, as `GET /contacts/{identifier}` shows them."""
    since = now - STATISTICS_SECONDS

    def recent(events: list[BvEvent]) -> list[dict[str, Any]]:
        return [
            {**e.model_dump(exclude={"eventTime"}, exclude_none=True), "eventTime": event_time(e)}
            for e in events
            if e.eventTime >= since
        ]

    unsubscriptions = statistics.unsubscriptions
    return {
        "hardBounces": recent(statistics.hardBounces),
        "complaints": recent(statistics.complaints),
        "unsubscriptions": {
            "userUnsubscription": recent(unsubscriptions.userUnsubscription),
            "adminUnsubscription": recent(unsubscriptions.adminUnsubscription),
        },
    }


def event_time(event: BvEvent) -> str:
    """A statistics event's time as the spec shows it: UTC, whole seconds, `Z`."""
    return datetime.fromtimestamp(event.eventTime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def page(request: Request, maximum: int, default: int) -> tuple[int, int]:
    limit, offset = request.int_arg("limit", default), request.int_arg("offset", 0)
    if limit > maximum or limit < 0 or offset < 0:
        raise BrevoError(400, "out_of_range", f"limit must be between 0 and {maximum}")
    return limit, offset


def find_list(account: BvAccount, list_id: str) -> BvList:
    lst = account.lists.get(int(list_id)) if list_id.isdigit() else None
    if lst is None:
        raise BrevoError(404, "document_not_found", "List ID does not exist")
    return lst


def find_contact(account: BvAccount, identifier: Any, kind: str | None = None) -> BvContact:
    text = str(identifier)
    if kind == "contact_id" or (kind is None and text.isdigit()):
        contact = account.contacts.get(int(text)) if text.isdigit() else None
    elif kind == "ext_id":
        contact = next((c for c in account.contacts.values() if c.ext_id == text), None)
    else:
        contact = account.by_email(text)
    if contact is None:
        raise BrevoError(404, "document_not_found", "Contact does not exist")
    return contact


def known_attributes(
    account: BvAccount, values: Any, named: dict[str, BvAttribute] | None = None
) -> dict[str, Any]:
    """Known attributes with acceptable values (`""` clears); the rest is ignored, as Brevo does.
    `named`: `account.attributes_by_name()`, when the caller has it."""
    if not isinstance(values, dict):
        return {}
    kept: dict[str, Any] = {}
    for name, value in values.items():
        attribute = account.attribute(str(name)) if named is None else named.get(str(name).upper())
        if attribute is None or attribute.name == "EMAIL" or value is None:
            continue
        if attribute.category == "category" and value != "":
            allowed = {item["value"] for item in attribute.enumeration or []}
            if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
                continue
        kept[attribute.name] = value
    return kept


def apply_update(
    account: BvAccount,
    contact: BvContact,
    body: dict[str, Any],
    now: float,
    named: dict[str, BvAttribute] | None = None,
) -> list[int]:
    """Apply an update body to a contact; returns list ids newly linked. `named`:
    `account.attributes_by_name()`, when the caller has it (an import updates thousands)."""
    attributes = body.get("attributes") if isinstance(body.get("attributes"), dict) else {}
    new_email = attributes.get("EMAIL") if attributes else None
    if new_email and str(new_email).lower() != contact.email.lower():
        check_address(str(new_email))
        if account.by_email(str(new_email)) is not None:
            raise duplicate_email()
        account.rename(contact, str(new_email))
    for name, value in known_attributes(account, attributes, named).items():
        if value == "":
            contact.attributes.pop(name, None)
        else:
            contact.attributes[name] = value
    if "emailBlacklisted" in body:
        blacklisted = bool(body["emailBlacklisted"])
        if blacklisted and not contact.emailBlacklisted:
            contact.statistics.unsubscriptions.adminUnsubscription.append(BvEvent(eventTime=now))
        contact.emailBlacklisted = blacklisted
    if "ext_id" in body:
        contact.ext_id = str(body["ext_id"])
    added: list[int] = []
    for list_id in body.get("listIds") or []:
        find_list(account, str(list_id))
        if list_id not in contact.listIds:
            account.link(contact, list_id)
            added.append(list_id)
    for list_id in body.get("unlinkListIds") or []:
        if list_id in contact.listIds:
            account.unlink(contact, list_id)
    contact.modifiedAt = now
    return added


def check_address(email: str) -> None:
    if not valid_address(email):
        raise BrevoError(400, "invalid_parameter", "Invalid email address")


def new_contact(account: BvAccount, email: str, now: float) -> BvContact:
    check_address(email)
    contact = BvContact(id=account.new_id(), email=email, createdAt=now, modifiedAt=now)
    account.add_contact(contact)
    return contact


def api_events(
    hooks: BrevoHooks, account: BvAccount, contact: BvContact, added: Iterable[int], updated: bool
) -> None:
    if not account.webhooks:
        return
    now = hooks.now()
    common = {
        "email": contact.email,
        "key": account.key_name,
        "api_key_name": account.key_name,
        "date": stamp(now),
        "ts": int(now),
    }
    if updated:
        hooks.brevo_event(
            account,
            "contactUpdated",
            {"event": "contact_updated", "content": [contact.attributes], **common},
        )
    added = list(added)
    if added:
        hooks.brevo_event(
            account, "listAddition", {"event": "list_addition", "list_id": added, **common}
        )


def contact_or_none(account: BvAccount, identifier: str) -> BvContact | None:
    """The contact, or None when it does not exist."""
    try:
        return find_contact(account, identifier)
    except BrevoError:
        return None


def valid_address(email: str) -> bool:
    """Whether Brevo would accept the address's syntax."""
    return bool(_ADDRESS.match(email))
