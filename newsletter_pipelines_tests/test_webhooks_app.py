"""The receiver's answers (starlette TestClient): accepted events are in `provider_events` once,
every bad input is refused with its status and stores nothing, never a 500."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from newsletter_pipelines.settings import DEMO_WEBHOOK_SECRET, AudienceConfig, Settings
from newsletter_pipelines.state.events import unprocessed_events
from newsletter_pipelines.webhooks import create_app
from newsletter_pipelines.webhooks.limits import MAX_BODY_BYTES

with warnings.catch_warnings():  # starlette prefers httpx2, which this project does not install
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

SECRET = "test-webhook-secret-0123456789"
SIGNING = "whsec_signing_secret"
NOW = 1_800_000_000.0
MC = "/webhooks/mailchimp/mailchimp"
BV = "/webhooks/brevo/brevo"
BEARER = {"Authorization": f"Bearer {SECRET}"}
FORM = {"content-type": "application/x-www-form-urlencoded"}
AUDIENCES = [
    AudienceConfig(key="mailchimp", provider="mailchimp"),
    AudienceConfig(key="brevo", provider="brevo"),
]


def mc_body(email: str = "ann@example.com", fired_at: str = "2026-01-02 03:04:05") -> bytes:
    return urlencode(
        {
            "type": "unsubscribe",
            "fired_at": fired_at,
            "data[action]": "unsub",
            "data[email]": email,
            "data[merges][FNAME]": "Ann",
            "data[merges][INTERESTS]": "Group1,Group2",
        }
    ).encode()


def bv_event(email: str = "bob@example.com", ts: int = 1_700_000_000) -> dict[str, Any]:
    return {"id": 7, "event": "unsubscribed", "email": email, "ts_event": ts, "list_id": [3]}


class Receiver:
    """A TestClient on a receiver with its own SQLite state database."""

    def __init__(self, tmp_path: Path, **overrides: Any) -> None:
        self.engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.sqlite3'}")
        options: dict[str, Any] = {"webhook_secret": SECRET, "audiences": AUDIENCES} | overrides
        self.client = TestClient(create_app(Settings(**options), self.engine, clock=lambda: NOW))

    def mc(self, body: bytes, secret: str | None = SECRET, **headers: str) -> Any:
        query = f"?{urlencode({'secret': secret})}" if secret is not None else ""
        return self.client.post(MC + query, content=body, headers=FORM | headers)

    def bv(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self.client.post(BV, content=body, headers=BEARER if headers is None else headers)

    def stored(self, audience: str) -> list[Any]:
        return unprocessed_events(self.engine, audience)

    def nothing_stored(self) -> bool:
        return not self.stored("mailchimp") and not self.stored("brevo")


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    made = Receiver(tmp_path)
    yield made
    made.client.close()


def test_mailchimp_validator_get_answers_200(receiver: Receiver) -> None:
    answer = receiver.client.get(
        f"{MC}?secret={SECRET}", headers={"user-agent": "MailChimp.com WebHook Validator"}
    )
    assert answer.status_code == 200
    assert receiver.client.head(f"{MC}?secret={SECRET}").status_code == 200
    assert receiver.client.get(MC).status_code == 401
    assert receiver.client.get(f"/webhooks/mailchimp/nope?secret={SECRET}").status_code == 404
    assert receiver.nothing_stored()


def test_mailchimp_event_is_stored_nested_and_once(receiver: Receiver) -> None:
    answer = receiver.mc(mc_body())
    assert (answer.status_code, answer.json()) == (200, {"received": 1, "stored": 1})
    again = receiver.mc(mc_body())
    assert (again.status_code, again.json()) == (200, {"received": 1, "stored": 0})
    (event,) = receiver.stored("mailchimp")
    assert (event.provider, event.type, event.email) == (
        "mailchimp",
        "unsubscribe",
        "ann@example.com",
    )
    assert event.payload["data"]["merges"] == {"FNAME": "Ann", "INTERESTS": "Group1,Group2"}
    receiver.mc(mc_body(fired_at="2026-01-02 03:04:06"))
    assert len(receiver.stored("mailchimp")) == 2


def test_brevo_single_and_batched_events(receiver: Receiver) -> None:
    single = receiver.bv(bv_event())
    assert (single.status_code, single.json()) == (200, {"received": 1, "stored": 1})
    batch = [bv_event(), bv_event("cy@example.com"), bv_event("cy@example.com"), bv_event(ts=1)]
    answer = receiver.bv(batch)
    assert (answer.status_code, answer.json()) == (200, {"received": 4, "stored": 2})
    stored = receiver.stored("brevo")
    assert [(e.email, e.payload["ts_event"]) for e in stored] == [
        ("bob@example.com", 1_700_000_000),
        ("cy@example.com", 1_700_000_000),
        ("bob@example.com", 1),
    ]
    assert {e.type for e in stored} == {"unsubscribed"}
    assert receiver.stored("mailchimp") == []


@pytest.mark.parametrize("secret", [None, "", "wrong", SECRET[:-1], SECRET + "x"])
def test_mailchimp_wrong_or_missing_secret_is_401(receiver: Receiver, secret: str | None) -> None:
    assert receiver.mc(mc_body(), secret=secret).status_code == 401
    assert receiver.nothing_stored()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {SECRET}"},
        {"Authorization": SECRET},
    ],
)
def test_brevo_wrong_or_missing_token_is_401(receiver: Receiver, headers: dict[str, str]) -> None:
    answer = receiver.bv(bv_event(), headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert "error" in answer.json()
    assert receiver.nothing_stored()


def test_unknown_audience_or_other_provider_is_404(receiver: Receiver) -> None:
    mc_at_brevo = receiver.client.post(
        f"/webhooks/mailchimp/brevo?secret={SECRET}", content=mc_body(), headers=FORM
    )
    bv_at_mc = receiver.client.post("/webhooks/brevo/mailchimp", json=bv_event(), headers=BEARER)
    unknown = receiver.client.post("/webhooks/brevo/unknown", json=bv_event(), headers=BEARER)
    assert [a.status_code for a in (mc_at_brevo, bv_at_mc, unknown)] == [404, 404, 404]
    assert receiver.client.post("/webhooks/other/brevo", headers=BEARER).status_code == 404
    assert receiver.client.get("/webhooks/brevo/brevo", headers=BEARER).status_code == 405
    assert receiver.nothing_stored()


@pytest.mark.parametrize(
    "body",
    [b"", b"type=unsubscribe", b"data=1&data[x]=2", b"\xff", b'{"type": "unsubscribe"}'],
)
def test_malformed_mailchimp_body_is_400(receiver: Receiver, body: bytes) -> None:
    answer = receiver.mc(body)
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("malformed body")
    assert receiver.nothing_stored()


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"[]",
        b"{}",
        b'[{"event": "unsubscribed"}, 1]',
        b"[" * 50_000 + b"]" * 50_000,
        mc_body(),
    ],
)
def test_malformed_brevo_body_is_400(receiver: Receiver, body: bytes) -> None:
    assert receiver.bv(body).status_code == 400
    assert receiver.nothing_stored()


def test_body_over_1_mib_is_413(receiver: Receiver) -> None:
    big = json.dumps([bv_event(f"p{n}@example.com") for n in range(20_000)]).encode()
    assert len(big) > MAX_BODY_BYTES
    assert receiver.bv(big).status_code == 413
    declared = receiver.client.post(
        BV, content=b"{}", headers=BEARER | {"content-length": str(MAX_BODY_BYTES + 1)}
    )
    assert declared.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: only the bytes that arrive count
        for _ in range(20):
            yield b" " * 65_536

    streamed = receiver.client.post(BV, content=chunks(), headers=BEARER)
    assert streamed.status_code == 413
    assert "content-length" not in streamed.request.headers
    assert receiver.mc(mc_body() + b"&pad=" + b"x" * MAX_BODY_BYTES).status_code == 413
    at_limit = json.dumps(bv_event()).encode().ljust(MAX_BODY_BYTES)
    assert receiver.bv(at_limit).status_code == 200
    assert len(receiver.stored("brevo")) == 1


def test_too_many_requests_is_429_per_client_and_provider(tmp_path: Path) -> None:
    limited = Receiver(tmp_path, webhook_rate_per_second=0.001, webhook_rate_burst=2)
    assert [limited.bv(bv_event(ts=n)).status_code for n in range(3)] == [200, 200, 429]
    refused = limited.bv(bv_event(ts=9))
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert limited.mc(mc_body()).status_code == 200  # Mailchimp's endpoints have their own bucket
    assert len(limited.stored("brevo")) == 2


def test_signature_required_when_a_signing_secret_is_configured(tmp_path: Path) -> None:
    signed = Receiver(tmp_path, webhook_signing_secret=SIGNING)
    body = mc_body()

    def header(timestamp: float, secret: str = SIGNING, content: bytes = body) -> str:
        digest = hmac.new(secret.encode(), f"{int(timestamp)}.".encode() + content, hashlib.sha256)
        return f"t={int(timestamp)},v1={digest.hexdigest()}"

    for bad in (
        {},
        {"x-mailchimp-signature": header(NOW, "other")},
        {"x-mailchimp-signature": header(NOW - 301)},
        {"x-mailchimp-signature": header(NOW, content=body + b"&x=1")},
        {"x-mailchimp-signature": "garbage"},
    ):
        assert signed.mc(body, **bad).status_code == 401, bad
    assert signed.nothing_stored()
    assert (
        signed.mc(body, secret="wrong", **{"x-mailchimp-signature": header(NOW)}).status_code == 401
    )
    assert signed.mc(body, **{"x-mailchimp-signature": header(NOW + 299)}).status_code == 200
    assert len(signed.stored("mailchimp")) == 1
    assert signed.bv(bv_event()).status_code == 200  # Brevo signs nothing


def test_signature_is_not_needed_without_a_signing_secret(receiver: Receiver) -> None:
    assert receiver.mc(mc_body(), **{"x-mailchimp-signature": "t=1,v1=00"}).status_code == 200


def test_a_failing_state_database_is_503_so_the_provider_retries(receiver: Receiver) -> None:
    with receiver.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE provider_events"))
    answer = receiver.bv(bv_event())
    assert (answer.status_code, answer.headers["retry-after"]) == (503, "60")


def test_logs_mask_addresses_and_never_show_the_secret(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="newsletter_pipelines.webhooks")
    receiver.mc(mc_body("ann.secretive@example.com"))
    receiver.bv([bv_event("bob.secretive@example.com")])
    receiver.mc(mc_body(), secret="wrong-guess")
    text = caplog.text
    assert "a•••@example.com" in text and "b•••@example.com" in text
    assert "secretive" not in text
    assert SECRET not in text and "wrong-guess" not in text
    assert "401" in text


def test_a_secret_is_required_outside_the_embedded_demo(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.sqlite3'}")
    with pytest.raises(ValueError, match="NEWSLETTER_WEBHOOK_SECRET is required"):
        create_app(Settings(mailchimp_api_key="k-us6"), engine)
    with pytest.raises(ValueError, match="must not be the public demo secret"):
        create_app(
            Settings(brevo_api_key="xkeysib-real", webhook_secret=DEMO_WEBHOOK_SECRET), engine
        )
    with pytest.raises(ValueError, match="NEWSLETTER_WEBHOOK_SECRET must have at least 16"):
        create_app(Settings(webhook_secret="short"), engine)
    demo = TestClient(create_app(Settings(), engine))
    assert demo.get(f"{MC}?secret={DEMO_WEBHOOK_SECRET}").status_code == 200
    assert (
        demo.post(
            BV, json=bv_event(), headers={"Authorization": f"Bearer {DEMO_WEBHOOK_SECRET}"}
        ).status_code
        == 200
    )
    real = TestClient(
        create_app(Settings(brevo_api_key="xkeysib-real", webhook_secret=SECRET), engine)
    )
    assert (
        real.post(
            BV,
            json=bv_event("z@example.com"),
            headers={"Authorization": f"Bearer {DEMO_WEBHOOK_SECRET}"},
        ).status_code
        == 401
    )


def test_the_state_database_of_the_settings_is_used(isolated_home: Path) -> None:
    client = TestClient(create_app(Settings(webhook_secret=SECRET)))
    assert client.post(BV, json=bv_event(), headers=BEARER).status_code == 200
    engine = sa.create_engine(Settings().resolved_state_database_url())
    assert [e.email for e in unprocessed_events(engine, "brevo")] == ["bob@example.com"]
    assert (isolated_home / "state.sqlite3").is_file()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_garbage_never_gets_a_500(receiver: Receiver, body: bytes) -> None:
    assert receiver.mc(body).status_code in (200, 400)
    assert receiver.bv(body).status_code in (200, 400)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(["event", "email", "id", "ts", "list_id", "content"]) | st.text(max_size=6)
EVENTS = st.dictionaries(KEYS, JSON_VALUES, max_size=6)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(document=JSON_VALUES | EVENTS | st.lists(EVENTS, max_size=3))
def test_odd_json_never_gets_a_500(receiver: Receiver, document: Any) -> None:
    assert receiver.bv(json.dumps(document).encode()).status_code in (200, 400)
