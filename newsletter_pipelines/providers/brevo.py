"""Brevo API v3 client for one list (in one folder).

- creates: a few through `POST /contacts`, many through `POST /contacts/import` (jsonBody chunks
  ≤ 8 MB), whose process is polled as `IMPORT_POLL` says (the processes endpoint shares a
  100 requests/hour budget), and whose result is read back from the list (`modifiedSince`)
  for ids and statuses;
- updates, email changes and unsubscribes (`emailBlacklisted: true`): `POST /contacts/batch`;
  a refused batch is replayed contact by contact (`PUT /contacts/{id}`) to find who was refused;
- removal: `POST /contacts/lists/{id}/contacts/remove`, 150 a call;
- `emailBlacklisted: false` is never sent: a blacklist is Brevo's to keep;
- why a contact is blacklisted (a hard bounce blacklists exactly as an unsubscription does):
  its statistics, one `GET /contacts/{id}` each, which cover the last 90 days only.

A create may meet a contact that already exists in the account outside the list, which the list
snapshot cannot show. A contact that is blacklisted (`emailBlacklisted`) or unsubscribed from
this list (our list in `listUnsubscribed`) gets no profile write and no list membership from us;
it comes back `refused` with code `blacklisted` or `list_unsubscribed`. Both create paths keep
that rule within what the API offers:

- direct: `updateEnabled: false`, so an existing contact is never written blindly: 201 is a new
  contact; 400 `duplicate_parameter` means it exists, and `GET /contacts/{email}` decides —
  blacklisted or list-unsubscribed: refused, nothing written; otherwise one
  `PUT /contacts/{id}` sets its attributes and links it to the list (`listIds`) at once, and
  the outcome is `updated` (`unchanged` when it already held both);
- import: `updateExistingContacts: false`, so the import writes no existing contact's
  attributes (`emptyContactsAttributes` only works with updates on). It still links every
  contact it meets to the list, blacklisted and list-unsubscribed ones included, and the API
  has no way to exclude them up front (only a `GET` per contact could, at 10 requests a
  second). So the read-back decides: every blacklisted or list-unsubscribed contact the import
  touched is unlinked again at once (`…/contacts/remove` by id, 150 a call) and refused;
  existing contacts whose attributes differ from ours (cleared values included, sent as `""`)
  are brought up to date with `POST /contacts/batch`; a contact the read-back lacks is looked
  up (`GET`) and settled like a direct duplicate. The import cannot tell a contact that was
  already in the list from one it linked, so a blacklisted contact a stale snapshot missed is
  unlinked too. It stays linked from the import's end until the read-back (seconds to a couple
  of minutes): Brevo sends no campaign to a blacklisted contact, but a list-unsubscribed one
  could get a list-triggered automation in that window. Importing into a separate staging list
  and adding only the cleared contacts to this one would close that window, at two more calls
  per 150 new contacts; not done here.
- a list-unsubscribed contact is not in the list snapshot: Brevo moves the list from `listIds`
  to `listUnsubscribed` (the spec's example of a list's contacts never shows a list in both);
  one that is in both shows as `unsubscribed` (`status_of`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple, TypeVar
from urllib.parse import quote

import httpx
import orjson

from newsletter_pipelines.bulk import gc_paused
from newsletter_pipelines.providers.base import (
    Action,
    Audience,
    Contact,
    ContactRef,
    EmailChange,
    Member,
    MemberRow,
    MemberStatus,
    MemberWrites,
    Outcome,
    Result,
    lookup_keys,
    member_row,
    pick,
    pick_ids,
    rows_of_pages,
    write_in_turn,
)
from newsletter_pipelines.providers.brevo_attributes import AttributeCodec, AttributeMap
from newsletter_pipelines.providers.brevo_models import (
    Attributes,
    BlocklistReason,
    ContactDetails,
    ContactOut,
    ContactsPage,
    Folders,
    ListEntry,
    Lists,
    MembershipAnswer,
    Named,
    Process,
    Webhook,
    Webhooks,
)
from newsletter_pipelines.providers.errors import ApiError, AudienceTooLargeError, ProviderError
from newsletter_pipelines.providers.http import ApiClient, HourlyBudget, PollPolicy, RetryPolicy
from newsletter_pipelines.providers.trusted import trusted

log = logging.getLogger("newsletter_pipelines.providers")

T = TypeVar("T")
_Entry = tuple[dict[str, Any], str, str | None, Member | None]
"""A `/contacts/batch` entry with the contact's address, CRM id and member (`_batch_update`)."""


