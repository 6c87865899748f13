"""Settings read from the environment: NEWSLETTER_ACTIVITIES."""

from __future__ import annotations

import os
import subprocess
import sys

import pydantic
import pytest

from newsletter_pipelines.settings import Settings


def test_activities_always_hold_subscribed_and_unsubscribed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().activities == {"subscribed", "unsubscribed"}
    monkeypatch.setenv("NEWSLETTER_ACTIVITIES", " opened,clicked ,, hard_bounce")
    assert Settings().activities == {
        "subscribed",
        "unsubscribed",
        "opened",
        "clicked",
        "hard_bounce",
    }


def test_an_unknown_activity_is_an_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NEWSLETTER_ACTIVITIES", "subscribed,open")
    with pytest.raises(pydantic.ValidationError, match=r"NEWSLETTER_ACTIVITIES: unknown .*'open'"):
        Settings()


PRODUCTION = {
    "NEWSLETTER_DEPLOYMENT": "production",
    "NEWSLETTER_CRM_DATABASE_URL": "postgresql://crm.internal/crm",
    "NEWSLETTER_STATE_DATABASE_URL": "postgresql://state.internal/state",
    "NEWSLETTER_WEBHOOK_SECRET": "s" * 24,
    "NEWSLETTER_MAILCHIMP_API_KEY": "0123456789abcdef0123456789abcdef-us6",
    "NEWSLETTER_BREVO_API_KEY": "xkeysib-production",
    "NEWSLETTER_IO_BASE_URI": "s3://newsletter-values/dagster",
}


def test_production_names_every_missing_setting_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_DEPLOYMENT", "production")
    monkeypatch.setenv("NEWSLETTER_WEBHOOK_SECRET", "w" * 24)
    with pytest.raises(pydantic.ValidationError) as error:
        Settings()
    message = str(error.value)
    assert "w" * 24 not in message  # the error names variables, never their values
    monkeypatch.delenv("NEWSLETTER_WEBHOOK_SECRET")
    with pytest.raises(pydantic.ValidationError) as error:
        Settings()
    message = str(error.value)
    for name in set(PRODUCTION) - {"NEWSLETTER_DEPLOYMENT"}:
        assert name in message
    for name, value in PRODUCTION.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("NEWSLETTER_BREVO_API_KEY", "")  # empty counts as missing
    with pytest.raises(pydantic.ValidationError, match="needs NEWSLETTER_BREVO_API_KEY "):
        Settings()


def test_production_with_everything_set_never_uses_the_sandbox(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in PRODUCTION.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert not settings.uses_sandbox("mailchimp") and not settings.uses_sandbox("brevo")
    assert not settings.uses_embedded_crm()
    monkeypatch.setenv("NEWSLETTER_AUDIENCES", '[{"key": "news", "provider": "brevo"}]')
    monkeypatch.delenv("NEWSLETTER_MAILCHIMP_API_KEY")
    assert Settings().audiences[0].key == "news"  # no Mailchimp audience: no Mailchimp key


def test_the_code_location_does_not_load_in_production_without_its_settings() -> None:
    """What `dagster code-server start` / `dagster dev` meet: the import fails, naming them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    done = subprocess.run(
        [sys.executable, "-c", "import newsletter_pipelines.definitions"],
        env={**env, "NEWSLETTER_DEPLOYMENT": "production"},
        check=False,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "NEWSLETTER_DEPLOYMENT=production needs NEWSLETTER_CRM_DATABASE_URL" in done.stderr


def test_the_io_base_uri_defaults_to_newsletter_home_and_never_holds_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings()
    assert settings.resolved_io_base_uri() == str((settings.home / "io").resolve())
    monkeypatch.setenv("NEWSLETTER_IO_BASE_URI", "s3://AKIAEXAMPLE:s3cret@bucket/prefix")
    with pytest.raises(pydantic.ValidationError, match="NEWSLETTER_IO_BASE_URI must not hold") as e:
        Settings()
    assert "s3cret" not in str(e.value)
