"""Outgoing webhook calls the sandbox makes, recorded for inspection."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger("newsletter_pipelines.sandbox")


@dataclass
class WebhookCall:
    """One delivery: where, what, and how the receiver answered."""

    url: str
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    status: int | None = None
    error: str | None = None


def form_fields(prefix: str, value: Any) -> list[tuple[str, str]]:
    """PHP-style bracketed form keys for nested data (`data[merges][FNAME]=...`)."""
    if isinstance(value, Mapping):
        pairs: list[tuple[str, str]] = []
        for key, inner in value.items():
            pairs += form_fields(f"{prefix}[{key}]" if prefix else str(key), inner)
        return pairs
    return [(prefix, "" if value is None else str(value))]


class WebhookSender:
    """Delivers webhook calls over HTTP (through `transport` when given) and logs them."""

    def __init__(self, transport: httpx.BaseTransport | None = None) -> None:
        self._client = httpx.Client(transport=transport, timeout=10.0)
        self.calls: list[WebhookCall] = []

    def validate(self, url: str) -> bool:
        """Mailchimp's creation check: a GET that must answer 200."""
        try:
            response = self._client.get(
                url, headers={"user-agent": "MailChimp.com WebHook Validator"}
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def post_form(self, url: str, fields: Mapping[str, Any]) -> WebhookCall:
        """POST a form-encoded Mailchimp event."""
        body = httpx.QueryParams(form_fields("", fields)).__str__().encode()
        headers = {
            "content-type": "application/x-www-form-urlencoded",
            "user-agent": "MailChimp.com",
        }
        return self._deliver(WebhookCall(url, headers["content-type"], body, headers))

    def post_json(self, url: str, payload: Any, headers: Mapping[str, str]) -> WebhookCall:
        """POST a JSON Brevo event with the webhook's headers."""
        all_headers = {"content-type": "application/json", **headers}
        body = json.dumps(payload).encode()
        return self._deliver(WebhookCall(url, "application/json", body, all_headers))

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()

    def _deliver(self, call: WebhookCall) -> WebhookCall:
        try:
            response = self._client.post(call.url, content=call.body, headers=call.headers)
            call.status = response.status_code
        except httpx.HTTPError as exc:
            call.error = f"{type(exc).__name__}: {exc}"
            log.warning("sandbox webhook to %s failed: %s", call.url, call.error)
        self.calls.append(call)
        return call