class _Settled(NamedTuple):
    """What an import's read-back found of one imported contact."""

    contact_id: int
    outcome: Outcome | None
    """None while its attributes differ from ours: `stale` brings them up to date."""
    stale: _Entry | None = None


NAME = "brevo"
DEFAULT_BASE_URL = "https://api.brevo.com/v3"
FOLDER_PAGE = 50
CONTACT_PAGE = 500
LIST_MEMBERS_MAX = 150
BATCH_UPDATE_MAX = 100
IMPORT_MAX_BYTES = 8 * 1024 * 1024
REQUESTS_PER_SECOND = 9.5
"""The client's pace. Brevo allows 10 requests a second (36,000 an hour) on `/contacts/…` and
100 an hour on the other endpoints (`/processes/…` among them), and answers more with 429 and
the seconds to its reset; at 9.5 a second (`token_bucket.Pacer`) any 10 starts span 1.05 s, so
a request up to 50 ms late does not crowd an 11th into one of Brevo's seconds."""
IMPORT_POLL = PollPolicy(initial=1.0, maximum=60.0, deadline=7200.0, per_hour=60)
"""Import processes are polled after 1 s, then at doubling waits up to 60 s, at most 60 polls
an hour (bursts of `PROCESS_POLLS_BURST`): the processes endpoint shares Brevo's 100
requests/hour with webhooks, account and the rest."""
PROCESS_POLLS_BURST = 20
_IMPORT_ENVELOPE = 256
MEMBERS_LOOKUP_MAX = 500
"""Most addresses `members` reads one by one (`GET /contacts/{email}`, paced to the client's
rate, 9.5 a second by default: under a minute for 500); above, the list snapshot (500 contacts a
page) is read and filtered instead. Below it, the snapshot is read too when it takes fewer
calls (a list of fewer than 500 × as many contacts as addresses)."""
READ_BACK_MARGIN = timedelta(seconds=5)
"""How long before Brevo's `Date` on an import's answer its read-back starts (a `Date` has
whole seconds, and Brevo's machines may differ a little); a contact it misses is looked up."""
MEMBERS_LOOKUP_FLOOR = 10
"""Up to this many addresses are read one by one without asking the list's size."""
REASONS_LOG_EVERY = 200
"""Contacts between two progress lines while reading why they are blacklisted."""
# not contactUpdated: Brevo fires it for the sync's own API writes too (an echo per push)
_WEBHOOK_EVENTS = [
    "unsubscribed",
    "listAddition",
    "contactDeleted",
    "hardBounce",
    "spam",
]
_ACTIVITY_EVENTS = {"delivered": "delivered", "opened": "opened", "clicked": "click"}


def parse_error(response: httpx.Response) -> tuple[str, str]:
    """(code, message) of a Brevo error body."""
    body = response.json()
    return str(body.get("code", response.reason_phrase)), str(body.get("message", ""))


def status_of(contact: ContactOut, list_id: int) -> MemberStatus:
    """Blacklisted beats unsubscribed-from-this-list beats subscribed."""
    if contact.email_blacklisted:
        return MemberStatus.BLACKLISTED
    if list_id in contact.list_unsubscribed:
        return MemberStatus.UNSUBSCRIBED
    return MemberStatus.SUBSCRIBED


