"""The sandbox served over real HTTP, its control API, and its state file."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from newsletter_pipelines.providers.base import Contact, MemberStatus, Result
from newsletter_pipelines.providers.brevo import BrevoClient
from newsletter_pipelines.providers.errors import ConfigurationError
from newsletter_pipelines.providers.mailchimp import MailchimpClient
from newsletter_pipelines.providers.resources import SANDBOX_AUDIENCE
from newsletter_pipelines.sandbox import (
    BREVO_PREFIX,
    MAILCHIMP_PREFIX,
    SANDBOX_BREVO_KEY,
    SANDBOX_MAILCHIMP_KEY,
    Sandbox,
    SandboxTransport,
)
from newsletter_pipelines.sandbox.server import running
from newsletter_pipelines_tests.providers.conftest import (
    FAST_POLL,
    FAST_RETRY,
    make_mailchimp,
)
from newsletter_pipelines_tests.providers.contract import ContractChecker, ValidatingTransport
from newsletter_pipelines_tests.providers.helpers import contacts


@pytest.fixture
def network(contract_checker: ContractChecker | None) -> httpx.BaseTransport:
    """Real HTTP, with contract checks when the specs are available."""
    transport = httpx.HTTPTransport()
    return (
        transport if contract_checker is None else ValidatingTransport(transport, contract_checker)
    )


def served_mailchimp(root: str, network: httpx.BaseTransport) -> MailchimpClient:
    return MailchimpClient(
        SANDBOX_MAILCHIMP_KEY,
        "Newsletter",
        base_url=root + MAILCHIMP_PREFIX,
        audience_defaults=SANDBOX_AUDIENCE,
        retry=FAST_RETRY,
        poll=FAST_POLL,
        transport=network,
    )


def test_clients_run_unchanged_against_the_server_and_survive_drops(
    network: httpx.BaseTransport,
) -> None:
    sandbox = Sandbox()
    with running(sandbox) as root, httpx.Client(base_url=root) as control:
        mailchimp = served_mailchimp(root, network)
        assert [o.outcome for o in mailchimp.upsert(contacts(30))] == [Result.CREATED] * 30
        rule = {"kind": "drop", "provider": "mailchimp", "count": 2}
        assert control.post("/_sandbox/faults", json=rule).status_code == 201
        current = {m.key: m for m in mailchimp.snapshot()}
        renamed = [c.model_copy(update={"first_name": "Served"}) for c in contacts(30)]
        assert {o.outcome for o in mailchimp.upsert(renamed, current)} == {Result.UPDATED}
        stats = control.get("/_sandbox/stats").json()
        assert stats["faults_injected"] == {"drop": 2}
        list_id = mailchimp.ensure_audience().id
        event = {"list_id": list_id, "email": "person4@example.com", "action": "unsubscribe"}
        assert control.post("/_sandbox/mailchimp/people", json=event).status_code == 200
        statuses = {m.email: m.status for m in mailchimp.snapshot()}
        assert statuses["person4@example.com"] is MemberStatus.UNSUBSCRIBED
        account = {"api_key": "xkeysib-served", "language": "de", "contacts_per_second": 1000}
        assert control.post("/_sandbox/brevo/accounts", json=account).status_code == 201
        german = BrevoClient("xkeysib-served", "N", base_url=root + BREVO_PREFIX, transport=network)
        with pytest.raises(ConfigurationError, match="VORNAME"):
            german.ensure_audience()
        brevo = BrevoClient(
            SANDBOX_BREVO_KEY,
            "Newsletter",
            base_url=root + BREVO_PREFIX,
            poll=FAST_POLL,
            transport=network,
        )
        assert brevo.upsert(contacts(2))[0].outcome is Result.CREATED
        slash = Contact(crm_id="s", email="a/b@example.com")  # "/" travels encoded as %2F
        assert brevo.upsert([slash])[0].outcome is Result.CREATED
        found = brevo.members(["a/b@example.com", "person1@example.com", "nobody@example.com"])
        assert [m.email for m in found] == ["a/b@example.com", "person1@example.com"]
        assert [m.email for m in mailchimp.members(["person4@example.com"])] == [
            "person4@example.com"
        ]
        mailchimp.close()
        brevo.close()


def test_state_persists_across_sandboxes(tmp_path: Path, network: httpx.BaseTransport) -> None:
    state = tmp_path / "sandbox.json"
    first = Sandbox(state_file=state)
    with running(first) as root:
        client = served_mailchimp(root, network)
        client.upsert(contacts(5, tags=frozenset({"kept"})))
        client.close()
    assert state.is_file()
    second = Sandbox(state_file=state)
    with running(second) as root:
        members = served_mailchimp(root, network).snapshot()
    assert len(members) == 5 and all(m.tags == {"kept"} for m in members)


def test_the_serve_command_starts_a_server(tmp_path: Path) -> None:
    port = 18000 + int(time.time()) % 1000
    command = [sys.executable, "-m", "newsletter_pipelines.sandbox", "serve", "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/_sandbox/health")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        assert answer.json() == {"status": "ok"}
        ping = httpx.get(
            f"http://127.0.0.1:{port}{MAILCHIMP_PREFIX}/ping", auth=("x", SANDBOX_MAILCHIMP_KEY)
        )
        assert ping.status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_two_processes_share_one_state_file(tmp_path: Path) -> None:
    state = tmp_path / "shared.json"
    first, second = Sandbox(state_file=state), Sandbox(state_file=state)
    one = make_mailchimp(SandboxTransport(first))
    two = make_mailchimp(SandboxTransport(second))
    one.upsert(contacts(3))
    assert len(two.snapshot()) == 3
    two.upsert(contacts(2, start=3))
    assert sorted(m.email for m in one.snapshot()) == sorted(c.email for c in contacts(5))


def test_control_api_state_faults_and_reset(http: httpx.Client, mailchimp: MailchimpClient) -> None:
    mailchimp.upsert(contacts(2))
    state = http.get("/_sandbox/state").json()
    lists = state["mailchimp"][SANDBOX_MAILCHIMP_KEY]["lists"]
    assert [len(lst["members"]) for lst in lists.values()] == [2]
    bad = http.post("/_sandbox/faults", json={"kind": "drop", "count": 1, "rate": 0.5})
    assert bad.status_code == 400
    assert http.post("/_sandbox/faults", json={"kind": "latency", "rate": 1.0}).status_code == 201
    assert http.delete("/_sandbox/faults").status_code == 204
    assert http.post("/_sandbox/reset").status_code == 204
    fresh = http.get("/_sandbox/state").json()
    assert fresh["mailchimp"][SANDBOX_MAILCHIMP_KEY]["lists"] == {}
    assert http.get("/_sandbox/nothing").status_code == 404
