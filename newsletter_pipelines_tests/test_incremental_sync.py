"""CRM → provider through `crm_changes_sensor` and `incremental_sync_job` (ephemeral instance,
embedded sandbox, after the first full sync): the first tick sets the watermark, a tick after
CRM edits requests one run per audience, the run sends exactly those changes, and the next full
sync has nothing left to send."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from newsletter_pipelines.definitions import defs
from newsletter_pipelines.defs.providers.clients import audience_client
from newsletter_pipelines.defs.providers.sensors import crm_changes_sensor
from newsletter_pipelines.defs.resources import build_resources
from newsletter_pipelines.providers.base import Member
from newsletter_pipelines.settings import Settings
from newsletter_pipelines.sync.changes import Cursor
from newsletter_pipelines_tests.test_import_back_assets import act, run_import_back
from newsletter_pipelines_tests.test_import_back_job import (
    AUDIENCES,
    NOTHING_PUSHED,
    Synced,
    pushed,
    synced,  # noqa: F401 (fixture)
)
from newsletter_pipelines_tests.test_sync_assets import QUIET, run_sync


def sense(instance: dg.DagsterInstance, settings: Settings, cursor: str | None) -> Any:
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"crm": build_resources(settings)["crm"]}
    ) as context:
        return crm_changes_sensor(context)


def edit(settings: Settings, sql: str, **values: Any) -> None:
    """A CRM user's edit; the CRM stamps updated_at."""
    engine = sa.create_engine(settings.resolved_crm_database_url())
    with engine.begin() as conn:
        now = datetime.now(UTC).replace(tzinfo=None)
        conn.execute(
            sa.text(sql.replace("SET ", "SET updated_at = :now, ")), {"now": now, **values}
        )
    engine.dispose()


def run_span(
    instance: dg.DagsterInstance, request: dg.RunRequest, audience: str
) -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def("incremental_sync_job")
    return job.execute_in_process(
        instance=instance,
        run_config={**QUIET, **request.run_config},
        partition_key=audience,
        resources=build_resources(Settings()),
    )


def assert_nothing_left(instance: dg.DagsterInstance, audience: str) -> None:
    """A full sync after the run finds nothing left to send: the run sent what it would."""
    echo = run_sync(instance, audience)
    assert echo.success
    assert pushed(echo) == NOTHING_PUSHED


def request_for(result: Any, audience: str) -> dg.RunRequest:
    assert isinstance(result, dg.SensorResult), result
    return next(r for r in result.run_requests or [] if r.partition_key == audience)


def members(settings: Settings, audience: str) -> dict[str, Member]:
    resources = build_resources(settings)
    client = audience_client(
        settings.audience(audience), resources["mailchimp"], resources["brevo"]
    )
    try:
        return {m.email.lower(): m for m in client.snapshot()}
    finally:
        client.close()


@pytest.mark.parametrize("audience", AUDIENCES)
def test_crm_edits_reach_the_audience_through_the_sensor_and_one_run(
    audience: str,
    settings: Settings,
    synced: Synced,  # noqa: F811
) -> None:
    found = synced.copy_to(settings.home)
    opting_out, renamed, moving = found.alone[:3]
    with dg.instance_for_test() as instance:
        first = sense(instance, settings, None)
        assert isinstance(first, dg.SensorResult) and not first.run_requests
        assert Cursor.loads(first.cursor).mark is not None  # the watermark, nothing requested
        assert isinstance(sense(instance, settings, first.cursor), dg.SkipReason)

        edit(
            settings,
            "UPDATE contacts SET newsletter = 'no' WHERE id = :id",
            id=opting_out.contact_id,
        )
        edit(
            settings,
            "UPDATE contacts SET first_name = 'Renamed' WHERE id = :id",
            id=renamed.contact_id,
        )
        new_email = f"moved.{moving.contact_id}@example.org"
        edit(
            settings,
            "UPDATE contacts SET email = :e WHERE id = :id",
            e=new_email,
            id=moving.contact_id,
        )

        result = sense(instance, settings, first.cursor)
        assert isinstance(result, dg.SensorResult)
        requests = {r.partition_key: r for r in result.run_requests or []}
        assert set(requests) == set(AUDIENCES)
        request = requests[audience]
        assert request.run_key == f"{audience}:{Cursor.loads(result.cursor).mark.text()}"
        job = defs.resolve_job_def("incremental_sync_job")
        run = job.execute_in_process(
            instance=instance,
            run_config={**QUIET, **request.run_config},
            partition_key=audience,
            resources=build_resources(Settings()),
        )
        assert run.success
        assert changed_contacts(run) == 3
        after = members(settings, audience)
        assert after[opting_out.email.lower()].status in ("unsubscribed", "blacklisted")
        assert after[renamed.email.lower()].first_name == "Renamed"
        assert new_email in after and moving.email.lower() not in after
        assert isinstance(sense(instance, settings, result.cursor), dg.SkipReason)
        assert_nothing_left(instance, audience)


