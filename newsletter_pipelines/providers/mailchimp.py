"""Mailchimp Marketing API 3.0 client for one audience.

Writes can never re-subscribe anyone:
- new contacts go through batch subscribe (`POST /lists/{id}`, ≤ 500 a call) with
  `update_existing: false`, so an existing member comes back as an error, untouched;
- existing members are updated with `PATCH` bodies that carry no `status` (names, salutation,
  email) and tag changes (`POST …/members/{hash}/tags`), one by one or through `/batches`,
  whichever is estimated sooner (`mailchimp_batches.Route`; `direct_max` fixes the choice);
- only `unsubscribe` sets a status (`unsubscribed`); `remove` archives, never deletes.
Refusals (`Member In Compliance State`, `Forgotten Email Not Subscribed`, `Invalid Resource`, …)
are per-contact `refused` outcomes and are never retried.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, quote, urlencode

import httpx
import orjson
from pydantic import BaseModel

from newsletter_pipelines.bulk import gc_paused
from newsletter_pipelines.providers.base import (
    MEMBER_ROW_FIELDS,
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
)
from newsletter_pipelines.providers.errors import (
    ApiError,
    AudienceTooLargeError,
    ConfigurationError,
)
from newsletter_pipelines.providers.http import ApiClient, PollPolicy, RetryPolicy
from newsletter_pipelines.providers.mailchimp_batches import Operation, OperationRunner, OpResult
from newsletter_pipelines.providers.mailchimp_models import (
    BatchSubscribeAnswer,
    BatchSubscribeError,
    CampaignRecipient,
    ListsPage,
    MemberOut,
    MembersPage,
    MergeField,
    MergeFieldsPage,
    SentToPage,
    WebhooksPage,
)
from newsletter_pipelines.providers.trusted import Unusual, moment, trusted

log = logging.getLogger("newsletter_pipelines.providers")
T = TypeVar("T")

NAME = "mailchimp"
ACCOUNT_CONNECTIONS = 10
"""Simultaneous connections Mailchimp allows one account, across all its clients."""
BATCH_SUBSCRIBE_MAX = 500
PAGE_SIZE = 1000
MEMBERS_LOOKUP_MAX = 2000
"""Most addresses `members` reads one by one (`GET …/members/{hash}`, 5 at a time by default);
above, the snapshot (1000 members a page) is cheaper and is filtered instead."""
MEMBERS_LOOKUP_FLOOR = 10
"""Up to this many ids `members_by_id` reads one by one without asking the audience's size."""
_UNSUBSCRIBE = {"status": "unsubscribed"}
_STATUSES = MemberStatus._value2member_map_
_NO_FIELDS: dict[str, Any] = {}  # read, never written
_NO_TAGS: list[Any] = []
_MEMBER_FIELD_NAMES = (
    "id",
    "contact_id",
    "email_address",
    "status",
    "merge_fields",
    "tags",
    "last_changed",
    "unsubscribe_reason",
)
_MEMBER_FIELDS = ",".join(_MEMBER_FIELD_NAMES)
_LIST_COUNTS = "lists.stats.member_count,lists.stats.unsubscribe_count,lists.stats.cleaned_count"
_SNAPSHOT_FIELDS = ",".join(["total_items", *(f"members.{f}" for f in _MEMBER_FIELD_NAMES)])
_SENT_TO_FIELDS = "total_items,sent_to.email_address,sent_to.status"
_CHOICE_TYPES = ("dropdown", "radio")
_WEBHOOK_EVENTS = {
    "subscribe": True,
    "unsubscribe": True,
    "profile": True,
    "cleaned": True,
    "upemail": True,
    "campaign": False,
}
_WEBHOOK_SOURCES = {"user": True, "admin": True, "api": False}
ADMIN_UNSUBSCRIBE_REASON = "N/A (Unsubscribed by an admin)"
"""Mailchimp's `unsubscribe_reason` of a member unsubscribed by an admin or the API (the
sync's own unsubscribes); a person who unsubscribes leaves another one."""


def unsubscribed_by(status: str, reason: str | None) -> Literal["person", "admin"] | None:
    """Who unsubscribed an `unsubscribed` member, from its `unsubscribe_reason`: an admin (or
    the API) where Mailchimp says so, else the person; None where there is no reason to read
    (another status, or none given)."""
    if status != "unsubscribed" or not reason:
        return None
    return "admin" if reason == ADMIN_UNSUBSCRIBE_REASON else "person"


def _without_secret(url: str) -> str:
    """A webhook URL without its `secret` query parameter."""
    base, _, query = url.partition("?")
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "secret"]
    return f"{base}?{urlencode(kept)}" if kept else base


class AudienceDefaults(BaseModel):
    """What `POST /lists` needs when the audience must be created."""

    company: str
    address1: str
    city: str
    country: str
    zip: str = ""
    state: str = ""
    permission_reminder: str
    from_name: str
    from_email: str
    subject: str = ""
    language: str = "en"


