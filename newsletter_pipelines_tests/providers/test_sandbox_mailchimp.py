"""The Mailchimp emulator itself, over raw HTTP: the refusals, limits and formats the client
relies on are what Mailchimp answers."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
from typing import Any

import httpx
import pytest

from newsletter_pipelines.sandbox import (
    SANDBOX_MAILCHIMP_KEY,
    SANDBOX_ORIGIN,
    FaultRule,
    Sandbox,
    SandboxTransport,
    mailchimp_members,
)
from newsletter_pipelines.sandbox.mailchimp_state import subscriber_hash

AUTH = ("anystring", SANDBOX_MAILCHIMP_KEY)
ROOT = "/mailchimp/3.0"
NEW_LIST = {
    "name": "Raw",
    "contact": {"company": "C", "address1": "A", "city": "B", "country": "DE"},
    "permission_reminder": "You asked for it.",
    "campaign_defaults": {
        "from_name": "F",
        "from_email": "f@example.com",
        "subject": "",
        "language": "en",
    },
    "email_type_option": False,
}


@pytest.fixture
def list_id(http: httpx.Client) -> str:
    response = http.post(f"{ROOT}/lists", json=NEW_LIST, auth=AUTH)
    assert response.status_code == 200
    return str(response.json()["id"])


def subscribe(http: httpx.Client, list_id: str, *emails: str, **options: Any) -> dict[str, Any]:
    members = [{"email_address": e, "status": "subscribed"} for e in emails]
    response = http.post(f"{ROOT}/lists/{list_id}", json={"members": members, **options}, auth=AUTH)
    assert response.status_code == 200
    return dict(response.json())


def member_path(list_id: str, email: str) -> str:
    return f"{ROOT}/lists/{list_id}/members/{subscriber_hash(email)}"


def test_batch_subscribe_refuses_501_members_and_takes_500(
    http: httpx.Client, list_id: str
) -> None:
    many = [{"email_address": f"p{i}@example.com", "status": "subscribed"} for i in range(501)]
    refused = http.post(f"{ROOT}/lists/{list_id}", json={"members": many}, auth=AUTH)
    assert refused.status_code == 400
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["title"] == "Invalid Resource"
    assert (
        subscribe(http, list_id, *(m["email_address"] for m in many[:500]))["total_created"] == 500
    )


def test_batch_subscribe_reports_existing_members_with_http_200(
    http: httpx.Client, list_id: str
) -> None:
    subscribe(http, list_id, "a@example.com")
    answer = subscribe(http, list_id, "a@example.com", "b@example.com", update_existing=False)
    assert answer["total_created"] == 1 and answer["error_count"] == 1
    assert answer["errors"][0]["error_code"] == "ERROR_CONTACT_EXISTS"
    assert answer["errors"][0]["email_address"] == "a@example.com"


def test_posting_an_existing_member_answers_member_exists(http: httpx.Client, list_id: str) -> None:
    body = {"email_address": "a@example.com", "status": "subscribed"}
    assert http.post(f"{ROOT}/lists/{list_id}/members", json=body, auth=AUTH).status_code == 200
    again = http.post(f"{ROOT}/lists/{list_id}/members", json=body, auth=AUTH)
    assert (again.status_code, again.json()["title"]) == (400, "Member Exists")


@pytest.mark.parametrize("opt_out", ["unsubscribed", "cleaned"])
def test_resubscribing_an_opted_out_member_is_a_compliance_refusal(
    http: httpx.Client, list_id: str, opt_out: str
) -> None:
    subscribe(http, list_id, "a@example.com")
    path = member_path(list_id, "a@example.com")
    assert http.patch(path, json={"status": opt_out}, auth=AUTH).status_code == 200
    for status in ("subscribed", "pending"):
        answer = http.patch(path, json={"status": status}, auth=AUTH)
        assert (answer.status_code, answer.json()["title"]) == (400, "Member In Compliance State")
    batch = subscribe(http, list_id, "a@example.com", update_existing=True)
    assert "compliance state" in batch["errors"][0]["error"]
    assert http.get(path, auth=AUTH).json()["status"] == opt_out


def test_permanently_deleted_addresses_cannot_come_back(http: httpx.Client, list_id: str) -> None:
    subscribe(http, list_id, "a@example.com")
    path = member_path(list_id, "a@example.com")
    assert http.post(f"{path}/actions/delete-permanent", auth=AUTH).status_code == 204
    assert http.get(path, auth=AUTH).status_code == 404
    body = {"email_address": "a@example.com", "status": "pending"}
    again = http.post(f"{ROOT}/lists/{list_id}/members", json=body, auth=AUTH)
    assert (again.status_code, again.json()["title"]) == (400, "Forgotten Email Not Subscribed")


def test_archive_keeps_the_opt_out_and_is_refused_for_cleaned(
    http: httpx.Client, list_id: str
) -> None:
    subscribe(http, list_id, "a@example.com", "b@example.com")
    a, b = member_path(list_id, "a@example.com"), member_path(list_id, "b@example.com")
    http.patch(a, json={"status": "unsubscribed"}, auth=AUTH)
    assert http.delete(a, auth=AUTH).status_code == 204
    assert http.get(a, auth=AUTH).json()["status"] == "archived"
    readd = subscribe(http, list_id, "a@example.com")
    assert "compliance state" in readd["errors"][0]["error"]
    http.patch(b, json={"status": "cleaned"}, auth=AUTH)
    refused = http.delete(b, auth=AUTH)
    assert (refused.status_code, refused.json()["title"]) == (405, "Method Not Allowed")
    assert refused.headers["allow"] == "GET, PUT"


def test_partial_responses_and_paging(http: httpx.Client, list_id: str) -> None:
    subscribe(http, list_id, *(f"p{i}@example.com" for i in range(25)))
    page = http.get(
        f"{ROOT}/lists/{list_id}/members",
        params={"count": 10, "offset": 20, "fields": "members.email_address,total_items"},
        auth=AUTH,
    ).json()
    assert page == {
        "members": [{"email_address": f"p{i}@example.com"} for i in range(20, 25)],
        "total_items": 25,
    }
    lean = http.get(
        f"{ROOT}/lists/{list_id}", params={"exclude_fields": "stats,_links"}, auth=AUTH
    ).json()
    assert "stats" not in lean and lean["id"] == list_id


def test_batches_run_asynchronously_and_answer_with_a_gzipped_tar(
    http: httpx.Client, list_id: str, sandbox: Sandbox
) -> None:
    sandbox.batch_delay_seconds = 60.0
    subscribe(http, list_id, "a@example.com")
    operations = [
        {
            "method": "PATCH",
            "path": f"/lists/{list_id}/members/{subscriber_hash('a@example.com')}",
            "operation_id": "ok",
            "body": json.dumps({"merge_fields": {"FNAME": "Ann"}}),
        },
        {
            "method": "PATCH",
            "path": f"/lists/{list_id}/members/{subscriber_hash('x@example.com')}",
            "operation_id": "missing",
            "body": "{}",
        },
    ]
    batch = http.post(f"{ROOT}/batches", json={"operations": operations}, auth=AUTH).json()
    assert batch["status"] == "pending"
    assert http.get(f"{ROOT}/batches/{batch['id']}", auth=AUTH).json()["status"] == "pending"
    sandbox.batch_delay_seconds = 0.0
    done = http.get(f"{ROOT}/batches/{batch['id']}", auth=AUTH).json()
    assert (done["status"], done["total_operations"], done["errored_operations"]) == (
        "finished",
        2,
        1,
    )
    data = io.BytesIO(http.get(done["response_body_url"]).content)
    with tarfile.open(fileobj=data) as archive:
        results = {
            r["operation_id"]: r
            for member in archive.getmembers()
            for r in json.load(archive.extractfile(member))  # type: ignore[arg-type]
        }
    assert results["ok"]["status_code"] == 200
    assert json.loads(results["ok"]["response"])["merge_fields"]["FNAME"] == "Ann"
    assert results["missing"]["status_code"] == 404


def test_more_than_ten_simultaneous_connections_get_429(
    sandbox: Sandbox, http: httpx.Client
) -> None:
    sandbox.faults.add(FaultRule(kind="latency", provider="mailchimp", rate=1.0, seconds=0.3))
    statuses: list[int] = []

    def ping() -> None:
        statuses.append(http.get(f"{ROOT}/ping", auth=AUTH).status_code)

    threads = [threading.Thread(target=ping) for _ in range(14)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] * 10 + [429] * 4


def test_a_round_trip_latency_serves_on_arrival_and_answers_after_the_latency(
    sandbox: Sandbox, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve --latency`: concurrent calls are served (one at a time, under the state lock)
    while their latencies run, not after them; the held answers keep no lock."""
    latency, calls = 1.0, 4
    sandbox.faults.add(
        FaultRule(kind="latency", provider="mailchimp", rate=1.0, seconds=latency, round_trip=True)
    )
    served: list[float] = []
    serve = sandbox._serve

    def slow_serve(provider: str, request: Any) -> Any:
        with sandbox.lock:
            time.sleep(0.05)  # processing that takes its time, the lock held
            answer = serve(provider, request)
            served.append(time.monotonic())
            return answer

    monkeypatch.setattr(sandbox, "_serve", slow_serve)
    answered: list[float] = []
    took: list[float] = []

    def ping() -> None:
        sent = time.monotonic()
        assert http.get(f"{ROOT}/ping", auth=AUTH).status_code == 200
        answered.append(time.monotonic())
        took.append(answered[-1] - sent)

    threads = [threading.Thread(target=ping) for _ in range(calls)]
    for thread in threads:
        thread.start()
    while len(served) < calls and not answered:
        time.sleep(0.01)
    held = not answered
    lock_free = sandbox.lock.acquire(blocking=False)  # the answers wait without the lock
    if lock_free:
        sandbox.lock.release()
    for thread in threads:
        thread.join()
    assert held, "a call was answered before every call was served"
    assert lock_free
    assert len(served) == calls and max(served) < min(answered)
    assert min(took) >= latency


