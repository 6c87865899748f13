"""Webhook registration by both clients against the sandbox: once per URL, the campaign events
the activities need, and a rotated secret or changed activities update the one webhook."""

from __future__ import annotations

from newsletter_pipelines.providers.brevo import BrevoClient
from newsletter_pipelines.providers.mailchimp import MailchimpClient
from newsletter_pipelines.sandbox import SANDBOX_BREVO_KEY, Sandbox
from newsletter_pipelines_tests.providers.helpers import audience

URL = "https://hooks.example.com/webhooks/{}/news"
SECRET = "first-secret-0123456789"
ROTATED = "second-secret-0123456789"


def test_mailchimp_registers_once_and_updates_on_rotation_and_activities(
    sandbox: Sandbox, mailchimp: MailchimpClient
) -> None:
    url = URL.format("mailchimp")
    hook_id = mailchimp.register_webhook(url, SECRET)
    assert mailchimp.register_webhook(url, SECRET) == hook_id
    (hook,) = audience(sandbox).webhooks
    assert hook.url == f"{url}?secret={SECRET}"
    assert hook.events["campaign"] is False
    assert hook.sources == {"user": True, "admin": True, "api": False}

    assert mailchimp.register_webhook(url, ROTATED, frozenset({"delivered"})) == hook_id
    (hook,) = audience(sandbox).webhooks  # updated, not added
    assert hook.url == f"{url}?secret={ROTATED}"
    assert hook.events["campaign"] is True


def test_brevo_registers_once_and_updates_on_rotation_and_activities(
    sandbox: Sandbox, brevo: BrevoClient
) -> None:
    url = URL.format("brevo")
    brevo.ensure_audience()
    hook_id = brevo.register_webhook(url, SECRET)
    assert brevo.register_webhook(url, SECRET) == hook_id
    hooks = sandbox.state.brevo[SANDBOX_BREVO_KEY].webhooks
    (hook,) = hooks.values()
    assert sorted(hook.events) == [
        "contactDeleted",
        "hardBounce",
        "listAddition",
        "spam",
        "unsubscribed",
    ]
    assert hook.auth == {"type": "bearer", "token": SECRET}

    activities = frozenset({"delivered", "opened", "clicked"})
    assert brevo.register_webhook(url, ROTATED, activities) == hook_id
    assert hooks[int(hook_id)].auth == {"type": "bearer", "token": ROTATED}  # updated
    (stream,) = [h for h in hooks.values() if h.id != int(hook_id)]
    assert stream.url == f"{url}?stream=engagement"
    assert (sorted(stream.events), stream.batched) == (["click", "delivered", "opened"], True)
    assert hooks[int(hook_id)].batched is False  # opt-outs are not kept waiting
    modified = {h.id: h.modifiedAt for h in hooks.values()}
    brevo.register_webhook(url, ROTATED, activities)
    assert {h.id: h.modifiedAt for h in hooks.values()} == modified  # nothing to change
    brevo.register_webhook(url, ROTATED)
    assert list(hooks) == [int(hook_id)]  # the engagement stream goes with the activities