def subscriber_hash(email: str) -> str:
    """Mailchimp's member id: MD5 of the lower-cased address."""
    return hashlib.md5(email.lower().encode()).hexdigest()


def base_url_for(api_key: str) -> str:
    """`https://<dc>.api.mailchimp.com/3.0` from the key's `-<dc>` suffix."""
    _, dash, dc = api_key.rpartition("-")
    if not dash or not dc.isalnum():
        raise ConfigurationError(NAME, "the API key must end with its data center, like -us6")
    return f"https://{dc}.api.mailchimp.com/3.0"


def parse_error(response: httpx.Response) -> tuple[str, str]:
    """(title, detail with field errors) of a Mailchimp problem document."""
    body = response.json()
    fields = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in body.get("errors") or [])
    detail = str(body.get("detail", ""))
    return str(
        body.get("title", response.reason_phrase)
    ), f"{detail} ({fields})" if fields else detail


def refusal_code(message: str, fallback: str) -> str:
    """The Mailchimp title behind a batch-subscribe error text."""
    lowered = message.lower()
    if "compliance state" in lowered:
        return "Member In Compliance State"
    if "permanently deleted" in lowered:
        return "Forgotten Email Not Subscribed"
    if "fake or invalid" in lowered or "merge fields were invalid" in lowered:
        return "Invalid Resource"
    return fallback


def member_of(m: MemberOut, salutation_tag: str) -> Member:
    """The `Member` a validated member answer describes."""
    merge = m.merge_fields
    return Member(
        provider_id=m.id,
        email=m.email_address,
        status=MemberStatus(m.status),
        first_name=str(merge.get("FNAME") or ""),
        last_name=str(merge.get("LNAME") or ""),
        salutation=str(merge.get(salutation_tag) or ""),
        tags=frozenset(t.name for t in m.tags),
        last_changed=m.last_changed,
        stable_id=m.contact_id,
        unsubscribed_by=unsubscribed_by(m.status, m.unsubscribe_reason),
    )


def read_members_rows(content: bytes, salutation_tag: str) -> tuple[int, list[MemberRow]]:
    """(`total_items`, the members' rows) of a members page: read from orjson's dicts when
    every value has the type Mailchimp documents (a page of 1,000 in a fifth of the validated
    time); any other page is validated by `MembersPage`, which converts it as it always did or
    raises `ValidationError` naming the field (and an unknown status raises `ValueError`)."""
    try:
        page = orjson.loads(content)
        total, found = page["total_items"], page["members"]
        if type(total) is int and type(found) is list:
            return total, [_row_from(m, salutation_tag) for m in found]
    except (Unusual, ValueError, LookupError, TypeError, AttributeError):
        pass
    checked = MembersPage.model_validate_json(content)
    return checked.total_items, [member_row(member_of(m, salutation_tag)) for m in checked.members]


def _row_from(m: dict[str, Any], salutation_tag: str) -> MemberRow:
    """`member_row(member_of(…))` of a member's decoded JSON holding what `MemberOut`
    documents, unvalidated; `Unusual` (or a lookup or type error) for anything else."""
    ident, email, status = m["id"], m["email_address"], m["status"]
    contact_id, reason = m.get("contact_id"), m.get("unsubscribe_reason")
    merge, tags = m.get("merge_fields", _NO_FIELDS), m.get("tags", _NO_TAGS)
    changed = m.get("last_changed")
    if (
        type(ident) is not str
        or type(email) is not str
        or type(merge) is not dict
        or type(tags) is not list
        or not (contact_id is None or type(contact_id) is str)
        or not (reason is None or type(reason) is str)
        or not (changed is None or type(changed) is str)
    ):
        raise Unusual
    names = []
    for tag in tags:
        name = tag["name"]
        if type(name) is not str or type(tag.get("id", 0)) is not int:
            raise Unusual
        names.append(name)
    return (
        ident,
        email,
        _STATUSES[status].value,
        str(merge.get(salutation_tag) or ""),
        str(merge.get("FNAME") or ""),
        str(merge.get("LNAME") or ""),
        tuple(names) if len(names) < 2 else tuple(sorted(set(names))),
        None if changed is None else moment(changed),
        contact_id,
        unsubscribed_by(status, reason),
    )


def _member(row: MemberRow) -> Member:
    """The `Member` of a row read from an answer (its values already checked)."""
    values = dict(zip(MEMBER_ROW_FIELDS, row, strict=True))
    values["status"] = MemberStatus(values["status"])
    values["tags"] = frozenset(values["tags"])
    return trusted(Member, values)


NewMember = tuple[str, str, str, str | None]
"""A new member of a batch subscribe answer: (email_address, id, status, contact_id)."""


