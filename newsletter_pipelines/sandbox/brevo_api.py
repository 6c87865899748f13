"""The emulated Brevo API v3 (the contact endpoints the sync uses, faithfully).

Faithful quirks kept on purpose: unknown attributes are silently ignored (so a wrong attribute
name loses data unless the client checks), `emailBlacklisted: false` clears a blacklist, imports
run as background processes, and rate limits answer 429 with `x-sib-ratelimit-*` headers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

from newsletter_pipelines.sandbox.brevo_state import (
    BvAccount,
    BvContact,
    BvFolder,
    BvList,
    BvProcess,
    BvWebhook,
)
from newsletter_pipelines.sandbox.core import (
    BodyError,
    Request,
    Response,
    Router,
    empty_response,
    json_response,
    parse_iso,
)

MAX_LIST_MEMBERS_CALL = 150
MAX_IMPORT_BYTES = 10 * 1024 * 1024
_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_FOLDER_LIMIT, _LIST_LIMIT, _CONTACT_LIMIT = 50, 50, 500


class BrevoError(Exception):
    """A Brevo error answer: `{"code", "message"}`."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class BrevoHooks(Protocol):
    """What the API needs from its host."""

    def now(self) -> float: ...

    def process_delay(self) -> float: ...

    def brevo_event(self, account: BvAccount, event: str, payload: dict[str, Any]) -> None: ...


def error(exc: BrevoError) -> Response:
    """A Brevo error response."""
    return json_response(
        exc.status, {"code": exc.code, "message": exc.message}, headers=exc.headers
    )


