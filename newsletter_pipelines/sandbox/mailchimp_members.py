"""Mailchimp member rules: validation, compliance refusals, status changes, representation.

Titles and details follow what Mailchimp answers.
Addresses under the reserved `.invalid` top-level domain are what the sandbox treats as fake.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from newsletter_pipelines.providers.trusted import trusted
from newsletter_pipelines.sandbox.core import Request, now_iso
from newsletter_pipelines.sandbox.mailchimp_state import (
    ACTIVE_STATUSES,
    McAccount,
    McList,
    McMember,
    subscriber_hash,
)

_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_OPTED_OUT = ("unsubscribed", "cleaned")
_SUBSCRIBING = ("subscribed", "pending")
_LIMITED = ("text", "dropdown", "radio")  # merge field types holding at most 255 bytes
_CHOICES = ("dropdown", "radio")
_INVALID = (
    "The resource submitted could not be validated. "
    "For field-specific details, see the 'errors' array."
)


class ProblemError(Exception):
    """A Mailchimp problem answer (status, title, detail, field errors)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}


def exists(email: str) -> ProblemError:
    """The refusal for creating a member that is already on the list."""
    return ProblemError(
        400,
        "Member Exists",
        f"{email} is already a list member. Use PUT to insert or update list members.",
    )


def not_found() -> ProblemError:
    """The refusal for an unknown resource."""
    return ProblemError(404, "Resource Not Found", "The requested resource could not be found.")


def invalid(field: str, message: str) -> ProblemError:
    """An `Invalid Resource` refusal naming one field."""
    return ProblemError(400, "Invalid Resource", _INVALID, [{"field": field, "message": message}])


def check_address(lst: McList, email: str) -> str:
    """Refuse syntactically wrong, fake and permanently deleted addresses; the address's
    subscriber hash."""
    check_syntax(email)
    key = subscriber_hash(email)
    if key in lst.forgotten:
        raise ProblemError(
            400,
            "Forgotten Email Not Subscribed",
            f"{email} was permanently deleted and cannot be re-imported. "
            "The contact must re-subscribe to get back on the list.",
        )
    return key


def check_syntax(email: str) -> None:
    """Refuse syntactically wrong and fake addresses."""
    if not _ADDRESS.match(email):
        raise ProblemError(400, "Invalid Resource", "Please provide a valid email address.")
    if email.lower().endswith(".invalid"):
        raise ProblemError(
            400,
            "Invalid Resource",
            f"{email} looks fake or invalid, please enter a real email address.",
        )


def check_status(email: str, current: str | None, wanted: str | None) -> None:
    """Refuse moving an opted-out member (even behind an archive) back to subscribed/pending."""
    if wanted in _SUBSCRIBING and current in _OPTED_OUT:
        raise ProblemError(
            400,
            "Member In Compliance State",
            f"{email} is in a compliance state due to unsubscribe, bounce, or compliance review "
            "and cannot be subscribed.",
        )


def check_status_value(status: Any, allowed: Iterable[str] = ACTIVE_STATUSES) -> str:
    """`status` when it is one Mailchimp accepts here."""
    if status not in tuple(allowed):
        raise invalid("status", f"Schema describes enum, {status!r} is not a valid value.")
    return str(status)


@dataclass(frozen=True)
class MergeRules:
    """What `merge_values` checks, read once from an audience's merge fields (a batch subscribe
    checks its 500 members against the same fields)."""

    checks: dict[str, tuple[bool, Any]]
    """Tag -> (limited to 255 bytes, the choices of a dropdown or radio field, else None)."""
    required: tuple[str, ...]
    blank: dict[str, str]
    """Every tag -> "": a new member's merge fields before its values."""

    @classmethod
    def of(cls, lst: McList) -> MergeRules:
        """The rules of `lst`'s merge fields as they are now."""
        fields = lst.merge_fields
        return cls(
            {
                field.tag: (
                    field.type in _LIMITED,
                    field.options.get("choices") if field.type in _CHOICES else None,
                )
                for field in fields
            },
            tuple(field.tag for field in fields if field.required),
            {field.tag: "" for field in fields},
        )


