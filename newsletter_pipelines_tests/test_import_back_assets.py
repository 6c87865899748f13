"""The import-back through Dagster: people act at the embedded sandbox, `import_back_job` writes
into the demo CRM (both providers)."""

from __future__ import annotations

from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from newsletter_pipelines.definitions import defs
from newsletter_pipelines.defs.providers.clients import audience_client
from newsletter_pipelines.defs.resources import build_resources
from newsletter_pipelines.providers.resources import embedded_sandbox
from newsletter_pipelines.sandbox import PersonEvent
from newsletter_pipelines.sandbox.people import brevo_person, mailchimp_person
from newsletter_pipelines.settings import Settings
from newsletter_pipelines.state.ledger import load_ledger
from newsletter_pipelines.sync.identity import RowState
from newsletter_pipelines_tests.test_sync_assets import QUIET, checks, metadata, run_sync


def run_import_back(
    instance: dg.DagsterInstance, audience: str, **config: Any
) -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def("import_back_job")
    return job.execute_in_process(
        instance=instance,
        partition_key=audience,
        run_config={**QUIET, "ops": {"crm_import_back": {"config": config}}} if config else QUIET,
        resources=build_resources(Settings()),
        raise_on_error=False,
    )


def act(settings: Settings, audience: str, email: str, action: str) -> None:
    """A person acts at the embedded sandbox's audience."""
    resources = build_resources(settings)
    client = audience_client(
        settings.audience(audience), resources["mailchimp"], resources["brevo"]
    )
    try:
        list_id = client.ensure_audience().id
    finally:
        client.close()
    apply = mailchimp_person if audience == "mailchimp" else brevo_person
    apply(
        embedded_sandbox(settings.home / "sandbox.json"),
        PersonEvent(list_id=list_id, email=email, action=action),
    )


def crm(settings: Settings, sql: str) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(settings.resolved_crm_database_url())
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(sa.text(sql))]
    engine.dispose()
    return rows


def an_eligible_address(settings: Settings) -> tuple[int, str]:
    (found,) = crm(
        settings,
        "SELECT id, email FROM contacts WHERE newsletter = 'yes' AND NOT is_private "
        "AND email LIKE '%@%' ORDER BY id LIMIT 1",
    )
    return int(found[0]), str(found[1]).strip().lower()


@pytest.mark.parametrize("audience", ["mailchimp", "brevo"])
def test_an_unsubscribe_at_the_provider_reaches_the_crm_once(
    audience: str, settings: Settings
) -> None:
    with dg.instance_for_test() as instance:
        assert run_sync(instance, audience).success
        contact_id, email = an_eligible_address(settings)
        act(settings, audience, email, "unsubscribe")
        first = run_import_back(instance, audience)
        assert first.success
        assert metadata(first, "crm_import_back")["planned_newsletter_unsubscribed"] >= 1
        assert checks(first)["vanish_guard"] and all(checks(first).values())
        assert crm(settings, f"SELECT newsletter FROM contacts WHERE id = {contact_id}") == [
            ("no",)
        ]
        activities = f"SELECT kind FROM activities WHERE contact_id = {contact_id}"
        assert crm(settings, activities) == [("newsletter_unsubscribed",)]
        again = run_import_back(instance, audience)  # nothing new: one activity, one write
        assert again.success
        assert crm(settings, activities) == [("newsletter_unsubscribed",)]
        # the next full sync has nothing to write for that contact: no echo
        assert metadata(run_sync(instance, audience), "audience_sync").get("unsubscribed", 0) == 0


@pytest.mark.parametrize("mode", ["dry_run", "report_only"])
def test_dry_run_and_report_only_write_nothing(
    mode: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with dg.instance_for_test() as instance:
        assert run_sync(instance, "mailchimp").success
        contact_id, email = an_eligible_address(settings)
        act(settings, "mailchimp", email, "unsubscribe")
        if mode == "report_only":
            monkeypatch.setattr(
                "newsletter_pipelines.defs.import_back.writing._SETTINGS",
                Settings(crm_write_back=False),
            )
            result = run_import_back(instance, "mailchimp")
        else:
            result = run_import_back(instance, "mailchimp", dry_run=True)
        assert result.success
        assert metadata(result, "crm_import_back")["planned_newsletter_unsubscribed"] >= 1
        assert crm(settings, f"SELECT newsletter FROM contacts WHERE id = {contact_id}") == [
            ("yes",)
        ]
        assert crm(settings, "SELECT count(*) FROM activities") == [(0,)]
        # the opt-out is kept in the ledger, to be imported later, even if the member goes
        state = sa.create_engine(settings.resolved_state_database_url())
        (kept,) = [r for r in load_ledger(state, "mailchimp") if r.member_key == email.lower()]
        state.dispose()
        assert (kept.state, kept.unimported_opt_out) == (RowState.OPTED_OUT, "unsubscribed")
        act(settings, "mailchimp", email, "archive")
        monkeypatch.setattr(  # write-back on again
            "newsletter_pipelines.defs.import_back.writing._SETTINGS", Settings()
        )
        assert run_import_back(instance, "mailchimp").success
        assert crm(settings, f"SELECT newsletter FROM contacts WHERE id = {contact_id}") == [
            ("no",)
        ]
        assert crm(settings, "SELECT kind FROM activities") == [("newsletter_unsubscribed",)]


def test_a_failed_import_back_stops_the_push_and_loses_no_opt_out(settings: Settings) -> None:
    engine = sa.create_engine(settings.resolved_crm_database_url())
    with dg.instance_for_test() as instance:
        assert run_sync(instance, "brevo").success
        contact_id, email = an_eligible_address(settings)
        act(settings, "brevo", email, "unsubscribe")
        with engine.begin() as conn:  # the CRM refuses writes to its activities table
            conn.execute(sa.text("ALTER TABLE activities RENAME TO activities_away"))
        failed = run_sync(instance, "brevo")
        assert not failed.success
        assert "audience_sync" not in metadata_keys(failed)  # nothing pushed, ledger unchanged
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE activities_away RENAME TO activities"))
        assert run_sync(instance, "brevo").success
        assert crm(settings, f"SELECT newsletter FROM contacts WHERE id = {contact_id}") == [
            ("no",)
        ]
    engine.dispose()


def metadata_keys(result: dg.ExecuteInProcessResult) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


@pytest.mark.parametrize("audience", ["mailchimp", "brevo"])
def test_a_sign_up_becomes_a_crm_contact_and_is_not_echoed(
    audience: str, settings: Settings
) -> None:
    sandbox = embedded_sandbox(settings.home / "sandbox.json")
    with dg.instance_for_test() as instance:
        assert run_sync(instance, audience).success
        act(settings, audience, "neu@example.org", "signup")
        assert run_sync(instance, audience).success  # a full sync is two-way
        (found,) = crm(
            settings, "SELECT id, newsletter FROM contacts WHERE email = 'neu@example.org'"
        )
        assert found[1] == "yes"
        assert crm(settings, f"SELECT kind FROM activities WHERE contact_id = {found[0]}") == [
            ("newsletter_subscribed",)
        ]
        before = sandbox.stats.count(audience, writes=True)
        assert run_sync(instance, audience).success
        assert sandbox.stats.count(audience, writes=True) == before  # no echo
