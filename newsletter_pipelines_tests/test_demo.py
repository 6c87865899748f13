"""`make demo` (the README's first command) runs a full sync and prints a true summary; the
second run imports what people did at the sandbox meanwhile."""

from __future__ import annotations

import dagster as dg

from newsletter_pipelines.demo import run_demo, summary
from newsletter_pipelines.settings import Settings


def section(text: str, title: str) -> dict[str, list[str]]:
    """The rows of the table under `title`, by their first word."""
    body = text.split(title, 1)[1].split("\n\n", 1)[0]
    return {line.split()[0]: line.split() for line in body.splitlines()[3:] if line.strip()}


def test_demo_full_sync_then_import_back(settings: Settings) -> None:
    with dg.instance_for_test() as instance:
        first = run_demo(settings, instance)
        assert first.success
        text = summary(first, settings)
        assert "removal_guard passed" in text and "FAILED" not in text
        counts = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
        eligible = int(counts["eligible"][1])
        synced = section(text, "Full sync per audience")
        for audience in ("mailchimp", "brevo"):
            row = synced[audience]  # audience provider run created updated ... in-sync ...
            assert row[2] == "ok" and int(row[3]) == eligible
        assert "mailchimp: 2 people unsubscribed" in text  # people act at the sandbox

        second = run_demo(settings, instance)  # imports what they did
        assert second.success
        text = summary(second, settings)
        synced = section(text, "Full sync per audience")
        for audience in ("mailchimp", "brevo"):
            assert int(synced[audience][3]) == 0  # nothing created the second time
        imported = section(text, "Import-back into the CRM")
        # audience mode unsubscribed bounced removed subscribed new tags+ tags- written
        assert imported["mailchimp"][1:] == ["write", "2", "0", "1", "0", "1", "1", "0", "4"]
        assert "Meanwhile" not in text  # people act once per NEWSLETTER_HOME
