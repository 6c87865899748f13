"""The contract checker is not vacuous: it rejects what the official specs reject, and it saw
the provider tests' traffic."""

from __future__ import annotations

import base64

import httpx
import pytest

from newsletter_pipelines.providers.brevo import BrevoClient
from newsletter_pipelines.providers.mailchimp import MailchimpClient
from newsletter_pipelines.sandbox import SANDBOX_BREVO_KEY, SANDBOX_MAILCHIMP_KEY, SANDBOX_ORIGIN
from newsletter_pipelines_tests.providers.contract import ContractChecker, ContractViolation
from newsletter_pipelines_tests.providers.helpers import contacts

pytestmark = pytest.mark.contract

MC = f"{SANDBOX_ORIGIN}/mailchimp/3.0"
BV = f"{SANDBOX_ORIGIN}/brevo/v3"
MC_AUTH = ("x", SANDBOX_MAILCHIMP_KEY)


def test_client_traffic_is_checked(checker: ContractChecker, mailchimp: MailchimpClient) -> None:
    before = checker.checked
    mailchimp.upsert(contacts(20))
    mailchimp.snapshot()
    assert checker.checked - before >= 6


def test_member_reads_are_checked(
    checker: ContractChecker, mailchimp: MailchimpClient, brevo: BrevoClient
) -> None:
    addresses = ["person0@example.com", "nobody@example.com", "a/b@example.com", "not-an-address"]
    for client in (mailchimp, brevo):
        client.upsert(contacts(1))
        before = checker.checked
        assert [m.email for m in client.members(addresses)] == ["person0@example.com"]
        assert checker.checked - before == len(addresses)


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("GET", f"{MC}/lists/abc/members?count=1001", None),
        ("PUT", f"{MC}/lists/abc/members", {}),
        ("PATCH", f"{MC}/lists/abc/members/0a1b", {"status": "resubscribed"}),
        ("POST", f"{MC}/lists/abc", {"update_existing": False}),
    ],
)
def test_requests_off_the_mailchimp_spec_are_violations(
    checker: ContractChecker, http: httpx.Client, method: str, url: str, body: object
) -> None:
    with checker.expecting_violations(), pytest.raises(ContractViolation):
        http.request(method, url, json=body, auth=MC_AUTH)


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("GET", f"{BV}/contacts/lists/1/contacts?limit=501", None),
        ("POST", f"{BV}/contacts/lists", {"name": "no folder"}),
        ("POST", f"{BV}/webhooks", {"url": "https://x.example", "events": ["bogus"]}),
    ],
)
def test_requests_off_the_brevo_spec_are_violations(
    checker: ContractChecker, http: httpx.Client, method: str, url: str, body: object
) -> None:
    with checker.expecting_violations(), pytest.raises(ContractViolation):
        http.request(method, url, json=body, headers={"api-key": SANDBOX_BREVO_KEY})


def test_answers_off_the_spec_are_violations(checker: ContractChecker) -> None:
    token = base64.b64encode(f"{MC_AUTH[0]}:{MC_AUTH[1]}".encode()).decode()
    request = httpx.Request(
        "GET", f"{MC}/lists/abc/members", headers={"authorization": f"Basic {token}"}
    )
    with checker.expecting_violations():
        wrong_status = httpx.Response(200, json={"members": [{"status": "resubscribed"}]})
        assert checker.check(request, wrong_status)
        not_a_problem = httpx.Response(404, json={"error": "gone"})
        assert checker.check(request, not_a_problem)
    fine = httpx.Response(200, json={"members": [{"status": "archived"}], "total_items": 1})
    assert checker.check(request, fine) == []
