"""Mailchimp batch operations (`/batches`): accepted at once, run later, answered as a
gzipped tar of results (served by the control API)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

from newsletter_pipelines.sandbox.core import Request, Response, json_response, now_iso
from newsletter_pipelines.sandbox.fields import partial
from newsletter_pipelines.sandbox.mailchimp_members import invalid, not_found
from newsletter_pipelines.sandbox.mailchimp_state import McAccount, McBatch

Route = Callable[[McAccount, Request], tuple[str, Response]]


class BatchHandlers:
    """Handlers of `/batches`, and the runner of due batches."""

    def __init__(self, now: Callable[[], float], delay: Callable[[], float], route: Route) -> None:
        self.now = now
        self.delay = delay
        self.route = route

    def routes(self) -> list[tuple[str, str, Callable[[McAccount, Request], Response]]]:
        """(method, template, handler) of every endpoint here."""
        return [
            ("POST", "/batches", self.post_batch),
            ("GET", "/batches/{batch_id}", self.get_batch),
        ]

    def run_due_batches(self, account: McAccount) -> None:
        """Run every submitted batch whose processing time has come."""
        now = self.now()
        for batch in account.batches.values():
            if batch.status != "finished" and now >= batch.submitted_at + self.delay():
                batch.results = [self._run_operation(account, op) for op in batch.operations]
                batch.status = "finished"
                batch.completed_at = now

    def _run_operation(self, account: McAccount, op: dict[str, Any]) -> dict[str, Any]:
        path = "/" + str(op.get("path", "")).lstrip("/")
        params = op.get("params") or {}
        request = Request(
            method=str(op.get("method", "GET")).upper(),
            path=path,
            query={str(k): [str(v)] for k, v in params.items()},
            body=str(op.get("body") or "").encode(),
        )
        _, response = self.route(account, request)
        return {
            "status_code": response.status,
            "operation_id": op.get("operation_id"),
            "response": response.body.decode(),
        }

    def _batch_json(self, batch: McBatch, request: Request) -> dict[str, Any]:
        errored = sum(1 for r in batch.results if int(r["status_code"]) >= 400)
        body: dict[str, Any] = {
            "id": batch.id,
            "status": batch.status,
            "total_operations": len(batch.operations),
            "finished_operations": len(batch.results),
            "errored_operations": errored,
            "submitted_at": now_iso(batch.submitted_at),
            "response_body_url": "",
            "_links": [],
        }
        if batch.completed_at is not None:
            body["completed_at"] = now_iso(batch.completed_at)
            body["response_body_url"] = (
                f"{request.origin}/_sandbox/files/mailchimp-batches/{batch.id}.tar.gz"
            )
        return body

    def post_batch(self, account: McAccount, request: Request) -> Response:
        operations = request.json_object().get("operations")
        if not isinstance(operations, list):
            raise invalid("operations", "This value should not be blank.")
        for op in operations:
            if not isinstance(op, dict) or op.get("method") not in (
                "GET",
                "POST",
                "PUT",
                "PATCH",
                "DELETE",
            ):
                raise invalid("operations", "Each operation needs a method and a path.")
            if op.get("body") is not None:
                try:
                    json.loads(op["body"])
                except (TypeError, ValueError):
                    raise invalid(
                        "operations", "The body of an operation must be a JSON string."
                    ) from None
        batch = McBatch(id=secrets.token_hex(5), operations=operations, submitted_at=self.now())
        account.batches[batch.id] = batch
        return json_response(200, self._batch_json(batch, request))

    def get_batch(self, account: McAccount, request: Request) -> Response:
        batch = account.batches.get(request.params["batch_id"])
        if batch is None:
            raise not_found()
        return json_response(200, partial(self._batch_json(batch, request), request))
