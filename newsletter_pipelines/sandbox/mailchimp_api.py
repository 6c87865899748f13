"""The emulated Mailchimp Marketing API 3.0 (the endpoints the sync uses, faithfully)."""

from __future__ import annotations

import base64
import json
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
from newsletter_pipelines.sandbox.fields import partial
from newsletter_pipelines.sandbox.mailchimp_members import ProblemError, invalid, not_found
from newsletter_pipelines.sandbox.mailchimp_state import (
    McAccount,
    McBatch,
    McList,
    McMember,
    McMergeField,
    McWebhook,
)

MAX_BATCH_MEMBERS = 500
MAX_SEGMENT_MEMBERS = 500
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
            ("GET", "/lists/{list_id}/members/{hash}/tags", self.get_member_tags),
            ("POST", "/lists/{list_id}/members/{hash}/tags", self.post_member_tags),
            ("GET", "/lists/{list_id}/merge-fields", self.get_merge_fields),
            ("POST", "/lists/{list_id}/merge-fields", self.post_merge_field),
            ("GET", "/lists/{list_id}/tag-search", self.tag_search),
            ("POST", "/lists/{list_id}/segments", self.post_segment),
            ("POST", "/lists/{list_id}/segments/{segment_id}", self.segment_members),
            ("GET", "/lists/{list_id}/webhooks", self.get_webhooks),
            ("POST", "/lists/{list_id}/webhooks", self.post_webhook),
            ("GET", "/lists/{list_id}/webhooks/{webhook_id}", self.get_webhook),
            ("PATCH", "/lists/{list_id}/webhooks/{webhook_id}", self.patch_webhook),
            ("DELETE", "/lists/{list_id}/webhooks/{webhook_id}", self.delete_webhook),
            ("POST", "/batches", self.post_batch),
            ("GET", "/batches/{batch_id}", self.get_batch),
        ]
        for method, template, handler in routes:
            self.router.add(method, template, handler)

    # --- dispatch -----------------------------------------------------------------------

    def handle(self, account: McAccount, request: Request) -> tuple[str, Response]:
        """(route template, response) for an authenticated request."""
        self.run_due_batches(account)
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

    def run_due_batches(self, account: McAccount) -> None:
        """Run every submitted batch whose processing time has come."""
        now = self.hooks.now()
        for batch in account.batches.values():
            if batch.status != "finished" and now >= batch.submitted_at + self.hooks.batch_delay():
                batch.results = [self._run_operation(account, op) for op in batch.operations]
                batch.status = "finished"
                batch.completed_at = now

    def _run_operation(self, account: McAccount, op: dict[str, Any]) -> dict[str, Any]:
        path = "/" + str(op.get("path", "")).lstrip("/")
        params = op.get("params") or {}
        request = Request(
            method=str(op.get("method", "GET")).upper(),
            path=path,
            query={str(k): [str(v)] for k, v in params.items()},
            body=str(op.get("body") or "").encode(),
        )
        _, response = self._route(account, request)
        return {
            "status_code": response.status,
            "operation_id": op.get("operation_id"),
            "response": response.body.decode(),
        }

    # --- helpers ------------------------------------------------------------------------

    def _list(self, account: McAccount, request: Request) -> McList:
        lst = account.lists.get(request.params["list_id"])
        if lst is None:
            raise not_found()
        return lst

    def _member_json(self, lst: McList, member: McMember) -> dict[str, Any]:
        return members.representation(lst, member, lst.segments)

    def _register_tags(self, account: McAccount, lst: McList, member: McMember) -> None:
        for name in member.tags:
            if name not in lst.segments:
                lst.segments[name] = account.new_id()

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
        return json_response(200, partial(self._list_json(self._list(account, request)), request))

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
        lst = self._list(account, request)
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
        created: list[dict[str, Any]] = []
        updated: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()
        for entry in batch:
            email = str(entry.get("email_address") or "") if isinstance(entry, dict) else ""
            try:
                if email.lower() in seen:
                    if skip_duplicates:
                        continue
                    raise ProblemError(
                        400, "Invalid Resource", f"{email} is a duplicate in this request."
                    )
                seen.add(email.lower())
                member, is_new = self._subscribe_one(account, lst, entry, update_existing, now)
            except ProblemError as refusal:
                errors.append(self._batch_error(email, refusal))
                continue
            (created if is_new else updated).append(self._member_json(lst, member))
        return json_response(
            200,
            {
                "new_members": created,
                "updated_members": updated,
                "errors": errors,
                "total_created": len(created),
                "total_updated": len(updated),
                "error_count": len(errors),
                "_links": [],
            },
        )

    def _subscribe_one(
        self, account: McAccount, lst: McList, entry: Any, update_existing: bool, now: float
    ) -> tuple[McMember, bool]:
        if not isinstance(entry, dict):
            raise invalid("members", "Schema describes object, but another type was provided.")
        status = members.check_status_value(entry.get("status"))
        email = str(entry.get("email_address") or "")
        existing = lst.members.get(members.subscriber_hash(email)) if email else None
        if existing is not None and existing.status != "archived":
            if not update_existing:
                raise members.exists(email)
            members.update(lst, existing, {**entry, "email_address": None}, now)
            members.add_tags(existing, [str(t) for t in entry.get("tags") or []], now)
            self._register_tags(account, lst, existing)
            self._event(lst, "profile", existing)
            return existing, False
        member = members.create(account, lst, entry, status, now)
        self._register_tags(account, lst, member)
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
        lst = self._list(account, request)
        count, offset = request.int_arg("count", 10), request.int_arg("offset", 0)
        status = request.arg("status")
        rows = [m for m in lst.members.values() if status is None or m.status == status]
        since = request.arg("since_last_changed")
        if since:
            rows = [m for m in rows if m.last_changed >= since]
        body = {
            "members": [self._member_json(lst, m) for m in rows[offset : offset + count]],
            "list_id": lst.id,
            "total_items": len(rows),
            "_links": [],
        }
        return json_response(200, partial(body, request))

    def get_member(self, account: McAccount, request: Request) -> Response:
        lst = self._list(account, request)
        member = members.find(lst, request.params["hash"])
        return json_response(200, partial(self._member_json(lst, member), request))

    def post_member(self, account: McAccount, request: Request) -> Response:
        lst = self._list(account, request)
        body = request.json_object()
        status = members.check_status_value(body.get("status"))
        email = str(body.get("email_address") or "")
        existing = lst.members.get(members.subscriber_hash(email)) if email else None
        if existing is not None and existing.status != "archived":
            raise members.exists(email)
        member = members.create(account, lst, body, status, self.hooks.now())
        self._register_tags(account, lst, member)
        self._event(lst, "subscribe", member)
        return json_response(200, self._member_json(lst, member))

    def put_member(self, account: McAccount, request: Request) -> Response:
        lst = self._list(account, request)
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
        self._register_tags(account, lst, member)
        return json_response(200, self._member_json(lst, member))

    def patch_member(self, account: McAccount, request: Request) -> Response:
        lst = self._list(account, request)
        member = members.find(lst, request.params["hash"])
        old_email = member.email_address
        members.update(lst, member, request.json_object(), self.hooks.now())
        if member.email_address != old_email:
            self._event(lst, "upemail", member, old_email=old_email, new_email=member.email_address)
        return json_response(200, self._member_json(lst, member))

    def delete_member(self, account: McAccount, request: Request) -> Response:
        lst = self._list(account, request)
        member = members.find(lst, request.params["hash"])
        members.archive(lst, member, self.hooks.now())
        self._event(lst, "unsubscribe", member, action="delete", reason="manual")
        return empty_response(204, {"content-type": "application/json; charset=utf-8"})

    def delete_permanent(self, account: McAccount, request: Request) -> Response:
        lst = self._list(account, request)
        members.forget(lst, members.find(lst, request.params["hash"]))
        return empty_response(204, {"content-type": "application/json; charset=utf-8"})

    def get_member_tags(self, account: McAccount, request: Request) -> Response:
        lst = self._list(account, request)
        member = members.find(lst, request.params["hash"])
        tags = [
            {"id": lst.segments.get(name, 0), "name": name, "date_added": added}
            for name, added in member.tags.items()
        ]
        count, offset = request.int_arg("count", 10), request.int_arg("offset", 0)
        body = {"tags": tags[offset : offset + count], "total_items": len(tags), "_links": []}
        return json_response(200, partial(body, request))

    def post_member_tags(self, account: McAccount, request: Request) -> Response:
        lst = self._list(account, request)
        member = members.find(lst, request.params["hash"])
        tags = request.json_object().get("tags")
        if not isinstance(tags, list):
            raise invalid("tags", "This value should not be blank.")
        members.set_tags(member, [t for t in tags if isinstance(t, dict)], self.hooks.now())
        self._register_tags(account, lst, member)
        return empty_response(204, {"content-type": "application/json; charset=utf-8"})

    # --- merge fields -------------------------------------------------------------------

    def _merge_field_json(self, lst: McList, field: McMergeField) -> dict[str, Any]:
        return {**field.model_dump(), "list_id": lst.id, "_links": []}

    def get_merge_fields(self, account: McAccount, request: Request) -> Response:
        lst = self._list(account, request)
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
        lst = self._list(account, request)
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

    # --- tags as segments ---------------------------------------------------------------

    def tag_search(self, account: McAccount, request: Request) -> Response:
        lst = self._list(account, request)
        prefix = (request.arg("name") or "").lower()
        tags = [
            {"id": i, "name": n} for n, i in lst.segments.items() if n.lower().startswith(prefix)
        ]
        return json_response(200, {"tags": tags, "total_items": len(tags)})

    def post_segment(self, account: McAccount, request: Request) -> Response:
        lst = self._list(account, request)
        body = request.json_object()
        name = str(body.get("name") or "")
        emails = body.get("static_segment")
        if not name or not isinstance(emails, list):
            raise invalid("static_segment", "Only static segments (tags) are emulated.")
        segment_id = lst.segments.setdefault(name, account.new_id())
        now = self.hooks.now()
        for email in emails:
            member = lst.members.get(members.subscriber_hash(str(email)))
            if member is not None:
                members.set_tags(member, [{"name": name, "status": "active"}], now)
        return json_response(200, self._segment_json(lst, name, segment_id))

    def _segment_json(self, lst: McList, name: str, segment_id: int) -> dict[str, Any]:
        stamp = lst.date_created
        count = sum(1 for m in lst.members.values() if name in m.tags)
        return {
            "id": segment_id,
            "name": name,
            "member_count": count,
            "type": "static",
            "created_at": stamp,
            "updated_at": stamp,
            "list_id": lst.id,
            "_links": [],
        }

    def segment_members(self, account: McAccount, request: Request) -> Response:
        lst = self._list(account, request)
        segment_id = (
            int(request.params["segment_id"]) if request.params["segment_id"].isdigit() else -1
        )
        name = next((n for n, i in lst.segments.items() if i == segment_id), None)
        if name is None:
            raise not_found()
        body = request.json_object()
        adds, removes = body.get("members_to_add") or [], body.get("members_to_remove") or []
        if len(adds) > MAX_SEGMENT_MEMBERS or len(removes) > MAX_SEGMENT_MEMBERS:
            raise ProblemError(
                400,
                "Invalid Resource",
                "Maximum allowed member items exceeded, please provide at most 500 items in "
                "members_to_add field or members_to_remove field",
            )
        now = self.hooks.now()
        added, removed, missing = [], [], []
        for emails, status, done in ((adds, "active", added), (removes, "inactive", removed)):
            for email in emails:
                member = lst.members.get(members.subscriber_hash(str(email)))
                if member is None:
                    missing.append(str(email))
                    continue
                members.set_tags(member, [{"name": name, "status": status}], now)
                done.append(self._member_json(lst, member))
        errors = [{"email_addresses": missing, "error": "Email addresses are not list members"}]
        return json_response(
            200,
            {
                "members_added": added,
                "members_removed": removed,
                "errors": errors if missing else [],
                "total_added": len(added),
                "total_removed": len(removed),
                "error_count": len(missing),
                "_links": [],
            },
        )

    # --- webhooks -----------------------------------------------------------------------

    def _webhook_json(self, lst: McList, hook: McWebhook) -> dict[str, Any]:
        return {**hook.model_dump(), "list_id": lst.id, "_links": []}

    def _webhook(self, lst: McList, request: Request) -> McWebhook:
        hook = next((h for h in lst.webhooks if h.id == request.params["webhook_id"]), None)
        if hook is None:
            raise not_found()
        return hook

    def get_webhooks(self, account: McAccount, request: Request) -> Response:
        lst = self._list(account, request)
        hooks = [self._webhook_json(lst, h) for h in lst.webhooks]
        return json_response(
            200, {"webhooks": hooks, "list_id": lst.id, "total_items": len(hooks), "_links": []}
        )

    def get_webhook(self, account: McAccount, request: Request) -> Response:
        lst = self._list(account, request)
        return json_response(200, self._webhook_json(lst, self._webhook(lst, request)))

    def post_webhook(self, account: McAccount, request: Request) -> Response:
        lst = self._list(account, request)
        body = request.json_object()
        url = str(body.get("url") or "")
        if not url:
            raise invalid("url", "This value should not be blank.")
        if not self.hooks.validate_webhook_url(url):
            raise invalid(
                "url",
                "We couldn't verify the URL is working. Please double check and try again. "
                f"URL: {url}",
            )
        events = {
            k: False
            for k in ("subscribe", "unsubscribe", "profile", "cleaned", "upemail", "campaign")
        }
        sources = {"user": False, "admin": False, "api": False}
        hook = McWebhook(
            id=secrets.token_hex(5),
            url=url,
            events=events | dict(body.get("events") or {}),
            sources=sources | dict(body.get("sources") or {}),
        )
        lst.webhooks.append(hook)
        return json_response(200, self._webhook_json(lst, hook))

    def patch_webhook(self, account: McAccount, request: Request) -> Response:
        lst = self._list(account, request)
        hook = self._webhook(lst, request)
        body = request.json_object()
        hook.url = str(body.get("url") or hook.url)
        hook.events.update(body.get("events") or {})
        hook.sources.update(body.get("sources") or {})
        return json_response(200, self._webhook_json(lst, hook))

    def delete_webhook(self, account: McAccount, request: Request) -> Response:
        lst = self._list(account, request)
        lst.webhooks.remove(self._webhook(lst, request))
        return empty_response(204)

    # --- batch operations ---------------------------------------------------------------

    def _batch_json(self, batch: McBatch, request: Request) -> dict[str, Any]:
        errored = sum(1 for r in batch.results if int(r["status_code"]) >= 400)
        body: dict[str, Any] = {
            "id": batch.id,
            "status": batch.status,
            "total_operations": len(batch.operations),
            "finished_operations": len(batch.results),
            "errored_operations": errored,
            "submitted_at": now_iso(batch.submitted_at),
            "response_body_url": "",
            "_links": [],
        }
        if batch.completed_at is not None:
            body["completed_at"] = now_iso(batch.completed_at)
            body["response_body_url"] = (
                f"{request.origin}/_sandbox/files/mailchimp-batches/{batch.id}.tar.gz"
            )
        return body

    def post_batch(self, account: McAccount, request: Request) -> Response:
        operations = request.json_object().get("operations")
        if not isinstance(operations, list):
            raise invalid("operations", "This value should not be blank.")
        for op in operations:
            if not isinstance(op, dict) or op.get("method") not in (
                "GET",
                "POST",
                "PUT",
                "PATCH",
                "DELETE",
            ):
                raise invalid("operations", "Each operation needs a method and a path.")
            if op.get("body") is not None:
                try:
                    json.loads(op["body"])
                except (TypeError, ValueError):
                    raise invalid(
                        "operations", "The body of an operation must be a JSON string."
                    ) from None
        batch = McBatch(
            id=secrets.token_hex(5), operations=operations, submitted_at=self.hooks.now()
        )
        account.batches[batch.id] = batch
        return json_response(200, self._batch_json(batch, request))

    def get_batch(self, account: McAccount, request: Request) -> Response:
        batch = account.batches.get(request.params["batch_id"])
        if batch is None:
            raise not_found()
        return json_response(200, partial(self._batch_json(batch, request), request))
