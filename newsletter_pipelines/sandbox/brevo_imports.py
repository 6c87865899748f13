"""Brevo contact imports: background processes, polled through `/processes/{id}`.

An import links every contact it imports to `listIds`, existing ones included, whatever their
blacklist or `listUnsubscribed` (it only blacklists on `emailBlacklist: true`, and never
un-blacklists). `updateExistingContacts` (default true) decides only whether an existing
contact's attributes are written; empty values then erase an attribute only with
`emptyContactsAttributes: true` ("only available if `updateExistingContacts` set to true"),
otherwise they leave the existing value alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from newsletter_pipelines.sandbox import brevo_rules as rules
from newsletter_pipelines.sandbox.brevo_rules import BrevoError, BrevoHooks
from newsletter_pipelines.sandbox.brevo_state import BvAccount, BvProcess
from newsletter_pipelines.sandbox.core import Request, Response, json_response

MAX_IMPORT_BYTES = 10 * 1024 * 1024


class ImportHandlers:
    """Handlers of `/contacts/import` and `/processes/{id}`, and the runner of due imports."""

    def __init__(self, hooks: BrevoHooks) -> None:
        self.hooks = hooks

    def routes(self) -> list[tuple[str, str, Callable[[BvAccount, Request], Response]]]:
        """(method, template, handler) of every endpoint here."""
        return [
            ("POST", "/contacts/import", self.post_import),
            ("GET", "/processes/{processId}", self.get_process),
        ]

    def post_import(self, account: BvAccount, request: Request) -> Response:
        if len(request.body) > MAX_IMPORT_BYTES:
            raise BrevoError(400, "out_of_range", "jsonBody must not exceed 10 MB")
        body = request.json_object()
        sources = [k for k in ("fileUrl", "fileBody", "jsonBody") if body.get(k)]
        if len(sources) != 1:
            raise BrevoError(
                400, "invalid_parameter", "give exactly one of fileUrl, fileBody, jsonBody"
            )
        if sources != ["jsonBody"]:
            raise BrevoError(400, "invalid_parameter", "the sandbox imports jsonBody only")
        if not body.get("listIds"):
            raise BrevoError(400, "missing_parameter", "listIds is missing")
        for list_id in body["listIds"]:
            rules.find_list(account, str(list_id))
        process_id = account.new_id()
        account.processes[process_id] = BvProcess(
            id=process_id, created_at=self.hooks.now(), request=body
        )
        return json_response(202, {"processId": process_id})

    def run_due_processes(self, account: BvAccount) -> None:
        """Run imports whose processing time has come."""
        now = self.hooks.now()
        for process in account.processes.values():
            if (
                process.status == "completed"
                or now < process.created_at + self.hooks.process_delay()
            ):
                continue
            process.info = self._import(account, process.request, now)
            process.status = "completed"
            process.completed_at = now
            process.request = {}

    def _import(self, account: BvAccount, body: dict[str, Any], now: float) -> dict[str, Any]:
        invalid = duplicates = 0
        seen: set[str] = set()
        update_existing = bool(body.get("updateExistingContacts", True))
        erase = update_existing and bool(body.get("emptyContactsAttributes", False))
        blacklist = bool(body.get("emailBlacklist", False))
        named = account.attributes_by_name()
        for row in body.get("jsonBody") or []:
            email = str(row.get("email") or "") if isinstance(row, dict) else ""
            if not rules.valid_address(email):
                invalid += 1
                continue
            if email.lower() in seen:
                duplicates += 1
                continue
            seen.add(email.lower())
            contact = account.by_email(email)
            created = contact is None
            if contact is None:
                contact = rules.new_contact(account, email, now)
            given = row.get("attributes") if isinstance(row.get("attributes"), dict) else {}
            attributes = {k: v for k, v in given.items() if str(k).upper() != "EMAIL"}
            if not created and not update_existing:
                attributes = {}
            elif not created and not erase:
                attributes = {k: v for k, v in attributes.items() if v not in ("", None)}
            update: dict[str, Any] = {"attributes": attributes, "listIds": body["listIds"]}
            if blacklist:
                update["emailBlacklisted"] = True
            added = rules.apply_update(account, contact, update, now, named)
            written = not created and bool(attributes or blacklist)
            rules.api_events(self.hooks, account, contact, added, updated=written)
        return {"invalid_emails": invalid, "duplicate_email_id": duplicates}

    def get_process(self, account: BvAccount, request: Request) -> Response:
        process_id = request.params["processId"]
        process = account.processes.get(int(process_id)) if process_id.isdigit() else None
        if process is None:
            raise BrevoError(404, "document_not_found", "Process does not exist")
        body: dict[str, Any] = {"id": process.id, "name": process.name, "status": process.status}
        if process.status == "completed":
            body["info"] = {"import": process.info or {}}
        return json_response(200, body)
