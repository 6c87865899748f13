"""Webhook bodies → inbox events: bracket-key forms, Brevo batches and names, dedupe keys,
secrets and Mailchimp signatures, the rate limiter."""

from __future__ import annotations

import hashlib
import hmac
import json
from urllib.parse import urlencode

import pytest

from newsletter_pipelines.webhooks.auth import (
    bearer_token,
    mailchimp_signature_valid,
    secret_matches,
)
from newsletter_pipelines.webhooks.limits import (
    MAX_BODY_BYTES,
    BadContentLengthError,
    BodyTooLargeError,
    RateLimiter,
    declared_length,
)
from newsletter_pipelines.webhooks.parse import (
    PayloadError,
    brevo_events,
    brevo_type,
    mailchimp_events,
    parse_form,
)

UNSUBSCRIBE = {
    "type": "unsubscribe",
    "fired_at": "2009-03-26 21:40:57",
    "data[action]": "unsub",
    "data[reason]": "manual",
    "data[id]": "8a25ff1d98",
    "data[list_id]": "a6b5da1054",
    "data[email]": "api+unsub@mailchimp.com",
    "data[email_type]": "html",
    "data[merges][EMAIL]": "api+unsub@mailchimp.com",
    "data[merges][FNAME]": "Mailchimp",
    "data[merges][LNAME]": "API",
    "data[merges][INTERESTS]": "Group1,Group2",
    "data[ip_opt]": "10.20.10.30",
    "data[campaign_id]": "cb398d21d2",
}


def form(fields: dict[str, str]) -> bytes:
    return urlencode(fields).encode()


def signature(body: bytes, secret: str, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def test_bracket_keys_become_nested_objects() -> None:
    assert parse_form(form(UNSUBSCRIBE)) == {
        "type": "unsubscribe",
        "fired_at": "2009-03-26 21:40:57",
        "data": {
            "action": "unsub",
            "reason": "manual",
            "id": "8a25ff1d98",
            "list_id": "a6b5da1054",
            "email": "api+unsub@mailchimp.com",
            "email_type": "html",
            "merges": {
                "EMAIL": "api+unsub@mailchimp.com",
                "FNAME": "Mailchimp",
                "LNAME": "API",
                "INTERESTS": "Group1,Group2",
            },
            "ip_opt": "10.20.10.30",
            "campaign_id": "cb398d21d2",
        },
    }


@pytest.mark.parametrize(
    ("body", "parsed"),
    [
        (b"a[]=1&a[]=2", {"a": ["1", "2"]}),
        (
            b"g[0][id]=1&g[0][name]=x&g[1][id]=2",
            {"g": {"0": {"id": "1", "name": "x"}, "1": {"id": "2"}}},
        ),
        (b"a[][x]=1&a[][x]=2", {"a": [{"x": "1"}, {"x": "2"}]}),
        (b"a=1&a=2", {"a": "2"}),
        (b"blank=&plus=a+b&pct=%C3%BC%26", {"blank": "", "plus": "a b", "pct": "ü&"}),
        (b"", {}),
    ],
)
def test_form_shapes(body: bytes, parsed: dict[str, object]) -> None:
    assert parse_form(body) == parsed


@pytest.mark.parametrize(
    "body",
    [
        b"data=1&data[x]=2",
        b"data[x]=2&data=1",
        b"a[]=1&a[x]=2",
        b"a[x]=1&a[]=2",
        b"a[b=1",
        b"[x]=1",
        b"a]=1",
        b"a" + b"[x]" * 8 + b"=1",
        b"\xff\xfe=1",
    ],
)
def test_malformed_forms_are_refused(body: bytes) -> None:
    with pytest.raises(PayloadError):
        parse_form(body)


def test_mailchimp_event_and_its_identity() -> None:
    (event,) = mailchimp_events(form(UNSUBSCRIBE), "mailchimp")
    assert (event.provider, event.audience, event.type) == ("mailchimp", "mailchimp", "unsubscribe")
    assert event.email == "api+unsub@mailchimp.com"
    assert event.payload["data"]["merges"]["FNAME"] == "Mailchimp"
    (again,) = mailchimp_events(form(dict(reversed(UNSUBSCRIBE.items()))), "mailchimp")
    assert again.dedupe_key == event.dedupe_key  # field order does not matter
    later = mailchimp_events(form(UNSUBSCRIBE | {"fired_at": "2009-03-26 21:41:00"}), "mailchimp")
    other_audience = mailchimp_events(form(UNSUBSCRIBE), "second")
    other_action = mailchimp_events(form(UNSUBSCRIBE | {"data[action]": "delete"}), "mailchimp")
    keys = {e[0].dedupe_key for e in (later, other_audience, other_action)} | {event.dedupe_key}
    assert len(keys) == 4


def test_mailchimp_upemail_keeps_the_old_address() -> None:
    fields = {
        "type": "upemail",
        "fired_at": "2009-03-26 22:15:09",
        "data[list_id]": "a6b5da1054",
        "data[new_id]": "51da8c3259",
        "data[new_email]": "api+new@mailchimp.com",
        "data[old_email]": "api+old@mailchimp.com",
    }
    (event,) = mailchimp_events(form(fields), "mailchimp")
    assert (event.type, event.email) == ("upemail", "api+old@mailchimp.com")


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"fired_at": "2009-03-26 21:40:57", "data[email]": "a@b.c"},
        {"type": "", "fired_at": "2009-03-26 21:40:57", "data[email]": "a@b.c"},
        {"type": "un subscribe", "fired_at": "x", "data[email]": "a@b.c"},
        {"type": "unsubscribe", "data[email]": "a@b.c"},
        {"type": "unsubscribe", "fired_at": "2009-03-26 21:40:57"},
        {"type": "unsubscribe", "fired_at": "2009-03-26 21:40:57", "data": "x"},
        {"type": "unsubscribe", "fired_at": "x", "data[email]": "a\x00@b.c"},
        {"type": "unsubscribe", "fired_at": "x", "data[email]": "a" * 400},
        {"type[]": "unsubscribe", "fired_at": "x", "data[email]": "a@b.c"},
    ],
)
def test_malformed_mailchimp_events(fields: dict[str, str]) -> None:
    with pytest.raises(PayloadError):
        mailchimp_events(form(fields), "mailchimp")


