"""Small builders shared by the provider tests."""

from __future__ import annotations

import json
from typing import Any

import httpx

from newsletter_pipelines.providers.base import Contact
from newsletter_pipelines.sandbox import SANDBOX_MAILCHIMP_KEY, Sandbox
from newsletter_pipelines.sandbox.mailchimp_state import McList


def contacts(count: int, *, start: int = 0, tags: frozenset[str] = frozenset()) -> list[Contact]:
    """`count` distinct contacts with names and optional tags."""
    return [
        Contact(
            crm_id=str(i),
            email=f"person{i}@example.com",
            first_name=f"First{i}",
            last_name=f"Last{i}",
            salutation="Frau" if i % 2 else "Herr",
            tags=tags,
        )
        for i in range(start, start + count)
    ]


def audience(sandbox: Sandbox, name: str = "Newsletter") -> McList:
    """The sandbox state of a Mailchimp audience of the default account."""
    lists = sandbox.state.mailchimp[SANDBOX_MAILCHIMP_KEY].lists.values()
    return next(lst for lst in lists if lst.name == name)


class RecordingTransport(httpx.BaseTransport):
    """Passes requests on and keeps them, to assert on what a client sent."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Record, then forward."""
        request.read()
        self.requests.append(request)
        return self.inner.handle_request(request)

    def bodies(self, method: str, path_end: str) -> list[Any]:
        """Decoded JSON bodies of the requests whose path ends with `path_end`."""
        return [
            json.loads(r.content)
            for r in self.requests
            if r.method == method and r.url.path.endswith(path_end) and r.content
        ]
