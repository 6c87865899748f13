"""The receiver's routes: check, parse and commit each delivery to the inbox before the 2xx.

- `GET  /webhooks/mailchimp/{audience}?secret=…`  Mailchimp's URL validator: 200
- `POST /webhooks/mailchimp/{audience}?secret=…`  form-encoded event (optionally signed)
- `POST /webhooks/brevo/{audience}` with `Authorization: Bearer …`: one JSON event or an array

Checks in this order, each answered before anything is stored: 429 (rate limit per client and
provider), 401 (secret), 404 (audience unknown or of the other provider), 413 (body over
1 MiB, by Content-Length and by what actually arrives), 401 (Mailchimp signature, when a
signing secret is configured), 400 (malformed body). A state database that fails is a 503, so
the provider delivers again. Duplicates are answered 200 and stored once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from newsletter_pipelines.db import create_engine
from newsletter_pipelines.reporting import mask_email
from newsletter_pipelines.settings import DEMO_WEBHOOK_SECRET, Settings
from newsletter_pipelines.state.events import NewEvent
from newsletter_pipelines.state.schema import ensure_schema
from newsletter_pipelines.webhooks.auth import (
    bearer_token,
    mailchimp_signature_valid,
    secret_matches,
)
from newsletter_pipelines.webhooks.inbox import InboxWriter
from newsletter_pipelines.webhooks.limits import (
    BadContentLengthError,
    BodyTooLargeError,
    RateLimiter,
    declared_length,
    read_limited,
)
from newsletter_pipelines.webhooks.parse import PayloadError, brevo_events, mailchimp_events

log = logging.getLogger("newsletter_pipelines.webhooks")
STORE_RETRY_AFTER_SECONDS = 60
LOGGED_EVENTS = 5
"""Events named in a delivery's log line (a Brevo batch holds up to 500)."""


class RejectedError(Exception):
    """A delivery refused with `status` before anything was stored."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


class Receiver:
    """The endpoints, with what they share: secrets, audiences, rate limiter, inbox engine."""

    def __init__(
        self,
        *,
        secret: str,
        signing_secret: str | None,
        audiences: dict[str, str],
        limiter: RateLimiter,
        engine: sa.Engine,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.secret = secret
        self.signing_secret = signing_secret
        self.audiences = audiences
        self.limiter = limiter
        self.inbox = InboxWriter(engine)
        self.clock = clock

    async def mailchimp(self, request: Request) -> Response:
        """GET: the URL validator's check; POST: one form-encoded event."""
        return await self._answer(request, "mailchimp")

    async def brevo(self, request: Request) -> Response:
        """POST: one JSON event, or an array of them."""
        return await self._answer(request, "brevo")

    async def _answer(self, request: Request, provider: str) -> Response:
        client = request.client.host if request.client else "unknown"
        try:
            response = await self._accept(request, provider, client)
        except RejectedError as rejected:
            log.warning(
                "%s %s from %s: %d %s",
                request.method,
                request.url.path,
                client,
                rejected.status,
                rejected.reason,
            )
            return JSONResponse(
                {"error": rejected.reason}, rejected.status, headers=rejected.headers
            )
        return response

    async def _accept(self, request: Request, provider: str, client: str) -> Response:
        if not self.limiter.allow(f"{client}|{provider}"):
            retry = str(self.limiter.retry_after())
            raise RejectedError(429, "too many requests", {"Retry-After": retry})
        self._authenticate(request, provider)
        audience = request.path_params["audience"]
        if self.audiences.get(audience) != provider:
            raise RejectedError(404, f"no {provider} audience {audience[:64]!r} configured")
        if request.method in ("GET", "HEAD"):
            return PlainTextResponse("ok")
        body = await self._body(request)
        if provider == "mailchimp" and self.signing_secret is not None:
            header = request.headers.get("x-mailchimp-signature")
            if not mailchimp_signature_valid(header, body, self.signing_secret, self.clock()):
                raise RejectedError(401, "missing or invalid X-Mailchimp-Signature")
        try:
            parse = mailchimp_events if provider == "mailchimp" else brevo_events
            events = parse(body, audience)
        except PayloadError as exc:
            raise RejectedError(400, f"malformed body: {exc}") from None
        stored = await self._store(events)
        shown = ", ".join(f"{e.type} {mask_email(e.email)}".strip() for e in events[:LOGGED_EVENTS])
        more = f" and {len(events) - LOGGED_EVENTS} more" if len(events) > LOGGED_EVENTS else ""
        log.info(
            "%s/%s from %s: %s%s; %d new, %d duplicate(s)",
            provider,
            audience,
            client,
            shown,
            more,
            stored,
            len(events) - stored,
        )
        return JSONResponse({"received": len(events), "stored": stored})

    def _authenticate(self, request: Request, provider: str) -> None:
        if provider == "mailchimp":
            if not secret_matches(request.query_params.get("secret"), self.secret):
                raise RejectedError(401, "missing or wrong secret (?secret=)")
        elif not secret_matches(bearer_token(request.headers.get("authorization")), self.secret):
            raise RejectedError(
                401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"}
            )

    async def _body(self, request: Request) -> bytes:
        try:
            declared_length(request.headers.get("content-length"))
            return await read_limited(request.stream())
        except BodyTooLargeError:
            raise RejectedError(413, "body larger than 1 MiB") from None
        except BadContentLengthError:
            raise RejectedError(400, "Content-Length is not a number") from None
        except ClientDisconnect:
            raise RejectedError(400, "client disconnected before the body ended") from None

    async def _store(self, events: list[NewEvent]) -> int:
        try:
            return await self.inbox.store(events)
        except sa.exc.SQLAlchemyError as exc:
            log.error("state database failed, nothing stored: %s", type(exc).__name__)
            raise RejectedError(
                503,
                "the inbox is unavailable, deliver again later",
                {"Retry-After": str(STORE_RETRY_AFTER_SECONDS)},
            ) from None


def create_app(
    settings: Settings, engine: sa.Engine | None = None, *, clock: Callable[[], float] = time.time
) -> Starlette:
    """The receiver for the configured audiences, the state database's schema checked (embedded:
    upgraded; see `state.schema`).

    Raises ValueError (naming the variable) when NEWSLETTER_WEBHOOK_SECRET is needed and unset,
    RuntimeError (naming the command) when the state database needs an upgrade in production.
    """
    secret = settings.resolved_webhook_secret()
    if secret == DEMO_WEBHOOK_SECRET:
        log.warning(
            "no NEWSLETTER_WEBHOOK_SECRET: the embedded demo's secret %r is in use "
            "(every audience is served by the sandbox)",
            DEMO_WEBHOOK_SECRET,
        )
    engine = engine or create_engine(settings.resolved_state_database_url())
    ensure_schema(engine, upgrade=settings.upgrades_state_database())
    signing = (
        settings.webhook_signing_secret.get_secret_value()
        if settings.webhook_signing_secret
        else ""
    )
    receiver = Receiver(
        secret=secret,
        signing_secret=signing or None,
        audiences={a.key: a.provider for a in settings.audiences},
        limiter=RateLimiter(settings.webhook_rate_per_second, settings.webhook_rate_burst),
        engine=engine,
        clock=clock,
    )
    return Starlette(
        routes=[
            Route("/webhooks/mailchimp/{audience}", receiver.mailchimp, methods=["GET", "POST"]),
            Route("/webhooks/brevo/{audience}", receiver.brevo, methods=["POST"]),
        ]
    )
