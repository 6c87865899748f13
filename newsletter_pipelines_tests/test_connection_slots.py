"""A provider account's connection slots in the PostgreSQL state database: every process that
calls the account shares them, and together they never hold more than the account allows."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa

from newsletter_pipelines.defs.resources import build_resources
from newsletter_pipelines.providers.mailchimp import ACCOUNT_CONNECTIONS, MailchimpClient
from newsletter_pipelines.sandbox import (
    MAILCHIMP_PREFIX,
    SANDBOX_MAILCHIMP_KEY,
    SANDBOX_ORIGIN,
    Sandbox,
    SandboxTransport,
)
from newsletter_pipelines.settings import Settings
from newsletter_pipelines.state.connection_slots import AccountSlots, account_slots


class InFlight:
    """The most calls in flight at once, over all who count here."""

    def __init__(self) -> None:
        self.now = self.most = 0
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.now -= 1


class CountingTransport(httpx.BaseTransport):
    """The sandbox, each answer taking 20 ms, its calls in flight counted."""

    def __init__(self, inner: httpx.BaseTransport, counted: InFlight) -> None:
        self.inner, self.counted = inner, counted

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self.counted:
            time.sleep(0.02)
            return self.inner.handle_request(request)


@pytest.fixture
def slots_of(postgres_url: str) -> Iterator[Callable[[str, int], AccountSlots]]:
    """Makes the slots of an account as a process of its own has them (an engine each)."""
    made: list[tuple[AccountSlots, sa.Engine]] = []

    def make(account: str, total: int) -> AccountSlots:
        engine = sa.create_engine(postgres_url)
        made.append((AccountSlots(engine, account, total), engine))
        return made[-1][0]

    yield make
    for slots, engine in made:
        slots.close()
        engine.dispose()


def _hammer(slots: AccountSlots, counted: InFlight, threads: int, calls: int) -> None:
    def call(_: int) -> None:
        with slots.slot(), counted:
            time.sleep(0.005)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(call, range(calls)))


def test_processes_together_never_hold_more_than_the_accounts_slots(
    slots_of: Callable[[str, int], AccountSlots],
) -> None:
    alone = InFlight()
    first = slots_of("mailchimp", 3)
    _hammer(first, alone, threads=6, calls=60)
    assert alone.most == 3  # a process alone on the account has every slot
    assert first.held() == 0

    together = InFlight()
    second = slots_of("mailchimp", 3)
    other_account = slots_of("other", 3)
    workers = [
        threading.Thread(target=_hammer, args=(slots, together, 6, 60)) for slots in (first, second)
    ]
    for worker in workers:
        worker.start()
    with other_account.slot(), other_account.slot(), other_account.slot():
        for worker in workers:  # another account's slots are its own
            worker.join()
    assert together.most == 3
    assert first.held() == second.held() == other_account.held() == 0


def test_a_process_that_ends_lets_its_slots_go(
    postgres_url: str, slots_of: Callable[[str, int], AccountSlots]
) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, sqlalchemy as sa\n"
            "from newsletter_pipelines.state.connection_slots import AccountSlots\n"
            "slots = AccountSlots(sa.create_engine(sys.argv[1]), 'mailchimp', 2)\n"
            "held = [slots.slot() for _ in range(2)]\n"
            "[h.__enter__() for h in held]\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
            postgres_url,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        waiting = slots_of("mailchimp", 2)
        assert waiting._try_one() is None  # every slot is the other process's
        holder.kill()
        holder.wait()
        started = time.monotonic()
        with waiting.slot(), waiting.slot():  # both, once the other process is gone
            assert waiting.held() == 2
        assert time.monotonic() - started < 5
    finally:
        holder.kill()


def test_a_call_waits_for_a_slot_no_longer_than_its_bound(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    holder = AccountSlots(engine, "mailchimp", 1)
    waiting = AccountSlots(sa.create_engine(postgres_url), "mailchimp", 1, wait_max=0.3)
    try:
        with (
            holder.slot(),
            pytest.raises(TimeoutError, match="mailchimp account came free"),
            waiting.slot(),
        ):
            pass
        with waiting.slot():  # free again
            assert waiting.held() == 1
    finally:
        holder.close()
        waiting.close()


def test_two_mailchimp_clients_of_one_account_keep_to_its_connections(
    sandbox: Sandbox, slots_of: Callable[[str, int], AccountSlots]
) -> None:
    counted = InFlight()

    def client(slots: AccountSlots) -> MailchimpClient:
        return MailchimpClient(
            SANDBOX_MAILCHIMP_KEY,
            "CRM Newsletter",
            base_url=SANDBOX_ORIGIN + MAILCHIMP_PREFIX,
            max_connections=ACCOUNT_CONNECTIONS,
            transport=CountingTransport(SandboxTransport(sandbox), counted),
            account_slot=slots.slot,
        )

    def ping_all(mailchimp: MailchimpClient) -> None:
        mailchimp._api.parallel(lambda _: mailchimp.check_credentials(), range(60))

    with ExitStack() as stack:
        one, two = (client(slots_of("mailchimp", ACCOUNT_CONNECTIONS)) for _ in range(2))
        stack.callback(one.close)
        stack.callback(two.close)
        ping_all(one)
        assert counted.most == ACCOUNT_CONNECTIONS  # alone: the account's every connection
        counted.most = 0
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(ping_all, (one, two)))
        assert counted.most == ACCOUNT_CONNECTIONS  # together: never more


def test_the_slots_are_used_with_a_postgresql_state_database_only(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_postgres = build_resources(Settings(state_database_url=postgres_url))["mailchimp"]
    found = on_postgres.account_slots()
    assert found is not None and found.total == ACCOUNT_CONNECTIONS
    assert found is account_slots(postgres_url, "mailchimp", ACCOUNT_CONNECTIONS)  # one a process
    monkeypatch.setenv("NEWSLETTER_STATE_DATABASE_URL", postgres_url)
    by_reference = build_resources(Settings())["mailchimp"]
    assert isinstance(by_reference.connection_slots_url, dg.EnvVar)  # the URL stays out of the UI
    assert by_reference.account_slots() is found
    monkeypatch.delenv("NEWSLETTER_STATE_DATABASE_URL")
    assert build_resources(Settings())["mailchimp"].account_slots() is None  # SQLite
    with pytest.raises(ValueError, match="need PostgreSQL"):
        AccountSlots(sa.create_engine("sqlite://"), "mailchimp", 10)
