"""The audience snapshot read from the run's start, while the CRM is read (`snapshot_read`)."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import dagster as dg
import pytest

from newsletter_pipelines.defs.providers import snapshot_read
from newsletter_pipelines.defs.resources import CrmResource
from newsletter_pipelines.providers.brevo import BrevoClient
from newsletter_pipelines.providers.mailchimp import MailchimpClient
from newsletter_pipelines.providers.resources import MailchimpResource
from newsletter_pipelines.sandbox import Sandbox
from newsletter_pipelines_tests.test_sync_assets import metadata, run_sync

MEMBER_PAGES = {  # the paths of a snapshot's pages
    "mailchimp": re.compile(r"/lists/[^/]+/members$"),
    "brevo": re.compile(r"/contacts/lists/\d+/contacts$"),
}


def recorded_calls(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, str]]:
    """From now on, the wall-clock time and path of every request the sandbox serves."""
    calls: list[tuple[float, str]] = []
    serve = sandbox.exchange

    def exchange(request: Any, **kwargs: Any) -> Any:
        calls.append((time.time(), request.path))
        return serve(request, **kwargs)

    monkeypatch.setattr(sandbox, "exchange", exchange)
    return calls


def step_starts(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    """When each step of the run started (wall clock), in the order they ran."""
    events = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
    return {e.step_key: e.timestamp for e in events if e.step_key}


def slow_crm_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, the CRM read takes a second more: a small CRM reads in less time than
    Brevo's pace needs to find the list and ask for its first page."""
    read = CrmResource.read_contacts

    def slow(self: CrmResource) -> Any:
        time.sleep(1.0)
        return read(self)

    monkeypatch.setattr(CrmResource, "read_contacts", slow)


def page_times(calls: list[tuple[float, str]], audience: str) -> list[float]:
    return [t for t, path in calls if MEMBER_PAGES[audience].search(path)]


@pytest.mark.parametrize("audience", ["mailchimp", "brevo"])
def test_a_rerun_reads_the_snapshot_while_the_crm_is_read(
    audience: str, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each run asks for the members as it starts, runs the snapshot step after the CRM's
    steps, and that step takes what was read: the members the first run created."""
    with dg.instance_for_test() as instance:
        first = run_sync(instance, audience)
        slow_crm_read(monkeypatch)
        calls = recorded_calls(sandbox, monkeypatch)
        second = run_sync(instance, audience)
        starts = step_starts(instance, second.run_id)
    assert first.success and second.success
    assert metadata(first, "provider_audience_snapshot")["read_early"] is True
    snapshot = metadata(second, "provider_audience_snapshot")
    assert snapshot["read_early"] is True
    assert snapshot["member_count"] == metadata(first, "audience_sync")["created"] > 0
    order = list(starts)
    assert order.index("provider_audience_snapshot") > order.index("eligible_subscribers")
    assert calls[0][0] < starts["eligible_subscribers"]  # the read began while the CRM was read
    assert min(page_times(calls, audience)) < starts["provider_audience_snapshot"]


@pytest.mark.parametrize("audience", ["mailchimp", "brevo"])
def test_an_audience_over_the_limit_is_read_in_its_step(
    audience: str, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An audience the provider counts more than `EARLY_MAX_MEMBERS` members in is read in the
    step (its members would be held beside the CRM's): the run's start only found it."""
    monkeypatch.setattr(snapshot_read, "EARLY_MAX_MEMBERS", 10)
    with dg.instance_for_test() as instance:
        assert run_sync(instance, audience).success
        calls = recorded_calls(sandbox, monkeypatch)
        second = run_sync(instance, audience)
        starts = step_starts(instance, second.run_id)
    assert second.success
    assert metadata(second, "provider_audience_snapshot")["read_early"] is False
    assert min(page_times(calls, audience)) > starts["provider_audience_snapshot"]


@pytest.mark.parametrize("audience", ["mailchimp", "brevo"])
def test_an_audience_whose_counts_lag_below_the_limit_is_read_in_its_step(
    audience: str, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counts that lag (here: none yet) let the read start early; the pages show the audience
    over `EARLY_MAX_MEMBERS`, so the early read lets go of what it read and the step reads
    every member."""
    with dg.instance_for_test() as instance:
        first = run_sync(instance, audience)
        monkeypatch.setattr(snapshot_read, "EARLY_MAX_MEMBERS", 10)
        client = MailchimpClient if audience == "mailchimp" else BrevoClient
        monkeypatch.setattr(client, "member_count", lambda _self: 0)
        slow_crm_read(monkeypatch)
        calls = recorded_calls(sandbox, monkeypatch)
        second = run_sync(instance, audience)
        starts = step_starts(instance, second.run_id)
    assert first.success and second.success
    snapshot = metadata(second, "provider_audience_snapshot")
    assert snapshot["read_early"] is False
    assert snapshot["member_count"] == metadata(first, "audience_sync")["created"] > 10
    pages = page_times(calls, audience)
    assert min(pages) < starts["provider_audience_snapshot"] < max(pages)


def test_a_failed_early_read_fails_the_snapshot_step(sandbox: Sandbox) -> None:
    """A provider that refuses the key fails the read started early; the snapshot step fails
    with its error, and nothing after it runs."""
    with dg.instance_for_test() as instance:
        assert run_sync(instance, "mailchimp").success
        sandbox.state.mailchimp.clear()  # the account is gone: 401 API Key Invalid
        result = run_sync(instance, "mailchimp")
    (failure,) = result.get_step_failure_events()
    assert failure.step_key == "provider_audience_snapshot"
    assert "API Key Invalid" in str(failure.event_specific_data.error)
    assert not metadata(result, "reconciliation_diff")


def test_a_failed_crm_read_leaves_the_snapshot_read_to_its_step(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CRM that cannot be read fails its step; the snapshot step, which does not need it,
    still takes the read started early (and nothing that needs the CRM runs)."""
    with dg.instance_for_test() as instance:
        assert run_sync(instance, "mailchimp").success

        def unreadable(_self: CrmResource) -> None:
            raise RuntimeError("CRM unreadable")

        monkeypatch.setattr(CrmResource, "read_contacts", unreadable)
        result = run_sync(instance, "mailchimp")
    (failure,) = result.get_step_failure_events()
    assert failure.step_key == "crm_contacts"
    assert metadata(result, "provider_audience_snapshot")["read_early"] is True
    assert not metadata(result, "reconciliation_diff")


def test_work_no_step_took_ends_with_the_run() -> None:
    """The run's teardown waits for what was started early and no step took (a run ended
    early), after closing the clients; what a step took is handed over once."""
    resource = MailchimpResource()
    context = dg.build_init_resource_context()
    resource.setup_for_execution(context)
    started, release = threading.Event(), threading.Event()
    resource.start_early("taken", lambda: "read")
    resource.start_early("left", lambda: (started.set(), release.wait(5))[1])
    taken = resource.take_early("taken")
    assert taken is not None and taken.result() == "read"
    assert resource.take_early("taken") is None
    assert started.wait(5)
    threading.Timer(0.2, release.set).start()
    resource.teardown_after_execution(context)
    assert release.is_set()
    assert resource.take_early("left") is None
    with pytest.raises(RuntimeError, match="outside a run"):
        resource.start_early("later", lambda: None)
