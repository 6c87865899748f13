"""Brevo contact attributes: the configurable mapping and its check against the account.

Default attribute names depend on the account language (FIRSTNAME/LASTNAME in English,
VORNAME/NACHNAME in German, PRENOM/NOM in French) and Brevo silently ignores unknown ones, so a
mapped attribute that the account lacks is a configuration error, never a silent loss.
A salutation may be a text attribute or a category (enumeration of value/label); tags are kept
comma-separated in one text attribute, each in the form `brevo_tag` gives it (no commas).

A value is cleared by sending an empty string: the only "empty" the spec allows for every
attribute on create and update (their values are number, string, boolean or array; null is not
among them), and the import's `emptyContactsAttributes` calls empty fields the ones that erase.
So a contact without a salutation sends `""` for a category salutation too, never leaves it out
(leaving it out keeps the old value, and every re-sync would write again).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel

from newsletter_pipelines.providers.base import Contact
from newsletter_pipelines.providers.brevo_models import Attribute
from newsletter_pipelines.providers.errors import ConfigurationError

NAME = "brevo"


class AttributeMap(BaseModel):
    """Which Brevo attribute holds which contact field (`tags` None: tags are not synced)."""

    first_name: str = "FIRSTNAME"
    last_name: str = "LASTNAME"
    salutation: str = "SALUTATION"
    tags: str | None = "NEWSLETTER_TAGS"


class AttributeCodec:
    """The mapping resolved against the account's attributes."""

    def __init__(self, mapping: AttributeMap, available: list[Attribute]) -> None:
        by_name = {a.name.upper(): a for a in available}
        wanted = {
            "first_name": mapping.first_name,
            "last_name": mapping.last_name,
            "salutation": mapping.salutation,
            **({"tags": mapping.tags} if mapping.tags else {}),
        }
        missing = [
            f"{field}={name}" for field, name in wanted.items() if name.upper() not in by_name
        ]
        if missing:
            names = ", ".join(sorted(a.name for a in available if a.category == "normal"))
            raise ConfigurationError(
                NAME,
                f"mapped attributes missing in the account: {', '.join(missing)} "
                f"(the account has: {names}); default names depend on the account language, "
                "set NEWSLETTER_BREVO_ATTRIBUTES__* to the right ones or create the attributes",
            )
        self.first_name = mapping.first_name.upper()
        self.last_name = mapping.last_name.upper()
        self.salutation = mapping.salutation.upper()
        self.tags = mapping.tags.upper() if mapping.tags else None
        salutation = by_name[self.salutation]
        self._labels: dict[str, int] | None = None
        if salutation.category == "category":
            self._labels = {str(e["label"]): int(e["value"]) for e in salutation.enumeration or []}

    def problem(self, contact: Contact) -> str | None:
        """Why the contact cannot be written as is, checked before sending."""
        if (
            self._labels is not None
            and contact.salutation
            and contact.salutation not in self._labels
        ):
            return (
                f"{self.salutation}: {contact.salutation!r} is not one of "
                f"{sorted(self._labels)} (checked before sending)"
            )
        return None

    def encode(self, contact: Contact) -> dict[str, Any]:
        """The attributes to send for a contact."""
        attributes: dict[str, Any] = {
            self.first_name: contact.first_name,
            self.last_name: contact.last_name,
        }
        if self._labels is None or not contact.salutation:
            attributes[self.salutation] = contact.salutation  # "" clears a category value too
        else:
            attributes[self.salutation] = self._labels[contact.salutation]
        if self.tags:
            attributes[self.tags] = ",".join(sorted(brevo_tags(contact.tags)))
        return attributes

    def decode(self, attributes: Mapping[str, Any]) -> dict[str, Any]:
        """Names, salutation and tags of a contact from its attributes."""
        raw = attributes.get(self.salutation, "")
        salutation = self._label(raw) if self._labels is not None else str(raw or "")
        tags = str(attributes.get(self.tags) or "") if self.tags else ""
        return {
            "first_name": str(attributes.get(self.first_name) or ""),
            "last_name": str(attributes.get(self.last_name) or ""),
            "salutation": salutation,
            "tags": brevo_tags(tags.split(",")),
        }

    def wanted(self, contact: Contact) -> dict[str, Any]:
        """The contact's fields as `decode` would read them back once written."""
        return {
            "first_name": contact.first_name,
            "last_name": contact.last_name,
            "salutation": contact.salutation,
            "tags": brevo_tags(contact.tags) if self.tags else frozenset(),
        }

    def differs(self, contact: Contact, held: Mapping[str, Any]) -> bool:
        """Whether writing `contact` would change what Brevo holds (`held`: decoded fields)."""
        wanted = self.wanted(contact)
        return any(held.get(field) != value for field, value in wanted.items())

    def _label(self, raw: Any) -> str:
        """The label of a category value: read as its value (int or digits) or its label."""
        assert self._labels is not None
        labels = {v: k for k, v in self._labels.items()}
        if isinstance(raw, bool):
            return ""
        if isinstance(raw, int) or (isinstance(raw, str) and raw.isdigit()):
            return labels.get(int(raw), "")
        return str(raw) if raw in self._labels else ""


def brevo_tag(tag: str) -> str:
    """The form in which Brevo stores `tag`: commas replaced by ";" (a comma would split the tag
    in the comma-separated tags attribute), surrounding spaces stripped. An empty form is no tag.
    """
    return tag.replace(",", ";").strip()


def brevo_tags(tags: Iterable[str]) -> frozenset[str]:
    """The tags in Brevo's form, empty ones left out."""
    return frozenset(form for form in map(brevo_tag, tags) if form)
