"""The provider interface the sync talks to, and the values that cross it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MemberStatus(StrEnum):
    """A contact's subscription status at a provider, in one vocabulary for all providers."""

    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"
    CLEANED = "cleaned"
    PENDING = "pending"
    TRANSACTIONAL = "transactional"
    ARCHIVED = "archived"
    BLACKLISTED = "blacklisted"


class Contact(_Frozen):
    """What the CRM wants a provider to hold for one person."""

    crm_id: str
    email: str
    first_name: str = ""
    last_name: str = ""
    salutation: str = ""
    tags: frozenset[str] = frozenset()

    @property
    def key(self) -> str:
        """The normalised email that identifies the contact at a provider."""
        return email_key(self.email)

    def ref(self) -> ContactRef:
        """A reference to this contact for unsubscribe/remove calls."""
        return ContactRef(crm_id=self.crm_id, email=self.email)


class ContactRef(_Frozen):
    """Identifies a contact for unsubscribe and removal: email, plus ids when known."""

    email: str
    crm_id: str | None = None
    provider_id: str | None = None


class EmailChange(_Frozen):
    """A contact whose address changed in the CRM; the provider keeps the same member."""

    crm_id: str
    old_email: str
    new_email: str
    provider_id: str | None = None


class Member(_Frozen):
    """One contact as the provider holds it (a snapshot row)."""

    provider_id: str
    email: str
    status: MemberStatus
    first_name: str = ""
    last_name: str = ""
    salutation: str = ""
    tags: frozenset[str] = frozenset()
    last_changed: datetime | None = None
    stable_id: str | None = Field(
        default=None,
        description="The provider's id of the person that survives an address change "
        "(Mailchimp `contact_id`, Brevo contact `id`).",
    )
    unsubscribed_by: Literal["person", "admin"] | None = Field(
        default=None,
        description="Who unsubscribed the member, where the provider says (Mailchimp's "
        "`unsubscribe_reason`); None when it does not.",
    )

    @property
    def key(self) -> str:
        """The normalised email of the member."""
        return email_key(self.email)


MEMBER_ROW_FIELDS = (
    "provider_id",
    "email",
    "status",
    "salutation",
    "first_name",
    "last_name",
    "tags",
    "last_changed",
    "stable_id",
    "unsubscribed_by",
)
MemberRow = tuple[
    str, str, str, str, str, str, tuple[str, ...], datetime | None, str | None, str | None
]
"""A member as a row of `MEMBER_ROW_FIELDS`: its status's value, its tags sorted (what the
snapshot frame holds; a million of them take a fraction of the memory of `Member`s)."""


T = TypeVar("T")


def rows_of_pages(pages: Iterable[Sequence[MemberRow]]) -> list[MemberRow]:
    """The rows of a snapshot's pages, a member met on two pages (the audience changed while
    they were read) once: at its first place, as the later page holds it."""
    return list({row[0]: row for page in pages for row in page}.values())


def member_row(m: Member) -> MemberRow:
    """The row of a member."""
    return (
        m.provider_id,
        m.email,
        m.status.value,
        m.salutation,
        m.first_name,
        m.last_name,
        tuple(sorted(m.tags)),
        m.last_changed,
        m.stable_id,
        m.unsubscribed_by,
    )


class MemberWrites(_Frozen):
    """Writes to existing members that a provider may send together: they concern distinct
    members, so their order does not matter."""

    renames: tuple[EmailChange, ...] = ()
    updates: tuple[Contact, ...] = ()
    current: Mapping[str, Member] = Field(
        default_factory=dict, description="`upsert`'s `current` for the updates"
    )
    unsubscribes: tuple[ContactRef, ...] = ()
    removes: tuple[ContactRef, ...] = ()


class Action(StrEnum):
    """The kind of write an outcome answers."""

    UPSERT = "upsert"
    CHANGE_EMAIL = "change_email"
    UNSUBSCRIBE = "unsubscribe"
    REMOVE = "remove"


class Result(StrEnum):
    """What a write did to one contact."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    UNSUBSCRIBED = "unsubscribed"
    REMOVED = "removed"
    REFUSED = "refused"


class Outcome(_Frozen):
    """The answer for one contact of a batch call; refusals carry the provider's code."""

    action: Action
    outcome: Result
    email: str
    crm_id: str | None = None
    provider_id: str | None = None
    status: MemberStatus | None = Field(
        default=None, description="Provider status after the write, when the provider said."
    )
    code: str | None = None
    message: str | None = None
    stable_id: str | None = Field(
        default=None,
        description="The member's `Member.stable_id`, when the answer gives it (a create).",
    )


class Audience(_Frozen):
    """The provider-side container the sync writes into (Mailchimp audience, Brevo list)."""

    provider: str
    id: str
    name: str


