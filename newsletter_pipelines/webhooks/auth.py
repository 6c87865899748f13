"""Who may deliver: the shared secret (constant-time) and Mailchimp's optional HMAC signature."""

from __future__ import annotations

import hashlib
import hmac
import re

SIGNATURE_TOLERANCE_SECONDS = 300
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def secret_matches(given: str | None, expected: str) -> bool:
    """True when `given` is the secret; the comparison takes the same time for any mismatch."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def mailchimp_signature_valid(header: str | None, body: bytes, secret: str, now: float) -> bool:
    """Check `X-Mailchimp-Signature: t=<unix ts>,v1=<hex>`: v1 is HMAC-SHA256 of
    `"{t}.{raw body}"` under the signing secret, and t within ±300 s of `now`. Any of several
    `v1` values may match (as during a secret rotation)."""
    timestamp, signatures = None, []
    for part in (header or "").split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            timestamp = value
        elif name == "v1":
            signatures.append(value.lower())
    if timestamp is None or _TIMESTAMP.fullmatch(timestamp) is None or not signatures:
        return False
    if abs(now - int(timestamp)) > SIGNATURE_TOLERANCE_SECONDS:
        return False
    expected = hmac.new(
        secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    return any(hmac.compare_digest(expected.encode(), s.encode()) for s in signatures)
