"""Three-way reconciliation of one audience (DESIGN §4): CRM desired, provider actual, ledger base.

Every contact gets exactly one action:
- `create`: eligible in the CRM, not at the provider;
- `update`: at the provider, but its fields, tags or email differ from the CRM (CRM wins);
- `unsubscribe`: subscribed at the provider, the CRM says no (an opt-out wins on either side);
- `remove`: subscribed at the provider, no longer eligible for another reason (private, deleted,
  invalid, not opted in);
- `unchanged`: nothing to do;
- `blocked_by_provider`: eligible in the CRM, but the provider holds an opt-out (unsubscribed,
  cleaned, blacklisted), a permanent refusal, or an archive whose consent is unknown; it is never
  re-subscribed;
- `import_back`: changed at the provider while the CRM did not change (a person unsubscribed,
  was deleted or archived, signed up, or got tags); written back by the import-back job.
No provider calls and no Dagster here: plain data in, plain data out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import pandas as pd

from newsletter_pipelines.email_address import match_key


class SyncAction(StrEnum):
    """The one thing the sync does about a contact."""

    CREATE = "create"
    UPDATE = "update"
    UNSUBSCRIBE = "unsubscribe"
    REMOVE = "remove"
    UNCHANGED = "unchanged"
    BLOCKED_BY_PROVIDER = "blocked_by_provider"
    IMPORT_BACK = "import_back"


WRITE_ACTIONS = (SyncAction.CREATE, SyncAction.UPDATE, SyncAction.UNSUBSCRIBE, SyncAction.REMOVE)
ACTIVE = frozenset({"subscribed", "pending", "transactional"})
OPTED_OUT = frozenset({"unsubscribed", "cleaned", "blacklisted"})
ARCHIVED = "archived"
REMOVED_BY_SYNC = "removed"  # ledger status after our own `remove`
DIFF_COLUMNS = (
    "action",
    "detail",
    "crm_id",
    "match_key",
    "email",
    "old_email",
    "provider_id",
    "provider_status",
    "salutation",
    "first_name",
    "last_name",
    "tags",
    "fields_hash",
)


@dataclass(frozen=True)
class Desired:
    """What the CRM wants at the provider for one eligible contact."""

    crm_id: str
    email: str
    salutation: str
    first_name: str
    last_name: str
    tags: frozenset[str]

    @property
    def key(self) -> str:
        """The match key of the address."""
        return match_key(self.email)

    @property
    def fields_hash(self) -> str:
        """Hash of everything pushed: address, names, salutation, tags."""
        return fields_hash(self.email, self.salutation, self.first_name, self.last_name, self.tags)


@dataclass(frozen=True)
class Actual:
    """One member as the provider holds it (the snapshot), in plain values."""

    provider_id: str
    email: str
    status: str
    salutation: str = ""
    first_name: str = ""
    last_name: str = ""
    tags: frozenset[str] = frozenset()


@dataclass(frozen=True)
class LedgerEntry:
    """The base: what the sync last pushed for a contact and what it saw afterwards."""

    crm_id: str
    match_key: str
    email: str
    provider_id: str | None
    fields_hash: str
    tags: frozenset[str]
    provider_status: str
    refusal_code: str | None = None


@dataclass(frozen=True)
class CrmExclusion:
    """A CRM contact that is not eligible, with its reason (from eligibility)."""

    crm_id: str
    reason: str


@dataclass
class Diff:
    """The reconciliation of one audience."""

    rows: list[dict[str, object]] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        """One row per contact, columns `DIFF_COLUMNS`."""
        return pd.DataFrame(self.rows, columns=list(DIFF_COLUMNS))


def fields_hash(
    email: str, salutation: str, first_name: str, last_name: str, tags: Iterable[str]
) -> str:
    """A stable hash of the pushed fields (the ledger keeps it to see what changed where)."""
    text = "\x1f".join([email.lower(), salutation, first_name, last_name, *sorted(tags)])
    return hashlib.sha1(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def fields_hashes(
    emails: pd.Series,
    salutations: pd.Series,
    first_names: pd.Series,
    last_names: pd.Series,
    sorted_tags: pd.Series,
) -> list[str]:
    """`fields_hash` over columns (tags already sorted), for many contacts at once."""
    suffixes = {tags: "".join(f"\x1f{t}" for t in tags) for tags in set(sorted_tags)}
    texts = (
        emails.str.lower().to_numpy()
        + "\x1f"
        + salutations.to_numpy()
        + "\x1f"
        + first_names.to_numpy()
        + "\x1f"
        + last_names.to_numpy()
        + np.array([suffixes[tags] for tags in sorted_tags], dtype=object)
    )
    sha1 = hashlib.sha1
    return [sha1(text.encode("utf-8"), usedforsecurity=False).hexdigest() for text in texts]


def reconcile(
    desired: Iterable[Desired],
    members: Iterable[Actual],
    ledger: Iterable[LedgerEntry],
    exclusions: Mapping[str, CrmExclusion],
    system_tag: str | None = None,
) -> Diff:
    """Give every contact of the CRM, the provider and the ledger exactly one action.

    `exclusions` maps the match key of every non-eligible CRM contact with a valid address (the
    deciding row among duplicates, private ones included) to its reason.
    """
    state = _State(members, ledger, exclusions, frozenset({system_tag}) if system_tag else set())
    for contact in desired:
        state.decide_desired(contact)
    state.decide_remaining_members()
    return state.diff


class _State:
    def __init__(
        self,
        members: Iterable[Actual],
        ledger: Iterable[LedgerEntry],
        exclusions: Mapping[str, CrmExclusion],
        system_tags: frozenset[str] | set[str],
    ) -> None:
        self.members = {match_key(m.email): m for m in members}
        self.ledger_by_crm: dict[str, LedgerEntry] = {}
        self.ledger_by_key: dict[str, LedgerEntry] = {}
        for entry in ledger:
            self.ledger_by_crm[entry.crm_id] = entry
            self.ledger_by_key[entry.match_key] = entry
        self.exclusions = exclusions
        self.system_tags = frozenset(system_tags)
        self.handled: set[str] = set()
        self.diff = Diff()

    def emit(
        self,
        action: SyncAction,
        detail: str,
        key: str,
        contact: Desired | None = None,
        member: Actual | None = None,
        *,
        crm_id: str | None = None,
        old_email: str | None = None,
    ) -> None:
        self.handled.add(key)
        self.diff.rows.append(
            {
                "action": action.value,
                "detail": detail,
                "crm_id": contact.crm_id if contact else crm_id,
                "match_key": key,
                "email": contact.email if contact else (member.email if member else None),
                "old_email": old_email,
                "provider_id": member.provider_id if member else None,
                "provider_status": member.status if member else None,
                "salutation": contact.salutation if contact else None,
                "first_name": contact.first_name if contact else None,
                "last_name": contact.last_name if contact else None,
                "tags": tuple(sorted(contact.tags)) if contact else None,
                "fields_hash": contact.fields_hash if contact else None,
            }
        )

    # --- eligible CRM contacts --------------------------------------------------------------

    def decide_desired(self, contact: Desired) -> None:
        key = contact.key
        entry = self.ledger_by_crm.get(contact.crm_id)
        member = self.members.get(key)
        if member is None and entry is not None and entry.match_key != key:
            self._email_changed(contact, key, entry)
        elif member is None:
            self._absent(contact, key, entry)
        elif member.status in OPTED_OUT:
            self.emit(
                SyncAction.BLOCKED_BY_PROVIDER,
                f"{member.status} at the provider: never re-subscribed",
                key,
                contact,
                member,
            )
        elif member.status == ARCHIVED:
            self._archived(contact, key, entry, member)
        else:
            self._compare(contact, key, entry, member)

    def _email_changed(self, contact: Desired, key: str, entry: LedgerEntry) -> None:
        old = self.members.get(entry.match_key)
        self.handled.add(entry.match_key)
        if old is not None and old.status in ACTIVE:
            self.emit(
                SyncAction.UPDATE,
                "email changed in the CRM: the same member gets the new address",
                key,
                contact,
                old,
                old_email=old.email,
            )
        elif old is not None and old.status in OPTED_OUT:
            self.emit(
                SyncAction.BLOCKED_BY_PROVIDER,
                f"{old.status} at the provider under the previous address {entry.email}",
                key,
                contact,
                old,
            )
        else:
            self.emit(SyncAction.CREATE, "new address, previous one gone", key, contact)

    def _absent(self, contact: Desired, key: str, entry: LedgerEntry | None) -> None:
        if entry is not None and entry.refusal_code and entry.fields_hash == contact.fields_hash:
            self.emit(
                SyncAction.BLOCKED_BY_PROVIDER,
                f"refused by the provider ({entry.refusal_code}); retried when the CRM changes",
                key,
                contact,
            )
        elif entry is not None and entry.provider_status in ACTIVE:
            self.emit(
                SyncAction.IMPORT_BACK,
                "deleted at the provider since the last sync",
                key,
                contact,
            )
        else:
            self.emit(SyncAction.CREATE, "eligible, not at the provider", key, contact)

    def _archived(
        self, contact: Desired, key: str, entry: LedgerEntry | None, member: Actual
    ) -> None:
        if entry is not None and entry.provider_status == REMOVED_BY_SYNC:
            self.emit(
                SyncAction.CREATE, "eligible again after the sync removed it", key, contact, member
            )
        elif entry is not None and entry.provider_status in ACTIVE:
            self.emit(
                SyncAction.IMPORT_BACK,
                "archived at the provider since the last sync",
                key,
                contact,
                member,
            )
        else:
            self.emit(
                SyncAction.BLOCKED_BY_PROVIDER,
                "archived at the provider before the sync knew it: its consent is unknown",
                key,
                contact,
                member,
            )

    def _compare(
        self, contact: Desired, key: str, entry: LedgerEntry | None, member: Actual
    ) -> None:
        wanted_tags = contact.tags | self.system_tags
        pushed_tags = entry.tags if entry is not None else frozenset()
        fields_differ = (
            match_key(member.email) != key
            or member.salutation != contact.salutation
            or member.first_name != contact.first_name
            or member.last_name != contact.last_name
        )
        missing_tags = wanted_tags - member.tags
        dropped_in_crm = (pushed_tags - contact.tags) & member.tags
        if fields_differ or missing_tags or dropped_in_crm:
            self.emit(
                SyncAction.UPDATE,
                _update_detail(fields_differ, missing_tags, dropped_in_crm),
                key,
                contact,
                member,
            )
        elif member.tags - wanted_tags - pushed_tags:
            self.emit(SyncAction.IMPORT_BACK, "tags added at the provider", key, contact, member)
        else:
            self.emit(SyncAction.UNCHANGED, "in sync", key, contact, member)

    # --- provider members the CRM does not want ---------------------------------------------

    def decide_remaining_members(self) -> None:
        for key, member in self.members.items():
            if key in self.handled:
                continue
            entry = self.ledger_by_key.get(key)
            exclusion = self.exclusions.get(key)
            if exclusion is None and entry is not None:
                exclusion = CrmExclusion(entry.crm_id, "deleted_in_crm")
            crm_id = exclusion.crm_id if exclusion else None
            if member.status in ACTIVE:
                self._unwanted_active(key, member, entry, exclusion, crm_id)
            elif entry is not None and entry.provider_status in ACTIVE:
                change = "opted out" if member.status in OPTED_OUT else "archived"
                self.emit(
                    SyncAction.IMPORT_BACK,
                    f"{change} at the provider since the last sync",
                    key,
                    member=member,
                    crm_id=crm_id,
                )
            else:
                self.emit(
                    SyncAction.UNCHANGED,
                    f"{member.status} at the provider, not eligible",
                    key,
                    member=member,
                    crm_id=crm_id,
                )

    def _unwanted_active(
        self,
        key: str,
        member: Actual,
        entry: LedgerEntry | None,
        exclusion: CrmExclusion | None,
        crm_id: str | None,
    ) -> None:
        reason = exclusion.reason if exclusion else None
        if reason == "opted_out":
            self.emit(
                SyncAction.UNSUBSCRIBE,
                "newsletter = no in the CRM",
                key,
                member=member,
                crm_id=crm_id,
            )
        elif reason == "private":
            self.emit(
                SyncAction.REMOVE,
                "private in the CRM: never at a provider",
                key,
                member=member,
                crm_id=crm_id,
            )
        elif entry is not None:
            self.emit(
                SyncAction.REMOVE,
                f"no longer eligible ({reason})",
                key,
                member=member,
                crm_id=crm_id,
            )
        elif exclusion is None:
            self.emit(
                SyncAction.IMPORT_BACK,
                "signed up at the provider, unknown to the CRM",
                key,
                member=member,
            )
        else:
            self.emit(
                SyncAction.IMPORT_BACK,
                f"signed up at the provider ({reason} in the CRM)",
                key,
                member=member,
                crm_id=crm_id,
            )


def _update_detail(fields_differ: bool, missing: frozenset[str], dropped: frozenset[str]) -> str:
    parts = ["fields differ"] if fields_differ else []
    if missing:
        parts.append("tags to add: " + ", ".join(sorted(missing)))
    if dropped:
        parts.append("tags to remove: " + ", ".join(sorted(dropped)))
    return "; ".join(parts)