def read_subscribe_answer(content: bytes) -> tuple[list[NewMember], list[BatchSubscribeError]]:
    """The new members and the errors of a batch subscribe answer: read from orjson's dicts
    when the new members hold what `Subscribed` documents, else validated by
    `BatchSubscribeAnswer` (which raises `ValidationError` naming the field of a malformed
    answer)."""
    try:
        answer = orjson.loads(content)
        created, errors = answer.get("new_members", []), answer.get("errors", [])
        if type(created) is list and type(errors) is list:
            return [_new_member(m) for m in created], [
                BatchSubscribeError.model_validate(e) for e in errors
            ]
    except (Unusual, ValueError, LookupError, TypeError, AttributeError):
        pass
    checked = BatchSubscribeAnswer.model_validate_json(content)
    return [
        (m.email_address, m.id, m.status, m.contact_id) for m in checked.new_members
    ], checked.errors


def _new_member(m: dict[str, Any]) -> NewMember:
    """A new member's decoded JSON holding what `Subscribed` documents, unvalidated;
    `Unusual` (or a lookup or type error) for anything else."""
    new = m["email_address"], m["id"], m["status"], m.get("contact_id")
    if (
        type(new[0]) is not str
        or type(new[1]) is not str
        or type(new[2]) is not str
        or not (new[3] is None or type(new[3]) is str)
    ):
        raise Unusual
    return new


