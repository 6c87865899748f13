"""Fixtures for the provider tests: a fresh sandbox per test, reached through a transport that
checks every exchange against the official specs, and clients configured for quick retries."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from newsletter_pipelines.providers.brevo import BrevoClient
from newsletter_pipelines.providers.http import PollPolicy, RetryPolicy
from newsletter_pipelines.providers.mailchimp import MailchimpClient
from newsletter_pipelines.providers.resources import SANDBOX_AUDIENCE
from newsletter_pipelines.sandbox import (
    BREVO_PREFIX,
    MAILCHIMP_PREFIX,
    SANDBOX_BREVO_KEY,
    SANDBOX_MAILCHIMP_KEY,
    SANDBOX_ORIGIN,
    Sandbox,
    SandboxTransport,
)
from newsletter_pipelines.sandbox.brevo_state import BvAttribute
from newsletter_pipelines.settings import Settings
from newsletter_pipelines_tests.providers.contract import (
    ContractChecker,
    ValidatingTransport,
    load_brevo,
    load_mailchimp,
)

# Read before the autouse fixture of the parent conftest clears NEWSLETTER_* variables.
SPECS_DIR = Settings().api_specs_dir
FAST_RETRY = RetryPolicy(attempts=8, initial_wait=0.005, max_wait=0.05, timeout=5.0)
FAST_POLL = PollPolicy(initial=0.0, maximum=0.02, deadline=30.0)
MAILCHIMP_URL = SANDBOX_ORIGIN + MAILCHIMP_PREFIX
BREVO_URL = SANDBOX_ORIGIN + BREVO_PREFIX
UNMETERED = 100_000
"""Brevo rate limit for tests that are not about rate limits (the real one is 10/s)."""


@pytest.fixture(scope="session")
def contract_checker() -> ContractChecker | None:
    """Both specs, loaded once; None (contract checks off) when the folder is missing."""
    missing = [
        name
        for name in ("mailchimp-marketing.json", "brevo-v3.yaml")
        if not (SPECS_DIR / name).is_file()
    ]
    if missing:
        return None
    return ContractChecker([load_mailchimp(SPECS_DIR), load_brevo(SPECS_DIR)])


@pytest.fixture
def checker(contract_checker: ContractChecker | None) -> ContractChecker:
    """The checker, for tests that are about the contract: skip without specs, fail in CI."""
    if contract_checker is None:
        reason = f"API specifications not found in {SPECS_DIR} (NEWSLETTER_API_SPECS_DIR)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return contract_checker


@dataclass
class Receiver:
    """A webhook receiver: answers 200 and keeps what it got."""

    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200)

    def posts(self) -> list[httpx.Request]:
        """Deliveries (the validation GETs left out)."""
        return [r for r in self.requests if r.method == "POST"]


@pytest.fixture
def receiver() -> Receiver:
    """Where the sandbox delivers webhooks in tests."""
    return Receiver()


@pytest.fixture
def sandbox(receiver: Receiver) -> Iterator[Sandbox]:
    """A fresh in-process sandbox with the default accounts."""
    box = Sandbox(webhook_transport=httpx.MockTransport(receiver))
    yield box
    box.close()


@pytest.fixture
def transport(
    sandbox: Sandbox, contract_checker: ContractChecker | None
) -> Iterator[httpx.BaseTransport]:
    """The sandbox transport, wrapped in contract checks when the specs are available."""
    inner = SandboxTransport(sandbox)
    if contract_checker is None:
        yield inner
        return
    seen = len(contract_checker.violations)
    yield ValidatingTransport(inner, contract_checker)
    assert contract_checker.violations[seen:] == []


@pytest.fixture
def http(transport: httpx.BaseTransport) -> Iterator[httpx.Client]:
    """A raw HTTP client on the (validated) sandbox, for tests of the emulator itself."""
    with httpx.Client(transport=transport, base_url=SANDBOX_ORIGIN) as client:
        yield client


def make_mailchimp(
    transport: httpx.BaseTransport,
    audience: str = "Newsletter",
    *,
    api_key: str = SANDBOX_MAILCHIMP_KEY,
    **options: Any,
) -> MailchimpClient:
    """A Mailchimp client on the sandbox with quick retries and polling."""
    settings: dict[str, Any] = {
        "base_url": MAILCHIMP_URL,
        "transport": transport,
        "audience_defaults": SANDBOX_AUDIENCE,
        "retry": FAST_RETRY,
        "poll": FAST_POLL,
    }
    return MailchimpClient(api_key, audience, **(settings | options))


@pytest.fixture
def mailchimp(transport: httpx.BaseTransport) -> Iterator[MailchimpClient]:
    """A Mailchimp client for the audience "Newsletter" (created on first use)."""
    client = make_mailchimp(transport)
    yield client
    client.close()


def brevo_account(
    sandbox: Sandbox,
    *,
    api_key: str = SANDBOX_BREVO_KEY,
    language: str = "en",
    salutation: BvAttribute | None = None,
    per_second: int = UNMETERED,
) -> None:
    """(Re)create a Brevo sandbox account with a salutation and a tags attribute."""
    sandbox.add_brevo_account(
        api_key,
        language=language,
        extra_attributes=[
            salutation or BvAttribute(name="SALUTATION"),
            BvAttribute(name="NEWSLETTER_TAGS"),
        ],
        contacts_per_second=per_second,
        other_per_hour=UNMETERED,
    )


def make_brevo(
    transport: httpx.BaseTransport,
    audience: str = "Newsletter",
    *,
    api_key: str = SANDBOX_BREVO_KEY,
    **options: Any,
) -> BrevoClient:
    """A Brevo client on the sandbox with quick retries and polling, unpaced."""
    settings: dict[str, Any] = {
        "base_url": BREVO_URL,
        "transport": transport,
        "retry": FAST_RETRY,
        "poll": FAST_POLL,
        "requests_per_second": float(UNMETERED),
    }
    return BrevoClient(api_key, audience, **(settings | options))


@pytest.fixture
def brevo(sandbox: Sandbox, transport: httpx.BaseTransport) -> Iterator[BrevoClient]:
    """A Brevo client for the list "Newsletter" on an unmetered English account."""
    brevo_account(sandbox)
    client = make_brevo(transport)
    yield client
    client.close()
