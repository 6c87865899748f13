"""Brevo folders and lists, and list membership (add/remove, 150 a call).

A list's contacts are those with its id in `listIds`. A per-list unsubscription takes the id out
of `listIds` and records it in `listUnsubscribed` (the spec's example of a list's contacts never
shows a list in both), so such a contact is not among the list's contacts; linking it again
(add, `listIds`, import) is not refused and leaves `listUnsubscribed` as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from newsletter_pipelines.sandbox import brevo_rules as rules
from newsletter_pipelines.sandbox.brevo_rules import BrevoError, BrevoHooks, contact_json
from newsletter_pipelines.sandbox.brevo_state import BvAccount, BvFolder, BvList
from newsletter_pipelines.sandbox.core import Request, Response, json_response, parse_iso

MAX_LIST_MEMBERS_CALL = 150
_FOLDER_LIMIT, _LIST_LIMIT, _CONTACT_LIMIT = 50, 50, 500


class ListHandlers:
    """Handlers of the folder and list endpoints."""

    def __init__(self, hooks: BrevoHooks) -> None:
        self.hooks = hooks

    def routes(self) -> list[tuple[str, str, Callable[[BvAccount, Request], Response]]]:
        """(method, template, handler) of every endpoint here."""
        return [
            ("GET", "/contacts/folders", self.get_folders),
            ("POST", "/contacts/folders", self.post_folder),
            ("GET", "/contacts/folders/{folderId}/lists", self.get_folder_lists),
            ("GET", "/contacts/lists", self.get_lists),
            ("POST", "/contacts/lists", self.post_list),
            ("GET", "/contacts/lists/{listId}/contacts", self.get_list_contacts),
            ("POST", "/contacts/lists/{listId}/contacts/add", self.add_to_list),
            ("POST", "/contacts/lists/{listId}/contacts/remove", self.remove_from_list),
        ]

    def _list_json(self, account: BvAccount, lst: BvList) -> dict[str, Any]:
        members = [c for c in account.contacts.values() if lst.id in c.listIds]
        blacklisted = sum(1 for c in members if c.emailBlacklisted)
        return {
            "id": lst.id,
            "name": lst.name,
            "folderId": lst.folderId,
            "totalBlacklisted": blacklisted,
            "totalSubscribers": len(members) - blacklisted,
            "uniqueSubscribers": len(members),
        }

    def get_folders(self, account: BvAccount, request: Request) -> Response:
        limit, offset = rules.page(request, _FOLDER_LIMIT, 10)
        folders = sorted(
            account.folders.values(),
            key=lambda f: f.id,
            reverse=request.arg("sort", "desc") == "desc",
        )
        rows = []
        for folder in folders[offset : offset + limit]:
            lists = [
                self._list_json(account, lst)
                for lst in account.lists.values()
                if lst.folderId == folder.id
            ]
            rows.append(
                {
                    "id": folder.id,
                    "name": folder.name,
                    "totalBlacklisted": sum(x["totalBlacklisted"] for x in lists),
                    "totalSubscribers": sum(x["totalSubscribers"] for x in lists),
                    "uniqueSubscribers": sum(x["uniqueSubscribers"] for x in lists),
                }
            )
        return json_response(200, {"count": len(folders), "folders": rows})

    def post_folder(self, account: BvAccount, request: Request) -> Response:
        name = str(request.json_object().get("name") or "")
        if not name:
            raise BrevoError(400, "missing_parameter", "name is missing")
        folder_id = account.new_id()
        account.folders[folder_id] = BvFolder(id=folder_id, name=name)
        return json_response(201, {"id": folder_id})

    def get_folder_lists(self, account: BvAccount, request: Request) -> Response:
        folder_id = request.params["folderId"]
        if not folder_id.isdigit() or int(folder_id) not in account.folders:
            raise BrevoError(404, "document_not_found", "Folder ID does not exist")
        return self._lists_page(account, request, int(folder_id))

    def get_lists(self, account: BvAccount, request: Request) -> Response:
        return self._lists_page(account, request, None)

    def _lists_page(self, account: BvAccount, request: Request, folder_id: int | None) -> Response:
        limit, offset = rules.page(request, _LIST_LIMIT, 10)
        lists = sorted(
            (lst for lst in account.lists.values() if folder_id in (None, lst.folderId)),
            key=lambda lst: lst.id,
            reverse=request.arg("sort", "desc") == "desc",
        )
        rows = [self._list_json(account, lst) for lst in lists[offset : offset + limit]]
        if folder_id is not None:
            for row in rows:
                row.pop("folderId")
        return json_response(200, {"count": len(lists), "lists": rows})

    def post_list(self, account: BvAccount, request: Request) -> Response:
        body = request.json_object()
        name, folder_id = body.get("name"), body.get("folderId")
        if not name or not isinstance(folder_id, int):
            raise BrevoError(400, "missing_parameter", "name and folderId are required")
        if folder_id not in account.folders:
            raise BrevoError(404, "document_not_found", "Folder ID does not exist")
        list_id = account.new_id()
        account.lists[list_id] = BvList(
            id=list_id, name=str(name), folderId=folder_id, createdAt=self.hooks.now()
        )
        return json_response(201, {"id": list_id})

    def get_list_contacts(self, account: BvAccount, request: Request) -> Response:
        lst = rules.find_list(account, request.params["listId"])
        limit, offset = rules.page(request, _CONTACT_LIMIT, 50)
        since = _modified_since(request)
        contacts = account.contacts
        ids = (  # by id, as the list shows them
            account.list_contact_ids(lst.id)
            if since is None
            else account.list_contact_ids_since(lst.id, since)
        )
        if request.arg("sort", "desc") == "desc":
            ids = ids[::-1]
        page = [contact_json(contacts[i]) for i in ids[offset : offset + limit]]
        return json_response(200, {"contacts": page, "count": len(ids)})

    def _members_body(self, request: Request) -> list[str]:
        body = request.json_object()
        if "emails" in body:
            values = [str(v) for v in body["emails"]]
        elif "ids" in body:
            values = [str(v) for v in body["ids"]]
        else:
            raise BrevoError(400, "missing_parameter", "emails or ids are required")
        if not 1 <= len(values) <= MAX_LIST_MEMBERS_CALL:
            raise BrevoError(
                400, "out_of_range", f"between 1 and {MAX_LIST_MEMBERS_CALL} contacts per call"
            )
        return values

    def add_to_list(self, account: BvAccount, request: Request) -> Response:
        lst = rules.find_list(account, request.params["listId"])
        success, failure = [], []
        now = self.hooks.now()
        for identifier in self._members_body(request):
            contact = rules.contact_or_none(account, identifier)
            if contact is None or lst.id in contact.listIds:
                failure.append(identifier)
                continue
            account.link(contact, lst.id)
            contact.modifiedAt = now
            success.append(identifier)
            rules.api_events(self.hooks, account, contact, [lst.id], updated=False)
        return self._membership_answer(success, failure)

    def remove_from_list(self, account: BvAccount, request: Request) -> Response:
        lst = rules.find_list(account, request.params["listId"])
        success, failure = [], []
        now = self.hooks.now()
        for identifier in self._members_body(request):
            contact = rules.contact_or_none(account, identifier)
            if contact is None or lst.id not in contact.listIds:
                failure.append(identifier)
                continue
            account.unlink(contact, lst.id)
            contact.modifiedAt = now
            success.append(identifier)
        return self._membership_answer(success, failure)

    @staticmethod
    def _membership_answer(success: list[str], failure: list[str]) -> Response:
        def typed(values: list[str]) -> list[Any]:
            return [int(v) if v.isdigit() else v for v in values]

        return json_response(
            201,
            {
                "contacts": {
                    "success": typed(success),
                    "failure": typed(failure),
                    "total": len(success) + len(failure),
                }
            },
        )


def _modified_since(request: Request) -> float | None:
    """The `modifiedSince` filter as epoch seconds (None: none), or a 400."""
    since = request.arg("modifiedSince")
    if not since:
        return None
    try:
        return parse_iso(since)
    except ValueError:
        raise BrevoError(400, "invalid_parameter", "modifiedSince is not a valid date") from None
