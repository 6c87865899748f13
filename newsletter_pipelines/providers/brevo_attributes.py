"""Brevo contact attributes: the configurable mapping and its check against the account.

Default attribute names depend on the account language (FIRSTNAME/LASTNAME in English,
VORNAME/NACHNAME in German, PRENOM/NOM in French) and Brevo silently ignores unknown ones, so a
mapped attribute that the account lacks is a configuration error, never a silent loss.
A salutation may be a text attribute or a category (enumeration of value/label); tags are kept
comma-separated in one text attribute.
"""

from __future__ import annotations

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
        if self._labels is None:
            attributes[self.salutation] = contact.salutation
        elif contact.salutation:
            attributes[self.salutation] = self._labels[contact.salutation]
        if self.tags:
            attributes[self.tags] = ",".join(sorted(contact.tags))
        return attributes

    def decode(self, attributes: dict[str, Any]) -> dict[str, Any]:
        """Names, salutation and tags of a contact from its attributes."""
        raw = attributes.get(self.salutation, "")
        if self._labels is not None:
            labels = {v: k for k, v in self._labels.items()}
            salutation = labels.get(raw, "") if isinstance(raw, int) else ""
        else:
            salutation = str(raw or "")
        tags = str(attributes.get(self.tags) or "") if self.tags else ""
        return {
            "first_name": str(attributes.get(self.first_name) or ""),
            "last_name": str(attributes.get(self.last_name) or ""),
            "salutation": salutation,
            "tags": frozenset(t for t in tags.split(",") if t),
        }
