"""Framework-free request/response values and routing shared by the emulated APIs."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

import orjson


class BodyError(ValueError):
    """The request body is not the JSON the endpoint needs."""


@dataclass
class Request:
    """One HTTP request as the emulators see it; `path` is relative to the API root and still
    percent-encoded (as sent), so an encoded `/` stays inside its segment."""

    method: str
    path: str
    query: Mapping[str, list[str]] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    origin: str = "http://sandbox"
    params: dict[str, str] = field(default_factory=dict)

    def arg(self, name: str, default: str | None = None) -> str | None:
        """The first value of query parameter `name`."""
        values = self.query.get(name)
        return values[0] if values else default

    def int_arg(self, name: str, default: int) -> int:
        """Query parameter `name` as an int (the spec validates the type)."""
        value = self.arg(name)
        return default if value in (None, "") else int(value)

    def bool_arg(self, name: str) -> bool:
        """Query parameter `name` as a boolean flag."""
        return (self.arg(name) or "").lower() == "true"

    def list_arg(self, name: str) -> list[str]:
        """A comma-separated (or repeated) query parameter as a flat list."""
        return [part for value in self.query.get(name, []) for part in value.split(",") if part]

    def json(self) -> Any:
        """The decoded JSON body."""
        try:
            return orjson.loads(self.body or b"null")
        except ValueError as exc:
            raise BodyError(str(exc)) from None

    def json_object(self) -> dict[str, Any]:
        """The decoded body, which must be a JSON object."""
        payload = self.json()
        if not isinstance(payload, dict):
            raise BodyError("the body must be a JSON object")
        return payload


@dataclass
class Response:
    """One HTTP response produced by an emulator."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_response(
    status: int,
    payload: Any,
    *,
    content_type: str = "application/json; charset=utf-8",
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A JSON response with the given status."""
    return Response(
        status,
        orjson.dumps(payload),
        {"content-type": content_type, **(headers or {})},
    )


def empty_response(status: int = 204, headers: Mapping[str, str] | None = None) -> Response:
    """A response without a body."""
    return Response(status, b"", dict(headers or {}))


Handler = Callable[..., Response]


class Router:
    """Maps (method, path template) to handlers; templates use `{name}` segments."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, str, re.Pattern[str], Handler]] = []

    def add(self, method: str, template: str, handler: Handler) -> None:
        """Register `handler` for `method` on `template`."""
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template.rstrip("/") or "/")
        self._routes.append((method, template, re.compile(f"^{pattern}/?$"), handler))

    def resolve(self, method: str, path: str) -> tuple[str, Handler, dict[str, str]] | None:
        """(template, handler, path params) for the request, or None when nothing matches.

        The most literal template wins (`/contacts/folders` over `/contacts/{identifier}`);
        path params are percent-decoded.
        """
        found = [
            (template.count("{"), template, handler, _decoded(match.groupdict()))
            for route_method, template, pattern, handler in self._routes
            if route_method == method and (match := pattern.match(path))
        ]
        if not found:
            return None
        _, template, handler, params = min(found, key=lambda item: item[0])
        return template, handler, params

    def allowed(self, path: str) -> list[str]:
        """Methods registered for a path (for 405 answers)."""
        return sorted({m for m, _, pattern, _ in self._routes if pattern.match(path)})


def _decoded(params: dict[str, str]) -> dict[str, str]:
    return {name: unquote(value) for name, value in params.items()}


@lru_cache(maxsize=64)  # one request stamps every member it writes with the same time
def now_iso(timestamp: float) -> str:
    """`timestamp` as ISO 8601 with a `+00:00` offset, seconds precision."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def parse_iso(value: str) -> float:
    """An ISO 8601 timestamp (`Z` or offset) as epoch seconds."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
