"""The emulated Brevo API v3 (the contact endpoints the sync uses, faithfully).

Faithful quirks kept on purpose: unknown attributes are silently ignored (so a wrong attribute
name loses data unless the client checks), `emailBlacklisted: false` clears a blacklist, imports
run as background processes, and rate limits answer 429 with `x-sib-ratelimit-*` headers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from newsletter_pipelines.sandbox import brevo_rules as rules
from newsletter_pipelines.sandbox.brevo_imports import ImportHandlers
from newsletter_pipelines.sandbox.brevo_lists import ListHandlers
from newsletter_pipelines.sandbox.brevo_rules import BrevoError, BrevoHooks, contact_json, error
from newsletter_pipelines.sandbox.brevo_state import BvAccount
from newsletter_pipelines.sandbox.brevo_webhooks import WebhookHandlers
from newsletter_pipelines.sandbox.core import (
    BodyError,
    Request,
    Response,
    Router,
    empty_response,
    json_response,
)


class BrevoApi:
    """Handlers for one sandbox; every call runs under the sandbox lock."""

    def __init__(self, hooks: BrevoHooks) -> None:
        self.hooks = hooks
        self.router = Router()
        self._windows: dict[tuple[str, str], tuple[float, int]] = {}
        routes: list[tuple[str, str, Callable[[BvAccount, Request], Response]]] = [
            ("GET", "/account", self.get_account),
            ("GET", "/contacts/attributes", self.get_attributes),
            ("POST", "/contacts/batch", self.post_batch),
            ("POST", "/contacts", self.post_contact),
            ("GET", "/contacts/{identifier}", self.get_contact),
            ("PUT", "/contacts/{identifier}", self.put_contact),
            ("DELETE", "/contacts/{identifier}", self.delete_contact),
        ]
        self.imports = ImportHandlers(hooks)
        routes += ListHandlers(hooks).routes() + self.imports.routes()
        routes += WebhookHandlers(hooks).routes()
        for method, template, handler in routes:
            self.router.add(method, template, handler)

    # --- dispatch -----------------------------------------------------------------------

    def handle(self, account: BvAccount, request: Request) -> tuple[str, Response]:
        """(route template, response) for an authenticated request, rate limits applied."""
        self.imports.run_due_processes(account)
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
                raise rules.duplicate_email()
            added = rules.apply_update(account, contact, body, now)
            rules.api_events(self.hooks, account, contact, added, updated=True)
            return empty_response(204)
        rules.check_address(email)
        for list_id in body.get("listIds") or []:
            rules.find_list(account, str(list_id))
        contact = rules.new_contact(account, email, now)
        added = rules.apply_update(account, contact, body, now)
        rules.api_events(self.hooks, account, contact, added, updated=False)
        return json_response(201, {"id": contact.id})

    def get_contact(self, account: BvAccount, request: Request) -> Response:
        contact = rules.find_contact(
            account, request.params["identifier"], request.arg("identifierType")
        )
        statistics = rules.statistics_json(contact.statistics, self.hooks.now())
        return json_response(200, {**contact_json(contact), "statistics": statistics})

    def put_contact(self, account: BvAccount, request: Request) -> Response:
        contact = rules.find_contact(
            account, request.params["identifier"], request.arg("identifierType")
        )
        added = rules.apply_update(account, contact, request.json_object(), self.hooks.now())
        rules.api_events(self.hooks, account, contact, added, updated=True)
        return empty_response(204)

    def delete_contact(self, account: BvAccount, request: Request) -> Response:
        contact = rules.find_contact(
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
                targets.append((rules.find_contact(account, identifier, kind), entry))
            except BrevoError:
                raise BrevoError(
                    400, "document_not_found", f"Contact {identifier} does not exist"
                ) from None
        new_emails = [str((e.get("attributes") or {}).get("EMAIL", "")).lower() for _, e in targets]
        for (contact, _), email in zip(targets, new_emails, strict=True):
            other = account.by_email(email) if email else None
            if other is not None and other.id != contact.id:
                raise rules.duplicate_email()
        now = self.hooks.now()
        named = account.attributes_by_name()
        for contact, entry in targets:
            added = rules.apply_update(account, contact, entry, now, named)
            rules.api_events(self.hooks, account, contact, added, updated=True)
        return empty_response(204)