def stamp(timestamp: float) -> str:
    """Brevo's timestamp format: milliseconds and a `+00:00` offset."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def contact_json(contact: BvContact) -> dict[str, Any]:
    """A contact as Brevo returns it (`getContactDetails`)."""
    return {
        "email": contact.email,
        "id": contact.id,
        "emailBlacklisted": contact.emailBlacklisted,
        "smsBlacklisted": contact.smsBlacklisted,
        "createdAt": stamp(contact.createdAt),
        "modifiedAt": stamp(contact.modifiedAt),
        "listIds": list(contact.listIds),
        "listUnsubscribed": list(contact.listUnsubscribed),
        "attributes": dict(contact.attributes),
    }


class BrevoApi:
    """Handlers for one sandbox; every call runs under the sandbox lock."""

    def __init__(self, hooks: BrevoHooks) -> None:
        self.hooks = hooks
        self.router = Router()
        self._windows: dict[tuple[str, str], tuple[float, int]] = {}
        routes: list[tuple[str, str, Callable[[BvAccount, Request], Response]]] = [
            ("GET", "/account", self.get_account),
            ("GET", "/contacts/attributes", self.get_attributes),
            ("GET", "/contacts/folders", self.get_folders),
            ("POST", "/contacts/folders", self.post_folder),
            ("GET", "/contacts/folders/{folderId}/lists", self.get_folder_lists),
            ("GET", "/contacts/lists", self.get_lists),
            ("POST", "/contacts/lists", self.post_list),
            ("GET", "/contacts/lists/{listId}/contacts", self.get_list_contacts),
            ("POST", "/contacts/lists/{listId}/contacts/add", self.add_to_list),
            ("POST", "/contacts/lists/{listId}/contacts/remove", self.remove_from_list),
            ("POST", "/contacts/import", self.post_import),
            ("POST", "/contacts/batch", self.post_batch),
            ("POST", "/contacts", self.post_contact),
            ("GET", "/contacts/{identifier}", self.get_contact),
            ("PUT", "/contacts/{identifier}", self.put_contact),
            ("DELETE", "/contacts/{identifier}", self.delete_contact),
            ("GET", "/processes/{processId}", self.get_process),
            ("GET", "/webhooks", self.get_webhooks),
            ("POST", "/webhooks", self.post_webhook),
            ("DELETE", "/webhooks/{webhookId}", self.delete_webhook),
        ]
        for method, template, handler in routes:
            self.router.add(method, template, handler)

    # --- dispatch -----------------------------------------------------------------------

    def handle(self, account: BvAccount, request: Request) -> tuple[str, Response]:
        """(route template, response) for an authenticated request, rate limits applied."""
        self.run_due_processes(account)
        bucket = "contacts" if request.path.startswith("/contacts") else "other"
        limit, window = (
            (account.contacts_per_second, 1.0)
            if bucket == "contacts"
            else (account.other_per_hour, 3600.0)
        )
        allowed, headers = self._meter(account.api_key, bucket, limit, window)
        resolved = self.router.resolve(request.method, request.path)
        template = resolved[0] if resolved else request.path
        if not allowed:
            return template, error(
                BrevoError(429, "too_many_requests", "The rate limit has been exceeded", headers)
            )
        if resolved is None:
            code = 405 if self.router.allowed(request.path) else 404
            return template, error(
                BrevoError(
                    code, "method_not_allowed" if code == 405 else "document_not_found", "Not found"
                )
            )
        _, handler, params = resolved
        request.params = params
        try:
            response = handler(account, request)
        except BrevoError as exc:
            response = error(exc)
        except (BodyError, ValueError) as exc:
            response = error(BrevoError(400, "invalid_parameter", str(exc)))
        response.headers.update(headers)
        return template, response

    def _meter(
        self, key: str, bucket: str, limit: int, window: float
    ) -> tuple[bool, dict[str, str]]:
        now = self.hooks.now()
        start, used = self._windows.get((key, bucket), (now, 0))
        if now >= start + window:
            start, used = now, 0
        allowed = used < limit
        used += allowed
        self._windows[(key, bucket)] = (start, used)
        headers = {
            "x-sib-ratelimit-limit": str(limit),
            "x-sib-ratelimit-remaining": str(max(0, limit - used)),
            "x-sib-ratelimit-reset": str(math.ceil(start + window - now)),
        }
        return allowed, headers

    # --- helpers ------------------------------------------------------------------------

    @staticmethod
    def _page(request: Request, maximum: int, default: int) -> tuple[int, int]:
        limit, offset = request.int_arg("limit", default), request.int_arg("offset", 0)
        if limit > maximum or limit < 0 or offset < 0:
            raise BrevoError(400, "out_of_range", f"limit must be between 0 and {maximum}")
        return limit, offset

    @staticmethod
    def _list(account: BvAccount, list_id: str) -> BvList:
        lst = account.lists.get(int(list_id)) if list_id.isdigit() else None
        if lst is None:
            raise BrevoError(404, "document_not_found", "List ID does not exist")
        return lst

    @staticmethod
    def _contact(account: BvAccount, identifier: Any, kind: str | None = None) -> BvContact:
        text = str(identifier)
        if kind == "contact_id" or (kind is None and text.isdigit()):
            contact = account.contacts.get(int(text)) if text.isdigit() else None
        elif kind == "ext_id":
            contact = next((c for c in account.contacts.values() if c.ext_id == text), None)
        else:
            contact = account.by_email(text)
        if contact is None:
            raise BrevoError(404, "document_not_found", "Contact does not exist")
        return contact

    def _attributes(self, account: BvAccount, values: Any) -> dict[str, Any]:
        """Known attributes with acceptable values; the rest is ignored, as Brevo does."""
        if not isinstance(values, dict):
            return {}
        kept: dict[str, Any] = {}
        for name, value in values.items():
            attribute = account.attribute(str(name))
            if attribute is None or attribute.name == "EMAIL":
                continue
            if attribute.category == "category":
                allowed = {item["value"] for item in attribute.enumeration or []}
                if not isinstance(value, int) or value not in allowed:
                    continue
            kept[attribute.name] = value
        return kept

    def _apply(
        self, account: BvAccount, contact: BvContact, body: dict[str, Any], now: float
    ) -> list[int]:
        """Apply an update body to a contact; returns list ids newly linked."""
        attributes = body.get("attributes") if isinstance(body.get("attributes"), dict) else {}
        new_email = attributes.get("EMAIL") if attributes else None
        if new_email and str(new_email).lower() != contact.email.lower():
            self._check_address(str(new_email))
            if account.by_email(str(new_email)) is not None:
                raise BrevoError(400, "duplicate_parameter", "Contact already exist")
            account.rename(contact, str(new_email))
        contact.attributes.update(self._attributes(account, attributes))
        if "emailBlacklisted" in body:
            contact.emailBlacklisted = bool(body["emailBlacklisted"])
        if "ext_id" in body:
            contact.ext_id = str(body["ext_id"])
        added: list[int] = []
        for list_id in body.get("listIds") or []:
            self._list(account, str(list_id))
            if list_id not in contact.listIds:
                contact.listIds.append(list_id)
                added.append(list_id)
        for list_id in body.get("unlinkListIds") or []:
            if list_id in contact.listIds:
                contact.listIds.remove(list_id)
        contact.modifiedAt = now
        return added

    @staticmethod
    def _check_address(email: str) -> None:
        if not _ADDRESS.match(email):
            raise BrevoError(400, "invalid_parameter", "Invalid email address")

    def _new_contact(self, account: BvAccount, email: str, now: float) -> BvContact:
        self._check_address(email)
        contact = BvContact(id=account.new_id(), email=email, createdAt=now, modifiedAt=now)
        account.add_contact(contact)
        return contact

    def _events(
        self, account: BvAccount, contact: BvContact, added: Iterable[int], updated: bool
    ) -> None:
        if not account.webhooks:
            return
        now = self.hooks.now()
        common = {
            "email": contact.email,
            "key": account.key_name,
            "api_key_name": account.key_name,
            "date": stamp(now),
            "ts": int(now),
        }
        if updated:
            self.hooks.brevo_event(
                account,
                "contactUpdated",
                {"event": "contact_updated", "content": [contact.attributes], **common},
            )
        added = list(added)
        if added:
            self.hooks.brevo_event(
                account, "listAddition", {"event": "list_addition", "list_id": added, **common}
            )

    # --- account and attributes ---------------------------------------------------------

    def get_account(self, account: BvAccount, request: Request) -> Response:
        return json_response(
            200,
            {
                "organization_id": f"org-{account.key_name}",
                "user_id": 1,
                "enterprise": False,
                "companyName": account.company,
                "email": account.email,
                "firstName": "Sandbox",
                "lastName": "Owner",
                "address": {
                    "city": "Berlin",
                    "country": "Germany",
                    "street": "Sandbox 1",
                    "zipCode": "10115",
                },
                "dateTimePreferences": {
                    "timezone": "Europe/Berlin",
                    "timeFormat": "24",
                    "dateFormat": "dd-mm-yyyy",
                },
                "plan": [{"type": "free", "creditsType": "sendLimit", "credits": 300}],
                "relay": {
                    "enabled": True,
                    "data": {
                        "userName": account.email,
                        "relay": "smtp-relay.brevo.com",
                        "port": 587,
                    },
                },
                "marketingAutomation": {"enabled": False},
            },
        )

    def get_attributes(self, account: BvAccount, request: Request) -> Response:
        attributes = [a.model_dump(exclude_none=True) for a in account.attributes]
        return json_response(200, {"attributes": attributes})

    # --- folders and lists --------------------------------------------------------------

    def _list_json(self, account: BvAccount, lst: BvList) -> dict[str, Any]:
        members = [c for c in account.contacts.values() if lst.id in c.listIds]
        blacklisted = sum(1 for c in members if c.emailBlacklisted)
        return {
            "id": lst.id,
            "name": lst.name,
            "folderId": lst.folderId,
            "totalBlacklisted": blacklisted,
            "totalSubscribers": len(members) - blacklisted,
            "uniqueSubscribers": len(members),
        }

    def get_folders(self, account: BvAccount, request: Request) -> Response:
        limit, offset = self._page(request, _FOLDER_LIMIT, 10)
        folders = sorted(
            account.folders.values(),
            key=lambda f: f.id,
            reverse=request.arg("sort", "desc") == "desc",
        )
        rows = []
        for folder in folders[offset : offset + limit]:
            lists = [
                self._list_json(account, lst)
                for lst in account.lists.values()
                if lst.folderId == folder.id
            ]
            rows.append(
                {
                    "id": folder.id,
                    "name": folder.name,
                    "totalBlacklisted": sum(x["totalBlacklisted"] for x in lists),
                    "totalSubscribers": sum(x["totalSubscribers"] for x in lists),
                    "uniqueSubscribers": sum(x["uniqueSubscribers"] for x in lists),
                }
            )
        return json_response(200, {"count": len(folders), "folders": rows})

    def post_folder(self, account: BvAccount, request: Request) -> Response:
        name = str(request.json_object().get("name") or "")
        if not name:
            raise BrevoError(400, "missing_parameter", "name is missing")
        folder_id = account.new_id()
        account.folders[folder_id] = BvFolder(id=folder_id, name=name)
        return json_response(201, {"id": folder_id})

    def get_folder_lists(self, account: BvAccount, request: Request) -> Response:
        folder_id = request.params["folderId"]
        if not folder_id.isdigit() or int(folder_id) not in account.folders:
            raise BrevoError(404, "document_not_found", "Folder ID does not exist")
        return self._lists_page(account, request, int(folder_id))

    def get_lists(self, account: BvAccount, request: Request) -> Response:
        return self._lists_page(account, request, None)

    def _lists_page(self, account: BvAccount, request: Request, folder_id: int | None) -> Response:
        limit, offset = self._page(request, _LIST_LIMIT, 10)
        lists = sorted(
            (lst for lst in account.lists.values() if folder_id in (None, lst.folderId)),
            key=lambda lst: lst.id,
            reverse=request.arg("sort", "desc") == "desc",
        )
        rows = [self._list_json(account, lst) for lst in lists[offset : offset + limit]]
        if folder_id is not None:
            for row in rows:
                row.pop("folderId")
        return json_response(200, {"count": len(lists), "lists": rows})

    def post_list(self, account: BvAccount, request: Request) -> Response:
        body = request.json_object()
        name, folder_id = body.get("name"), body.get("folderId")
        if not name or not isinstance(folder_id, int):
            raise BrevoError(400, "missing_parameter", "name and folderId are required")
        if folder_id not in account.folders:
            raise BrevoError(404, "document_not_found", "Folder ID does not exist")
        list_id = account.new_id()
        account.lists[list_id] = BvList(
            id=list_id, name=str(name), folderId=folder_id, createdAt=self.hooks.now()
        )
        return json_response(201, {"id": list_id})

    def get_list_contacts(self, account: BvAccount, request: Request) -> Response:
        lst = self._list(account, request.params["listId"])
        limit, offset = self._page(request, _CONTACT_LIMIT, 50)
        rows = [c for c in account.contacts.values() if lst.id in c.listIds]
        since = request.arg("modifiedSince")
        if since:
            try:
                threshold = parse_iso(since)
            except ValueError:
                raise BrevoError(
                    400, "invalid_parameter", "modifiedSince is not a valid date"
                ) from None
            rows = [c for c in rows if c.modifiedAt >= threshold]
        rows.sort(key=lambda c: c.id, reverse=request.arg("sort", "desc") == "desc")
        page = [contact_json(c) for c in rows[offset : offset + limit]]
        return json_response(200, {"contacts": page, "count": len(rows)})

    def _members_body(self, request: Request) -> list[str]:
        body = request.json_object()
        if "emails" in body:
            values = [str(v) for v in body["emails"]]
        elif "ids" in body:
            values = [str(v) for v in body["ids"]]
        else:
            raise BrevoError(400, "missing_parameter", "emails or ids are required")
        if not 1 <= len(values) <= MAX_LIST_MEMBERS_CALL:
            raise BrevoError(
                400, "out_of_range", f"between 1 and {MAX_LIST_MEMBERS_CALL} contacts per call"
            )
        return values

    def _contact_or_none(self, account: BvAccount, identifier: str) -> BvContact | None:
        try:
            return self._contact(account, identifier)
        except BrevoError:
            return None

    def add_to_list(self, account: BvAccount, request: Request) -> Response:
        lst = self._list(account, request.params["listId"])
        success, failure = [], []
        now = self.hooks.now()
        for identifier in self._members_body(request):
            contact = self._contact_or_none(account, identifier)
            if contact is None or lst.id in contact.listIds:
                failure.append(identifier)
                continue
            contact.listIds.append(lst.id)
            contact.modifiedAt = now
            success.append(identifier)
            self._events(account, contact, [lst.id], updated=False)
        return self._membership_answer(success, failure)

    def remove_from_list(self, account: BvAccount, request: Request) -> Response:
        lst = self._list(account, request.params["listId"])
        success, failure = [], []
        now = self.hooks.now()
        for identifier in self._members_body(request):
            contact = self._contact_or_none(account, identifier)
            if contact is None or lst.id not in contact.listIds:
                failure.append(identifier)
                continue
            contact.listIds.remove(lst.id)
            contact.modifiedAt = now
            success.append(identifier)
        return self._membership_answer(success, failure)

    @staticmethod
    def _membership_answer(success: list[str], failure: list[str]) -> Response:
        def typed(values: list[str]) -> list[Any]:
            return [int(v) if v.isdigit() else v for v in values]

        return json_response(
            201,
            {
                "contacts": {
                    "success": typed(success),
                    "failure": typed(failure),
                    "total": len(success) + len(failure),
                }
            },
        )

    # --- contacts -----------------------------------------------------------------------

    def post_contact(self, account: BvAccount, request: Request) -> Response:
        body = request.json_object()
        email = str(body.get("email") or "")
        if not email:
            raise BrevoError(400, "missing_parameter", "email is missing")
        now = self.hooks.now()
        contact = account.by_email(email)
        if contact is not None:
            if not body.get("updateEnabled"):
                raise BrevoError(400, "duplicate_parameter", "Contact already exist")
            added = self._apply(account, contact, body, now)
            self._events(account, contact, added, updated=True)
            return empty_response(204)
        self._check_address(email)
        for list_id in body.get("listIds") or []:
            self._list(account, str(list_id))
        contact = self._new_contact(account, email, now)
        added = self._apply(account, contact, body, now)
        self._events(account, contact, added, updated=False)
        return json_response(201, {"id": contact.id})

    def get_contact(self, account: BvAccount, request: Request) -> Response:
        contact = self._contact(
            account, request.params["identifier"], request.arg("identifierType")
        )
        statistics = {"unsubscriptions": {"userUnsubscription": [], "adminUnsubscription": []}}
        return json_response(200, {**contact_json(contact), "statistics": statistics})

    def put_contact(self, account: BvAccount, request: Request) -> Response:
        contact = self._contact(
            account, request.params["identifier"], request.arg("identifierType")
        )
        added = self._apply(account, contact, request.json_object(), self.hooks.now())
        self._events(account, contact, added, updated=True)
        return empty_response(204)

    def delete_contact(self, account: BvAccount, request: Request) -> Response:
        contact = self._contact(
            account, request.params["identifier"], request.arg("identifierType")
        )
        if contact.email.lower() == account.email.lower():
            raise BrevoError(
                405,
                "method_not_allowed",
                "You're not allowed to delete registered email contact with Brevo",
            )
        account.delete(contact)
        return empty_response(204)

    def post_batch(self, account: BvAccount, request: Request) -> Response:
        entries = request.json_object().get("contacts")
        if not isinstance(entries, list) or not entries:
            raise BrevoError(400, "missing_parameter", "contacts is missing")
        targets = []
        for entry in entries:
            if not isinstance(entry, dict):
                raise BrevoError(400, "invalid_parameter", "each contact must be an object")
            identifier = entry.get("id", entry.get("email"))
            if identifier is None:
                raise BrevoError(400, "missing_parameter", "each contact needs an email or an id")
            kind = "contact_id" if "id" in entry else "email_id"
            try:
                targets.append((self._contact(account, identifier, kind), entry))
            except BrevoError:
                raise BrevoError(
                    400, "document_not_found", f"Contact {identifier} does not exist"
                ) from None
        new_emails = [str((e.get("attributes") or {}).get("EMAIL", "")).lower() for _, e in targets]
        for (contact, _), email in zip(targets, new_emails, strict=True):
            other = account.by_email(email) if email else None
            if other is not None and other.id != contact.id:
                raise BrevoError(400, "duplicate_parameter", f"Contact {email} already exist")
        now = self.hooks.now()
        for contact, entry in targets:
            added = self._apply(account, contact, entry, now)
            self._events(account, contact, added, updated=True)
        return empty_response(204)

    # --- import and processes -----------------------------------------------------------

    def post_import(self, account: BvAccount, request: Request) -> Response:
        if len(request.body) > MAX_IMPORT_BYTES:
            raise BrevoError(400, "out_of_range", "jsonBody must not exceed 10 MB")
        body = request.json_object()
        sources = [k for k in ("fileUrl", "fileBody", "jsonBody") if body.get(k)]
        if len(sources) != 1:
            raise BrevoError(
                400, "invalid_parameter", "give exactly one of fileUrl, fileBody, jsonBody"
            )
        if sources != ["jsonBody"]:
            raise BrevoError(400, "invalid_parameter", "the sandbox imports jsonBody only")
        if not body.get("listIds"):
            raise BrevoError(400, "missing_parameter", "listIds is missing")
        for list_id in body["listIds"]:
            self._list(account, str(list_id))
        process_id = account.new_id()
        account.processes[process_id] = BvProcess(
            id=process_id, created_at=self.hooks.now(), request=body
        )
        return json_response(202, {"processId": process_id})

    def run_due_processes(self, account: BvAccount) -> None:
        """Run imports whose processing time has come."""
        now = self.hooks.now()
        for process in account.processes.values():
            if (
                process.status == "completed"
                or now < process.created_at + self.hooks.process_delay()
            ):
                continue
            process.info = self._import(account, process.request, now)
            process.status = "completed"
            process.completed_at = now
            process.request = {}

    def _import(self, account: BvAccount, body: dict[str, Any], now: float) -> dict[str, Any]:
        invalid = duplicates = 0
        seen: set[str] = set()
        update_existing = body.get("updateExistingContacts", True)
        blacklist = bool(body.get("emailBlacklist", False))
        for row in body.get("jsonBody") or []:
            email = str(row.get("email") or "") if isinstance(row, dict) else ""
            if not _ADDRESS.match(email):
                invalid += 1
                continue
            if email.lower() in seen:
                duplicates += 1
                continue
            seen.add(email.lower())
            contact = account.by_email(email)
            created = contact is None
            if contact is None:
                contact = self._new_contact(account, email, now)
            elif not update_existing:
                continue
            update: dict[str, Any] = {
                "attributes": row.get("attributes") or {},
                "listIds": body["listIds"],
            }
            if blacklist:
                update["emailBlacklisted"] = True
            added = self._apply(account, contact, update, now)
            self._events(account, contact, added, updated=not created)
        return {"invalid_emails": invalid, "duplicate_email_id": duplicates}

    def get_process(self, account: BvAccount, request: Request) -> Response:
        process_id = request.params["processId"]
        process = account.processes.get(int(process_id)) if process_id.isdigit() else None
        if process is None:
            raise BrevoError(404, "document_not_found", "Process does not exist")
        body: dict[str, Any] = {"id": process.id, "name": process.name, "status": process.status}
        if process.status == "completed":
            body["info"] = {"import": process.info or {}}
        return json_response(200, body)

    # --- webhooks -----------------------------------------------------------------------

    def _webhook_json(self, hook: BvWebhook) -> dict[str, Any]:
        return {
            "id": hook.id,
            "url": hook.url,
            "description": hook.description,
            "events": hook.events,
            "type": hook.type,
            "batched": hook.batched,
            "auth": hook.auth or {},
            "headers": hook.headers,
            "createdAt": stamp(hook.createdAt),
            "modifiedAt": stamp(hook.modifiedAt),
        }

    def get_webhooks(self, account: BvAccount, request: Request) -> Response:
        kind = request.arg("type", "transactional")
        hooks = [self._webhook_json(h) for h in account.webhooks.values() if h.type == kind]
        return json_response(200, {"webhooks": hooks})

    def post_webhook(self, account: BvAccount, request: Request) -> Response:
        body = request.json_object()
        if not body.get("url") or not body.get("events"):
            raise BrevoError(400, "missing_parameter", "url and events are required")
        now = self.hooks.now()
        hook = BvWebhook(
            id=account.new_id(),
            url=str(body["url"]),
            description=str(body.get("description", "")),
            events=[str(e) for e in body["events"]],
            type=str(body.get("type", "transactional")),
            auth=body.get("auth"),
            headers=list(body.get("headers") or []),
            batched=bool(body.get("batched", False)),
            createdAt=now,
            modifiedAt=now,
        )
        account.webhooks[hook.id] = hook
        return json_response(201, {"id": hook.id})

    def delete_webhook(self, account: BvAccount, request: Request) -> Response:
        webhook_id = request.params["webhookId"]
        if not webhook_id.isdigit() or int(webhook_id) not in account.webhooks:
            raise BrevoError(404, "document_not_found", "Webhook does not exist")
        del account.webhooks[int(webhook_id)]
        return empty_response(204)
