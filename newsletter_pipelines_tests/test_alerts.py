"""Alerts: texts without addresses or secrets, stall detection, delivery, the alert sensors."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import dagster as dg
import httpx
import pytest
from tenacity import wait_none

from newsletter_pipelines import alerts
from newsletter_pipelines.alerts import (
    CheckCursor,
    CheckExecution,
    Tick,
    check_failure_text,
    due_stall_alerts,
    error_line,
    is_alerting_check_failure,
    new_check_failures,
    post_alert,
    redact,
    run_failure_text,
    send_alert,
    stall_reason,
    stalled_sensor_text,
)
from newsletter_pipelines.defs.alerts.sensors import alert_on_failed_checks, alert_on_run_failure
from newsletter_pipelines.settings import Settings
from newsletter_pipelines_tests.live import AlertCatcher

ADDRESS = "Jane.Doe+news@example.org"
HOOK_PATH = "/services/T000/B000/hook-token-1234"


@pytest.fixture
def catcher() -> Iterator[AlertCatcher]:
    """A local webhook: answers the queued statuses (then 200) and keeps every text taken."""
    with AlertCatcher(HOOK_PATH) as caught:
        yield caught


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alerts, "RETRY_WAIT", wait_none())


def test_texts_carry_no_address_url_or_key() -> None:
    error = error_line(
        "OperationalError",
        f"could not reach postgresql://crm:pw@db.internal/crm?sslmode=require for {ADDRESS}\n"
        "  traceback line",
    )
    text = run_failure_text("audience_sync_job", "4f1c-run", "mailchimp", error)
    assert text == (
        "[newsletter_pipelines] run failed: job audience_sync_job, partition mailchimp, "
        "run 4f1c-run: OperationalError: could not reach postgresql://db.internal for [email]"
    )
    keyed = redact("Mailchimp said 0123456789abcdef0123456789abcdef-us6 and xkeysib-abc-123")
    assert keyed == "Mailchimp said ••• and •••"
    assert "@" not in stalled_sensor_text("crm_changes_sensor", f"mail to {ADDRESS}")


def test_a_check_text_names_check_asset_job_partition_and_run() -> None:
    text = check_failure_text(
        "never_resubscribe", "reconciliation_diff", "audience_sync_job", "r1", "brevo"
    )
    assert "never_resubscribe on reconciliation_diff" in text
    assert "job audience_sync_job, partition brevo, run r1" in text


def test_error_line_is_class_and_first_line_only() -> None:
    assert error_line("ValueError", "ValueError: bad\nsecond") == "ValueError: bad"
    assert error_line("KeyError", "\n 'x'\n") == "KeyError: 'x'"
    assert error_line("Boom", None) == "Boom"
    assert len(error_line(None, "x" * 500)) == alerts.ERROR_WIDTH


def test_send_alert_masks_every_configured_secret(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NEWSLETTER_WEBHOOK_SECRET", "a-webhook-secret-42")
    logger = logging.getLogger("test_alerts")
    with caplog.at_level(logging.ERROR, logger="test_alerts"):
        assert not send_alert("rejected a-webhook-secret-42 from x", logger, Settings())
    assert caplog.messages == ["rejected ••• from x"]


@pytest.mark.parametrize(
    ("passed", "blocking", "severity", "alert"),
    [
        (False, True, "ERROR", True),
        (False, True, "WARN", True),
        (False, False, "ERROR", False),
        (False, None, "ERROR", True),
        (False, None, "WARN", False),
        (True, True, "ERROR", False),
    ],
)
def test_only_failed_blocking_checks_alert(
    passed: bool, blocking: bool | None, severity: str, alert: bool
) -> None:
    assert is_alerting_check_failure(passed, blocking, severity) is alert


def test_each_failed_check_alerts_once_and_a_pending_one_holds_the_cursor() -> None:
    pending = CheckExecution(11, alerting=False, final=False)
    failed = CheckExecution(12, alerting=True, final=True)
    passed = CheckExecution(13, alerting=False, final=True)
    due, cursor = new_check_failures([failed, pending, passed], CheckCursor(10))
    assert (due, cursor) == ([failed], CheckCursor(10, frozenset({12, 13})))
    assert CheckCursor.loads(cursor.dumps()) == cursor
    failed_now = CheckExecution(11, alerting=True, final=True)
    due, cursor = new_check_failures([failed_now, failed, passed], cursor)
    assert (due, cursor) == ([failed_now], CheckCursor(13))
    assert new_check_failures([failed], cursor) == ([], cursor)


NOW = 1_000_000.0


def test_stalled_after_ten_intervals_but_at_least_ten_minutes() -> None:
    assert stall_reason([Tick(NOW - 600, False)], 15, NOW) is None
    assert stall_reason([Tick(NOW - 601, False)], 15, NOW) == "no tick for 10 min (limit 10 min)"
    assert stall_reason([Tick(NOW - 2999, False)], 300, NOW) is None
    assert stall_reason([Tick(NOW - 3001, False)], 300, NOW) is not None


def test_stalled_when_the_last_ticks_all_failed() -> None:
    failing = [Tick(NOW - i, True) for i in range(alerts.FAILED_TICKS)]
    assert stall_reason(failing, 15, NOW) == f"its last {alerts.FAILED_TICKS} ticks failed"
    assert stall_reason([*failing[:-1], Tick(NOW - 9, False)], 15, NOW) is None
    assert stall_reason(failing[:-1], 15, NOW) is None


def test_no_tick_yet_or_a_recent_restart_is_not_a_stall() -> None:
    assert stall_reason([], 15, NOW) is None
    assert stall_reason([], 15, NOW, started=NOW - 60) is None
    assert stall_reason([], 15, NOW, started=NOW - 3600) is not None
    assert stall_reason([Tick(NOW - 86_400, False)], 15, NOW, started=NOW - 60) is None


def test_one_alert_per_stall() -> None:
    due, alerted = due_stall_alerts({"a": "late", "b": None}, [])
    assert (due, alerted) == ({"a": "late"}, ["a"])
    due, alerted = due_stall_alerts({"a": "still late", "b": "late"}, alerted)
    assert (due, alerted) == ({"b": "late"}, ["a", "b"])
    due, alerted = due_stall_alerts({"a": None, "b": "late"}, alerted)
    assert (due, alerted) == ({}, ["b"])
    assert due_stall_alerts({"a": "late again"}, alerted)[0] == {"a": "late again"}


def test_post_alert_delivers_after_503(catcher: AlertCatcher) -> None:
    catcher.statuses = [503, 429]
    assert post_alert(catcher.url, "hello")
    assert catcher.texts == ["hello"]


def test_post_alert_gives_up_without_raising_or_naming_the_url(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[httpx.Request] = []

    def always_503(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503)

    transport = httpx.MockTransport(always_503)
    assert not post_alert(f"https://hooks.example.com{HOOK_PATH}", "x", transport=transport)
    assert len(calls) == alerts.ATTEMPTS
    assert json.loads(calls[0].content) == {"text": "x"}
    assert caplog.messages == ["alert not delivered to the alert webhook: HTTP 503"]


def test_post_alert_does_not_retry_a_client_error_nor_raise_on_a_dead_port(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda r: calls.append(r) or httpx.Response(404))
    assert not post_alert("https://hooks.example.com/x", "x", transport=transport)
    assert len(calls) == 1
    assert not post_alert(f"http://127.0.0.1:9{HOOK_PATH}", "x")
    assert all(HOOK_PATH not in m and "hooks.example.com" not in m for m in caplog.messages)


@dg.op
def fail_with_an_address() -> None:
    raise ValueError(f"the provider refused {ADDRESS}\nsecond line")


@dg.job
def failing_job() -> None:
    fail_with_an_address()


def test_run_failure_sensor_posts_one_address_free_alert(
    catcher: AlertCatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_ALERT_WEBHOOK_URL", catcher.url)
    instance = dg.DagsterInstance.ephemeral()
    result = failing_job.execute_in_process(
        instance=instance, raise_on_error=False, tags={"dagster/partition": "brevo"}
    )
    context = dg.build_run_status_sensor_context(
        sensor_name="alert_on_run_failure",
        dagster_event=result.get_run_failure_event(),
        dagster_instance=instance,
        dagster_run=result.dagster_run,
    ).for_run_failure()
    alert_on_run_failure(context)
    assert catcher.texts == [
        f"[newsletter_pipelines] run failed: job failing_job, partition brevo, "
        f"run {result.run_id}: ValueError: the provider refused [email]"
    ]


def test_a_run_failed_from_outside_alerts_with_the_failure_message(
    catcher: AlertCatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The code server marks a run failed when its worker process died (run monitoring does
    the same on a timeout): the failure event has no failure data, and still alerts."""
    monkeypatch.setenv("NEWSLETTER_ALERT_WEBHOOK_URL", catcher.url)
    instance = dg.DagsterInstance.ephemeral()
    run = instance.create_run_for_job(failing_job, tags={"dagster/partition": "mailchimp"})
    event = instance.report_run_failed(run, "Run execution process exited with code -9")
    assert event.job_failure_data is None
    context = dg.build_run_status_sensor_context(
        sensor_name="alert_on_run_failure",
        dagster_event=event,
        dagster_instance=instance,
        dagster_run=run,
    ).for_run_failure()
    alert_on_run_failure(context)
    assert catcher.texts == [
        f"[newsletter_pipelines] run failed: job failing_job, partition mailchimp, "
        f"run {run.run_id}: Run execution process exited with code -9"
    ]