UNSUBSCRIBED = {
    "id": 1,
    "camp_id": 7,
    "email": "a@example.com",
    "campaign name": "Spring",
    "date_sent": "2020-10-09 00:00:00",
    "date_event": "2020-10-09 00:00:00",
    "event": "unsubscribed",
    "tag": "",
    "ts_sent": 1604933619,
    "ts_event": 1604933737,
    "ts": 1604937337,
    "list_id": [3, 42],
}


def test_brevo_single_event_and_batch() -> None:
    (single,) = brevo_events(json.dumps(UNSUBSCRIBED).encode(), "brevo")
    assert (single.type, single.email, single.payload) == (
        "unsubscribed",
        "a@example.com",
        UNSUBSCRIBED,
    )
    deleted = {
        "id": 1,
        "email": "b@example.com",
        "event": "contact_deleted",
        "list_id": [3],
        "ts": 1,
    }
    batch = brevo_events(json.dumps([UNSUBSCRIBED, deleted]).encode(), "brevo")
    assert [(e.type, e.email) for e in batch] == [
        ("unsubscribed", "a@example.com"),
        ("contact_deleted", "b@example.com"),
    ]
    assert batch[0].dedupe_key == single.dedupe_key


def test_brevo_identity_ignores_the_webhook_id_only() -> None:
    def key(event: dict[str, object]) -> str:
        return brevo_events(json.dumps(event).encode(), "brevo")[0].dedupe_key

    base = key(UNSUBSCRIBED)
    assert key(UNSUBSCRIBED | {"id": 99}) == base  # another webhook, same event
    assert key({"ts": 1604937337, **UNSUBSCRIBED}) == base  # key order
    for change in (
        {"ts_event": 1604933738},
        {"list_id": [3]},
        {"email": "c@example.com"},
        {"camp_id": 8},
    ):
        assert key(UNSUBSCRIBED | change) != base, change
    assert key(
        {"event": "contact_updated", "email": "a@example.com", "content": [{"A": 1}], "ts": 1}
    ) != key({"event": "contact_updated", "email": "a@example.com", "content": [{"A": 2}], "ts": 1})


