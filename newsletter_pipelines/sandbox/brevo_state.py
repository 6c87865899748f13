"""State of the emulated Brevo accounts (serialisable pydantic models)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, PrivateAttr

from newsletter_pipelines.sandbox.brevo_index import ContactIndex

LANGUAGE_NAME_ATTRIBUTES: dict[str, tuple[str, str]] = {
    "en": ("FIRSTNAME", "LASTNAME"),
    "de": ("VORNAME", "NACHNAME"),
    "fr": ("PRENOM", "NOM"),
}
"""Default first/last name attributes by account language (they differ; never assume)."""


class BvAttribute(BaseModel):
    name: str
    category: str = "normal"
    type: str | None = "text"
    enumeration: list[dict[str, Any]] | None = None


class BvEvent(BaseModel):
    """One entry of a contact's statistics; an admin's unsubscription names no campaign."""

    eventTime: float  # noqa: N815 - Brevo's field name
    campaignId: int | None = None  # noqa: N815


class BvUnsubscriptions(BaseModel):
    userUnsubscription: list[BvEvent] = Field(default_factory=list)  # noqa: N815
    adminUnsubscription: list[BvEvent] = Field(default_factory=list)  # noqa: N815


class BvStatistics(BaseModel):
    """The parts of a contact's campaign statistics that tell why it is blacklisted."""

    hardBounces: list[BvEvent] = Field(default_factory=list)  # noqa: N815
    complaints: list[BvEvent] = Field(default_factory=list)
    unsubscriptions: BvUnsubscriptions = Field(default_factory=BvUnsubscriptions)


class BvContact(BaseModel):
    id: int
    email: str
    attributes: dict[str, Any] = Field(default_factory=dict)
    emailBlacklisted: bool = False  # noqa: N815 - Brevo's field name
    smsBlacklisted: bool = False  # noqa: N815
    listIds: list[int] = Field(default_factory=list)  # noqa: N815
    listUnsubscribed: list[int] = Field(default_factory=list)  # noqa: N815
    ext_id: str | None = None
    createdAt: float  # noqa: N815
    modifiedAt: float  # noqa: N815
    statistics: BvStatistics = Field(default_factory=BvStatistics)
    """Every event ever; `GET /contacts/{identifier}` shows the last 90 days."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "modifiedAt":
            _MODIFICATIONS[0] += 1
        super().__setattr__(name, value)


_MODIFICATIONS = [0]
"""How many times the `modifiedAt` of any contact was set (for `ContactIndex.ids_since`)."""


def modifications() -> int:
    """How many times the `modifiedAt` of any contact was set: the same number, the same times
    (a contact made with its time has it before anyone reads its lists)."""
    return _MODIFICATIONS[0]


class BvFolder(BaseModel):
    id: int
    name: str


class BvList(BaseModel):
    id: int
    name: str
    folderId: int  # noqa: N815
    createdAt: float  # noqa: N815


class BvProcess(BaseModel):
    id: int
    name: str = "IMPORTUSER"
    status: str = "queued"
    created_at: float
    completed_at: float | None = None
    request: dict[str, Any] = Field(default_factory=dict)
    info: dict[str, Any] | None = None


class BvWebhook(BaseModel):
    id: int
    url: str
    description: str = ""
    events: list[str]
    type: str = "transactional"
    auth: dict[str, Any] | None = None
    headers: list[dict[str, str]] = Field(default_factory=list)
    batched: bool = False
    createdAt: float  # noqa: N815
    modifiedAt: float  # noqa: N815


class BvRecipient(BaseModel):
    """One contact an email campaign went to; `status` is `delivered` or `hardBounce`."""

    contact_id: int
    email: str
    status: str


class BvCampaign(BaseModel):
    """A sent email campaign: its lists and its recipients at send time."""

    id: int
    name: str
    subject: str
    tag: str = ""
    listIds: list[int]  # noqa: N815 - Brevo's field name
    sentDate: float  # noqa: N815
    recipients: list[BvRecipient] = Field(default_factory=list)

    def recipient(self, contact_id: int) -> BvRecipient | None:
        """The contact's delivery, if the campaign went to it."""
        return next((r for r in self.recipients if r.contact_id == contact_id), None)


