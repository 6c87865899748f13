"""`python -m newsletter_pipelines.sandbox serve --latency S`: every provider API call of the
served sandbox (a real server process) waits S seconds; the control API does not. With
`--batch-delay S`, a Mailchimp `/batches` result is ready S seconds after the batch was
submitted (the provider-like "1 s per /batches result" of `benchmarks/bench_vs_baselines.py`)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from newsletter_pipelines.sandbox import (
    BREVO_PREFIX,
    MAILCHIMP_PREFIX,
    SANDBOX_BREVO_KEY,
    SANDBOX_MAILCHIMP_KEY,
)
from newsletter_pipelines_tests.providers.test_sandbox_mailchimp import NEW_LIST as RAW_LIST

LATENCY_S = 0.4
BATCH_DELAY_S = 1.0
NEW_LIST = {**RAW_LIST, "name": "Concurrent"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def served() -> Iterator[str]:
    """The sandbox served by its command with `--latency`; yields its root URL."""
    with serving("--latency", str(LATENCY_S)) as root:
        yield root


@contextmanager
def serving(*options: str) -> Iterator[str]:
    """The sandbox served by its command with `options`; yields its root URL."""
    port = _free_port()
    command = [
        *(sys.executable, "-m", "newsletter_pipelines.sandbox", "serve"),
        *("--port", str(port), *options),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{root}/_sandbox/health", timeout=5).raise_for_status()
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        yield root
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_every_provider_call_of_a_served_sandbox_waits_the_latency(served: str) -> None:
    calls = [
        (f"{MAILCHIMP_PREFIX}/ping", {"auth": ("x", SANDBOX_MAILCHIMP_KEY)}),
        (f"{MAILCHIMP_PREFIX}/lists", {"auth": ("x", SANDBOX_MAILCHIMP_KEY)}),
        (f"{BREVO_PREFIX}/account", {"headers": {"api-key": SANDBOX_BREVO_KEY}}),
        (f"{MAILCHIMP_PREFIX}/ping", {"auth": ("x", SANDBOX_MAILCHIMP_KEY)}),
    ]
    with httpx.Client(base_url=served, timeout=30) as client:
        for path, auth in calls:
            started = time.perf_counter()
            answer = client.get(path, **auth)
            took = time.perf_counter() - started
            assert answer.status_code == 200, (path, answer.text)
            assert took >= LATENCY_S, f"{path} answered after {took:.3f} s"
        stats = client.get("/_sandbox/stats").json()
    # one latency per provider call; the control calls (health, stats) drew none
    assert stats["faults_injected"] == {"latency": len(calls)}
    assert sum(row["count"] for row in stats["calls"]) == len(calls)


def test_concurrent_calls_are_served_on_arrival_and_answered_after_the_latency() -> None:
    """`--latency` is a round trip: five batch subscribes sent at once on five connections are
    all served (counted by the sandbox) while every answer is still outstanding, and each is
    answered the latency after it was sent: the latency is not added to a queue of calls."""
    latency = 1.5
    auth = ("x", SANDBOX_MAILCHIMP_KEY)
    with serving("--latency", str(latency)) as root:
        with httpx.Client(base_url=root + MAILCHIMP_PREFIX, auth=auth, timeout=30) as client:
            list_id = client.post("/lists", json=NEW_LIST).raise_for_status().json()["id"]

        def subscribe(client: httpx.Client, n: int) -> None:
            members = [
                {"email_address": f"c{n}-{i}@example.com", "status": "subscribed"}
                for i in range(500)
            ]
            client.post(
                f"{root}{MAILCHIMP_PREFIX}/lists/{list_id}", json={"members": members}, auth=auth
            ).raise_for_status()

        outstanding, spans = served_while_held(root, subscribe, 5, ("POST", "/lists/{list_id}"))
    assert outstanding, "a call was answered before all of them were served"
    assert all(done - sent >= latency for sent, done in spans)
    assert max(sent for sent, _ in spans) < min(done for _, done in spans)  # all at once


def test_more_calls_at_once_than_anyios_default_threads_are_all_served_on_arrival() -> None:
    """Each call keeps a worker thread through its latency: the served sandbox has more of
    them than AnyIO's default 40, so 60 calls at once are all served while their answers are
    held (with 40, the last 20 would wait a latency for a worker, then one more)."""
    with serving("--latency", "1.5") as root:

        def account(client: httpx.Client, n: int) -> None:
            headers = {"api-key": SANDBOX_BREVO_KEY}
            client.get(f"{root}{BREVO_PREFIX}/account", headers=headers).raise_for_status()

        outstanding, _ = served_while_held(root, account, 60, ("GET", "/account"))
    assert outstanding, "a call was answered before all of them were served"


def served_while_held(
    root: str, call: Callable[[httpx.Client, int], None], calls: int, route: tuple[str, str]
) -> tuple[bool, list[tuple[float, float]]]:
    """Make `calls` calls at once, each on its own connection, and poll the sandbox's count
    of `route` (method, template) until it has served them all or one is answered; returns
    whether every answer was still outstanding then and each call's (sent, answered)."""
    clients = [httpx.Client(timeout=30) for _ in range(calls)]
    spans: list[tuple[float, float]] = []
    start = threading.Barrier(calls + 1)

    def timed(n: int) -> None:
        start.wait()
        sent = time.monotonic()
        call(clients[n], n)
        spans.append((sent, time.monotonic()))

    def served() -> int:
        stats = httpx.get(f"{root}/_sandbox/stats", timeout=30).raise_for_status().json()
        return sum(row["count"] for row in stats["calls"] if (row["method"], row["route"]) == route)

    threads = [threading.Thread(target=timed, args=(n,)) for n in range(calls)]
    for thread in threads:
        thread.start()
    start.wait()
    while served() < calls and not spans:
        time.sleep(0.02)
    outstanding = not spans
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    assert len(spans) == calls
    return outstanding, spans


def test_a_negative_latency_is_refused() -> None:
    command = [sys.executable, "-m", "newsletter_pipelines.sandbox", "serve", "--latency", "-1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "--latency must not be negative" in done.stderr


def test_a_served_batch_is_finished_after_the_batch_delay() -> None:
    auth = ("x", SANDBOX_MAILCHIMP_KEY)
    with (
        serving("--batch-delay", str(BATCH_DELAY_S)) as root,
        httpx.Client(base_url=root + MAILCHIMP_PREFIX, auth=auth, timeout=30) as client,
    ):
        operations = [{"method": "GET", "path": "/ping", "operation_id": "ping"}]
        submitted = time.monotonic()
        batch = client.post("/batches", json={"operations": operations}).json()
        assert batch["status"] == "pending"
        seen = []
        while True:
            status = client.get(f"/batches/{batch['id']}").json()["status"]
            seen.append(status)
            if status == "finished":
                break
            assert time.monotonic() - submitted < BATCH_DELAY_S + 10
            time.sleep(0.1)
        ready_after = time.monotonic() - submitted
    assert seen[0] == "pending"
    assert ready_after >= BATCH_DELAY_S


def test_by_default_a_served_batch_is_finished_at_once() -> None:
    auth = ("x", SANDBOX_MAILCHIMP_KEY)
    with (
        serving() as root,
        httpx.Client(base_url=root + MAILCHIMP_PREFIX, auth=auth, timeout=30) as client,
    ):
        operations = [{"method": "GET", "path": "/ping", "operation_id": "ping"}]
        batch = client.post("/batches", json={"operations": operations}).json()
        assert client.get(f"/batches/{batch['id']}").json()["status"] == "finished"