class Provider(Protocol):
    """Everything the sync needs from one audience at one newsletter provider.

    Writes are shaped so they can never re-subscribe anyone: creates never overwrite an
    existing member, updates carry no status, and only `unsubscribe` changes a status.
    """

    name: str

    def check_credentials(self) -> None:
        """Fail with `AuthenticationError` unless the configured key is accepted."""
        ...

    def ensure_audience(self) -> Audience:
        """Find or create the audience and the fields the sync writes; idempotent."""
        ...

    def found_audience(self) -> Audience:
        """The audience, found or created, as far as reading its members needs (Mailchimp:
        its fields not checked, which `ensure_audience` does before any write)."""
        ...

    def member_count(self) -> int:
        """The audience's members by the provider's own counts, read when it is found (or 0 when
        created): what a snapshot will hold, roughly (the counts may lag)."""
        ...

    def snapshot(self) -> list[Member]:
        """Every member of the audience, whatever its status."""
        ...

    def snapshot_rows(self, most: int | None = None) -> list[MemberRow]:
        """`snapshot()` as rows (`member_row`), each the row of the member it returns; with
        `most`, `AudienceTooLargeError` as soon as a page tells the audience holds more members
        (the counts of `member_count` may lag), before reading further."""
        ...

    def snapshot_pages(
        self, convert: Callable[[list[MemberRow]], T], most: int | None = None
    ) -> list[T]:
        """`convert` of the rows of each page `snapshot_rows` reads, in page order, called on
        a thread of the client as the page comes in (its work overlaps the reads still on
        their way); a member may be on two pages (`rows_of_pages` keeps the later); `most` as
        there."""
        ...

    def members(self, emails: Sequence[str]) -> list[Member]:
        """The audience's members at these addresses, whatever their status; addresses that are
        no member are left out.

        Each is what `snapshot()` returns for it, in the order the addresses come (once per
        `email_key`); many addresses at once read the snapshot instead of one call each.
        """
        ...

    def members_by_id(self, stable_ids: Sequence[str]) -> list[Member]:
        """The audience's members with these stable ids (`Member.stable_id`), at whatever
        address they have now; ids no member of the audience has are left out. One call each,
        or the snapshot, filtered, when that takes fewer calls: for the members a run must
        find after they left their address."""
        ...

    def upsert(
        self, contacts: Sequence[Contact], current: Mapping[str, Member] | None = None
    ) -> list[Outcome]:
        """Create or update contacts (fields, tags) without touching anyone's status.

        `current` maps `email_key` to the member as last seen; members found there are
        updated to match the contact (tags included), the rest go through the create path.
        An archived member found there is added back holding exactly the contact's tags.
        """
        ...

    def change_emails(self, changes: Sequence[EmailChange]) -> list[Outcome]:
        """Change the address of existing members, keeping them the same member."""
        ...

    def write_members(self, writes: MemberWrites) -> list[Outcome]:
        """What `change_emails`, `upsert`, `unsubscribe` and `remove` do for `writes`, in as
        few calls as the provider allows; the outcomes in that order (renames, updates,
        unsubscribes, removals)."""
        ...

    def unsubscribe(self, refs: Sequence[ContactRef]) -> list[Outcome]:
        """Opt contacts out (Mailchimp `unsubscribed`, Brevo `emailBlacklisted`)."""
        ...

    def remove(self, refs: Sequence[ContactRef]) -> list[Outcome]:
        """Take contacts out of the audience (Mailchimp archive, Brevo unlink from the list)."""
        ...

    def register_webhook(
        self, url: str, secret: str, activities: frozenset[str] = frozenset()
    ) -> str:
        """Register (once) the webhook for changes made by people, with the campaign events
        the `activities` (`delivered`, `opened`, `clicked`) need; returns its id. A webhook at
        `url` with other events or another secret is updated."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def email_key(email: str) -> str:
    """The provider-side identity of an address: trimmed and lower-cased."""
    return email.strip().lower()


def lookup_keys(emails: Iterable[str]) -> list[str]:
    """The distinct, non-empty `email_key`s of `emails`, in their first order."""
    return [key for key in dict.fromkeys(email_key(e) for e in emails) if key]


def pick(members: Iterable[Member], keys: Sequence[str]) -> list[Member]:
    """The members at `keys`, in the order of `keys`; keys with no member are left out."""
    by_key = {m.key: m for m in members}
    return [by_key[key] for key in keys if key in by_key]


def pick_ids(members: Iterable[Member], stable_ids: Sequence[str]) -> list[Member]:
    """The members with these stable ids, in the order of `stable_ids`."""
    by_id = {m.stable_id: m for m in members if m.stable_id}
    return [by_id[i] for i in stable_ids if i in by_id]


def write_in_turn(provider: Provider, writes: MemberWrites) -> list[Outcome]:
    """`Provider.write_members` as one call per kind of write."""
    return [
        *(provider.change_emails(writes.renames) if writes.renames else []),
        *(provider.upsert(writes.updates, writes.current) if writes.updates else []),
        *(provider.unsubscribe(writes.unsubscribes) if writes.unsubscribes else []),
        *(provider.remove(writes.removes) if writes.removes else []),
    ]
