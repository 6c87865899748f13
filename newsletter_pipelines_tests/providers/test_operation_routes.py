"""Mailchimp member operations go one by one or through `/batches`, whichever is estimated to
finish sooner from what the client measured: its calls' round trips and its last batch."""

from __future__ import annotations

import time

import httpx
from hypothesis import given
from hypothesis import strategies as st

from newsletter_pipelines.providers.base import Contact
from newsletter_pipelines.providers.http import PollPolicy
from newsletter_pipelines.providers.mailchimp import MailchimpClient
from newsletter_pipelines.providers.mailchimp_batches import Route
from newsletter_pipelines.sandbox import Sandbox
from newsletter_pipelines_tests.providers.conftest import make_mailchimp
from newsletter_pipelines_tests.providers.helpers import contacts

ROUND_TRIP = 0.02  # added to every call
FIRST_POLL = 0.3  # a batch's least: this, plus submit, status and download


class _Distant(httpx.BaseTransport):
    """The sandbox, `ROUND_TRIP` seconds away."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        time.sleep(ROUND_TRIP)
        return self._inner.handle_request(request)


def test_route_of_the_benchmarks_figures() -> None:
    """100 ms a call on 5 connections, a batch's result after 1.3 s: 100 updates (a 1 %
    re-run of 10,000) go through a batch, 40 one by one."""
    assert Route.of(100, 5, 0.1, 1.3) == Route(direct=2.0, batches=1.3)
    assert not Route.of(100, 5, 0.1, 1.3).direct_is_sooner
    assert Route.of(40, 5, 0.1, 1.3).direct_is_sooner
    assert Route.of(5, 5, None, 0.0).direct_is_sooner  # unknown latency: one round only
    assert not Route.of(6, 5, None, 100.0).direct_is_sooner


@given(
    st.integers(1, 5_000),
    st.integers(1, 5_000),
    st.integers(1, 10),
    st.floats(0.001, 5.0),
    st.floats(0.0, 600.0),
)
def test_fewer_operations_never_turn_a_direct_route_into_a_batch(
    count: int, fewer: int, connections: int, latency: float, batch: float
) -> None:
    small, large = sorted((count, fewer))
    if Route.of(large, connections, latency, batch).direct_is_sooner:
        assert Route.of(small, connections, latency, batch).direct_is_sooner


def test_one_by_one_is_planned_on_a_runs_share_of_the_accounts_connections(
    transport: httpx.BaseTransport,
) -> None:
    """A run alone may open all 10 of the account's connections, but another run may take half
    of them at any call: 100 updates at 100 ms a call go through one batch (3 calls), not 100
    calls on connections the run may not keep."""
    poll = PollPolicy(initial=1.0, maximum=2.0, deadline=30.0)  # production's first poll
    client: MailchimpClient = make_mailchimp(transport, max_connections=10, poll=poll)
    for _ in range(5):
        client._api._answered(0.1)
    assert client._ops.route(100) == Route(direct=2.0, batches=1.3)
    assert client._ops.route(50).direct_is_sooner
    client.close()


def _renamed(people: list[Contact], name: str) -> list[Contact]:
    return [c.model_copy(update={"first_name": name}) for c in people]


def _batches(sandbox: Sandbox) -> int:
    return sandbox.stats.count("mailchimp", method="POST", template="/batches")


def test_updates_take_the_sooner_route_and_a_slow_batch_is_remembered(
    sandbox: Sandbox, transport: httpx.BaseTransport
) -> None:
    poll = PollPolicy(initial=FIRST_POLL, maximum=2 * FIRST_POLL, deadline=30.0)
    client: MailchimpClient = make_mailchimp(_Distant(transport), poll=poll)
    assert client._api.latency() is None
    people = contacts(200)
    client.upsert(people)
    latency = client._api.latency()
    assert latency is not None and latency >= ROUND_TRIP
    current = {m.key: m for m in client.snapshot()}

    # 30 updates: 6 rounds of calls (~0.12 s) beat a batch's least (0.3 s + 3 calls)
    client.upsert(_renamed(people[:30], "One"), current)
    assert _batches(sandbox) == 0
    assert sandbox.stats.count("mailchimp", method="PATCH") == 30

    # 150 updates: 30 rounds (~0.6 s) lose to it, so they go through a batch, which takes
    # 1.5 s here (its result is ready only then)
    sandbox.batch_delay_seconds = 1.5
    client.upsert(_renamed(people[:150], "Two"), current)
    assert _batches(sandbox) == 1
    assert client._ops.route(150).batches >= 1.5

    # the same 150 again: one by one is now the sooner
    client.upsert(_renamed(people[:150], "Three"), current)
    assert _batches(sandbox) == 1
    assert sandbox.stats.count("mailchimp", method="PATCH") == 30 + 150
    assert {
        m.first_name for m in client.snapshot() if m.email in {c.email for c in people[:150]}
    } == {"Three"}
    client.close()
