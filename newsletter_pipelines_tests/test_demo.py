"""`make demo` (the README's first command) runs a full sync and prints a true summary."""

from __future__ import annotations

import dagster as dg

from newsletter_pipelines.demo import run_demo, summary
from newsletter_pipelines.settings import Settings


def test_demo_full_sync_then_nothing_to_send(settings: Settings) -> None:
    with dg.instance_for_test() as instance:
        first = run_demo(settings, instance)
        assert first.success
        text = summary(first, settings)
        assert "removal_guard passed" in text and "FAILED" not in text
        lines = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
        eligible = int(lines["eligible"][1])
        for audience in ("mailchimp", "brevo"):
            row = lines[audience]  # audience provider run created updated ... in-sync ...
            assert row[2] == "ok" and int(row[3]) == eligible

        second = run_demo(settings, instance)
        assert second.success
        lines = {
            line.split()[0]: line.split()
            for line in summary(second, settings).splitlines()
            if line.strip()
        }
        for audience in ("mailchimp", "brevo"):
            assert int(lines[audience][3]) == 0  # nothing created the second time
            assert int(lines[audience][8]) == eligible  # every eligible contact in sync
