"""Webhook → CRM through Dagster: after the first full sync, the embedded sandbox delivers its
webhooks over HTTP to the receiver (uvicorn, loopback), `provider_events_sensor` (on an
ephemeral instance) requests one `provider_events_job` run per audience, and the run writes
what people did into the demo CRM: once, and nothing the next full sync would send back."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa

from newsletter_pipelines.definitions import defs
from newsletter_pipelines.defs.import_back.sensors import provider_events_sensor
from newsletter_pipelines.defs.providers.clients import audience_client
from newsletter_pipelines.defs.resources import build_resources
from newsletter_pipelines.sandbox import CampaignSend, PersonEvent
from newsletter_pipelines.sandbox.campaigns import send_brevo_campaign, send_mailchimp_campaign
from newsletter_pipelines.sandbox.people import brevo_person
from newsletter_pipelines.settings import Settings
from newsletter_pipelines.state.events import pending_by_audience
from newsletter_pipelines.sync.email_address import raw_match_key
from newsletter_pipelines_tests.test_import_back_assets import act
from newsletter_pipelines_tests.test_import_back_job import (
    AUDIENCES,
    NOTHING_PUSHED,
    Synced,
    changed,
    crm_state,
    pushed,
    sandbox_of,
    synced,  # noqa: F401 (fixture)
)
from newsletter_pipelines_tests.test_sync_assets import QUIET, metadata, run_sync
from newsletter_pipelines_tests.test_webhooks_sandbox import (
    SECRET,
    receiver_url,  # noqa: F401 (fixture)
)


@pytest.fixture
def state(settings: Settings, synced: Synced) -> Iterator[sa.Engine]:  # noqa: F811
    """The synced home's state database (the receiver's inbox is there too)."""
    synced.copy_to(settings.home)
    engine = sa.create_engine(settings.resolved_state_database_url())
    yield engine
    engine.dispose()


def pending(settings: Settings) -> dict[str, int]:
    engine = sa.create_engine(settings.resolved_state_database_url())
    try:
        return pending_by_audience(engine)
    finally:
        engine.dispose()


def sense(instance: dg.DagsterInstance, settings: Settings, cursor: str | None) -> object:
    resources = build_resources(settings)
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"state_db": resources["state_db"]}
    ) as context:
        return provider_events_sensor(context)


def run_events(instance: dg.DagsterInstance, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def("provider_events_job")
    return job.execute_in_process(
        instance=instance,
        run_config={**QUIET, **request.run_config},
        resources=build_resources(Settings()),
        partition_key=request.partition_key,
        raise_on_error=False,
    )


@pytest.mark.parametrize("audience", AUDIENCES)
def test_an_unsubscribe_reaches_the_crm_through_receiver_sensor_and_job(
    audience: str,
    settings: Settings,
    synced: Synced,  # noqa: F811
    receiver_url: str,  # noqa: F811 (its inbox: the fixture `state`)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    found = synced.actors
    person = found.shared[0]  # every CRM contact with the address says no afterwards
    public = Settings(webhook_public_url=receiver_url, webhook_secret=SECRET)
    monkeypatch.setattr("newsletter_pipelines.defs.providers.snapshot_read._SETTINGS", public)
    with dg.instance_for_test() as instance:
        registering = run_sync(instance, audience)  # registers the webhook, sends nothing
        assert registering.success
        assert pushed(registering) == NOTHING_PUSHED
        webhook = metadata(registering, "provider_audience_snapshot")["webhook"]
        assert webhook.startswith(f"registered at {receiver_url}/webhooks/")
        before = crm_state(settings)
        act(settings, audience, person.email, "unsubscribe")
        assert sandbox_of(settings).webhooks.calls[-1].status == 200
        assert set(pending(settings)) == {audience}

        result = sense(instance, settings, None)
        assert isinstance(result, dg.SensorResult)
        (request,) = result.run_requests or []
        last = pending(settings)[audience]
        assert request.run_key == f"{audience}:{last}"
        assert result.cursor == str(last)
        run = run_events(instance, request)
        assert run.success
        after = crm_state(settings)
        assert changed(before, after) == {
            i for i in person.address_contacts if before.newsletter(i) != "no"
        }
        assert {after.newsletter(i) for i in person.address_contacts} == {"no"}
        assert after.kinds() == Counter(
            {(i, "newsletter_unsubscribed"): 1 for i in person.address_contacts}
        )
        (output,) = [e.step_output_data for e in run.all_events if e.is_successful_output]
        assert output.metadata["processed"].value == 1  # one event processed
        assert pending(settings) == {}
        assert isinstance(sense(instance, settings, result.cursor), dg.SkipReason)
        # the next full sync: the ledger knows the opt-out, the CRM says no: nothing to send,
        # nothing to import again
        echo = run_sync(instance, audience)
        assert echo.success
        assert pushed(echo) == NOTHING_PUSHED
        assert metadata(echo, "crm_import_back").get("applied", 0) == 0
        assert crm_state(settings) == after


def list_id_of(settings: Settings, audience: str) -> str:
    resources = build_resources(settings)
    client = audience_client(
        settings.audience(audience), resources["mailchimp"], resources["brevo"]
    )
    try:
        return str(client.ensure_audience().id)
    finally:
        client.close()


@pytest.mark.parametrize("audience", AUDIENCES)
def test_campaign_engagement_becomes_activities_through_receiver_sensor_and_job(
    audience: str,
    settings: Settings,
    receiver_url: str,  # noqa: F811 (its inbox: the fixture `state`, the synced home)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With NEWSLETTER_ACTIVITIES=delivered,opened,clicked a sent campaign gives every CRM
    contact of a recipient's address one `delivered` (Brevo: its events; Mailchimp: the
    campaign event and the sent-to report; Brevo: its batched `delivered` events), and Brevo's
    opens and clicks one activity each; nothing else changes, and a redelivered event writes
    nothing."""
    engaged = Settings(
        webhook_public_url=receiver_url,
        webhook_secret=SECRET,
        activities="delivered,opened,clicked",
    )
    monkeypatch.setattr("newsletter_pipelines.defs.providers.snapshot_read._SETTINGS", engaged)
    monkeypatch.setattr("newsletter_pipelines.defs.import_back.engagements._SETTINGS", engaged)
    with dg.instance_for_test() as instance:
        assert run_sync(instance, audience).success  # registers the campaign events
        before = crm_state(settings)
        list_id = list_id_of(settings, audience)
        send = CampaignSend(list_id=list_id, subject="Frühling")
        sandbox = sandbox_of(settings)
        if audience == "mailchimp":
            sent = send_mailchimp_campaign(sandbox, send)
            addresses = [r["email_address"] for r in sent["recipients"]]
        else:
            sent = send_brevo_campaign(sandbox, send)
            addresses = [r["email"] for r in sent["recipients"]]
            reader = addresses[0]
            for action, extra in (("open", {}), ("click", {"url": "https://x.de/a"})):
                event = PersonEvent(
                    list_id=list_id,
                    email=reader,
                    action=action,  # type: ignore[arg-type]
                    campaign_id=sent["id"],
                    **extra,
                )
                brevo_person(sandbox_of(settings), event)
        assert len(addresses) > 10
        assert all(call.status == 200 for call in sandbox_of(settings).webhooks.calls[-3:])

        result = sense(instance, settings, None)
        assert isinstance(result, dg.SensorResult)
        (request,) = result.run_requests or []
        run = run_events(instance, request)
        assert run.success
        after = crm_state(settings)
        by_key: dict[str | None, list[int]] = {}
        for contact_id, row in before.contacts.items():
            by_key.setdefault(raw_match_key(row["email"]), []).append(contact_id)
        expected = Counter(
            {(i, "delivered"): 1 for a in addresses for i in by_key.get(raw_match_key(a), [])}
        )
        if audience == "brevo":
            for i in by_key[raw_match_key(reader)]:
                expected[(i, "opened")] = 1
                expected[(i, "clicked")] = 1
        assert after.kinds() == expected
        assert changed(before, after) == set()  # activities only
        (output,) = [e.step_output_data for e in run.all_events if e.is_successful_output]
        written = output.metadata["engagement_activities_written"].value  # counts in the UI
        assert written == sum(expected.values())
        assert pending(settings) == {}
        # the same campaign event delivered again: stored once, nothing new
        delivery = sandbox_of(settings).webhooks.calls[0 if audience == "mailchimp" else -1]
        assert (
            httpx.post(delivery.url, content=delivery.body, headers=delivery.headers).json()[
                "stored"
            ]
            == 0
        )
        assert crm_state(settings) == after
