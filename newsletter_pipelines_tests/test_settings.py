"""Settings read from the environment: NEWSLETTER_ACTIVITIES."""

from __future__ import annotations

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
