"""The emulated Mailchimp Marketing API 3.0 (the endpoints the sync uses, faithfully)."""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from newsletter_pipelines.sandbox import mailchimp_members as members
from newsletter_pipelines.sandbox.core import (
    BodyError,
    Request,
    Response,
    Router,
    empty_response,
    json_response,
    now_iso,
)
from newsletter_pipelines.sandbox.fields import item_fields, partial
from newsletter_pipelines.sandbox.mailchimp_batch_ops import BatchHandlers
from newsletter_pipelines.sandbox.mailchimp_campaigns import CampaignHandlers
from newsletter_pipelines.sandbox.mailchimp_members import ProblemError, invalid, not_found
from newsletter_pipelines.sandbox.mailchimp_state import (
    McAccount,
    McList,
    McMember,
    McMergeField,
)
from newsletter_pipelines.sandbox.mailchimp_tags import TagHandlers
from newsletter_pipelines.sandbox.mailchimp_webhooks import WebhookHandlers

MAX_BATCH_MEMBERS = 500
_PROBLEM = "application/problem+json; charset=utf-8"
_ERRORS_DOC = "https://mailchimp.com/developer/marketing/docs/errors/"


class MailchimpHooks(Protocol):
    """What the API needs from its host: time, webhook delivery and URL validation."""

    def now(self) -> float: ...

    def batch_delay(self) -> float: ...

    def validate_webhook_url(self, url: str) -> bool: ...

    def mailchimp_event(
        self, lst: McList, kind: str, data: dict[str, Any], source: str
    ) -> None: ...


def problem(refusal: ProblemError) -> Response:
    """A Mailchimp problem-detail response."""
    body: dict[str, Any] = {
        "type": _ERRORS_DOC,
        "title": refusal.title,
        "status": refusal.status,
        "detail": refusal.detail,
        "instance": str(uuid.uuid4()),
    }
    if refusal.errors:
        body["errors"] = refusal.errors
    return json_response(refusal.status, body, content_type=_PROBLEM, headers=refusal.headers)


def _page(
    lst: McList, status: str | None, since: str | None, offset: int, count: int
) -> tuple[list[McMember], int]:
    """The page at `offset` of the members in `status` changed since `since`, and how many such
    members there are. A page of every member is a slice of the members kept in order
    (`McList.in_order`)."""
    if status is None and not since and offset >= 0 and count >= 0:
        return lst.in_order()[offset : offset + count], len(lst.members)
    rows = [
        m
        for m in lst.members.values()
        if status in (None, m.status) and (not since or m.last_changed >= since)
    ]
    return rows[offset : offset + count], len(rows)