def test_a_round_trip_latency_beyond_the_timeout_serves_nothing(
    sandbox: Sandbox, transport: httpx.BaseTransport
) -> None:
    sandbox.faults.add(
        FaultRule(kind="latency", provider="mailchimp", count=1, seconds=1.0, round_trip=True)
    )
    with (
        httpx.Client(transport=transport, base_url=SANDBOX_ORIGIN, timeout=0.2) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.get(f"{ROOT}/ping", auth=AUTH)
    assert sandbox.stats.count("mailchimp") == 0
    assert sandbox.faults.injected == {"latency": 1}


def test_unknown_routes_and_methods(sandbox: Sandbox, http: httpx.Client, list_id: str) -> None:
    assert http.get(f"{ROOT}/lists/nope", auth=AUTH).status_code == 404
    off_spec = httpx.Client(transport=SandboxTransport(sandbox), base_url=SANDBOX_ORIGIN)
    answer = off_spec.put(f"{ROOT}/lists/{list_id}/members", json={}, auth=AUTH)
    assert (answer.status_code, answer.headers["allow"]) == (405, "GET, POST")


def test_a_member_written_out_is_what_its_parts_build(
    http: httpx.Client, sandbox: Sandbox, list_id: str
) -> None:
    members = [
        {"email_address": "a@example.com", "status": "subscribed", "tags": ["VIP", "crm"]},
        {"email_address": "b@example.com", "status": "pending", "merge_fields": {"FNAME": "B"}},
    ]
    http.post(f"{ROOT}/lists/{list_id}", json={"members": members}, auth=AUTH)
    lst = sandbox.state.mailchimp[SANDBOX_MAILCHIMP_KEY].lists[list_id]
    for member in lst.members.values():
        parts = mailchimp_members._MEMBER_PARTS
        built = {name: build(lst, member, lst.segments) for name, build in parts}
        written = mailchimp_members.representation(lst, member, lst.segments)
        assert list(written.items()) == list(built.items())
        assert mailchimp_members.representations(lst, [member]) == [written]
        (named,) = mailchimp_members.representations(lst, [member], [name for name, _ in parts])
        assert list(named.items()) == list(written.items())


@pytest.mark.parametrize(("length", "refused"), [(63, False), (64, True)])
def test_a_merge_value_over_255_bytes_is_refused(
    http: httpx.Client, list_id: str, length: int, refused: bool
) -> None:
    value = "\N{GRINNING FACE}" * length  # four bytes each: 252 or 256
    member = {"email_address": "a@example.com", "status": "subscribed"}
    answer = subscribe_entries(http, list_id, {**member, "merge_fields": {"FNAME": value}})
    assert answer["error_count"] == int(refused)
    if refused:
        assert answer["errors"][0]["field"] == "FNAME"


def subscribe_entries(http: httpx.Client, list_id: str, *members: Any) -> dict[str, Any]:
    response = http.post(f"{ROOT}/lists/{list_id}", json={"members": list(members)}, auth=AUTH)
    assert response.status_code == 200
    return dict(response.json())
