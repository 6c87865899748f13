"""Rate limits and faults: storms of 429, 5xx bursts, timeouts and drops are survived with no
duplicate write and no lost contact; exhausted retries fail loudly without leaking secrets."""

from __future__ import annotations

import logging
import weakref

import httpx
import pytest

from newsletter_pipelines.bulk import gc_paused
from newsletter_pipelines.providers import brevo as brevo_module
from newsletter_pipelines.providers import http as http_module
from newsletter_pipelines.providers.base import MemberStatus, Result
from newsletter_pipelines.providers.errors import UnavailableError
from newsletter_pipelines.providers.http import HourlyBudget, PollPolicy, RetryPolicy
from newsletter_pipelines.sandbox import (
    SANDBOX_BREVO_KEY,
    SANDBOX_MAILCHIMP_KEY,
    FaultRule,
    Sandbox,
)
from newsletter_pipelines.sandbox.brevo_state import BvAccount
from newsletter_pipelines_tests.providers.conftest import brevo_account, make_brevo, make_mailchimp
from newsletter_pipelines_tests.providers.helpers import audience, contacts

PATIENT = RetryPolicy(attempts=14, initial_wait=0.002, max_wait=0.02, timeout=5.0)


def account(sandbox: Sandbox) -> BvAccount:
    return sandbox.state.brevo[SANDBOX_BREVO_KEY]


def test_429_storms_and_5xx_bursts_lose_nothing_and_write_nothing_twice(
    transport: httpx.BaseTransport, sandbox: Sandbox
) -> None:
    client = make_mailchimp(transport, retry=PATIENT)
    client.ensure_audience()
    sandbox.faults.add(FaultRule(kind="rate_limit", provider="mailchimp", rate=0.25))
    sandbox.faults.add(FaultRule(kind="server_error", provider="mailchimp", rate=0.15, status=502))
    sandbox.faults.add(FaultRule(kind="rate_limit", provider="mailchimp", count=5))
    sandbox.faults.add(FaultRule(kind="server_error", provider="mailchimp", count=3, status=500))
    people = contacts(1201, tags=frozenset({"a"}))
    created = client.upsert(people)
    assert [o.outcome for o in created] == [Result.CREATED] * 1201
    current = {m.key: m for m in client.snapshot()}
    renamed = [c.model_copy(update={"last_name": "Storm"}) for c in people[:40]]
    updated = client.upsert(renamed, current)
    assert [o.outcome for o in updated] == [Result.UPDATED] * 40
    sandbox.faults.clear()
    lst = audience(sandbox)
    assert len(lst.members) == 1201
    assert sum(1 for m in lst.members.values() if m.merge_fields["LNAME"] == "Storm") == 40
    accepted = sandbox.stats.calls[("mailchimp", "POST", "/lists/{list_id}", 200)]
    assert accepted == 3
    assert sandbox.faults.injected["rate_limit"] >= 5
    assert sandbox.faults.injected["server_error"] >= 3


def test_timeouts_and_dropped_connections_are_retried(
    transport: httpx.BaseTransport, sandbox: Sandbox
) -> None:
    quick = RetryPolicy(attempts=6, initial_wait=0.002, max_wait=0.01, timeout=0.2)
    client = make_mailchimp(transport, retry=quick)
    client.ensure_audience()
    sandbox.faults.add(FaultRule(kind="latency", provider="mailchimp", count=2, seconds=1.0))
    sandbox.faults.add(FaultRule(kind="drop", provider="mailchimp", count=2))
    outcomes = client.upsert(contacts(3))
    assert [o.outcome for o in outcomes] == [Result.CREATED] * 3
    assert sandbox.faults.injected == {"latency": 2, "drop": 2}
    assert len(audience(sandbox).members) == 3


def test_latency_below_the_timeout_is_just_slow(
    transport: httpx.BaseTransport, sandbox: Sandbox
) -> None:
    client = make_mailchimp(transport)
    sandbox.faults.add(FaultRule(kind="latency", provider="mailchimp", count=1, seconds=0.05))
    client.check_credentials()
    assert sandbox.stats.count("mailchimp", template="/ping") == 1