@dg.asset(
    check_specs=[
        dg.AssetCheckSpec("must_hold", asset="guarded", blocking=True),
        dg.AssetCheckSpec("may_warn", asset="guarded"),
    ]
)
def guarded() -> Iterator[dg.Output[int] | dg.AssetCheckResult]:
    yield dg.Output(1)
    yield dg.AssetCheckResult(check_name="must_hold", passed=False)
    yield dg.AssetCheckResult(check_name="may_warn", passed=False)


def test_failed_checks_sensor_alerts_blocking_failures_since_its_cursor(
    catcher: AlertCatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_ALERT_WEBHOOK_URL", catcher.url)
    defs = dg.Definitions(assets=[guarded], sensors=[alert_on_failed_checks])
    with dg.instance_for_test() as instance:
        dg.materialize([guarded], instance=instance, raise_on_error=False)
        first = alert_on_failed_checks(dg.build_sensor_context(instance, definitions=defs))
        assert catcher.texts == []
        result = dg.materialize([guarded], instance=instance, raise_on_error=False)
        second = alert_on_failed_checks(
            dg.build_sensor_context(instance, first.cursor, definitions=defs)
        )
        assert catcher.texts == [
            "[newsletter_pipelines] blocking check must_hold on guarded failed: job "
            f"__ephemeral_asset_job__, run {result.run_id}; its downstream assets did not run"
        ]
        again = alert_on_failed_checks(
            dg.build_sensor_context(instance, second.cursor, definitions=defs)
        )
        assert again.cursor == second.cursor
        assert len(catcher.texts) == 1
