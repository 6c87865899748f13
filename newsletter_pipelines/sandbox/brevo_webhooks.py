"""Brevo webhooks (`/webhooks`): registration and listing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from newsletter_pipelines.sandbox.brevo_rules import BrevoError, BrevoHooks, stamp
from newsletter_pipelines.sandbox.brevo_state import BvAccount, BvWebhook
from newsletter_pipelines.sandbox.core import Request, Response, empty_response, json_response


class WebhookHandlers:
    """Handlers of the webhook endpoints."""

    def __init__(self, hooks: BrevoHooks) -> None:
        self.hooks = hooks

    def routes(self) -> list[tuple[str, str, Callable[[BvAccount, Request], Response]]]:
        """(method, template, handler) of every endpoint here."""
        return [
            ("GET", "/webhooks", self.get_webhooks),
            ("POST", "/webhooks", self.post_webhook),
            ("PUT", "/webhooks/{webhookId}", self.put_webhook),
            ("DELETE", "/webhooks/{webhookId}", self.delete_webhook),
        ]

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

    def put_webhook(self, account: BvAccount, request: Request) -> Response:
        hook = self._hook(account, request)
        body = request.json_object()
        for name in ("url", "description"):
            if name in body:
                setattr(hook, name, str(body[name]))
        if "events" in body:
            if not body["events"]:
                raise BrevoError(400, "missing_parameter", "events must not be empty")
            hook.events = [str(e) for e in body["events"]]
        if "auth" in body:
            hook.auth = body["auth"]
        if "headers" in body:
            hook.headers = list(body["headers"] or [])
        if "batched" in body:
            hook.batched = bool(body["batched"])
        hook.modifiedAt = self.hooks.now()
        return empty_response(204)

    def _hook(self, account: BvAccount, request: Request) -> BvWebhook:
        webhook_id = request.params["webhookId"]
        if not webhook_id.isdigit() or int(webhook_id) not in account.webhooks:
            raise BrevoError(404, "document_not_found", "Webhook does not exist")
        return account.webhooks[int(webhook_id)]

    def delete_webhook(self, account: BvAccount, request: Request) -> Response:
        del account.webhooks[self._hook(account, request).id]
        return empty_response(204)
