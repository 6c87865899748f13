"""Pydantic models of the Brevo answers the client reads (unknown fields ignored)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Attribute(_Answer):
    name: str
    category: str
    type: str | None = None
    enumeration: list[dict[str, Any]] | None = None


class Attributes(_Answer):
    attributes: list[Attribute]


class Named(_Answer):
    id: int
    name: str


class Folders(_Answer):
    count: int = 0
    folders: list[Named] = Field(default_factory=list)


class ListEntry(Named):
    unique_subscribers: int = Field(default=0, alias="uniqueSubscribers")


class Lists(_Answer):
    count: int = 0
    lists: list[ListEntry] = Field(default_factory=list)


class ContactOut(_Answer):
    id: int
    email: str = ""
    email_blacklisted: bool = Field(default=False, alias="emailBlacklisted")
    list_ids: list[int] = Field(default_factory=list, alias="listIds")
    list_unsubscribed: list[int] = Field(default_factory=list, alias="listUnsubscribed")
    attributes: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = Field(default=None, alias="createdAt")
    modified_at: datetime | None = Field(default=None, alias="modifiedAt")


class BlocklistReason(StrEnum):
    """Why Brevo blacklisted a contact, as its statistics tell."""

    HARD_BOUNCE = "hard_bounce"
    COMPLAINT = "complaint"
    UNSUBSCRIBED = "unsubscribed"
    UNKNOWN = "unknown"
    """No event in the statistics' window (the last 90 days) explains it."""


class Unsubscriptions(_Answer):
    user: list[dict[str, Any]] = Field(default_factory=list, alias="userUnsubscription")
    admin: list[dict[str, Any]] = Field(default_factory=list, alias="adminUnsubscription")


class Statistics(_Answer):
    hard_bounces: list[dict[str, Any]] = Field(default_factory=list, alias="hardBounces")
    complaints: list[dict[str, Any]] = Field(default_factory=list)
    unsubscriptions: Unsubscriptions = Field(default_factory=Unsubscriptions)

    def blocklist_reason(self) -> BlocklistReason:
        """A complaint beats an unsubscription (by the person or an admin) beats a hard bounce."""
        if self.complaints:
            return BlocklistReason.COMPLAINT
        if self.unsubscriptions.user or self.unsubscriptions.admin:
            return BlocklistReason.UNSUBSCRIBED
        if self.hard_bounces:
            return BlocklistReason.HARD_BOUNCE
        return BlocklistReason.UNKNOWN


class ContactDetails(_Answer):
    """`GET /contacts/{identifier}`: the contact and its statistics (only what we read)."""

    statistics: Statistics = Field(default_factory=Statistics)


class ContactsPage(_Answer):
    contacts: list[ContactOut]
    count: int


class Process(_Answer):
    id: int
    status: str
    error: str | None = None


class Webhook(_Answer):
    id: int
    url: str
    events: list[str] = Field(default_factory=list)
    auth: dict[str, str] | None = None
    batched: bool = False


class Webhooks(_Answer):
    webhooks: list[Webhook]


class Membership(_Answer):
    success: list[str | int] = Field(default_factory=list)
    failure: list[str | int] = Field(default_factory=list)


class MembershipAnswer(_Answer):
    contacts: Membership
