"""The demo's people: after the first `make demo`, a few people act at the embedded sandbox
(unsubscribe, get archived or deleted, tag themselves, sign up), so the next run shows what the
import-back brings into the CRM. Never against a live provider account."""

from __future__ import annotations

from pathlib import Path

from newsletter_pipelines.defs.providers.clients import audience_client
from newsletter_pipelines.defs.resources import build_resources
from newsletter_pipelines.providers.base import MemberStatus
from newsletter_pipelines.providers.resources import embedded_sandbox
from newsletter_pipelines.sandbox import PersonEvent
from newsletter_pipelines.sandbox.people import brevo_person, mailchimp_person
from newsletter_pipelines.settings import Settings

SIGN_UP = ("neue.leserin@example.org", "Nina", "Neumann")
MARKER = "demo-people-played"


def play_people(settings: Settings) -> list[str]:
    """Once per NEWSLETTER_HOME: people act at every sandbox audience; what they did, by line."""
    marker = settings.home / MARKER
    if marker.exists():
        return []
    resources = build_resources(settings)
    done: list[str] = []
    for audience in settings.audiences:
        provider = resources[audience.provider]
        if not provider.uses_sandbox:
            continue
        sandbox = embedded_sandbox(Path(provider.sandbox_state_file))
        client = audience_client(audience, resources["mailchimp"], resources["brevo"])
        try:
            list_id = client.ensure_audience().id
            active = [m.email for m in client.snapshot() if m.status is MemberStatus.SUBSCRIBED]
        finally:
            client.close()
        if len(active) < 4:
            continue
        removal = "archive" if audience.provider == "mailchimp" else "delete"
        apply = mailchimp_person if audience.provider == "mailchimp" else brevo_person
        email, first, last = SIGN_UP
        events = [
            PersonEvent(list_id=list_id, email=active[0], action="unsubscribe"),
            PersonEvent(list_id=list_id, email=active[1], action="unsubscribe"),
            PersonEvent(list_id=list_id, email=active[2], action=removal),
            PersonEvent(list_id=list_id, email=active[3], action="tag", tag="Webinar"),
            PersonEvent(
                list_id=list_id, email=email, action="signup", first_name=first, last_name=last
            ),
        ]
        for event in events:
            apply(sandbox, event)
        done.append(
            f"{audience.key}: 2 people unsubscribed, 1 was {removal}d, 1 tagged itself "
            f"'Webinar', {email} signed up"
        )
    marker.touch()
    return done
