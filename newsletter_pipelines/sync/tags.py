"""How each provider stores and compares tags.

Mailchimp tag names are case-insensitive ("VIP" and "vip" are one tag; the first spelling stays).
Brevo keeps a contact's tags comma-separated in one text attribute, so a tag cannot contain a
comma: it is stored with ";" instead. The sync compares tags by their key in the provider's form,
so a tag the provider stores differently never looks changed (no write on every re-sync).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from newsletter_pipelines.providers.brevo_attributes import brevo_tag


@dataclass(frozen=True)
class TagStyle:
    """A provider's tag form (what it stores) and key (what makes two tags the same)."""

    form: Callable[[str], str]
    key: Callable[[str], str]

    def keys(self, tags: Iterable[str]) -> frozenset[str]:
        """The keys of `tags` in this provider's form (of a frozenset: remembered, as the
        rules ask for the same few sets of tags several times per contact)."""
        if type(tags) is frozenset:
            return _frozen_keys(self, tags)
        return frozenset(self.key(self.form(t)) for t in tags)

    def forms(self, tags: Iterable[str]) -> frozenset[str]:
        """`tags` as this provider stores them."""
        return frozenset(self.form(t) for t in tags)


@functools.lru_cache(maxsize=1 << 16)
def _frozen_keys(style: TagStyle, tags: frozenset[str]) -> frozenset[str]:
    return frozenset(style.key(style.form(t)) for t in tags)


def _same(tag: str) -> str:
    return tag


TAG_STYLES = {
    "mailchimp": TagStyle(form=_same, key=str.casefold),
    "brevo": TagStyle(form=brevo_tag, key=_same),
}