def test_a_failed_crm_read_skips_the_tick_and_keeps_the_cursor(settings: Settings) -> None:
    cursor = Cursor.loads('{"mark": "2026-12-01T09:00:00|7", "window": ""}').dumps()
    broken = settings.model_copy(update={"crm_database_url": "sqlite:////nonexistent/dir/crm.db"})
    with dg.instance_for_test() as instance:
        result = sense(instance, broken, cursor)
    assert isinstance(result, dg.SkipReason)
    assert "cannot read the CRM's changes, cursor kept" in (result.skip_message or "")


@pytest.mark.parametrize("audience", AUDIENCES)
def test_every_kind_of_crm_change_in_one_run(
    audience: str,
    settings: Settings,
    synced: Synced,  # noqa: F811
) -> None:
    """An address swap between two contacts, a no that became yes, a contact made private and
    a contact's tags changed reach the audience in one run, as a full sync would send them."""
    found = synced.copy_to(settings.home)
    first, second, private, tagged = found.alone[3:7]
    said_no = found.said_no[0]
    with dg.instance_for_test() as instance:
        start = sense(instance, settings, None)
        swap = "UPDATE contacts SET email = :e WHERE id = :id"
        edit(settings, swap, e="swap@example.org", id=first.contact_id)
        edit(settings, swap, e=first.email, id=second.contact_id)
        edit(settings, swap, e=second.email, id=first.contact_id)
        edit(
            settings, "UPDATE contacts SET newsletter = 'yes' WHERE id = :id", id=said_no.contact_id
        )
        edit(settings, "UPDATE contacts SET is_private = 1 WHERE id = :id", id=private.contact_id)
        edit(
            settings,
            "UPDATE contacts SET first_name = first_name WHERE id = :id",
            id=tagged.contact_id,
        )
        engine = sa.create_engine(settings.resolved_crm_database_url())
        with engine.begin() as conn:  # tags changed with the contact's updated_at (above)
            conn.execute(
                sa.text("DELETE FROM contact_tags WHERE contact_id = :id"),
                {"id": tagged.contact_id},
            )
            conn.execute(
                sa.text("INSERT INTO contact_tags (contact_id, tag) VALUES (:id, 'Stammkunde')"),
                {"id": tagged.contact_id},
            )
        engine.dispose()
        req = request_for(sense(instance, settings, start.cursor), audience)
        run = run_span(instance, req, audience)
        assert run.success
        after = members(settings, audience)
        names = {m.email.lower(): m.first_name for m in after.values()}
        assert after[first.email.lower()].status == "subscribed"
        assert after[second.email.lower()].status == "subscribed"
        assert "swap@example.org" not in after
        assert (
            names[second.email.lower()] != names[first.email.lower()]
            or first.contact_id == second.contact_id
        )
        assert after[said_no.email.lower()].status == "subscribed"
        assert (
            private.email.lower() not in after
            or after[private.email.lower()].status != "subscribed"
        )
        tags = {t.casefold() for t in after[tagged.email.lower()].tags}
        assert "stammkunde" in tags
        assert not ({t.casefold() for t in tagged.tags} - {"stammkunde"}) & tags
        assert_nothing_left(instance, audience)


@pytest.mark.parametrize("audience", AUDIENCES)
def test_an_import_back_is_not_echoed_by_the_change_sensor(
    audience: str,
    settings: Settings,
    synced: Synced,  # noqa: F811
) -> None:
    """The import-back's CRM writes bump updated_at: the sensor requests a run, and that run
    sends the provider nothing."""
    found = synced.copy_to(settings.home)
    person = found.alone[8]
    with dg.instance_for_test() as instance:
        start = sense(instance, settings, None)
        act(settings, audience, person.email, "unsubscribe")
        assert run_import_back(instance, audience).success  # the CRM now says no
        run = run_span(
            instance, request_for(sense(instance, settings, start.cursor), audience), audience
        )
        assert run.success
        assert changed_contacts(run) >= 1
        metadata = output_metadata(run)
        sent = {k: metadata[k].value for k in ("created", "updated", "unsubscribed", "removed")}
        assert sent == dict.fromkeys(sent, 0)


