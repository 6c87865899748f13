"""The sandbox as a local HTTP server (ASGI, served by uvicorn)."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, quote

import uvicorn
from anyio.to_thread import current_default_thread_limiter
from starlette.concurrency import run_in_threadpool

from newsletter_pipelines.sandbox.core import Request
from newsletter_pipelines.sandbox.engine import ConnectionDroppedError, Sandbox

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class SandboxApp:
    """ASGI application serving `/mailchimp/3.0`, `/brevo/v3` and `/_sandbox`."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        arrived = time.monotonic()  # a round-trip latency counts from here (see `faults`)
        parts = []  # joined once: adding each part copied a 4 MB import body dozens of times
        while True:
            message = await receive()
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(parts)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        request = Request(
            method=scope["method"],
            path=_raw_path(scope),
            query=parse_qs(scope["query_string"].decode(), keep_blank_values=True),
            headers=headers,
            body=body,
            origin=f"{scope.get('scheme', 'http')}://{headers.get('host', 'localhost')}",
        )
        try:
            answer = await run_in_threadpool(self.sandbox.exchange, request, arrived=arrived)
        except ConnectionDroppedError:
            # Promise a body and end the connection without it: the client sees a drop.
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"64")],
                }
            )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        raw_headers = [(k.encode(), v.encode()) for k, v in answer.headers.items()]
        await send({"type": "http.response.start", "status": answer.status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": answer.body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                current_default_thread_limiter().total_tokens = WORKER_THREADS
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await run_in_threadpool(self.sandbox.save)
                await send({"type": "lifespan.shutdown.complete"})
                return


def _raw_path(scope: Scope) -> str:
    """The path as sent, still percent-encoded (rebuilt from `path` if the server lacks it)."""
    raw = scope.get("raw_path")
    return raw.decode("ascii").split("?", 1)[0] if raw else quote(scope["path"])


WORKER_THREADS = 100
"""Calls served at once: each call keeps its worker thread through its latency (the state lock
is taken only while it is served), so a call beyond this many waits for a worker, its
latency running. AnyIO's default is 40; Mailchimp accepts 10 simultaneous connections."""

GC_THRESHOLDS = (50_000, 20, 100)
"""The served process's cycle collector runs this rarely (Python's default: every 700
allocations): its state is long-lived and holds no cycles, yet the default spent a fifth of
its CPU time traversing an audience of 50,000 members again and again."""


def serve(sandbox: Sandbox, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve until interrupted (the state file, if any, is written on shutdown)."""
    gc.set_threshold(*GC_THRESHOLDS)
    uvicorn.run(SandboxApp(sandbox), host=host, port=port, log_level="info")


@contextmanager
def running(sandbox: Sandbox, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve on a background thread; yields the base URL (`http://host:port`)."""
    server = uvicorn.Server(
        uvicorn.Config(SandboxApp(sandbox), host=host, port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the sandbox server did not start")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()
    try:
        yield f"http://{bound[0]}:{bound[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
