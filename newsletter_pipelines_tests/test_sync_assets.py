"""The full sync through Dagster (`full_sync_job`, one partition per audience) on the sandbox."""

from __future__ import annotations

import re
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from newsletter_pipelines.definitions import defs
from newsletter_pipelines.defs.resources import build_resources
from newsletter_pipelines.providers.resources import SANDBOX_MAILCHIMP_KEY
from newsletter_pipelines.sandbox import Sandbox
from newsletter_pipelines.sandbox.mailchimp_state import McMergeField
from newsletter_pipelines.settings import Settings

QUIET: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def run_sync(
    instance: dg.DagsterInstance, audience: str, **ops: dict[str, Any]
) -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def("full_sync_job")
    config = {**QUIET, "ops": {name: {"config": c} for name, c in ops.items()}}
    return job.execute_in_process(
        instance=instance,
        partition_key=audience,
        run_config=config,
        resources=build_resources(Settings()),
        raise_on_error=False,
    )


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    events = [
        e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)
    ]
    return {k: v.value for k, v in events[-1].materialization.metadata.items()} if events else {}


def table_value(markdown: str, label: str) -> int:
    """The number in the row of a two-column markdown table whose label is `label`."""
    match = re.search(rf"^\|\s*{re.escape(label)}\s*\|\s*(\d+)\s*\|", markdown, re.MULTILINE)
    assert match, f"no row {label!r} in\n{markdown}"
    return int(match.group(1))


def checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def writes(sandbox: Sandbox, provider: str) -> int:
    return sandbox.stats.count(provider, writes=True)


def crm_update(settings: Settings, sql: str) -> None:
    engine = sa.create_engine(settings.resolved_crm_database_url())
    with engine.begin() as conn:
        conn.execute(sa.text(sql))
    engine.dispose()


@pytest.mark.parametrize("audience", ["mailchimp", "brevo"])
def test_full_sync_then_nothing_to_do(audience: str, sandbox: Sandbox) -> None:
    with dg.instance_for_test() as instance:
        first = run_sync(instance, audience)
        assert first.success
        eligible = metadata(first, "eligible_subscribers")["eligible_count"]
        assert metadata(first, "reconciliation_diff")["action_create"] == eligible
        assert metadata(first, "audience_sync")["created"] == eligible
        assert checks(first) == dict.fromkeys(
            [
                "unique_email_keys",
                "valid_emails",
                "eligible_count_drop",
                "removal_guard",
                "rename_guard",
                "never_resubscribe",
                "vanish_guard",
            ],
            True,
        )
        explanation = metadata(first, "reconciliation_diff")["why_the_numbers_differ"]
        assert table_value(explanation, "eligible in the CRM") == eligible
        assert table_value(explanation, "… not at the provider yet: created now") == eligible

        before = writes(sandbox, audience)
        second = run_sync(instance, audience)
        assert second.success
        assert metadata(second, "reconciliation_diff")["action_unchanged"] == eligible
        assert metadata(second, "audience_sync")["created"] == 0
        assert writes(sandbox, audience) == before  # a re-sync with nothing changed: 0 writes


def test_private_contacts_never_reach_the_provider(settings: Settings, sandbox: Sandbox) -> None:
    with dg.instance_for_test() as instance:
        assert run_sync(instance, "mailchimp").success
        crm_update(
            settings,
            "UPDATE contacts SET is_private = 1 WHERE id IN "
            "(SELECT id FROM contacts WHERE newsletter = 'yes' ORDER BY id LIMIT 5)",
        )
        result = run_sync(instance, "mailchimp")
        assert result.success
        assert metadata(result, "audience_sync")["removed"] >= 5
    engine = sa.create_engine(settings.resolved_crm_database_url())
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT email, is_private FROM contacts")).all()
    # addresses only private contacts have (a non-private duplicate may share one)
    keys = {False: set(), True: set()}
    for email, is_private in rows:
        if email is not None:
            keys[bool(is_private)].add(email.strip().lower())
    private = keys[True] - keys[False]
    assert len(private) > 50
    snapshot = run_snapshot_emails(sandbox)
    assert not private & snapshot


def run_snapshot_emails(sandbox: Sandbox) -> set[str]:
    """Addresses the sandbox holds as subscribed in any Mailchimp audience."""
    found = set()
    for account in sandbox.state.mailchimp.values():
        for lst in account.lists.values():
            found |= {
                m.email_address.lower() for m in lst.members.values() if m.status == "subscribed"
            }
    return found


def test_removal_guard_holds_a_mass_unsubscribe_while_the_rest_goes_out(
    settings: Settings, sandbox: Sandbox
) -> None:
    with dg.instance_for_test() as instance:
        assert run_sync(instance, "brevo").success
        crm_update(settings, "UPDATE contacts SET newsletter = 'no' WHERE id % 2 = 0")
        crm_update(
            settings,
            "INSERT INTO contacts (id, salutation, first_name, last_name, email, newsletter, "
            "is_private, updated_at, created_at) VALUES (900001, 'Frau', 'Neu', 'Kontakt', "
            "'new.contact@example.de', 'yes', 0, '2026-06-01 00:00:00', '2026-06-01 00:00:00')",
        )
        accept = {"eligible_subscribers": {"accept_drop": True}}
        held = run_sync(instance, "brevo", **accept)
        assert held.success  # the check fails visibly; creates and updates still went out
        assert checks(held)["removal_guard"] is False
        sync = metadata(held, "audience_sync")
        diff = metadata(held, "reconciliation_diff")
        assert sync["held"] == diff["action_unsubscribe"] + diff["action_remove"]
        assert diff["action_unsubscribe"] > 1000
        assert sync["unsubscribed"] == 0 and sync["created"] == 1
        assert "new.contact@example.de" in run_snapshot_brevo(sandbox)
        outcomes = sa.create_engine(settings.resolved_state_database_url())
        with outcomes.connect() as conn:
            logged = conn.execute(
                sa.text(
                    "SELECT count(*) FROM sync_outcomes WHERE outcome = 'held' AND run_id = :r"
                ),
                {"r": held.run_id},
            ).scalar()
        assert logged == sync["held"]

        allowed = run_sync(instance, "brevo", **accept, audience_sync={"allow_mass_removal": True})
        assert allowed.success
        diff = metadata(allowed, "reconciliation_diff")
        assert metadata(allowed, "audience_sync")["unsubscribed"] == diff["action_unsubscribe"] > 0