@pytest.mark.parametrize("audience", AUDIENCES)
def test_a_duplicate_that_takes_over_an_address_reaches_the_audience_in_one_run(
    audience: str,
    settings: Settings,
    synced: Synced,  # noqa: F811
) -> None:
    """A CRM contact that shared an address as a duplicate is edited: now the most recently
    updated, it decides the address, and one run gives the member its names, as a full sync
    would."""
    found = synced.copy_to(settings.home)
    deciding = found.shared[0]
    duplicate = next(c for c in deciding.address_contacts if c != deciding.contact_id)
    with dg.instance_for_test() as instance:
        start = sense(instance, settings, None)
        edit(
            settings,
            "UPDATE contacts SET first_name = 'Übernommen', newsletter = 'yes', is_private = 0 "
            "WHERE id = :id",
            id=duplicate,
        )
        run = run_span(
            instance, request_for(sense(instance, settings, start.cursor), audience), audience
        )
        assert run.success
        member = members(settings, audience)[deciding.email.lower()]
        assert member.status == "subscribed" and member.first_name == "Übernommen"
        assert_nothing_left(instance, audience)


@pytest.mark.parametrize("audience", AUDIENCES)
def test_a_tag_row_with_its_own_time_is_a_change(
    audience: str,
    settings: Settings,
    synced: Synced,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """NEWSLETTER_CRM_SCHEMA__TAG_UPDATED_AT: a tag added with its row's time alone (the
    contact's updated_at untouched) reaches the audience through one tick and one run."""
    found = synced.copy_to(settings.home)
    tagged = found.alone[9]
    engine = sa.create_engine(settings.resolved_crm_database_url())
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE contact_tags ADD COLUMN changed_at TIMESTAMP"))
    monkeypatch.setenv("NEWSLETTER_CRM_SCHEMA__TAG_UPDATED_AT", "changed_at")
    with dg.instance_for_test() as instance:
        start = sense(instance, Settings(), None)
        with engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO contact_tags VALUES (:id, 'Zeitstempel', :now)"),
                {"id": tagged.contact_id, "now": datetime.now(UTC).replace(tzinfo=None)},
            )
        engine.dispose()
        request = request_for(sense(instance, Settings(), start.cursor), audience)
        assert run_span(instance, request, audience).success
        member = members(settings, audience)[tagged.email.lower()]
        assert "zeitstempel" in {t.casefold() for t in member.tags}


@pytest.mark.parametrize("audience", AUDIENCES)
def test_an_address_change_the_provider_refuses_is_decided_again_in_the_same_run(
    audience: str,
    settings: Settings,
    synced: Synced,  # noqa: F811
) -> None:
    """As in the full sync: the provider refuses a CRM address change (Mailchimp: a permanently
    deleted address; Brevo: a contact outside the list), and the run decides the contact again
    at once instead of leaving the member at the old address to the next run."""
    found = synced.copy_to(settings.home)
    moving = found.alone[10]
    taken = "taken.incremental@example.org"
    if audience == "brevo":
        act(settings, audience, taken, "blacklist")
    else:
        act(settings, audience, taken, "signup")
        act(settings, audience, taken, "delete")
    with dg.instance_for_test() as instance:
        start = sense(instance, settings, None)
        edit(
            settings, "UPDATE contacts SET email = :e WHERE id = :id", e=taken, id=moving.contact_id
        )
        request = request_for(sense(instance, settings, start.cursor), audience)
        run = run_span(instance, request, audience)
        assert run.success
        (output,) = [e for e in run.events_for_node("push_crm_changes") if e.is_successful_output]
        metadata = {k: v.value for k, v in output.step_output_data.metadata.items()}
        assert metadata["refused"] >= 1 and metadata["decided_again"] == 1
        left = members(settings, audience).get(moving.email.lower())
        assert left is None or left.status != "subscribed"  # given up at the old address
        assert_nothing_left(instance, audience)


def output_metadata(run: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """The metadata of `push_crm_changes`' output (it has no value)."""
    return next(e.step_output_data for e in run.all_events if e.is_successful_output).metadata


def changed_contacts(run: dg.ExecuteInProcessResult) -> int:
    return int(output_metadata(run)["changed_contacts"].value)
