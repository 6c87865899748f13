"""Pydantic models of the Mailchimp answers the client reads (unknown fields ignored)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TagRef(_Answer):
    id: int = 0
    name: str


class MemberOut(_Answer):
    id: str
    contact_id: str | None = None
    email_address: str
    status: str
    merge_fields: dict[str, Any] = Field(default_factory=dict)
    tags: list[TagRef] = Field(default_factory=list)
    last_changed: datetime | None = None
    unsubscribe_reason: str | None = None


class MembersPage(_Answer):
    members: list[MemberOut]
    total_items: int


class BatchSubscribeError(_Answer):
    email_address: str = ""
    error: str = ""
    error_code: str = ""
    field: str = ""
    field_message: str = ""


class Subscribed(_Answer):
    """A new member as a batch subscribe answers it, read only as far as its outcome needs
    (the answer holds every field of 500 members; reading them all was a third of the call)."""

    id: str
    contact_id: str | None = None
    email_address: str
    status: str


class BatchSubscribeAnswer(_Answer):
    new_members: list[Subscribed] = Field(default_factory=list)
    errors: list[BatchSubscribeError] = Field(default_factory=list)


class ListStats(_Answer):
    """A list's member counts by status (Mailchimp updates them now and then, not at once)."""

    member_count: int = 0
    unsubscribe_count: int = 0
    cleaned_count: int = 0


class ListRef(_Answer):
    id: str
    name: str
    stats: ListStats = Field(default_factory=ListStats)


class Constraints(_Answer):
    may_create: bool = False


class ListsPage(_Answer):
    lists: list[ListRef]
    total_items: int
    constraints: Constraints = Field(default_factory=Constraints)


class MergeField(_Answer):
    tag: str
    name: str
    type: str
    required: bool = False
    default_value: str = ""
    options: dict[str, Any] = Field(default_factory=dict)


class MergeFieldsPage(_Answer):
    merge_fields: list[MergeField]
    total_items: int


class Webhook(_Answer):
    id: str
    url: str
    events: dict[str, bool] = Field(default_factory=dict)
    sources: dict[str, bool] = Field(default_factory=dict)


class WebhooksPage(_Answer):
    webhooks: list[Webhook]


class BatchStatus(_Answer):
    id: str
    status: str
    total_operations: int = 0
    errored_operations: int = 0
    response_body_url: str = ""


class SentTo(_Answer):
    email_address: str
    status: str


class SentToPage(_Answer):
    sent_to: list[SentTo]
    total_items: int


class CampaignRecipient(BaseModel):
    """One address a campaign went to, with its delivery status: `sent`, or `hard` / `soft`
    for a bounce (Mailchimp's values, passed on as they come)."""

    model_config = ConfigDict(frozen=True)

    email: str
    status: str