def merge_values(
    lst: McList, values: Any, *, creating: bool, rules: MergeRules | None = None
) -> dict[str, Any]:
    """Validated merge values; required fields are enforced on create (as Mailchimp does).
    `rules`: `MergeRules.of(lst)`, when the caller has them."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise invalid("merge_fields", "Schema describes object, but another type was provided.")
    rules = rules or MergeRules.of(lst)
    checks = rules.checks
    errors: list[dict[str, str]] = []
    accepted: dict[str, Any] = {}
    for tag, value in values.items():
        check = checks.get(tag)
        if check is None:
            continue
        text = "" if value is None else str(value)
        limited, choices = check
        if limited and _over_255_bytes(text):
            errors.append({"field": tag, "message": "Value must be 255 characters or fewer"})
        elif choices and text and text not in choices:
            errors.append({"field": tag, "message": "Please choose one of the listed options"})
        else:
            accepted[tag] = text
    if creating:
        for tag in rules.required:
            if not accepted.get(tag):
                errors.append({"field": tag, "message": "Please enter a value"})
    if errors:
        raise ProblemError(400, "Invalid Resource", "Your merge fields were invalid.", errors)
    return accepted


def _over_255_bytes(text: str) -> bool:
    """Whether `text` takes more than 255 bytes in UTF-8 (63 characters never do)."""
    return len(text) > 63 and len(text.encode()) > 255


def create(
    account: McAccount,
    lst: McList,
    payload: dict[str, Any],
    status: str,
    now: float,
    *,
    source: str = "API - Generic",
    rules: MergeRules | None = None,
) -> McMember:
    """Add a new member, or re-add an archived one (keeping compliance rules), with the tags of
    `payload`; a new member's tags are registered (`register_tags`), a re-added one's are left
    to the caller. `rules`: `MergeRules.of(lst)`, when the caller has them."""
    email = str(payload.get("email_address") or "")
    key = check_address(lst, email)
    previous = lst.members.get(key)
    check_status(email, previous.effective_status if previous else None, status)
    rules = rules or MergeRules.of(lst)
    merge = merge_values(lst, payload.get("merge_fields"), creating=True, rules=rules)
    stamp = now_iso(now)
    tags = [str(tag) for tag in payload.get("tags") or []]
    if previous is not None:
        previous.status = status
        previous.archived_from = None
        previous.merge_fields.update(merge)
        previous.last_changed = stamp
        add_tags(previous, tags, now, lst.segments)
        return previous
    contact_no, web_id = account.new_ids(2)
    member = trusted(  # every value of its field's type (a batch subscribe makes 500)
        McMember,
        {
            "id": key,
            "email_address": email,
            "unique_email_id": key[:10],
            "contact_id": f"{contact_no:032x}",  # one per contact, never reused
            "web_id": web_id,
            "status": status,
            "merge_fields": rules.blank | merge,
            "timestamp_signup": stamp,
            "timestamp_opt": stamp,
            "last_changed": stamp,
            "source": source,
        },
    )
    lst.put(key, member)
    _tag_new_member(account, lst, member, tags, stamp)
    return member


def _tag_new_member(
    account: McAccount, lst: McList, member: McMember, names: Iterable[str], stamp: str
) -> None:
    """`add_tags` and then `register_tags` on a member without tags, in one pass (the same:
    its tags differ in more than case, so none takes another's segment): each tag takes the
    audience's spelling, or becomes a new segment of the audience."""
    segments = lst.segments
    for name in names:
        if _same_tag(member.tags, name) is None:
            spelling = _same_tag(segments, name)
            if spelling is None:
                spelling = name
                segments[name] = account.new_id()
            member.tags[spelling] = stamp


def update(lst: McList, member: McMember, payload: dict[str, Any], now: float) -> McMember:
    """PATCH semantics: only the fields given change; status changes keep compliance rules."""
    status = payload.get("status")
    if status is not None:
        check_status_value(status, ("subscribed", "unsubscribed", "cleaned", "pending"))
        check_status(member.email_address, member.effective_status, status)
    merge = merge_values(lst, payload.get("merge_fields"), creating=False)
    new_email = payload.get("email_address")
    if new_email is not None and new_email.lower() != member.email_address.lower():
        change_email(lst, member, str(new_email))
    elif new_email is not None:
        member.email_address = str(new_email)
    member.merge_fields.update(merge)
    if status is not None and status != member.status:
        member.status = status
        member.archived_from = None
        if status == "unsubscribed":
            member.unsubscribe_reason = "N/A (Unsubscribed by an admin)"
    member.last_changed = now_iso(now)
    return member


def change_email(lst: McList, member: McMember, new_email: str) -> None:
    """Move a member to a new address (new `id` and `unique_email_id`, same `contact_id`);
    only subscribed members may change it, and not onto an address already on the list."""
    if member.status != "subscribed":
        raise ProblemError(
            400,
            "Invalid Resource",
            f'This member\'s status is "{member.status}." You can only update email addresses '
            'for members with a status of "subscribed."',
        )
    new_key = check_address(lst, new_email)
    if new_key in lst.members:
        raise exists(new_email)
    lst.drop(member.id)
    member.id = new_key
    member.unique_email_id = new_key[:10]
    member.email_address = new_email
    lst.put(new_key, member)


def upemail_data(lst: McList, member: McMember, old_email: str) -> dict[str, str]:
    """The `data` of the `upemail` webhook event for a member that moved from `old_email`."""
    return {
        "list_id": lst.id,
        "new_id": member.id,
        "new_email": member.email_address,
        "old_email": old_email,
    }


def archive(lst: McList, member: McMember, now: float) -> None:
    """DELETE semantics: archive, refused for bounced, pending and archived members."""
    if member.status in ("cleaned", "pending", "archived"):
        raise ProblemError(
            405,
            "Method Not Allowed",
            "This list member cannot be removed. "
            "Can not archive a contact that is bounced, pending or archived",
            headers={"allow": "GET, PUT"},
        )
    member.archived_from = member.status
    member.status = "archived"
    member.last_changed = now_iso(now)


def clean(member: McMember, now: float) -> None:
    """The address bounced hard: the member (whatever its status, archived too) is `cleaned`."""
    member.status, member.last_changed = "cleaned", now_iso(now)
    member.archived_from = None


def event_data(lst: McList, member: McMember, **extra: Any) -> dict[str, Any]:
    """The `data` of a member's webhook event (`subscribe`, `unsubscribe`, `cleaned`, …)."""
    return {
        "id": member.id,
        "list_id": lst.id,
        "email": member.email_address,
        "email_type": "html",
        "merges": {"EMAIL": member.email_address, **member.merge_fields},
        **extra,
    }


def forget(lst: McList, member: McMember) -> None:
    """Delete permanently: the address can never be imported again."""
    lst.drop(member.id)
    lst.forgotten.add(member.id)


def rejoin(
    account: McAccount,
    lst: McList,
    email: str,
    *,
    status: str,
    merge: dict[str, Any],
    now: float,
) -> McMember:
    """A person (re)joins through the audience's own signup form, as `subscribed` or `pending`.

    What the API refuses, the form allows: an unsubscribed, archived (whatever it was archived
    from), transactional or permanently deleted address comes back; a `pending` member may
    confirm (`subscribed`). Refused, before anything changes: a cleaned member (400 `Member In
    Compliance State`: a bounced address cannot re-subscribe by form), a member already in
    `status` or already subscribed (400 `Member Exists`), and a bad address (400).
    """
    key = subscriber_hash(email)
    member = lst.members.get(key)
    current = member.status if member is not None else None
    if current == "cleaned":
        check_status(email, current, status)
    if current in (status, "subscribed"):
        raise ProblemError(
            400, "Member Exists", f"{email} is already {current} on the audience {lst.name}."
        )
    check_syntax(email)
    accepted = merge_values(lst, {k: v for k, v in merge.items() if v}, creating=member is None)
    stamp = now_iso(now)
    if member is None:
        lst.forgotten.discard(key)
        member = McMember(
            id=key,
            email_address=email,
            unique_email_id=key[:10],
            contact_id=f"{account.new_id():032x}",  # one per contact, never reused
            web_id=account.new_id(),
            status=status,
            merge_fields={field.tag: "" for field in lst.merge_fields},
            timestamp_signup=stamp,
            timestamp_opt=stamp,
            last_changed=stamp,
            source="Hosted Signup Form",
        )
        lst.put(key, member)
    member.status = status
    member.archived_from = None
    member.unsubscribe_reason = ""
    member.merge_fields.update(accepted)
    member.timestamp_opt = stamp
    member.last_changed = stamp
    return member


def _same_tag(names: Iterable[str], name: str) -> str | None:
    """The spelling under which `name` is already among `names` (tags ignore case)."""
    wanted = name.casefold()
    for known in names:  # a loop, not a generator: called several times for every member
        if known.casefold() == wanted:
            return known
    return None


def tag_spelling(segments: dict[str, int] | None, name: str) -> str:
    """The audience's spelling of a tag: the first one it was created with."""
    return _same_tag(segments or {}, name) or name


def add_tags(
    member: McMember, names: Iterable[str], now: float, segments: dict[str, int] | None = None
) -> None:
    """Activate tags on a member; names match case-insensitively, the first spelling stays."""
    for name in names:
        if _same_tag(member.tags, name) is None:
            member.tags[tag_spelling(segments, name)] = now_iso(now)


def set_tags(
    member: McMember,
    tags: Iterable[dict[str, Any]],
    now: float,
    segments: dict[str, int] | None = None,
) -> None:
    """Apply `{"name", "status": active|inactive}` tag changes.

    Tag names are case-insensitive, as at Mailchimp: activating "vip" on a member tagged "VIP"
    changes nothing, deactivating "vip" removes "VIP"; a new tag takes the audience's spelling
    (`segments`) when the audience already knows it.
    """
    for tag in tags:
        name = str(tag.get("name"))
        known = _same_tag(member.tags, name)
        if tag.get("status") == "inactive":
            if known is not None:
                del member.tags[known]
        elif known is None:
            member.tags[tag_spelling(segments, name)] = now_iso(now)
    member.last_changed = now_iso(now)


def find_list(account: McAccount, request: Request) -> McList:
    """The audience named by the `list_id` path parameter, else 404."""
    lst = account.lists.get(request.params["list_id"])
    if lst is None:
        raise not_found()
    return lst


def register_tags(account: McAccount, lst: McList, member: McMember) -> None:
    """Give every tag of the member a segment id (tags are static segments); a tag spelled
    differently from the audience's tag of the same name takes the audience's spelling."""
    renamed = False
    for name in member.tags:  # the loop adds segments only: the member's tags stay as they are
        known = _same_tag(lst.segments, name)
        if known is None:
            lst.segments[name] = account.new_id()
        elif known != name:
            renamed = True
    if renamed:
        member.tags = {tag_spelling(lst.segments, n): added for n, added in member.tags.items()}


def find(lst: McList, hash_or_email: str, *, contact_id: bool = False) -> McMember:
    """The member addressed by subscriber hash (or email), or by contact id where the endpoint
    takes one (`contact_id`: a member's GET, PATCH and DELETE), else 404."""
    key = subscriber_hash(hash_or_email) if "@" in hash_or_email else hash_or_email.lower()
    member = lst.members.get(key)
    if member is None and contact_id:
        member = next((m for m in lst.members.values() if m.contact_id == key), None)
    if member is None:
        raise not_found()
    return member


_MEMBER_PARTS: tuple[tuple[str, Callable[[McList, McMember, dict[str, int]], Any]], ...] = (
    ("id", lambda lst, m, segments: m.id),
    ("email_address", lambda lst, m, segments: m.email_address),
    ("unique_email_id", lambda lst, m, segments: m.unique_email_id),
    ("contact_id", lambda lst, m, segments: m.contact_id),
    ("full_name", lambda lst, m, segments: _full_name(m)),
    ("web_id", lambda lst, m, segments: m.web_id),
    ("email_type", lambda lst, m, segments: "html"),
    ("status", lambda lst, m, segments: m.status),
    ("unsubscribe_reason", lambda lst, m, segments: m.unsubscribe_reason),
    ("consents_to_one_to_one_messaging", lambda lst, m, segments: True),
    ("merge_fields", lambda lst, m, segments: dict(m.merge_fields)),
    ("interests", lambda lst, m, segments: {}),
    ("stats", lambda lst, m, segments: {"avg_open_rate": 0, "avg_click_rate": 0}),
    ("ip_signup", lambda lst, m, segments: ""),
    ("timestamp_signup", lambda lst, m, segments: m.timestamp_signup),
    ("ip_opt", lambda lst, m, segments: ""),
    ("timestamp_opt", lambda lst, m, segments: m.timestamp_opt),
    ("member_rating", lambda lst, m, segments: 2),
    ("last_changed", lambda lst, m, segments: m.last_changed),
    ("language", lambda lst, m, segments: ""),
    ("vip", lambda lst, m, segments: False),
    ("email_client", lambda lst, m, segments: ""),
    (
        "location",
        lambda lst, m, segments: {"latitude": 0, "longitude": 0, "gmtoff": 0, "dstoff": 0},
    ),
    ("source", lambda lst, m, segments: m.source),
    ("tags_count", lambda lst, m, segments: len(m.tags)),
    ("tags", lambda lst, m, segments: _tags(m, segments)),
    ("list_id", lambda lst, m, segments: lst.id),
    ("_links", lambda lst, m, segments: []),
)
"""Each field of a member's representation, in Mailchimp's order, and how to build it."""


_SHOWN_AS_STORED = frozenset(
    {
        "id",
        "email_address",
        "unique_email_id",
        "contact_id",
        "web_id",
        "status",
        "unsubscribe_reason",
        "merge_fields",
        "timestamp_signup",
        "timestamp_opt",
        "last_changed",
        "source",
    }
)
"""The parts of `_MEMBER_PARTS` that show a member's stored field itself (`representations`
shares the merge fields)."""


def _full_name(member: McMember) -> str:
    fname = str(member.merge_fields.get("FNAME", ""))
    lname = str(member.merge_fields.get("LNAME", ""))
    return f"{fname} {lname}".strip()


def _tags(member: McMember, segments: dict[str, int]) -> list[dict[str, Any]]:
    names = member.tags if len(member.tags) <= 50 else list(member.tags)[:50]
    return [{"id": segments.get(name, 0), "name": name} for name in names]


def representation(lst: McList, member: McMember, segments: dict[str, int]) -> dict[str, Any]:
    """A member as Mailchimp returns it (`ListMembers2`), what `_MEMBER_PARTS` builds; it holds
    objects of its own only."""
    shown = _written_out(lst.id, [member], segments)[0]
    shown["merge_fields"] = dict(member.merge_fields)
    return shown


def representations(
    lst: McList, members: Iterable[McMember], only: Collection[str] | None = None
) -> list[dict[str, Any]]:
    """Members as `representation` shows them, with only the fields named in `only`, for an
    answer encoded before they change: they share their members' merge fields."""
    segments = lst.segments
    if only is None:
        return _written_out(lst.id, members, segments)
    names = [name for name, _ in _MEMBER_PARTS if name in only]
    built = [(n, build) for n, build in _MEMBER_PARTS if n in only and n not in _SHOWN_AS_STORED]
    found = []
    for m in members:
        stored = vars(m)  # read without a call each (a page has 1,000 members)
        shown = {name: stored.get(name) for name in names}  # each in its place: built ones next
        for name, build in built:
            shown[name] = build(lst, m, segments)
        found.append(shown)
    return found


def _written_out(
    list_id: str, members: Iterable[McMember], segments: dict[str, int]
) -> list[dict[str, Any]]:
    """What `_MEMBER_PARTS` builds, written out (a test keeps the two the same), the members'
    merge fields shared, and the objects every member shows alike built once (a batch
    subscribe answers 500 members)."""
    interests: dict[str, Any] = {}
    stats = {"avg_open_rate": 0, "avg_click_rate": 0}
    location = {"latitude": 0, "longitude": 0, "gmtoff": 0, "dstoff": 0}
    links: list[Any] = []
    return [
        {
            "id": member.id,
            "email_address": member.email_address,
            "unique_email_id": member.unique_email_id,
            "contact_id": member.contact_id,
            "full_name": _full_name(member),
            "web_id": member.web_id,
            "email_type": "html",
            "status": member.status,
            "unsubscribe_reason": member.unsubscribe_reason,
            "consents_to_one_to_one_messaging": True,
            "merge_fields": member.merge_fields,
            "interests": interests,
            "stats": stats,
            "ip_signup": "",
            "timestamp_signup": member.timestamp_signup,
            "ip_opt": "",
            "timestamp_opt": member.timestamp_opt,
            "member_rating": 2,
            "last_changed": member.last_changed,
            "language": "",
            "vip": False,
            "email_client": "",
            "location": location,
            "source": member.source,
            "tags_count": len(member.tags),
            "tags": _tags(member, segments),
            "list_id": list_id,
            "_links": links,
        }
        for member in members
    ]