def run_snapshot_brevo(sandbox: Sandbox) -> set[str]:
    """Addresses in any Brevo list of the sandbox."""
    return {
        c.email.lower()
        for account in sandbox.state.brevo.values()
        for c in account.contacts.values()
        if c.listIds
    }


def test_dry_run_sends_nothing(settings: Settings, sandbox: Sandbox) -> None:
    with dg.instance_for_test() as instance:
        assert run_sync(instance, "mailchimp").success
        crm_update(settings, "UPDATE contacts SET newsletter = 'no' WHERE id % 20 = 0")
        before = writes(sandbox, "mailchimp")
        result = run_sync(instance, "mailchimp", audience_sync={"dry_run": True})
        assert result.success
        sync = metadata(result, "audience_sync")
        assert sync["dry_run"] is True and sync["planned_unsubscribe"] > 0
        assert writes(sandbox, "mailchimp") == before


def test_provider_error_fails_the_run_and_no_diff_is_made(sandbox: Sandbox) -> None:
    """A provider that refuses the snapshot fails the run; it never looks like an empty audience.

    (Server errors and dropped connections during the snapshot: see test_push.py, with quick
    retries; here the key is refused, which fails at once.)
    """
    with dg.instance_for_test() as instance:
        assert run_sync(instance, "mailchimp").success
        sandbox.state.mailchimp.clear()  # the account is gone: 401 API Key Invalid
        result = run_sync(instance, "mailchimp")
    assert not result.success
    failure = result.get_step_failure_events()[0]
    assert failure.step_key == "provider_audience_snapshot"
    assert "API Key Invalid" in str(failure.event_specific_data.error)
    assert not metadata(result, "reconciliation_diff")
    assert not metadata(result, "audience_sync")


def test_a_merge_field_the_sync_cannot_fill_fails_the_push_before_any_write(
    sandbox: Sandbox,
) -> None:
    """The snapshot reads the members (it needs the list only); the push checks the merge
    fields while it reads the diff and stops on a required one the sync cannot fill, naming
    it, before any write."""
    with dg.instance_for_test() as instance:
        assert run_sync(instance, "mailchimp").success
        with sandbox.transaction() as state:
            (mc_list,) = state.mailchimp[SANDBOX_MAILCHIMP_KEY].lists.values()
            birthday = McMergeField(merge_id=99, tag="BDAY", name="Birthday", required=True)
            mc_list.merge_fields.append(birthday)
        before = writes(sandbox, "mailchimp")
        result = run_sync(instance, "mailchimp")
    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert failure.step_key == "audience_sync"
    assert "BDAY" in str(failure.event_specific_data.error)
    assert metadata(result, "provider_audience_snapshot")["member_count"] > 0
    assert writes(sandbox, "mailchimp") == before


def test_partitions_are_the_configured_audiences() -> None:
    job = defs.resolve_job_def("full_sync_job")
    assert job.partitions_def is not None
    assert set(job.partitions_def.get_partition_keys()) == {"mailchimp", "brevo"}


def test_a_brevo_audience_never_has_a_system_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    """The system tag is Mailchimp's; a Brevo audience configured without saying so (the
    field's default is Mailchimp's "CRM") gets none, in every job alike."""
    audiences = '[{"key": "m", "provider": "mailchimp"}, {"key": "b", "provider": "brevo"}]'
    monkeypatch.setenv("NEWSLETTER_AUDIENCES", audiences)
    tags = {a.key: a.system_tag for a in Settings().audiences}
    assert tags == {"m": "CRM", "b": None}


# the calls a re-run with nothing to change makes besides the member pages: the audience's
# setup, once (its steps share the run's client: the push asks nothing the snapshot learnt), and
# no ping (a refused key fails the first of these calls)
SETUP_CALLS = {
    "mailchimp": {
        ("GET", "/lists"): 1,
        ("GET", "/lists/{list_id}/merge-fields"): 1,
    },
    "brevo": {
        ("GET", "/contacts/attributes"): 1,
        ("GET", "/contacts/folders"): 1,
        ("GET", "/contacts/folders/{folderId}/lists"): 1,
    },
}
MEMBER_PAGES = {
    "mailchimp": ("GET", "/lists/{list_id}/members"),
    "brevo": ("GET", "/contacts/lists/{listId}/contacts"),
}


@pytest.mark.parametrize("audience", ["mailchimp", "brevo"])
def test_a_run_asks_the_audience_setup_once(audience: str, sandbox: Sandbox) -> None:
    with dg.instance_for_test() as instance:
        assert run_sync(instance, audience).success
        sandbox.stats.reset()
        assert run_sync(instance, audience).success
    calls = {
        (method, template): n
        for (provider, method, template, _), n in sandbox.stats.calls.items()
        if provider == audience
    }
    assert calls.pop(MEMBER_PAGES[audience], 0) >= 1
    assert calls == SETUP_CALLS[audience]
