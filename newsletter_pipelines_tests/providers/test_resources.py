"""The Dagster resources: the embedded sandbox by default (and said so in the run log), live
clients with keys from EnvVar that never show up in logs."""

from pathlib import Path

import pytest
from dagster import AssetExecutionContext, DagsterInstance, EnvVar, asset, materialize

from newsletter_pipelines.providers.base import Contact, Result
from newsletter_pipelines.providers.resources import BrevoResource, MailchimpResource
from newsletter_pipelines.sandbox import Sandbox
from newsletter_pipelines.settings import Settings

MAILCHIMP_KEY = "0123456789abcdef0123456789abcdef-us6"
BREVO_KEY = "xkeysib-live-looking-secret"


@asset
def pushed(
    context: AssetExecutionContext, mailchimp: MailchimpResource, brevo: BrevoResource
) -> None:
    """Pushes one contact to each provider when they are sandboxes."""
    context.log.info(mailchimp.mode())
    context.log.info(brevo.mode())
    if not mailchimp.uses_sandbox:
        mailchimp.client("CRM Newsletter").close()
        brevo.client("CRM Newsletter").close()
        return
    contact = Contact(crm_id="1", email="ada@example.com", first_name="Ada", tags=frozenset({"a"}))
    for provider in (mailchimp.client("CRM Newsletter"), brevo.client("CRM Newsletter")):
        outcome = provider.upsert([contact])[0]
        assert outcome.outcome is Result.CREATED, outcome
        provider.close()


def run_logs(settings: Settings) -> list[str]:
    resources = {
        "mailchimp": MailchimpResource.from_settings(settings),
        "brevo": BrevoResource.from_settings(settings),
    }
    with DagsterInstance.ephemeral() as instance:
        result = materialize([pushed], resources=resources, instance=instance)
        assert result.success
        return [r.user_message for r in instance.all_logs(result.run_id) if r.user_message]


def test_without_keys_the_embedded_sandbox_is_used_and_named(settings: Settings) -> None:
    logs = run_logs(settings)
    notices = [line for line in logs if "EMBEDDED SANDBOX" in line]
    assert any(line.startswith("Mailchimp: no API key") for line in notices)
    assert any(line.startswith("Brevo: no API key") for line in notices)
    state = settings.home / "sandbox.json"
    reopened = Sandbox(state_file=state)
    lists = next(iter(reopened.state.mailchimp.values())).lists.values()
    assert [len(lst.members) for lst in lists] == [1]
    brevo_contacts = next(iter(reopened.state.brevo.values())).contacts.values()
    assert [c.email for c in brevo_contacts] == ["ada@example.com"]


def test_keys_come_from_env_vars_and_stay_out_of_logs(
    monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    monkeypatch.setenv("NEWSLETTER_MAILCHIMP_API_KEY", MAILCHIMP_KEY)
    monkeypatch.setenv("NEWSLETTER_BREVO_API_KEY", BREVO_KEY)
    settings = Settings()
    resource = MailchimpResource.from_settings(settings)
    assert isinstance(resource.api_key, EnvVar)
    assert isinstance(BrevoResource.from_settings(settings).api_key, EnvVar)
    logs = run_logs(settings)
    assert "Mailchimp: live account (data center from the key)" in logs
    assert "Brevo: live account (https://api.brevo.com/v3)" in logs
    assert not [line for line in logs if MAILCHIMP_KEY in line or BREVO_KEY in line]
