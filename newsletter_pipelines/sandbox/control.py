"""The sandbox-only control API under `/_sandbox`, used by tests and the demo.

GET    /_sandbox/health                      liveness
GET    /_sandbox/state                       the whole state as JSON
GET    /_sandbox/stats                       calls served (provider, method, route, status)
POST   /_sandbox/reset                       fresh state with the default accounts
POST   /_sandbox/save                        write the state file now
POST   /_sandbox/faults                      add a fault rule (see `FaultRule`)
DELETE /_sandbox/faults                      remove every fault rule
POST   /_sandbox/mailchimp/accounts          {"api_key", "max_lists"?}
POST   /_sandbox/brevo/accounts              {"api_key", "language"?, "attributes"?, ...}
POST   /_sandbox/mailchimp/people            a person acts (see `PersonEvent`)
POST   /_sandbox/brevo/people                a person acts (see `PersonEvent`)
POST   /_sandbox/mailchimp/campaigns         an admin sends a campaign (see `CampaignSend`)
POST   /_sandbox/brevo/campaigns             an admin sends a campaign (see `CampaignSend`)
GET    /_sandbox/files/mailchimp-batches/{id}.tar.gz   results of a Mailchimp batch
"""

from __future__ import annotations

import io
import json
import tarfile
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from newsletter_pipelines.sandbox.brevo_rules import BrevoError
from newsletter_pipelines.sandbox.brevo_state import BvAttribute
from newsletter_pipelines.sandbox.campaigns import (
    CampaignSend,
    send_brevo_campaign,
    send_mailchimp_campaign,
)
from newsletter_pipelines.sandbox.core import (
    BodyError,
    Request,
    Response,
    Router,
    empty_response,
    json_response,
)
from newsletter_pipelines.sandbox.faults import FaultRule
from newsletter_pipelines.sandbox.mailchimp_members import ProblemError
from newsletter_pipelines.sandbox.people import PersonEvent, brevo_person, mailchimp_person

if TYPE_CHECKING:
    from newsletter_pipelines.sandbox.engine import Sandbox

RESULTS_PER_FILE = 100


class BrevoAccountSpec(BaseModel):
    """Body of `POST /_sandbox/brevo/accounts`."""

    api_key: str
    language: str = "en"
    attributes: list[BvAttribute] = []
    contacts_per_second: int = 10
    other_per_hour: int = 100
    key_name: str = "sandbox-key"


class MailchimpAccountSpec(BaseModel):
    """Body of `POST /_sandbox/mailchimp/accounts`."""

    api_key: str
    max_lists: int = 5


def results_archive(batch_id: str, results: list[dict[str, Any]]) -> bytes:
    """A Mailchimp batch result: gzipped tar of JSON files, each an array of results."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for start in range(0, max(len(results), 1), RESULTS_PER_FILE):
            data = json.dumps(results[start : start + RESULTS_PER_FILE]).encode()
            info = tarfile.TarInfo(f"{batch_id}/{start // RESULTS_PER_FILE}.json")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class ControlApi:
    """Handlers of the control API."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.router = Router()
        for method, template, handler in (
            ("GET", "/health", self.health),
            ("GET", "/state", self.state),
            ("GET", "/stats", self.stats),
            ("POST", "/reset", self.reset),
            ("POST", "/save", self.save),
            ("POST", "/faults", self.add_fault),
            ("DELETE", "/faults", self.clear_faults),
            ("POST", "/mailchimp/accounts", self.mailchimp_account),
            ("POST", "/brevo/accounts", self.brevo_account),
            ("POST", "/mailchimp/people", self.mailchimp_person),
            ("POST", "/brevo/people", self.brevo_person),
            ("POST", "/mailchimp/campaigns", self.mailchimp_campaign),
            ("POST", "/brevo/campaigns", self.brevo_campaign),
            ("GET", "/files/mailchimp-batches/{name}", self.batch_results),
        ):
            self.router.add(method, template, handler)

    def handle(self, request: Request) -> Response:
        """Serve one control request."""
        resolved = self.router.resolve(request.method, request.path)
        if resolved is None:
            return json_response(
                404, {"error": f"no control route {request.method} {request.path}"}
            )
        _, handler, params = resolved
        request.params = params
        try:
            return handler(request)
        except (ValidationError, BodyError, ValueError, KeyError) as exc:
            return json_response(400, {"error": str(exc)})
        except ProblemError as exc:
            return json_response(exc.status, {"error": exc.detail})
        except BrevoError as exc:
            return json_response(exc.status, {"error": exc.message})

    def health(self, request: Request) -> Response:
        return json_response(200, {"status": "ok"})

    def state(self, request: Request) -> Response:
        with self.sandbox.transaction(write=False):
            return Response(
                200,
                self.sandbox.state.model_dump_json().encode(),
                {"content-type": "application/json"},
            )

    def stats(self, request: Request) -> Response:
        rows = [
            {"provider": p, "method": m, "route": t, "status": s, "count": n}
            for (p, m, t, s), n in sorted(self.sandbox.stats.calls.items())
        ]
        return json_response(200, {"calls": rows, "faults_injected": self.sandbox.faults.injected})

    def reset(self, request: Request) -> Response:
        self.sandbox.reset()
        return empty_response(204)

    def save(self, request: Request) -> Response:
        self.sandbox.save()
        return empty_response(204)

    def add_fault(self, request: Request) -> Response:
        self.sandbox.faults.add(FaultRule.model_validate(request.json_object()))
        return empty_response(201)

    def clear_faults(self, request: Request) -> Response:
        self.sandbox.faults.clear()
        return empty_response(204)

    def mailchimp_account(self, request: Request) -> Response:
        spec = MailchimpAccountSpec.model_validate(request.json_object())
        self.sandbox.add_mailchimp_account(spec.api_key, max_lists=spec.max_lists)
        return empty_response(201)

    def brevo_account(self, request: Request) -> Response:
        spec = BrevoAccountSpec.model_validate(request.json_object())
        self.sandbox.add_brevo_account(
            spec.api_key,
            language=spec.language,
            extra_attributes=spec.attributes,
            contacts_per_second=spec.contacts_per_second,
            other_per_hour=spec.other_per_hour,
            key_name=spec.key_name,
        )
        return empty_response(201)

    def mailchimp_person(self, request: Request) -> Response:
        event = PersonEvent.model_validate(request.json_object())
        return json_response(200, mailchimp_person(self.sandbox, event))

    def brevo_person(self, request: Request) -> Response:
        event = PersonEvent.model_validate(request.json_object())
        return json_response(200, brevo_person(self.sandbox, event))

    def mailchimp_campaign(self, request: Request) -> Response:
        send = CampaignSend.model_validate(request.json_object())
        return json_response(200, send_mailchimp_campaign(self.sandbox, send))

    def brevo_campaign(self, request: Request) -> Response:
        send = CampaignSend.model_validate(request.json_object())
        return json_response(200, send_brevo_campaign(self.sandbox, send))

    def batch_results(self, request: Request) -> Response:
        batch_id = request.params["name"].removesuffix(".tar.gz")
        with self.sandbox.transaction(write=False):
            for account in self.sandbox.state.mailchimp.values():
                batch = account.batches.get(batch_id)
                if batch is not None and batch.status == "finished":
                    body = results_archive(batch_id, batch.results)
                    return Response(200, body, {"content-type": "application/x-gzip"})
        return json_response(404, {"error": f"no finished batch {batch_id}"})
