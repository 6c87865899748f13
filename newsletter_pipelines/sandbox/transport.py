"""The sandbox as an httpx transport: real HTTP semantics without a socket."""

from __future__ import annotations

import httpx

from newsletter_pipelines.sandbox.core import Request
from newsletter_pipelines.sandbox.engine import AnswerTimeoutError, ConnectionDroppedError, Sandbox

SANDBOX_ORIGIN = "http://sandbox.local"
"""The origin the in-process sandbox answers on (any host works)."""


class SandboxTransport(httpx.BaseTransport):
    """Serves every request from `sandbox`; thread-safe, honours the client's read timeout."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Serve one request, raising what a network client would on drops and timeouts."""
        timeout = (request.extensions.get("timeout") or {}).get("read")
        incoming = Request(
            method=request.method,
            path=request.url.raw_path.decode("ascii").split("?", 1)[0],
            query=_query(request.url),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=request.read(),
            origin=f"{request.url.scheme}://{request.url.netloc.decode()}",
        )
        try:
            answer = self.sandbox.exchange(incoming, timeout=timeout)
        except ConnectionDroppedError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from None
        except AnswerTimeoutError as exc:
            raise httpx.ReadTimeout(str(exc), request=request) from None
        return httpx.Response(
            answer.status, headers=answer.headers, content=answer.body, request=request
        )


def _query(url: httpx.URL) -> dict[str, list[str]]:
    query: dict[str, list[str]] = {}
    for key, value in url.params.multi_items():
        query.setdefault(key, []).append(value)
    return query