class BrevoClient:
    """The `Provider` for one Brevo list."""

    name = NAME

    def __init__(
        self,
        api_key: str,
        audience_name: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        folder_name: str = "newsletter_pipelines",
        attributes: AttributeMap | None = None,
        requests_per_second: float = REQUESTS_PER_SECOND,
        max_connections: int = 5,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
        direct_max: int = 10,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._api = ApiClient(
            provider=NAME,
            base_url=base_url,
            auth_headers={"api-key": api_key},
            secrets=[api_key],
            parse_error=parse_error,
            max_connections=max_connections,
            requests_per_second=requests_per_second,
            retry=retry,
            transport=transport,
        )
        self._audience_name = audience_name
        self._folder_name = folder_name
        self._mapping = attributes or AttributeMap()
        self._poll = poll or IMPORT_POLL
        self._process_polls = (
            HourlyBudget(self._poll.per_hour, burst=PROCESS_POLLS_BURST)
            if self._poll.per_hour
            else None
        )
        self._direct_max = direct_max
        self._audience: Audience | None = None
        self._codec: AttributeCodec | None = None
        self._counted = 0  # the found list's unique subscribers as its counts had them
        self._lock = threading.Lock()

    # --- setup --------------------------------------------------------------------------

    def check_credentials(self) -> None:
        """`GET /account`; a refused key raises `AuthenticationError`."""
        self._api.request("GET", "/account")

    def ensure_audience(self) -> Audience:
        """Check the attribute mapping, then find or create the folder and the list."""
        with self._lock:
            if self._audience is None:
                available = Attributes.model_validate(self._api.call("GET", "/contacts/attributes"))
                self._codec = AttributeCodec(self._mapping, available.attributes)
                folder = self._find("/contacts/folders", "folders", self._folder_name)
                folder_id = (
                    self._create("/contacts/folders", {"name": self._folder_name})
                    if folder is None
                    else folder.id
                )
                lists_path = f"/contacts/folders/{folder_id}/lists"
                found = self._find(lists_path, "lists", self._audience_name)
                if isinstance(found, ListEntry):
                    list_id, self._counted = found.id, found.unique_subscribers
                else:
                    body = {"name": self._audience_name, "folderId": folder_id}
                    list_id = self._create("/contacts/lists", body)
                self._audience = Audience(provider=NAME, id=str(list_id), name=self._audience_name)
            return self._audience

    def found_audience(self) -> Audience:
        """`ensure_audience` (reading the list decodes its attributes: they are checked)."""
        return self.ensure_audience()

    def member_count(self) -> int:
        """The list's unique subscribers by its counts, read when it was found (0 if created)."""
        self.ensure_audience()
        return self._counted

    def _find(self, path: str, key: str, name: str) -> Named | None:
        offset = 0
        while True:
            answer = self._api.call("GET", path, params={"limit": FOLDER_PAGE, "offset": offset})
            page = (
                Folders.model_validate(answer) if key == "folders" else Lists.model_validate(answer)
            )
            rows = page.folders if isinstance(page, Folders) else page.lists
            match = next((row for row in rows if row.name == name), None)
            offset += FOLDER_PAGE
            if match is not None or offset >= page.count or not rows:
                return match

    def _create(self, path: str, body: dict[str, Any]) -> int:
        created = int(self._api.call("POST", path, json=body)["id"])
        log.info("brevo: created %s %r (%d)", path.rsplit("/", 1)[-1], body["name"], created)
        return created

    @property
    def _list_id(self) -> int:
        return int(self.ensure_audience().id)

    @property
    def _attributes(self) -> AttributeCodec:
        self.ensure_audience()
        assert self._codec is not None
        return self._codec

    # --- snapshot -----------------------------------------------------------------------

    def snapshot(self) -> list[Member]:
        """Every contact of the list by paging its contacts, 500 a page, oldest first (the
        cyclic garbage collector paused: `bulk.gc_paused`)."""
        with gc_paused():
            return self._read_list(self._member)

    def snapshot_rows(self, most: int | None = None) -> list[MemberRow]:
        """`snapshot()` as rows (`member_row`): `snapshot_pages`' rows, a contact on two pages
        (the list moved meanwhile) once, as the later page has it."""
        return rows_of_pages(self.snapshot_pages(list, most))

    def snapshot_pages(
        self, convert: Callable[[list[MemberRow]], T], most: int | None = None
    ) -> list[T]:
        """`convert` of each page of the list's rows, converted on the thread that read it;
        with `most`, a list the first page counts larger (counts that lagged) raises
        `AudienceTooLargeError` before any other page is read."""
        with gc_paused():
            return self._list_pages(
                lambda page: convert([member_row(self._member(c)) for c in page.contacts]),
                most=most,
            )

    def members(self, emails: Sequence[str]) -> list[Member]:
        """`GET /contacts/{email}` per address, paced (absent, or not in the list: no member);
        the snapshot, filtered, when it takes fewer calls (`_snapshot_is_cheaper`)."""
        keys = lookup_keys(emails)
        if not keys:
            return []
        self.ensure_audience()
        if self._snapshot_is_cheaper(len(keys)):
            return pick(self.snapshot(), keys)
        return self._listed(self._api.parallel(self._read_contact, keys))

    def members_by_id(self, stable_ids: Sequence[str]) -> list[Member]:
        """`GET /contacts/{id}` per contact id, paced (absent, or not in the list: no member);
        the snapshot, filtered, when it takes fewer calls (`_snapshot_is_cheaper`)."""
        ids = list(dict.fromkeys(i for i in stable_ids if i and i.isdigit()))
        if not ids:
            return []
        self.ensure_audience()
        if self._snapshot_is_cheaper(len(ids)):
            return pick_ids(self.snapshot(), ids)
        return self._listed(self._api.parallel(lambda i: self._read_contact(i, "contact_id"), ids))

    def _listed(self, found: Sequence[ContactOut | None]) -> list[Member]:
        """The contacts read that are in the list, as members."""
        return [self._member(c) for c in found if c is not None and self._list_id in c.list_ids]

    def _snapshot_is_cheaper(self, lookups: int) -> bool:
        """Whether one list snapshot takes fewer calls than `lookups` single reads: always
        above `MEMBERS_LOOKUP_MAX`, never up to `MEMBERS_LOOKUP_FLOOR` (the list's size is not
        even asked), in between when the list has fewer pages."""
        return lookups > MEMBERS_LOOKUP_MAX or (
            lookups > MEMBERS_LOOKUP_FLOOR and lookups > self._snapshot_pages()
        )

    def _snapshot_pages(self) -> int:
        """How many calls the list snapshot takes now (one call to ask the list's size)."""
        path = f"/contacts/lists/{self._list_id}/contacts"
        page = ContactsPage.model_validate(self._api.call("GET", path, params={"limit": 1}))
        return -(-page.count // CONTACT_PAGE)

    def _read_contact(self, identifier: str, kind: str = "email_id") -> ContactOut | None:
        """The contact with this address (or id, `kind` "contact_id"), or None (none, or an
        identifier Brevo refuses)."""
        path = f"/contacts/{quote(identifier, safe='')}"
        try:
            answer = self._api.call("GET", path, params={"identifierType": kind})
        except ApiError as exc:
            if exc.status not in (400, 404):
                raise
            return None
        return ContactOut.model_validate(answer)

    def _read_list(self, convert: Callable[[ContactOut], T], most: int | None = None) -> list[T]:
        """Every contact of the list, converted on the thread that read its page (the work
        overlaps the paced reads); one met on two pages (the list moved meanwhile) once."""
        pages = self._list_pages(
            lambda page: [(c.id, convert(c)) for c in page.contacts], most=most
        )
        return list(dict(pair for page in pages for pair in page).values())

    def _list_pages(
        self,
        each: Callable[[ContactsPage], T],
        modified_since: str | None = None,
        most: int | None = None,
    ) -> list[T]:
        """`each` of every page of the list, in order, called on the thread that read the page
        (the first alone, for the count; the others concurrently within the client's pace), so
        that its work overlaps the reads still waiting for their turn. A first page counting
        more than `most` contacts raises `AudienceTooLargeError`."""
        first = self._list_page(0, modified_since)
        if most is not None and first.count > most:
            raise AudienceTooLargeError(NAME, first.count, most)
        offsets = list(range(CONTACT_PAGE, first.count, CONTACT_PAGE))
        rest = self._api.parallel(lambda o: each(self._list_page(o, modified_since)), offsets)
        return [each(first), *rest]

    def _list_page(self, offset: int, modified_since: str | None) -> ContactsPage:
        params: dict[str, Any] = {"limit": CONTACT_PAGE, "offset": offset, "sort": "asc"}
        if modified_since:
            params["modifiedSince"] = modified_since
        path = f"/contacts/lists/{self._list_id}/contacts"
        return self._api.call_model(ContactsPage, "GET", path, params=params)

    def _member(self, contact: ContactOut) -> Member:
        values = {
            "provider_id": str(contact.id),
            "email": contact.email,
            "status": status_of(contact, self._list_id),
            "last_changed": contact.modified_at,
            "stable_id": str(contact.id),
            **self._attributes.decode(contact.attributes),
        }
        return trusted(Member, values)  # each of its field's type: a snapshot makes 100,000

    # --- upsert -------------------------------------------------------------------------

    def upsert(
        self, contacts: Sequence[Contact], current: Mapping[str, Member] | None = None
    ) -> list[Outcome]:
        """Create new contacts in the list, update existing ones; blacklists stay."""
        codec = self._attributes
        current = current or {}
        outcomes: dict[str, Outcome] = {}
        creates: list[Contact] = []
        updates: list[tuple[Contact, Member]] = []
        for contact in contacts:
            problem = codec.problem(contact)
            member = current.get(contact.key)
            if problem:
                outcomes[contact.crm_id] = _refused(
                    Action.UPSERT, contact.email, contact.crm_id, "invalid_parameter", problem
                )
            elif member is None:
                creates.append(contact)
            elif self._differs(contact, member):
                updates.append((contact, member))
            else:
                outcomes[contact.crm_id] = Outcome(
                    action=Action.UPSERT,
                    outcome=Result.UNCHANGED,
                    email=contact.email,
                    crm_id=contact.crm_id,
                    provider_id=member.provider_id,
                    status=member.status,
                )
        if len(creates) <= self._direct_max:
            outcomes.update(dict(self._api.parallel(self._create_one, creates)))
        else:
            outcomes.update(self._import(creates))
        entries = [
            ({"id": int(m.provider_id), "attributes": codec.encode(c)}, c.email, c.crm_id, m)
            for c, m in updates
        ]
        outcomes.update(self._batch_update(Action.UPSERT, Result.UPDATED, entries))
        return [outcomes[c.crm_id] for c in contacts]

    def _differs(self, contact: Contact, member: Member) -> bool:
        held = {
            "first_name": member.first_name,
            "last_name": member.last_name,
            "salutation": member.salutation,
            "tags": member.tags,
        }
        return self._attributes.differs(contact, held)

    def _create_one(self, contact: Contact) -> tuple[str, Outcome]:
        body = {
            "email": contact.email,
            "attributes": self._attributes.encode(contact),
            "listIds": [self._list_id],
            "updateEnabled": False,
        }
        try:
            response = self._api.request("POST", "/contacts", json=body)
        except ApiError as exc:
            if exc.code == "duplicate_parameter":
                return contact.crm_id, self._settle_existing(contact)
            return contact.crm_id, _refused(
                Action.UPSERT, contact.email, contact.crm_id, exc.code, exc.detail
            )
        created = str(response.json()["id"])  # a Brevo contact's id is its stable id too
        return contact.crm_id, Outcome(
            action=Action.UPSERT,
            outcome=Result.CREATED,
            email=contact.email,
            crm_id=contact.crm_id,
            provider_id=created,
            status=MemberStatus.SUBSCRIBED,
            stable_id=created,
        )

    def _settle_existing(self, contact: Contact, missing: tuple[str, str] | None = None) -> Outcome:
        """A create met an existing contact: refuse it, or write it and link it to the list.

        `missing`: (code, message) to refuse with when the contact does not exist after all.
        """
        path = f"/contacts/{quote(contact.email, safe='')}"
        try:
            found = ContactOut.model_validate(self._api.call("GET", path))
        except ApiError as exc:
            if exc.status not in (400, 404):
                raise
            code, message = missing or (exc.code, exc.detail)
            return _refused(Action.UPSERT, contact.email, contact.crm_id, code, message)
        refusal = self._refusal(contact, found)
        if refusal is not None:
            return refusal
        body: dict[str, Any] = {}
        if self._attributes.differs(contact, self._attributes.decode(found.attributes)):
            body["attributes"] = self._attributes.encode(contact)
        if self._list_id not in found.list_ids:
            body["listIds"] = [self._list_id]
        if body:
            try:
                self._api.request("PUT", f"/contacts/{found.id}", json=body)
            except ApiError as exc:
                if exc.status not in (400, 404):
                    raise
                return _refused(Action.UPSERT, contact.email, contact.crm_id, exc.code, exc.detail)
        return Outcome(
            action=Action.UPSERT,
            outcome=Result.UPDATED if body else Result.UNCHANGED,
            email=contact.email,
            crm_id=contact.crm_id,
            provider_id=str(found.id),
            status=MemberStatus.SUBSCRIBED,
            stable_id=str(found.id),
        )

    def _refusal(self, contact: Contact, found: ContactOut) -> Outcome | None:
        """The refusal for a contact that must get neither writes nor list membership."""
        if found.email_blacklisted:
            return _refused(
                Action.UPSERT,
                contact.email,
                contact.crm_id,
                "blacklisted",
                "blacklisted in Brevo: neither written nor added to the list",
                status=MemberStatus.BLACKLISTED,
            )
        if self._list_id in found.list_unsubscribed:
            return _refused(
                Action.UPSERT,
                contact.email,
                contact.crm_id,
                "list_unsubscribed",
                "unsubscribed from this list in Brevo: neither written nor added to it again",
                status=MemberStatus.UNSUBSCRIBED,
            )
        return None

    def _import(self, contacts: Sequence[Contact]) -> dict[str, Outcome]:
        now = datetime.now(UTC)  # Brevo stamps milliseconds: compare at that precision
        started = now.replace(microsecond=now.microsecond // 1000 * 1000)
        answers = [
            self._api.request("POST", "/contacts/import", json=body)
            for body in self._import_bodies(contacts)
        ]
        self._await([int(answer.json()["processId"]) for answer in answers])
        wanted: dict[str, list[Contact]] = {}
        for contact in contacts:
            wanted.setdefault(contact.key, []).append(contact)
        settled: dict[str, _Settled] = {}
        since = read_back_since(answers[0], started)
        for page in self._list_pages(lambda p: self._settle_page(p, wanted, started), since):
            settled.update(page)
        outcomes = {i: s.outcome for i, s in settled.items() if s.outcome is not None}
        refused = [s for s in settled.values() if s.outcome and s.outcome.outcome is Result.REFUSED]
        stale = [s.stale for s in settled.values() if s.stale is not None]
        missing = [c for c in contacts if c.crm_id not in settled]
        self._unlink(list(dict.fromkeys(s.contact_id for s in refused)))
        outcomes.update(self._batch_update(Action.UPSERT, Result.UPDATED, stale))
        rejected = (
            "import_rejected",
            "the import did not add this contact to the list (invalid or duplicate)",
        )
        settled_missing = self._api.parallel(lambda c: self._settle_existing(c, rejected), missing)
        outcomes.update({c.crm_id: o for c, o in zip(missing, settled_missing, strict=True)})
        return outcomes

    def _settle_page(
        self, page: ContactsPage, wanted: Mapping[str, list[Contact]], started: datetime
    ) -> dict[str, _Settled]:
        """What one page of an import's read-back says of the imported contacts on it (by CRM
        id): refused (to unlink), attributes to bring up to date, or created or updated."""
        codec, list_id = self._attributes, self._list_id
        settled: dict[str, _Settled] = {}
        for found in page.contacts:
            for contact in wanted.get(found.email.lower(), ()):
                refusal = self._refusal(contact, found)
                if refusal is not None:
                    settled[contact.crm_id] = _Settled(found.id, refusal)
                elif codec.differs(contact, codec.decode(found.attributes)):
                    entry = {"id": found.id, "attributes": codec.encode(contact)}
                    stale = (entry, contact.email, contact.crm_id, self._member(found))
                    settled[contact.crm_id] = _Settled(found.id, None, stale)
                else:
                    created = found.created_at is not None and found.created_at >= started
                    values = {
                        "action": Action.UPSERT,
                        "outcome": Result.CREATED if created else Result.UPDATED,
                        "email": contact.email,
                        "crm_id": contact.crm_id,
                        "provider_id": str(found.id),
                        "status": status_of(found, list_id),
                        "stable_id": str(found.id),
                    }  # each of its field's type: an import settles 40,000 at a time
                    settled[contact.crm_id] = _Settled(found.id, trusted(Outcome, values))
        return settled

    def _unlink(self, ids: Sequence[int]) -> None:
        """Take contacts an import linked against the rules out of the list again."""
        path = f"/contacts/lists/{self._list_id}/contacts/remove"
        for i in range(0, len(ids), LIST_MEMBERS_MAX):
            answer = self._api.call("POST", path, json={"ids": list(ids[i : i + LIST_MEMBERS_MAX])})
            failed = MembershipAnswer.model_validate(answer).contacts.failure
            if failed:
                log.warning("brevo: %d contacts were not in the list to unlink", len(failed))
        if ids:
            log.info("brevo: unlinked %d blacklisted or list-unsubscribed contacts", len(ids))

    def _import_bodies(self, contacts: Sequence[Contact]) -> list[dict[str, Any]]:
        envelope = {"listIds": [self._list_id], "updateExistingContacts": False}
        bodies: list[dict[str, Any]] = []
        rows: list[dict[str, Any]] = []
        size = _IMPORT_ENVELOPE
        for contact in contacts:
            row = {"email": contact.email, "attributes": self._attributes.encode(contact)}
            row_size = len(orjson.dumps(row)) + 1  # sent as orjson encodes it, a comma apart
            if rows and size + row_size > IMPORT_MAX_BYTES:
                bodies.append({"jsonBody": rows, **envelope})
                rows, size = [], _IMPORT_ENVELOPE
            rows.append(row)
            size += row_size
        if rows:
            bodies.append({"jsonBody": rows, **envelope})
        return bodies

    def _await(self, processes: list[int]) -> None:
        waiting = set(processes)

        def all_completed() -> bool:
            for process_id in sorted(waiting):
                if self._process_polls is not None and not self._process_polls.allow():
                    return False  # the hourly budget is spent for now: the next round

                process = Process.model_validate(self._api.call("GET", f"/processes/{process_id}"))
                if process.status in ("failed", "cancelled"):
                    raise ProviderError(
                        NAME, f"import process {process_id} {process.status}: {process.error}"
                    )
                if process.status == "completed":
                    waiting.discard(process_id)
            return not waiting

        if not self._poll.until(all_completed):
            raise ProviderError(
                NAME, f"import processes {sorted(waiting)} not done within {self._poll.deadline} s"
            )

    # --- batch updates ------------------------------------------------------------------

    def _batch_update(
        self,
        action: Action,
        done: Result,
        entries: Sequence[tuple[dict[str, Any], str, str | None, Member | None]],
    ) -> dict[str, Outcome]:
        """`POST /contacts/batch` by 100; a refused batch is replayed one contact at a time."""
        chunks = [
            entries[i : i + BATCH_UPDATE_MAX] for i in range(0, len(entries), BATCH_UPDATE_MAX)
        ]
        outcomes: dict[str, Outcome] = {}
        for answer in self._api.parallel(
            lambda chunk: self._send_batch(action, done, chunk), chunks
        ):
            outcomes.update(answer)
        return outcomes

    def _send_batch(
        self,
        action: Action,
        done: Result,
        chunk: Sequence[tuple[dict[str, Any], str, str | None, Member | None]],
    ) -> dict[str, Outcome]:
        try:
            self._api.request("POST", "/contacts/batch", json={"contacts": [e for e, *_ in chunk]})
            failures: dict[int, ApiError] = {}
        except ApiError as exc:
            if exc.status != 400:
                raise
            failures = dict(self._api.parallel(self._replay, list(enumerate(chunk))))
            failures = {i: error for i, error in failures.items() if error is not None}
        outcomes = {}
        for index, (entry, email, crm_id, member) in enumerate(chunk):
            key = crm_id or email
            new_email = (entry.get("attributes") or {}).get("EMAIL")
            if index in failures:
                outcomes[key] = _refused(
                    action, new_email or email, crm_id, failures[index].code, failures[index].detail
                )
                continue
            status = (
                MemberStatus.BLACKLISTED
                if entry.get("emailBlacklisted")
                else (member.status if member else None)
            )
            outcomes[key] = Outcome(
                action=action,
                outcome=done,
                email=new_email or email,
                crm_id=crm_id,
                provider_id=str(entry["id"])
                if "id" in entry
                else (member.provider_id if member else None),
                status=status,
            )
        return outcomes

    def _replay(
        self, item: tuple[int, tuple[dict[str, Any], str, str | None, Member | None]]
    ) -> tuple[int, ApiError | None]:
        index, (entry, email, _, _) = item
        body = {k: v for k, v in entry.items() if k not in ("id", "email")}
        identifier = entry.get("id") or quote(email, safe="")
        try:
            self._api.request("PUT", f"/contacts/{identifier}", json=body)
        except ApiError as exc:
            if exc.status not in (400, 404):
                raise
            return index, exc
        return index, None

    # --- email, unsubscribe, remove -----------------------------------------------------

    def write_members(self, writes: MemberWrites) -> list[Outcome]:
        """One call per kind of write (each already fills its batches)."""
        return write_in_turn(self, writes)

    def change_emails(self, changes: Sequence[EmailChange]) -> list[Outcome]:
        """Rename contacts through the `EMAIL` attribute, by id when known."""
        entries = [
            (
                {**_identify(c.provider_id, c.old_email), "attributes": {"EMAIL": c.new_email}},
                c.old_email,
                c.crm_id,
                None,
            )
            for c in changes
        ]
        outcomes = self._batch_update(Action.CHANGE_EMAIL, Result.UPDATED, entries)
        return [outcomes[c.crm_id] for c in changes]

    def unsubscribe(self, refs: Sequence[ContactRef]) -> list[Outcome]:
        """Blacklist contacts for email campaigns (Brevo's opt-out)."""
        entries = [
            (
                {**_identify(r.provider_id, r.email), "emailBlacklisted": True},
                r.email,
                r.crm_id,
                None,
            )
            for r in refs
        ]
        outcomes = self._batch_update(Action.UNSUBSCRIBE, Result.UNSUBSCRIBED, entries)
        return [outcomes[r.crm_id or r.email] for r in refs]

    def remove(self, refs: Sequence[ContactRef]) -> list[Outcome]:
        """Unlink contacts from the list, 150 a call; contacts not in it are `unchanged`."""
        path = f"/contacts/lists/{self._list_id}/contacts/remove"
        chunks = [
            list(refs[i : i + LIST_MEMBERS_MAX]) for i in range(0, len(refs), LIST_MEMBERS_MAX)
        ]
        removed: set[str] = set()
        for chunk in chunks:
            answer = self._api.call("POST", path, json={"emails": [r.email for r in chunk]})
            removed |= {
                str(e).lower() for e in MembershipAnswer.model_validate(answer).contacts.success
            }
        return [
            Outcome(
                action=Action.REMOVE,
                outcome=Result.REMOVED if r.email.lower() in removed else Result.UNCHANGED,
                email=r.email,
                crm_id=r.crm_id,
                provider_id=r.provider_id,
                message=None if r.email.lower() in removed else "not in the list",
            )
            for r in refs
        ]

    # --- why contacts are blacklisted ---------------------------------------------------

    def blocklist_reasons(self, provider_ids: Sequence[str]) -> dict[str, BlocklistReason]:
        """Why Brevo blacklisted each contact (by contact id), from its statistics of the last
        90 days: one `GET /contacts/{id}` each, concurrently within the client's limits.
        Contacts that do not exist are left out; `unknown` when no event explains it."""
        ids = list(dict.fromkeys(provider_ids))
        reasons: dict[str, BlocklistReason] = {}
        for start in range(0, len(ids), REASONS_LOG_EVERY):
            chunk = ids[start : start + REASONS_LOG_EVERY]
            found = self._api.parallel(self._blocklist_reason, chunk)
            reasons.update({i: r for i, r in zip(chunk, found, strict=True) if r is not None})
            if len(ids) > REASONS_LOG_EVERY:
                done = start + len(chunk)
                log.info("brevo: read why %d/%d contacts are blocklisted", done, len(ids))
        return reasons

    def _blocklist_reason(self, provider_id: str) -> BlocklistReason | None:
        """The contact's reason, or None when it does not exist."""
        path = f"/contacts/{quote(provider_id, safe='')}"
        try:
            answer = self._api.call("GET", path, params={"identifierType": "contact_id"})
        except ApiError as exc:
            if exc.status != 404:
                raise
            return None
        return ContactDetails.model_validate(answer).statistics.blocklist_reason()

    # --- webhook ------------------------------------------------------------------------

    def register_webhook(
        self, url: str, secret: str, activities: frozenset[str] = frozenset()
    ) -> str:
        """Marketing webhook at `url` (unsubscribes, list additions, deletions, hard bounces,
        spam complaints: delivered one by one, at once) that authenticates with a bearer token,
        and, for the campaign events of the `activities` turned on, a second, batched one (a
        campaign's events come in arrays of up to 500) at `url?stream=engagement`, removed
        when none is on. Each is registered once and updated when its events or its token (a
        rotated secret) differ; returns the first one's id."""
        auth = {"type": "bearer", "token": secret}
        answer = self._api.call("GET", "/webhooks", params={"type": "marketing"})
        existing = {hook.url: hook for hook in Webhooks.model_validate(answer).webhooks}
        hook_id = self._webhook(existing.get(url), url, _WEBHOOK_EVENTS, auth, batched=False)
        stream = f"{url}{'&' if '?' in url else '?'}stream=engagement"
        engagement = [e for a, e in _ACTIVITY_EVENTS.items() if a in activities]
        if engagement:
            self._webhook(existing.get(stream), stream, engagement, auth, batched=True)
        elif stream in existing:
            self._api.call("DELETE", f"/webhooks/{existing[stream].id}")
        return hook_id

    def _webhook(
        self,
        hook: Webhook | None,
        url: str,
        events: list[str],
        auth: dict[str, str],
        *,
        batched: bool,
    ) -> str:
        """The id of the marketing webhook at `url`, created or updated to these settings."""
        wanted = {"events": events, "auth": auth, "batched": batched}
        if hook is None:
            body = {
                "url": url,
                "description": f"newsletter_pipelines: {self._audience_name}",
                "type": "marketing",
                **wanted,
            }
            return str(self._api.call("POST", "/webhooks", json=body)["id"])
        if (sorted(hook.events), hook.auth, hook.batched) != (sorted(events), auth, batched):
            self._api.call("PUT", f"/webhooks/{hook.id}", json=wanted)
        return str(hook.id)

    def close(self) -> None:
        """Close connections."""
        self._api.close()


def read_back_since(answer: httpx.Response, started: datetime) -> str:
    """`modifiedSince` for reading back what an import changed: `READ_BACK_MARGIN` before
    Brevo's own time when it answered the import (its `Date`), so earlier imports (a push's
    earlier chunks) are not read again; without that header, a minute before ours (clocks
    may differ)."""
    since = started - timedelta(minutes=1)
    with suppress(KeyError, TypeError, ValueError):
        said = parsedate_to_datetime(answer.headers["date"])
        since = (said if said.tzinfo else said.replace(tzinfo=UTC)) - READ_BACK_MARGIN
    return since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _identify(provider_id: str | None, email: str) -> dict[str, Any]:
    return {"id": int(provider_id)} if provider_id else {"email": email}


def _refused(
    action: Action,
    email: str,
    crm_id: str | None,
    code: str,
    message: str,
    *,
    status: MemberStatus | None = None,
) -> Outcome:
    return Outcome(
        action=action,
        outcome=Result.REFUSED,
        email=email,
        crm_id=crm_id,
        status=status,
        code=code,
        message=message,
    )
