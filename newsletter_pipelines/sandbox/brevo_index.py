"""The lookups a Brevo account keeps beside its contacts (rebuilt on load, never persisted)."""

from __future__ import annotations

from typing import Protocol


class Indexed(Protocol):
    """What the index reads of a contact."""

    id: int
    email: str
    listIds: list[int]  # noqa: N815 - Brevo's field name


class ContactIndex:
    """Contact ids by lower-cased address, and the ids of each list's contacts (those with the
    list in `listIds`), so that a lookup or a page of a list reads these, not every contact."""

    def __init__(self) -> None:
        self.by_email: dict[str, int] = {}
        self._in_list: dict[int, set[int]] = {}
        self._sorted: dict[int, list[int]] = {}  # `_in_list` ascending, until the list changes
        self.since: dict[tuple[int, float], tuple[list[int], int, list[int]]] = {}
        """(list id, time) -> (the list's ids, the contacts' modifications then, those modified
        at that time or later): `BvAccount.list_contact_ids_since`'s answers."""

    def add(self, contact: Indexed) -> None:
        """Index a contact stored in the account."""
        self.by_email[contact.email.lower()] = contact.id
        for list_id in contact.listIds:
            self.link(contact.id, list_id)

    def remove(self, contact: Indexed) -> None:
        """Forget a contact taken out of the account."""
        self.by_email.pop(contact.email.lower(), None)
        for list_id in contact.listIds:
            self.unlink(contact.id, list_id)

    def link(self, contact_id: int, list_id: int) -> None:
        """The contact is in the list now."""
        self._in_list.setdefault(list_id, set()).add(contact_id)
        self._sorted.pop(list_id, None)

    def unlink(self, contact_id: int, list_id: int) -> None:
        """The contact is no longer in the list."""
        self._in_list.get(list_id, set()).discard(contact_id)
        self._sorted.pop(list_id, None)

    def list_ids(self, list_id: int) -> list[int]:
        """The ids of the list's contacts, ascending (the caller must not change it)."""
        ids = self._sorted.get(list_id)
        if ids is None:
            ids = self._sorted[list_id] = sorted(self._in_list.get(list_id, ()))
        return ids