def test_exhausted_retries_fail_loudly_without_the_key(
    transport: httpx.BaseTransport, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_mailchimp(transport)
    client.ensure_audience()
    sandbox.faults.add(FaultRule(kind="server_error", provider="mailchimp", count=100))
    with pytest.raises(UnavailableError, match="503") as caught:
        client.snapshot()
    assert "after 8 attempts" in str(caught.value)
    assert SANDBOX_MAILCHIMP_KEY not in str(caught.value)
    assert SANDBOX_MAILCHIMP_KEY not in caplog.text
    assert "retry 1/7" in caplog.text


def test_five_connections_stay_under_mailchimps_limit_of_ten(
    transport: httpx.BaseTransport, sandbox: Sandbox
) -> None:
    client = make_mailchimp(transport, max_connections=5)
    client.upsert(contacts(2600))
    sandbox.faults.add(FaultRule(kind="latency", provider="mailchimp", rate=1.0, seconds=0.05))
    members = client.snapshot()
    assert len(members) == 2600
    assert all(m.status is MemberStatus.SUBSCRIBED for m in members)
    assert sandbox.stats.count("mailchimp", template="/lists/{list_id}/members") == 3
    crowded = [k for k in sandbox.stats.calls if k[3] == 429]
    assert crowded == []


def test_brevo_429_waits_for_the_reset_the_provider_names(
    transport: httpx.BaseTransport, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    brevo_account(sandbox, per_second=10)
    hasty = make_brevo(transport, requests_per_second=1000.0, direct_max=30, retry=PATIENT)
    outcomes = hasty.upsert(contacts(24))
    assert [o.outcome for o in outcomes] == [Result.CREATED] * 24
    assert len(account(sandbox).contacts) == 24
    limited = sum(n for (p, _, _, status), n in sandbox.stats.calls.items() if status == 429)
    assert limited > 0
    waits = [float(m.split(" in ")[1].split()[0]) for m in caplog.messages if "HTTP 429" in m]
    assert waits and min(waits) >= 1.0


def test_brevo_paced_at_8_per_second_meets_no_429(
    transport: httpx.BaseTransport, sandbox: Sandbox
) -> None:
    brevo_account(sandbox, per_second=10)
    paced = make_brevo(transport, requests_per_second=8.0, direct_max=30)
    assert [o.outcome for o in paced.upsert(contacts(16))] == [Result.CREATED] * 16
    assert not [k for k in sandbox.stats.calls if k[3] == 429]


def test_brevo_import_survives_5xx_and_429_without_importing_twice(
    transport: httpx.BaseTransport, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    brevo_account(sandbox)
    monkeypatch.setattr(brevo_module, "IMPORT_MAX_BYTES", 30_000)
    client = make_brevo(transport, retry=PATIENT)
    client.ensure_audience()
    for kind in ("server_error", "rate_limit", "drop"):
        rule = FaultRule(kind=kind, provider="brevo", path_prefix="/contacts/import", count=2)
        sandbox.faults.add(rule)
    sandbox.faults.add(FaultRule(kind="server_error", provider="brevo", rate=0.2))
    outcomes = client.upsert(contacts(600))
    assert [o.outcome for o in outcomes] == [Result.CREATED] * 600
    accepted = sandbox.stats.calls[("brevo", "POST", "/contacts/import", 202)]
    processes = account(sandbox).processes
    assert accepted == len(processes) >= 3
    assert len(account(sandbox).contacts) == 600


def test_polling_waits_before_each_look_doubling_up_to_the_maximum_and_gives_up_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []
    monkeypatch.setattr(http_module.time, "sleep", slept.append)
    answers = iter([False, False, False, False, True])
    assert PollPolicy(initial=1.0, maximum=3.0).until(lambda: next(answers))
    assert slept == [1.0, 2.0, 3.0, 3.0, 3.0]  # the first look after `initial`, none after the last
    looks: list[float] = []
    policy = PollPolicy(initial=0.001, maximum=0.002, deadline=0.05)
    monkeypatch.undo()
    assert not policy.until(lambda: looks.append(0.0) or False)
    assert len(looks) >= 2


def test_an_hourly_budget_allows_its_burst_then_its_refill_only() -> None:
    now = [0.0]
    budget = HourlyBudget(per_hour=3600.0, burst=2, clock=lambda: now[0])  # one a second
    assert [budget.allow() for _ in range(3)] == [True, True, False]
    now[0] = 0.5
    assert not budget.allow()
    now[0] = 1.0
    assert budget.allow() and not budget.allow()
    now[0] = 100.0  # refilled up to the burst, no further
    assert [budget.allow() for _ in range(3)] == [True, True, False]


def test_a_json_body_is_sent_as_httpx_would_encode_it() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": "ü"})

    api = http_module.ApiClient(
        provider="test",
        base_url="http://provider.test",
        auth_headers={"authorization": "Bearer secret"},
        secrets=["secret"],
        parse_error=lambda response: ("", ""),
        transport=httpx.MockTransport(answer),
    )
    body = {"members": [{"email": "ä@example.com", "name": 'Zoë "Z"\n', "n": 3, "x": None}]}
    assert api.call("POST", "/write", json=body) == {"ok": "ü"}
    assert api.call("GET", "/read") == {"ok": "ü"}
    expected = httpx.Request("POST", "http://provider.test/write", json=body)
    assert seen[0].content == expected.content
    assert seen[0].headers["content-type"] == "application/json"
    assert seen[0].headers["authorization"] == "Bearer secret"
    assert seen[1].content == b"" and "content-type" not in seen[1].headers


def test_an_answer_is_freed_at_once_while_the_cyclic_collector_is_paused() -> None:
    """Bulk reads and pushes pause the cyclic collector (`bulk.gc_paused`): an answer (and its
    request) must not be cyclic garbage, or a million contacts' calls stay in memory."""
    api = http_module.ApiClient(
        provider="test",
        base_url="http://provider.test",
        auth_headers={},
        secrets=[],
        parse_error=lambda response: ("", ""),
        transport=httpx.MockTransport(lambda request: httpx.Response(200, content=b"x" * 1000)),
    )
    with gc_paused():
        response = api.request("POST", "/write", json={"a": 1})
        assert response.content == b"x" * 1000 and response.read() == b"x" * 1000
        answer, request = weakref.ref(response), weakref.ref(response.request)
        del response
        assert answer() is None and request() is None
