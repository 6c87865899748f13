"""Mailchimp audience webhooks: registration (checked with a GET, as Mailchimp does)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from newsletter_pipelines.sandbox import mailchimp_members as members
from newsletter_pipelines.sandbox.core import Request, Response, empty_response, json_response
from newsletter_pipelines.sandbox.mailchimp_members import invalid, not_found
from newsletter_pipelines.sandbox.mailchimp_state import McAccount, McList, McWebhook


class WebhookHandlers:
    """Handlers of `/lists/{list_id}/webhooks`."""

    def __init__(self, validate_url: Callable[[str], bool]) -> None:
        self.validate_url = validate_url

    def routes(self) -> list[tuple[str, str, Callable[[McAccount, Request], Response]]]:
        """(method, template, handler) of every endpoint here."""
        return [
            ("GET", "/lists/{list_id}/webhooks", self.get_webhooks),
            ("POST", "/lists/{list_id}/webhooks", self.post_webhook),
            ("GET", "/lists/{list_id}/webhooks/{webhook_id}", self.get_webhook),
            ("PATCH", "/lists/{list_id}/webhooks/{webhook_id}", self.patch_webhook),
            ("DELETE", "/lists/{list_id}/webhooks/{webhook_id}", self.delete_webhook),
        ]

    def _webhook_json(self, lst: McList, hook: McWebhook) -> dict[str, Any]:
        return {**hook.model_dump(), "list_id": lst.id, "_links": []}

    def _webhook(self, lst: McList, request: Request) -> McWebhook:
        hook = next((h for h in lst.webhooks if h.id == request.params["webhook_id"]), None)
        if hook is None:
            raise not_found()
        return hook

    def get_webhooks(self, account: McAccount, request: Request) -> Response:
        lst = members.find_list(account, request)
        hooks = [self._webhook_json(lst, h) for h in lst.webhooks]
        return json_response(
            200, {"webhooks": hooks, "list_id": lst.id, "total_items": len(hooks), "_links": []}
        )

    def get_webhook(self, account: McAccount, request: Request) -> Response:
        lst = members.find_list(account, request)
        return json_response(200, self._webhook_json(lst, self._webhook(lst, request)))

    def post_webhook(self, account: McAccount, request: Request) -> Response:
        lst = members.find_list(account, request)
        body = request.json_object()
        url = str(body.get("url") or "")
        if not url:
            raise invalid("url", "This value should not be blank.")
        if not self.validate_url(url):
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
        lst = members.find_list(account, request)
        hook = self._webhook(lst, request)
        body = request.json_object()
        hook.url = str(body.get("url") or hook.url)
        hook.events.update(body.get("events") or {})
        hook.sources.update(body.get("sources") or {})
        return json_response(200, self._webhook_json(lst, hook))

    def delete_webhook(self, account: McAccount, request: Request) -> Response:
        lst = members.find_list(account, request)
        lst.webhooks.remove(self._webhook(lst, request))
        return empty_response(204)
