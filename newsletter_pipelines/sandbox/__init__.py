"""Spec-faithful local emulators of the Mailchimp and Brevo APIs.

In-process: `httpx.Client(transport=SandboxTransport(Sandbox()))` with base URLs
`{SANDBOX_ORIGIN}/mailchimp/3.0` and `{SANDBOX_ORIGIN}/brevo/v3`. As a server:
`python -m newsletter_pipelines.sandbox serve --port 8765`. The control API lives under
`/_sandbox` (see `control`).
"""

from newsletter_pipelines.sandbox.campaigns import CampaignSend
from newsletter_pipelines.sandbox.engine import (
    BREVO_PREFIX,
    MAILCHIMP_PREFIX,
    SANDBOX_BREVO_KEY,
    SANDBOX_MAILCHIMP_KEY,
    Sandbox,
)
from newsletter_pipelines.sandbox.faults import FaultRule
from newsletter_pipelines.sandbox.people import PersonEvent
from newsletter_pipelines.sandbox.transport import SANDBOX_ORIGIN, SandboxTransport

__all__ = [
    "BREVO_PREFIX",
    "MAILCHIMP_PREFIX",
    "SANDBOX_BREVO_KEY",
    "SANDBOX_MAILCHIMP_KEY",
    "SANDBOX_ORIGIN",
    "CampaignSend",
    "FaultRule",
    "PersonEvent",
    "Sandbox",
    "SandboxTransport",
]