class MailchimpClient:
    """The `Provider` for one Mailchimp audience."""

    name = NAME

    def __init__(
        self,
        api_key: str,
        audience_name: str,
        *,
        base_url: str | None = None,
        max_connections: int = 5,
        salutation_tag: str = "SALUTATION",
        audience_defaults: AudienceDefaults | None = None,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
        direct_max: int | None = None,
        transport: httpx.BaseTransport | None = None,
        account_slot: Callable[[], AbstractContextManager[object]] | None = None,
    ) -> None:
        url = base_url or base_url_for(api_key)
        token = "Basic " + base64.b64encode(f"newsletter-pipelines:{api_key}".encode()).decode()
        self._api = ApiClient(
            provider=NAME,
            base_url=url,
            auth_headers={"authorization": token},
            secrets=[api_key],
            parse_error=parse_error,
            max_connections=max_connections,
            retry=retry,
            transport=transport,
            account_slot=account_slot,
        )
        self._ops = OperationRunner(self._api, poll=poll or PollPolicy(), direct_max=direct_max)
        self._audience_name = audience_name
        self._salutation_tag = salutation_tag.upper()
        self._defaults = audience_defaults
        self._audience: Audience | None = None
        self._fields: dict[str, MergeField] = {}
        self._may_create = False
        self._lock = threading.Lock()
        self._list_lock = threading.Lock()
        self._found_id: str | None = None
        self._counted = 0  # the found list's members as its counts had them
        # `ensure_audience` started once a snapshot's pages are read (`_check_soon`)
        self._checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailchimp-check")
        self._check_started = False

    # --- setup --------------------------------------------------------------------------

    def check_credentials(self) -> None:
        """`GET /ping`; a refused key raises `AuthenticationError`."""
        self._api.request("GET", "/ping")

    def ensure_audience(self) -> Audience:
        """Find the audience by name (create it if allowed) and check its merge fields."""
        with self._lock:
            if self._audience is None:
                list_id = self._found_list()
                self._fields = self._ensure_fields(list_id)
                self._audience = Audience(provider=NAME, id=list_id, name=self._audience_name)
            return self._audience

    def found_audience(self) -> Audience:
        """The audience found by name (or created), its merge fields not checked: reading
        members needs the list id only (the check, `ensure_audience`, comes before writes)."""
        return Audience(provider=NAME, id=self._found_list(), name=self._audience_name)

    def member_count(self) -> int:
        """Subscribed, unsubscribed and cleaned members by the list's counts (0 if created)."""
        self._found_list()
        return self._counted

    def _found_list(self) -> str:
        """The audience's list id, found by name (or created) once."""
        with self._list_lock:
            if self._found_id is None:
                self._found_id = self._find_list() or self._create_list()
            return self._found_id

    def _find_list(self) -> str | None:
        offset, found = 0, []
        while True:
            page = ListsPage.model_validate(
                self._api.call(
                    "GET",
                    "/lists",
                    params={
                        "count": PAGE_SIZE,
                        "offset": offset,
                        "fields": f"lists.id,lists.name,{_LIST_COUNTS},total_items,constraints",
                    },
                )
            )
            found += [lst for lst in page.lists if lst.name == self._audience_name]
            self._may_create = page.constraints.may_create
            offset += PAGE_SIZE
            if offset >= page.total_items:
                break
        if not found:
            return None
        if len(found) > 1:
            log.warning(
                "mailchimp: %d audiences named %r, using %s",
                len(found),
                self._audience_name,
                found[0].id,
            )
        stats = found[0].stats
        self._counted = stats.member_count + stats.unsubscribe_count + stats.cleaned_count
        return found[0].id

    def _create_list(self) -> str:
        if self._defaults is None:
            raise ConfigurationError(
                NAME,
                f"audience {self._audience_name!r} does not exist; create it in Mailchimp or "
                "configure the audience defaults (contact address, sender) to let the sync do it",
            )
        if not self._may_create:
            raise ConfigurationError(
                NAME, f"audience {self._audience_name!r} does not exist and the plan allows no more"
            )
        body = audience_body(self._audience_name, self._defaults)
        created = self._api.call("POST", "/lists", json=body)
        log.info("mailchimp: created audience %r (%s)", self._audience_name, created["id"])
        return str(created["id"])

    def _ensure_fields(self, list_id: str) -> dict[str, MergeField]:
        page = MergeFieldsPage.model_validate(
            self._api.call("GET", f"/lists/{list_id}/merge-fields", params={"count": PAGE_SIZE})
        )
        fields = {f.tag: f for f in page.merge_fields}
        wanted = {"FNAME": "First Name", "LNAME": "Last Name", self._salutation_tag: "Salutation"}
        for tag, name in wanted.items():
            if tag not in fields:
                body = {
                    "tag": tag,
                    "name": name,
                    "type": "text",
                    "required": False,
                    "public": False,
                }
                created = self._api.call("POST", f"/lists/{list_id}/merge-fields", json=body)
                fields[tag] = MergeField.model_validate(created)
                log.info("mailchimp: created merge field %s on %s", tag, list_id)
        for tag in ("FNAME", "LNAME"):
            if fields[tag].type != "text":
                raise ConfigurationError(
                    NAME, f"merge field {tag} must be text, is {fields[tag].type}"
                )
        if fields[self._salutation_tag].type not in ("text", *_CHOICE_TYPES):
            raise ConfigurationError(
                NAME,
                f"merge field {self._salutation_tag} must be text, dropdown or radio, "
                f"is {fields[self._salutation_tag].type}",
            )
        unfilled = [
            f.tag
            for f in fields.values()
            if f.required and not f.default_value and f.tag not in wanted
        ]
        if unfilled:
            raise ConfigurationError(
                NAME,
                f"audience requires merge fields the sync does not fill: {', '.join(unfilled)}",
            )
        return fields

    @property
    def _list_id(self) -> str:
        return self.ensure_audience().id

    # --- snapshot -----------------------------------------------------------------------

    def snapshot(self) -> list[Member]:
        """Every member (all statuses): `snapshot_rows` as `Member`s."""
        with gc_paused():
            return [_member(row) for row in self.snapshot_rows()]

    def snapshot_rows(self, most: int | None = None) -> list[MemberRow]:
        """Every member's row (all statuses): `snapshot_pages`' rows, a member on two pages
        (the audience changed while paging) once, as the later page has it."""
        return rows_of_pages(self.snapshot_pages(list, most))

    def snapshot_pages(
        self, convert: Callable[[list[MemberRow]], T], most: int | None = None
    ) -> list[T]:
        """`convert` of each page of `GET /lists/{id}/members`, 1000 members a page, all
        statuses (the cyclic garbage collector paused: `bulk.gc_paused`).

        Each connection's thread fetches a page's body, hands its reading and `convert` to
        the client's one reading thread, and fetches its next page at once: reading on the
        connection's own thread held each connection idle for it (a sync run's 100,000-member
        snapshot done 2.80-2.91 s -> 2.67-2.69 s into the run; a million members' snapshot
        step 28.4 -> 24.1 s).

        The pages the list's subscribed, unsubscribed and cleaned counts (read when it was
        found) say it fills are read together with the first, which tells the whole count:
        the pages past those are read then (counts that lag cost a round trip, or an empty
        page). The merge fields' check (`ensure_audience`), which would take a connection from
        the pages (a round trip more in most snapshots), starts once they are read, on a
        thread of the client: it is done by the first write (which waits for it, or fails
        as it failed). With `most`, a total above it (counts that lagged) raises
        `AudienceTooLargeError` once those pages are read."""
        with gc_paused(), ThreadPoolExecutor(1, thread_name_prefix="mailchimp-pages") as reader:

            def fetched(offset: int) -> Future[tuple[int, T]]:
                body = self._page_body(offset)
                return reader.submit(self._converted_page, body, convert)

            counted = range(0, max(self.member_count(), 1), PAGE_SIZE)
            first = self._api.parallel(fetched, list(counted))
            total = first[0].result()[0]
            if most is not None and total > most:
                raise AudienceTooLargeError(NAME, total, most)
            offsets = list(range(PAGE_SIZE * len(first), total, PAGE_SIZE))
            rest = self._api.parallel(fetched, offsets)
            pages = [page.result()[1] for page in (*first, *rest)]
            self._check_soon()
            # its times, made among the pages' objects, would keep their memory from the system
            # (Python frees an arena only when all of it is free): ~0.5 GiB of a million members
            moment.cache_clear()
            return pages

    def _converted_page(
        self, body: bytes, convert: Callable[[list[MemberRow]], T]
    ) -> tuple[int, T]:
        """(`total_items`, `convert` of the members' rows) of a members page's body."""
        total, rows = read_members_rows(body, self._salutation_tag)
        return total, convert(rows)

    def _check_soon(self) -> None:
        """Start `ensure_audience` on the client's checking thread, once. A failure there is
        not kept: the next `ensure_audience` (before any write) checks again and raises."""
        with self._list_lock:
            if self._audience is None and not self._check_started:
                self._check_started = True
                self._checker.submit(self.ensure_audience)

    def members(self, emails: Sequence[str]) -> list[Member]:
        """`GET …/members/{hash}` per address, concurrently (404: no member); the snapshot,
        filtered, for more than `MEMBERS_LOOKUP_MAX` addresses."""
        keys = lookup_keys(emails)
        if len(keys) > MEMBERS_LOOKUP_MAX:
            return pick(self.snapshot(), keys)
        if keys:
            self.ensure_audience()
        found = self._api.parallel(self._read_member, keys)
        return [m for m in found if m is not None]

    def members_by_id(self, stable_ids: Sequence[str]) -> list[Member]:
        """`GET …/members/{contact_id}` per id, concurrently (the member endpoint takes a
        contact id in place of the subscriber hash; 404: no member); the snapshot, filtered,
        when it takes fewer calls than the ids."""
        ids = list(dict.fromkeys(i for i in stable_ids if i))
        if not ids:
            return []
        if len(ids) > MEMBERS_LOOKUP_MAX or (
            len(ids) > MEMBERS_LOOKUP_FLOOR and len(ids) > self._snapshot_pages()
        ):
            return pick_ids(self.snapshot(), ids)
        found = self._api.parallel(self._get_member, ids)
        return [m for m in found if m is not None and m.stable_id in ids]

    def _snapshot_pages(self) -> int:
        """How many calls the snapshot takes now (one call to ask the audience's size)."""
        params = {"count": 1, "fields": "total_items"}
        path = f"/lists/{self._list_id}/members"
        total = MembersPage.model_validate(
            {"members": [], **self._api.call("GET", path, params=params)}
        ).total_items
        return -(-total // PAGE_SIZE)

    def _read_member(self, key: str) -> Member | None:
        """The member at this address, or None (no member, or an address Mailchimp refuses)."""
        return self._get_member(subscriber_hash(key))

    def _get_member(self, ref: str) -> Member | None:
        """The member a subscriber hash or contact id names, or None."""
        path = f"/lists/{self._list_id}/members/{quote(ref, safe='')}"
        try:
            answer = self._api.call("GET", path, params={"fields": _MEMBER_FIELDS})
        except ApiError as exc:
            if exc.status not in (400, 404):
                raise
            return None
        return member_of(MemberOut.model_validate(answer), self._salutation_tag)

    def _page_body(self, offset: int) -> bytes:
        """The body of the members page at `offset` (the list's id is all it needs, not the
        merge fields' check)."""
        params = {"count": PAGE_SIZE, "offset": offset, "fields": _SNAPSHOT_FIELDS}
        path = f"/lists/{self._found_list()}/members"
        return self._api.request("GET", path, params=params).content

    # --- upsert -------------------------------------------------------------------------

    def upsert(
        self, contacts: Sequence[Contact], current: Mapping[str, Member] | None = None
    ) -> list[Outcome]:
        """Create new contacts, update existing ones (fields and tags, never status)."""
        return self.write_members(MemberWrites(updates=tuple(contacts), current=current or {}))

    def write_members(self, writes: MemberWrites) -> list[Outcome]:
        """Contacts to create (absent or archived members among the updates) through batch
        subscribe first; then address changes, field and tag updates, unsubscribes and
        archives as member operations together (one by one or in `/batches` of 1,000,
        `OperationRunner`)."""
        self.ensure_audience()
        outcomes: dict[str, Outcome] = {}
        creates: list[Contact] = []
        back: list[tuple[Contact, Member]] = []  # creates of archived members
        updates: list[tuple[Contact, Member | None]] = []
        for contact in writes.updates:
            problem = self._invalid_value(contact)
            member = writes.current.get(contact.key)
            if problem:
                outcomes[contact.crm_id] = self._refused(
                    Action.UPSERT, contact, "Invalid Resource", problem
                )
            elif member is None or member.status is MemberStatus.ARCHIVED:
                creates.append(contact)
                if member is not None:
                    back.append((contact, member))
            else:
                updates.append((contact, member))
        chunks = [
            creates[i : i + BATCH_SUBSCRIBE_MAX]
            for i in range(0, len(creates), BATCH_SUBSCRIBE_MAX)
        ]
        for created, existing in self._api.parallel(self._subscribe, chunks):
            outcomes.update(created)
            updates += [(contact, None) for contact in existing]
        update_ops, planned = self._update_operations(updates, outcomes)
        renames = self._email_operations(writes.renames)
        unsubscribes = self._member_operations("u", writes.unsubscribes, "PATCH", _UNSUBSCRIBE)
        removes = self._member_operations("x", writes.removes, "DELETE", None)
        results = self._ops.run([*renames, *update_ops, *unsubscribes, *removes])
        for contact, member, ids in planned.values():
            outcomes[contact.crm_id] = self._combine(
                Action.UPSERT, contact, member, [results[i] for i in ids]
            )
        outcomes.update(self._drop_archived_tags(back, outcomes))
        return [
            *self._email_outcomes(writes.renames, results),
            *(outcomes[c.crm_id] for c in writes.updates),
            *self._member_outcomes(
                "u", Action.UNSUBSCRIBE, writes.unsubscribes, Result.UNSUBSCRIBED, results
            ),
            *self._member_outcomes("x", Action.REMOVE, writes.removes, Result.REMOVED, results),
        ]

    def _drop_archived_tags(
        self, back: Sequence[tuple[Contact, Member]], outcomes: Mapping[str, Outcome]
    ) -> dict[str, Outcome]:
        """Remove, from members re-added from the archive, the tags the archive kept but the
        contact no longer has (a re-add only adds tags); a refused removal refuses the create."""
        operations: dict[str, tuple[Contact, Operation]] = {}
        for contact, member in back:
            if outcomes[contact.crm_id].outcome is not Result.CREATED:
                continue
            wanted = {t.casefold() for t in contact.tags}
            stale = sorted(t for t in member.tags if t.casefold() not in wanted)
            if stale:
                path = f"/lists/{self._list_id}/members/{subscriber_hash(contact.email)}/tags"
                tags = [{"name": t, "status": "inactive"} for t in stale]
                operations[contact.crm_id] = (
                    contact,
                    Operation(contact.crm_id, "POST", path, {"tags": tags, "is_syncing": True}),
                )
        results = self._ops.run([op for _, op in operations.values()])
        return {
            crm_id: self._refused(
                Action.UPSERT,
                contact,
                results[crm_id].title or str(results[crm_id].status),
                results[crm_id].detail,
            )
            for crm_id, (contact, _) in operations.items()
            if not results[crm_id].ok
        }

    def _merge_fields(self, contact: Contact) -> dict[str, str]:
        return {
            "FNAME": contact.first_name,
            "LNAME": contact.last_name,
            self._salutation_tag: contact.salutation,
        }

    def _invalid_value(self, contact: Contact) -> str | None:
        for tag, value in self._merge_fields(contact).items():
            field = self._fields[tag]
            if len(value) > 63 and len(value.encode()) > 255:  # 63 characters never are
                return f"{tag}: longer than 255 bytes (checked before sending)"
            if field.type in _CHOICE_TYPES and value:
                choices = field.options.get("choices") or []
                if value not in choices:
                    return f"{tag}: {value!r} is not one of {choices} (checked before sending)"
        return None

    def _subscribe(self, chunk: Sequence[Contact]) -> tuple[dict[str, Outcome], list[Contact]]:
        body = {
            "members": [
                {
                    "email_address": c.email,
                    "status": "subscribed",
                    "merge_fields": self._merge_fields(c),
                    **({"tags": sorted(c.tags)} if c.tags else {}),
                }
                for c in chunk
            ],
            "update_existing": False,
        }
        answer = self._api.request("POST", f"/lists/{self._list_id}", json=body)
        created, errors = read_subscribe_answer(answer.content)
        by_key = {c.key: c for c in chunk}
        outcomes: dict[str, Outcome] = {}
        existing: list[Contact] = []
        for email, provider_id, status, stable_id in created:
            contact = by_key.pop(email.lower(), None)
            if contact is not None:
                outcomes[contact.crm_id] = trusted(  # values of the types it takes
                    Outcome,
                    {
                        "action": Action.UPSERT,
                        "outcome": Result.CREATED,
                        "email": contact.email,
                        "crm_id": contact.crm_id,
                        "provider_id": provider_id,
                        "status": MemberStatus(status),
                        "stable_id": stable_id,
                    },
                )
        for error in errors:
            contact = by_key.pop(error.email_address.lower(), None)
            if contact is None:
                continue
            if error.error_code == "ERROR_CONTACT_EXISTS":
                existing.append(contact)
                continue
            code = refusal_code(error.error, error.error_code)
            message = (
                f"{error.error} ({error.field}: {error.field_message})"
                if error.field
                else error.error
            )
            outcomes[contact.crm_id] = self._refused(Action.UPSERT, contact, code, message)
        for contact in by_key.values():
            outcomes[contact.crm_id] = self._refused(
                Action.UPSERT, contact, "no_answer", "batch subscribe did not report this contact"
            )
        return outcomes, existing

    def _update_operations(
        self, updates: Sequence[tuple[Contact, Member | None]], outcomes: dict[str, Outcome]
    ) -> tuple[list[Operation], dict[str, tuple[Contact, Member | None, list[str]]]]:
        """The field and tag operations of the updates (ids `<index>:fields|tags`), and the
        ids of each contact's; contacts with nothing to change get their outcome here."""
        operations: list[Operation] = []
        planned: dict[str, tuple[Contact, Member | None, list[str]]] = {}
        for index, (contact, member) in enumerate(updates):
            path = f"/lists/{self._list_id}/members/{subscriber_hash(contact.email)}"
            ids: list[str] = []
            if member is None or self._fields_differ(contact, member):
                ids.append(f"{index}:fields")
                operations.append(
                    Operation(ids[-1], "PATCH", path, {"merge_fields": self._merge_fields(contact)})
                )
            tags = self._tag_changes(contact, member)
            if tags:
                ids.append(f"{index}:tags")
                operations.append(
                    Operation(ids[-1], "POST", f"{path}/tags", {"tags": tags, "is_syncing": True})
                )
            if ids:
                planned[contact.crm_id] = (contact, member, ids)
            else:
                outcomes[contact.crm_id] = self._unchanged(contact, member)
        return operations, planned

    def _fields_differ(self, contact: Contact, member: Member) -> bool:
        return (contact.first_name, contact.last_name, contact.salutation) != (
            member.first_name,
            member.last_name,
            member.salutation,
        )

    @staticmethod
    def _tag_changes(contact: Contact, member: Member | None) -> list[dict[str, str]]:
        """Tag writes that make the member hold exactly `contact.tags` (the complete set the
        sync wants there, tags people added included). Names compare case-insensitively, as
        Mailchimp's do."""
        present = {t.casefold(): t for t in (member.tags if member is not None else ())}
        wanted = {t.casefold(): t for t in contact.tags}
        changes = [
            {"name": wanted[k], "status": "active"} for k in sorted(wanted.keys() - present.keys())
        ]
        if member is not None:
            changes += [
                {"name": present[k], "status": "inactive"}
                for k in sorted(present.keys() - wanted.keys())
            ]
        return changes

    def _combine(
        self, action: Action, contact: Contact, member: Member | None, results: list[OpResult]
    ) -> Outcome:
        failed = next((r for r in results if not r.ok), None)
        if failed is not None:
            return self._refused(action, contact, failed.title or str(failed.status), failed.detail)
        body = next(
            (r.body for r in results if isinstance(r.body, dict) and "status" in r.body), None
        )
        status = MemberStatus(body["status"]) if body else (member.status if member else None)
        return Outcome(
            action=action,
            outcome=Result.UPDATED,
            email=contact.email,
            crm_id=contact.crm_id,
            provider_id=subscriber_hash(contact.email),
            status=status,
        )

    # --- email, unsubscribe, remove -----------------------------------------------------

    def change_emails(self, changes: Sequence[EmailChange]) -> list[Outcome]:
        """`PATCH {"email_address"}` on the member found by its old address."""
        return self.write_members(MemberWrites(renames=tuple(changes)))

    def unsubscribe(self, refs: Sequence[ContactRef]) -> list[Outcome]:
        """`PATCH {"status": "unsubscribed"}` for each contact."""
        return self.write_members(MemberWrites(unsubscribes=tuple(refs)))

    def remove(self, refs: Sequence[ContactRef]) -> list[Outcome]:
        """Archive (`DELETE`) each contact; never delete permanently."""
        return self.write_members(MemberWrites(removes=tuple(refs)))

    def _email_operations(self, changes: Sequence[EmailChange]) -> list[Operation]:
        return [
            Operation(
                f"e{i}",
                "PATCH",
                f"/lists/{self._list_id}/members/{subscriber_hash(c.old_email)}",
                {"email_address": c.new_email},
            )
            for i, c in enumerate(changes)
        ]

    @staticmethod
    def _email_outcomes(
        changes: Sequence[EmailChange], results: Mapping[str, OpResult]
    ) -> list[Outcome]:
        outcomes = []
        for i, change in enumerate(changes):
            result = results[f"e{i}"]
            base = {
                "action": Action.CHANGE_EMAIL,
                "email": change.new_email,
                "crm_id": change.crm_id,
            }
            if result.ok:
                outcomes.append(
                    Outcome(
                        **base,
                        outcome=Result.UPDATED,
                        provider_id=subscriber_hash(change.new_email),
                        status=MemberStatus(result.body["status"]),
                    )
                )
            else:
                outcomes.append(
                    Outcome(
                        **base, outcome=Result.REFUSED, code=result.title, message=result.detail
                    )
                )
        return outcomes

    def _member_operations(
        self, prefix: str, refs: Sequence[ContactRef], method: str, body: dict[str, Any] | None
    ) -> list[Operation]:
        return [
            Operation(
                f"{prefix}{i}",
                method,
                f"/lists/{self._list_id}/members/{subscriber_hash(r.email)}",
                body,
            )
            for i, r in enumerate(refs)
        ]

    @staticmethod
    def _member_outcomes(
        prefix: str,
        action: Action,
        refs: Sequence[ContactRef],
        done: Result,
        results: Mapping[str, OpResult],
    ) -> list[Outcome]:
        outcomes = []
        for i, ref in enumerate(refs):
            result = results[f"{prefix}{i}"]
            common = {"action": action, "email": ref.email, "crm_id": ref.crm_id}
            if result.ok:
                status = result.body.get("status") if isinstance(result.body, dict) else None
                outcomes.append(
                    Outcome(
                        **common,
                        outcome=done,
                        provider_id=subscriber_hash(ref.email),
                        status=MemberStatus(status)
                        if status
                        else (MemberStatus.ARCHIVED if action is Action.REMOVE else None),
                    )
                )
            else:
                outcomes.append(
                    Outcome(
                        **common,
                        outcome=Result.REFUSED,
                        code=result.title or str(result.status),
                        message=result.detail,
                    )
                )
        return outcomes

    # --- campaign reports ---------------------------------------------------------------

    def campaign_recipients(self, campaign_id: str) -> list[CampaignRecipient]:
        """Everyone the campaign was sent to, with the delivery status (`sent`, `hard`,
        `soft`), by paging `GET /reports/{campaign_id}/sent-to`, 1000 a page. An unknown
        campaign raises `ApiError` (404)."""
        path = f"/reports/{quote(campaign_id, safe='')}/sent-to"

        def page(offset: int) -> SentToPage:
            params = {"count": PAGE_SIZE, "offset": offset, "fields": _SENT_TO_FIELDS}
            return SentToPage.model_validate(self._api.call("GET", path, params=params))

        first = page(0)
        offsets = list(range(PAGE_SIZE, first.total_items, PAGE_SIZE))
        pages = [first, *self._api.parallel(page, offsets)]
        return [
            CampaignRecipient(email=r.email_address, status=r.status)
            for p in pages
            for r in p.sent_to
        ]

    # --- webhook ------------------------------------------------------------------------

    def register_webhook(
        self, url: str, secret: str, activities: frozenset[str] = frozenset()
    ) -> str:
        """Audience webhook for changes by people (`user`, `admin`), never our own (`api`);
        `campaign` events (sent campaigns: `delivered`) only when that activity is on.

        Mailchimp signs nothing by default, so the secret travels in the URL's query string;
        the webhook at `url` with another secret (rotated) is updated, not added again.
        """
        target = f"{url}{'&' if '?' in url else '?'}{urlencode({'secret': secret})}"
        events = {**_WEBHOOK_EVENTS, "campaign": "delivered" in activities}
        path = f"/lists/{self._found_list()}/webhooks"  # before the merge fields' check
        hooks = WebhooksPage.model_validate(self._api.call("GET", path)).webhooks
        for hook in hooks:
            if _without_secret(hook.url) == _without_secret(target):
                wanted = {"url": target, "events": events, "sources": _WEBHOOK_SOURCES}
                if (hook.url, hook.events, hook.sources) != tuple(wanted.values()):
                    self._api.call("PATCH", f"{path}/{hook.id}", json=wanted)
                return hook.id
        body = {"url": target, "events": events, "sources": _WEBHOOK_SOURCES}
        return str(self._api.call("POST", path, json=body)["id"])

    def close(self) -> None:
        """Wait for a merge fields' check under way, then close connections."""
        self._checker.shutdown(wait=True)
        self._api.close()

    # --- outcome helpers ----------------------------------------------------------------

    @staticmethod
    def _unchanged(contact: Contact, member: Member | None) -> Outcome:
        return Outcome(
            action=Action.UPSERT,
            outcome=Result.UNCHANGED,
            email=contact.email,
            crm_id=contact.crm_id,
            provider_id=member.provider_id if member else subscriber_hash(contact.email),
            status=member.status if member else None,
        )

    @staticmethod
    def _refused(action: Action, contact: Contact, code: str, message: str) -> Outcome:
        return Outcome(
            action=action,
            outcome=Result.REFUSED,
            email=contact.email,
            crm_id=contact.crm_id,
            code=code,
            message=message,
        )


def audience_body(name: str, d: AudienceDefaults) -> dict[str, Any]:
    """The body of `POST /lists` creating audience `name` with the defaults `d`."""
    return {
        "name": name,
        "contact": {
            "company": d.company,
            "address1": d.address1,
            "city": d.city,
            "state": d.state,
            "zip": d.zip,
            "country": d.country,
        },
        "permission_reminder": d.permission_reminder,
        "campaign_defaults": {
            "from_name": d.from_name,
            "from_email": d.from_email,
            "subject": d.subject,
            "language": d.language,
        },
        "email_type_option": False,
    }