def account_key(request: Request) -> str | None:
    """The API key of a request: Basic (any user, key as password) or Bearer."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


class MailchimpApi:
    """Handlers for one sandbox; every call runs under the sandbox lock."""

    def __init__(self, hooks: MailchimpHooks) -> None:
        self.hooks = hooks
        self.router = Router()
        routes: list[tuple[str, str, Callable[[McAccount, Request], Response]]] = [
            ("GET", "/ping", self.ping),
            ("GET", "/lists", self.get_lists),
            ("POST", "/lists", self.post_list),
            ("GET", "/lists/{list_id}", self.get_list),
            ("POST", "/lists/{list_id}", self.batch_subscribe),
            ("GET", "/lists/{list_id}/members", self.get_members),
            ("POST", "/lists/{list_id}/members", self.post_member),
            ("GET", "/lists/{list_id}/members/{hash}", self.get_member),
            ("PUT", "/lists/{list_id}/members/{hash}", self.put_member),
            ("PATCH", "/lists/{list_id}/members/{hash}", self.patch_member),
            ("DELETE", "/lists/{list_id}/members/{hash}", self.delete_member),
            (
                "POST",
                "/lists/{list_id}/members/{hash}/actions/delete-permanent",
                self.delete_permanent,
            ),
            ("GET", "/lists/{list_id}/merge-fields", self.get_merge_fields),
            ("POST", "/lists/{list_id}/merge-fields", self.post_merge_field),
        ]
        self.batches = BatchHandlers(hooks.now, hooks.batch_delay, self._route)
        routes += TagHandlers(hooks.now).routes()
        routes += WebhookHandlers(hooks.validate_webhook_url).routes()
        routes += CampaignHandlers().routes()
        routes += self.batches.routes()
        for method, template, handler in routes:
            self.router.add(method, template, handler)

    # --- dispatch -----------------------------------------------------------------------

    def handle(self, account: McAccount, request: Request) -> tuple[str, Response]:
        """(route template, response) for an authenticated request."""
        self.batches.run_due_batches(account)
        return self._route(account, request)

    def _route(self, account: McAccount, request: Request) -> tuple[str, Response]:
        resolved = self.router.resolve(request.method, request.path)
        if resolved is None:
            allowed = self.router.allowed(request.path)
            if allowed:
                refusal = ProblemError(
                    405,
                    "Method Not Allowed",
                    "The requested method and resource are not compatible.",
                    headers={"allow": ", ".join(allowed)},
                )
                return request.path, problem(refusal)
            return request.path, problem(not_found())
        template, handler, params = resolved
        request.params = params
        try:
            return template, handler(account, request)
        except ProblemError as refusal:
            return template, problem(refusal)
        except BodyError as exc:
            return template, problem(
                ProblemError(
                    400,
                    "JSON Parse Exception",
                    f"We encountered an unspecified JSON parsing error: {exc}",
                )
            )

    # --- helpers ------------------------------------------------------------------------

    def _event(self, lst: McList, kind: str, member: McMember, **extra: Any) -> None:
        if not lst.webhooks:
            return
        data = {
            "id": member.id,
            "list_id": lst.id,
            "email": member.email_address,
            "email_type": "html",
            "merges": {"EMAIL": member.email_address, **member.merge_fields},
            **extra,
        }
        self.hooks.mailchimp_event(lst, kind, data, "api")

    # --- account ------------------------------------------------------------------------

    def ping(self, account: McAccount, request: Request) -> Response:
        return json_response(200, {"health_status": "Everything's Chimpy!"})

    # --- lists --------------------------------------------------------------------------

    def _list_json(self, lst: McList) -> dict[str, Any]:
        statuses = [m.status for m in lst.members.values()]
        return {
            "id": lst.id,
            "web_id": lst.web_id,
            "name": lst.name,
            "contact": lst.contact,
            "permission_reminder": lst.permission_reminder,
            "use_archive_bar": True,
            "campaign_defaults": lst.campaign_defaults,
            "notify_on_subscribe": "",
            "notify_on_unsubscribe": "",
            "date_created": lst.date_created,
            "list_rating": 0,
            "email_type_option": lst.email_type_option,
            "subscribe_url_short": f"https://eepurl.com/{lst.id}",
            "subscribe_url_long": f"https://sandbox.list-manage.com/subscribe?id={lst.id}",
            "beamer_address": f"{lst.id}@inbound.mailchimp.com",
            "visibility": "prv",
            "double_optin": lst.double_optin,
            "has_welcome": False,
            "marketing_permissions": False,
            "modules": [],
            "stats": {
                "member_count": statuses.count("subscribed"),
                "unsubscribe_count": statuses.count("unsubscribed"),
                "cleaned_count": statuses.count("cleaned"),
                "total_contacts": len(statuses),
            },
            "_links": [],
        }

    def get_lists(self, account: McAccount, request: Request) -> Response:
        count, offset = request.int_arg("count", 10), request.int_arg("offset", 0)
        lists = list(account.lists.values())
        body = {
            "lists": [self._list_json(lst) for lst in lists[offset : offset + count]],
            "total_items": len(lists),
            "constraints": {
                "may_create": len(lists) < account.max_lists,
                "max_instances": account.max_lists,
                "current_total_instances": len(lists),
            },
            "_links": [],
        }
        return json_response(200, partial(body, request))

    def get_list(self, account: McAccount, request: Request) -> Response:
        return json_response(
            200, partial(self._list_json(members.find_list(account, request)), request)
        )

    def post_list(self, account: McAccount, request: Request) -> Response:
        body = request.json_object()
        for field in ("name", "contact", "permission_reminder", "campaign_defaults"):
            if not body.get(field):
                raise invalid(field, "This value should not be blank.")
        if "email_type_option" not in body:
            raise invalid("email_type_option", "This value should not be blank.")
        if len(account.lists) >= account.max_lists:
            raise ProblemError(
                403,
                "User Disabled",
                "You have reached the maximum number of audiences allowed by your plan.",
            )
        list_id = secrets.token_hex(5)
        lst = McList(
            id=list_id,
            web_id=account.new_id(),
            name=str(body["name"]),
            contact=dict(body["contact"]),
            permission_reminder=str(body["permission_reminder"]),
            campaign_defaults=dict(body["campaign_defaults"]),
            email_type_option=bool(body["email_type_option"]),
            double_optin=bool(body.get("double_optin", False)),
            date_created=now_iso(self.hooks.now()),
        )
        for order, (tag, name) in enumerate(
            (
                ("FNAME", "First Name"),
                ("LNAME", "Last Name"),
                ("ADDRESS", "Address"),
                ("PHONE", "Phone Number"),
            )
        ):
            kind = {"ADDRESS": "address", "PHONE": "phone"}.get(tag, "text")
            lst.merge_fields.append(
                McMergeField(
                    merge_id=order + 1, tag=tag, name=name, type=kind, display_order=order + 2
                )
            )
        account.lists[list_id] = lst
        return json_response(200, self._list_json(lst))

    # --- batch subscribe ----------------------------------------------------------------

    def batch_subscribe(self, account: McAccount, request: Request) -> Response:
        lst = members.find_list(account, request)
        body = request.json_object()
        batch = body.get("members")
        if not isinstance(batch, list):
            raise invalid("members", "This value should not be blank.")
        if len(batch) > MAX_BATCH_MEMBERS:
            # Wording modelled on the segment endpoint's answer for its 500-item cap.
            raise ProblemError(
                400,
                "Invalid Resource",
                "Maximum allowed member items exceeded, "
                f"please provide at most {MAX_BATCH_MEMBERS} items in members field",
            )
        update_existing = bool(body.get("update_existing", False))
        skip_duplicates = request.bool_arg("skip_duplicate_check")
        now = self.hooks.now()
        rules = members.MergeRules.of(lst)
        created: list[McMember] = []
        updated: list[McMember] = []
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()
        for entry in batch:
            email = str(entry.get("email_address") or "") if isinstance(entry, dict) else ""
            folded = email.lower()
            try:
                if folded in seen:
                    if skip_duplicates:
                        continue
                    raise ProblemError(
                        400, "Invalid Resource", f"{email} is a duplicate in this request."
                    )
                seen.add(folded)
                member, is_new = self._subscribe_one(
                    account,
                    lst,
                    entry,
                    email,
                    now=now,
                    rules=rules,
                    update_existing=update_existing,
                )
            except ProblemError as refusal:
                errors.append(self._batch_error(email, refusal))
                continue
            # shown once the batch is done: no later entry changes it (an address is one member)
            (created if is_new else updated).append(member)
        return json_response(
            200,
            {
                "new_members": members.representations(lst, created),
                "updated_members": members.representations(lst, updated),
                "errors": errors,
                "total_created": len(created),
                "total_updated": len(updated),
                "error_count": len(errors),
                "_links": [],
            },
        )

    def _subscribe_one(
        self,
        account: McAccount,
        lst: McList,
        entry: Any,
        email: str,
        *,
        now: float,
        rules: members.MergeRules,
        update_existing: bool,
    ) -> tuple[McMember, bool]:
        """Subscribe `entry` (its address: `email`), or update its member; (member, is new)."""
        if not isinstance(entry, dict):
            raise invalid("members", "Schema describes object, but another type was provided.")
        status = members.check_status_value(entry.get("status"))
        existing = lst.members.get(members.subscriber_hash(email)) if email else None
        if existing is not None and existing.status != "archived":
            if not update_existing:
                raise members.exists(email)
            members.update(lst, existing, {**entry, "email_address": None}, now)
            members.add_tags(existing, [str(t) for t in entry.get("tags") or []], now)
            members.register_tags(account, lst, existing)
            self._event(lst, "profile", existing)
            return existing, False
        member = members.create(account, lst, entry, status, now, rules=rules)
        if existing is not None:  # re-added: `create` leaves its tags to register
            members.register_tags(account, lst, member)
        self._event(lst, "subscribe", member)
        return member, True

    @staticmethod
    def _batch_error(email: str, refusal: ProblemError) -> dict[str, Any]:
        field = refusal.errors[0] if refusal.errors else {}
        return {
            "email_address": email,
            "error": refusal.detail,
            "error_code": "ERROR_CONTACT_EXISTS"
            if refusal.title == "Member Exists"
            else "ERROR_GENERIC",
            "field": field.get("field", ""),
            "field_message": field.get("message", ""),
        }

    # --- members ------------------------------------------------------------------------

    def get_members(self, account: McAccount, request: Request) -> Response:
        lst = members.find_list(account, request)
        count, offset = request.int_arg("count", 10), request.int_arg("offset", 0)
        since = request.arg("since_last_changed")
        page, total = _page(lst, request.arg("status"), since, offset, count)
        only = item_fields(request, "members")
        body = {
            "members": members.representations(lst, page, only),
            "list_id": lst.id,
            "total_items": total,
            "_links": [],
        }
        return json_response(200, partial(body, request))

    def get_member(self, account: McAccount, request: Request) -> Response:
        lst = members.find_list(account, request)
        member = members.find(lst, request.params["hash"], contact_id=True)
        return json_response(
            200, partial(members.representation(lst, member, lst.segments), request)
        )

    def post_member(self, account: McAccount, request: Request) -> Response:
        lst = members.find_list(account, request)
        body = request.json_object()
        status = members.check_status_value(body.get("status"))
        email = str(body.get("email_address") or "")
        existing = lst.members.get(members.subscriber_hash(email)) if email else None
        if existing is not None and existing.status != "archived":
            raise members.exists(email)
        member = members.create(account, lst, body, status, self.hooks.now())
        if existing is not None:  # re-added: `create` leaves its tags to register
            members.register_tags(account, lst, member)
        self._event(lst, "subscribe", member)
        return json_response(200, members.representation(lst, member, lst.segments))

    def put_member(self, account: McAccount, request: Request) -> Response:
        lst = members.find_list(account, request)
        body = request.json_object()
        email = str(body.get("email_address") or "")
        if not email:
            raise invalid("email_address", "This value should not be blank.")
        existing = lst.members.get(request.params["hash"].lower())
        now = self.hooks.now()
        if existing is None:
            status = members.check_status_value(body.get("status") or body.get("status_if_new"))
            member = members.create(account, lst, body, status, now)
        else:
            payload = {k: v for k, v in body.items() if k != "status_if_new"}
            member = members.update(lst, existing, payload, now)
        members.register_tags(account, lst, member)
        return json_response(200, members.representation(lst, member, lst.segments))

    def patch_member(self, account: McAccount, request: Request) -> Response:
        lst = members.find_list(account, request)
        member = members.find(lst, request.params["hash"], contact_id=True)
        old_email = member.email_address
        members.update(lst, member, request.json_object(), self.hooks.now())
        if member.email_address != old_email:
            data = members.upemail_data(lst, member, old_email)
            self.hooks.mailchimp_event(lst, "upemail", data, "api")
        return json_response(200, members.representation(lst, member, lst.segments))

    def delete_member(self, account: McAccount, request: Request) -> Response:
        lst = members.find_list(account, request)
        member = members.find(lst, request.params["hash"], contact_id=True)
        members.archive(lst, member, self.hooks.now())
        self._event(lst, "unsubscribe", member, action="delete", reason="manual")
        return empty_response(204, {"content-type": "application/json; charset=utf-8"})

    def delete_permanent(self, account: McAccount, request: Request) -> Response:
        lst = members.find_list(account, request)
        members.forget(lst, members.find(lst, request.params["hash"]))
        return empty_response(204, {"content-type": "application/json; charset=utf-8"})

    # --- merge fields -------------------------------------------------------------------

    def _merge_field_json(self, lst: McList, field: McMergeField) -> dict[str, Any]:
        return {**field.model_dump(), "list_id": lst.id, "_links": []}

    def get_merge_fields(self, account: McAccount, request: Request) -> Response:
        lst = members.find_list(account, request)
        count, offset = request.int_arg("count", 10), request.int_arg("offset", 0)
        fields = lst.merge_fields
        body = {
            "merge_fields": [
                self._merge_field_json(lst, f) for f in fields[offset : offset + count]
            ],
            "list_id": lst.id,
            "total_items": len(fields),
            "_links": [],
        }
        return json_response(200, partial(body, request))

    def post_merge_field(self, account: McAccount, request: Request) -> Response:
        lst = members.find_list(account, request)
        body = request.json_object()
        if not body.get("name"):
            raise invalid("name", "This value should not be blank.")
        if not body.get("type"):
            raise invalid("type", "This value should not be blank.")
        tag = str(body.get("tag") or f"MMERGE{len(lst.merge_fields) + 1}").upper()
        if any(f.tag == tag for f in lst.merge_fields):
            raise ProblemError(
                400,
                "Invalid Resource",
                f'A Merge Field with the tag "{tag}" already exists for this list.',
            )
        field = McMergeField(
            merge_id=max((f.merge_id for f in lst.merge_fields), default=0) + 1,
            tag=tag,
            name=str(body["name"]),
            type=str(body["type"]),
            required=bool(body.get("required", False)),
            default_value=str(body.get("default_value", "")),
            public=bool(body.get("public", True)),
            display_order=len(lst.merge_fields) + 2,
            options=dict(body.get("options") or {}),
            help_text=str(body.get("help_text", "")),
        )
        lst.merge_fields.append(field)
        for member in lst.members.values():
            member.merge_fields.setdefault(tag, "")
        return json_response(200, self._merge_field_json(lst, field))