@pytest.mark.parametrize(
    ("name", "normalised"),
    [
        ("hardBounce", "hard_bounce"),
        ("hard_bounced", "hard_bounce"),
        ("soft_bounce", "soft_bounce"),
        ("unsubscribe", "unsubscribed"),
        ("unsubscribed", "unsubscribed"),
        ("listAddition", "list_addition"),
        ("list_addition", "list_addition"),
        ("contactUpdated", "contact_updated"),
        ("contact_deleted", "contact_deleted"),
        ("spam", "spam"),
        ("proxy_open", "proxy_open"),
    ],
)
def test_brevo_event_names_get_one_spelling(name: str, normalised: str) -> None:
    assert brevo_type(name) == normalised


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b"[1, 2]",
        b'"unsubscribed"',
        b"{}",
        b'{"event": 5, "email": "a@b.c"}',
        b'{"event": "unsubscribed", "email": 5}',
        b'{"event": "unsubscribed", "email": "a@b.c", "ts": NaN}',
        b'{"event": "unsubscribed", "email": "a\\u0000@b.c"}',
        b'{"event": "unsubscribed", "email": "\\ud800@b.c"}',
        b'{"event": "contact_updated", "content": [{"\\udfff": 1}]}',
        b'[{"event": "unsubscribed"}, "x"]',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"event": "unsubscribed", "x": ' + b"[" * 40 + b"]" * 40 + b"}",
    ],
)
def test_malformed_brevo_bodies(body: bytes) -> None:
    with pytest.raises(PayloadError):
        brevo_events(body, "brevo")


def test_secrets_compare_whole_values() -> None:
    assert secret_matches("s3cret-s3cret-s3cret", "s3cret-s3cret-s3cret")
    assert not secret_matches("s3cret", "s3cret-s3cret-s3cret")
    assert not secret_matches(None, "s3cret-s3cret-s3cret")
    assert not secret_matches("sécret", "secret")
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer") is None
    assert bearer_token(None) is None


def test_mailchimp_signature() -> None:
    body, secret, now = b"type=subscribe&fired_at=x", "whsec_test", 1_800_000_000
    header = signature(body, secret, now)
    assert mailchimp_signature_valid(header, body, secret, now)
    assert mailchimp_signature_valid(header, body, secret, now + 300)
    assert mailchimp_signature_valid(
        header.upper().replace("T=", "t=").replace("V1=", "v1="), body, secret, now
    )
    assert mailchimp_signature_valid(f"t={now},v1=00,{header.split(',')[1]}", body, secret, now)
    assert not mailchimp_signature_valid(header, body, secret, now + 301)
    assert not mailchimp_signature_valid(header, body, secret, now - 301)
    assert not mailchimp_signature_valid(header, body + b"&x=1", secret, now)
    assert not mailchimp_signature_valid(header, body, "other", now)
    for broken in (None, "", f"t={now}", header.split(",")[1], f"t=x{now},v1=00", "t=²,v1=00"):
        assert not mailchimp_signature_valid(broken, body, secret, now)


def test_rate_limiter_refills_per_key() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")
    now[0] = 0.5
    assert limiter.allow("a")
    assert not limiter.allow("a")
    now[0] = 100.0
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.retry_after() == 1


def test_declared_length() -> None:
    assert declared_length(None) is None
    assert declared_length(" 12 ") == 12
    assert declared_length("0" * 50 + "5") == 5
    assert declared_length(str(MAX_BODY_BYTES)) == MAX_BODY_BYTES
    for bad in ("abc", "-1", "1.5", "١٢", ""):
        with pytest.raises(BadContentLengthError):
            declared_length(bad)
    for large in (str(MAX_BODY_BYTES + 1), "9" * 5000):
        with pytest.raises(BodyTooLargeError):
            declared_length(large)