class BvAccount(BaseModel):
    """One Brevo account (API key) with its attributes, lists, contacts, processes and sent
    campaigns."""

    api_key: str
    key_name: str = "sandbox-key"
    language: str = "en"
    email: str = "owner@sandbox.example"
    company: str = "Sandbox"
    contacts_per_second: int = 10
    other_per_hour: int = 100
    attributes: list[BvAttribute] = Field(default_factory=list)
    folders: dict[int, BvFolder] = Field(default_factory=dict)
    lists: dict[int, BvList] = Field(default_factory=dict)
    contacts: dict[int, BvContact] = Field(default_factory=dict)
    processes: dict[int, BvProcess] = Field(default_factory=dict)
    webhooks: dict[int, BvWebhook] = Field(default_factory=dict)
    campaigns: dict[int, BvCampaign] = Field(default_factory=dict)
    next_id: int = 1
    _index: ContactIndex = PrivateAttr(default_factory=ContactIndex)

    def model_post_init(self, context: Any, /) -> None:
        """Rebuild the contact index (it is not persisted)."""
        index = self._contact_index()
        for contact in self.contacts.values():
            index.add(contact)

    def _contact_index(self) -> ContactIndex:
        """The index, read past pydantic's private-attribute lookup (a micro-second a read,
        once or twice for every contact an import writes)."""
        index: ContactIndex = self.__pydantic_private__["_index"]  # type: ignore[index]
        return index

    def new_id(self) -> int:
        """A fresh numeric id."""
        self.next_id += 1
        return self.next_id

    def by_email(self, email: str) -> BvContact | None:
        """The contact with this address, if any."""
        contact_id = self._contact_index().by_email.get(email.lower())
        return self.contacts.get(contact_id) if contact_id is not None else None

    def add_contact(self, contact: BvContact) -> None:
        """Store a new contact."""
        self.contacts[contact.id] = contact
        self._contact_index().add(contact)

    def link(self, contact: BvContact, list_id: int) -> None:
        """Add the list to the contact's `listIds`."""
        contact.listIds.append(list_id)
        self._contact_index().link(contact.id, list_id)

    def unlink(self, contact: BvContact, list_id: int) -> None:
        """Take the list out of the contact's `listIds`."""
        contact.listIds.remove(list_id)
        if list_id not in contact.listIds:
            self._contact_index().unlink(contact.id, list_id)

    def list_contact_ids(self, list_id: int) -> list[int]:
        """The ids of the list's contacts, ascending (the caller must not change it)."""
        return self._contact_index().list_ids(list_id)

    def list_contact_ids_since(self, list_id: int, since: float) -> list[int]:
        """The ids of the list's contacts modified at `since` or later, ascending (the caller
        must not change it). Kept while neither the list nor any contact's `modifiedAt`
        changes: a read-back pages through the same 100,000 contacts 200 times."""
        index = self._contact_index()
        ids = index.list_ids(list_id)
        key, stamp = (list_id, since), modifications()
        kept = index.since.get(key)
        if kept is not None and kept[0] is ids and kept[1] == stamp:
            return kept[2]
        contacts = self.contacts
        found = [i for i in ids if contacts[i].modifiedAt >= since]
        if len(index.since) >= 8:
            index.since.clear()
        index.since[key] = (ids, stamp, found)
        return found

    def rename(self, contact: BvContact, email: str) -> None:
        """Change a contact's address."""
        index = self._contact_index()
        index.by_email.pop(contact.email.lower(), None)
        contact.email = email
        index.by_email[email.lower()] = contact.id

    def delete(self, contact: BvContact) -> None:
        """Remove a contact from the account."""
        self._contact_index().remove(contact)
        del self.contacts[contact.id]

    def attribute(self, name: str) -> BvAttribute | None:
        """The attribute with this name, if defined."""
        return next((a for a in self.attributes if a.name == name.upper()), None)

    def attributes_by_name(self) -> dict[str, BvAttribute]:
        """Each attribute by its name, as `attribute` finds it (for many lookups at once)."""
        named: dict[str, BvAttribute] = {}
        for attribute in self.attributes:
            named.setdefault(attribute.name, attribute)
        return named


def default_attributes(language: str, extra: list[BvAttribute] | None = None) -> list[BvAttribute]:
    """The attributes a fresh account in `language` has, plus `extra`."""
    first, last = LANGUAGE_NAME_ATTRIBUTES[language]
    return [
        BvAttribute(name=last),
        BvAttribute(name=first),
        BvAttribute(name="SMS"),
        BvAttribute(name="EXT_ID"),
        *(extra or []),
    ]
