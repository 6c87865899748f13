"""Mailchimp tags: per member (`…/members/{hash}/tags`) and as static segments (bulk).

Tag names are case-insensitive everywhere (as at Mailchimp): "vip" names the tag "VIP" when the
audience or the member already has it, and the first spelling is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from newsletter_pipelines.sandbox import mailchimp_members as members
from newsletter_pipelines.sandbox.core import Request, Response, empty_response, json_response
from newsletter_pipelines.sandbox.fields import partial
from newsletter_pipelines.sandbox.mailchimp_members import ProblemError, invalid, not_found
from newsletter_pipelines.sandbox.mailchimp_state import McAccount, McList

MAX_SEGMENT_MEMBERS = 500


class TagHandlers:
    """Handlers of the tag and segment endpoints."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now

    def routes(self) -> list[tuple[str, str, Callable[[McAccount, Request], Response]]]:
        """(method, template, handler) of every endpoint here."""
        return [
            ("GET", "/lists/{list_id}/members/{hash}/tags", self.get_member_tags),
            ("POST", "/lists/{list_id}/members/{hash}/tags", self.post_member_tags),
            ("GET", "/lists/{list_id}/tag-search", self.tag_search),
            ("POST", "/lists/{list_id}/segments", self.post_segment),
            ("POST", "/lists/{list_id}/segments/{segment_id}", self.segment_members),
        ]

    def get_member_tags(self, account: McAccount, request: Request) -> Response:
        lst = members.find_list(account, request)
        member = members.find(lst, request.params["hash"])
        tags = [
            {"id": lst.segments.get(name, 0), "name": name, "date_added": added}
            for name, added in member.tags.items()
        ]
        count, offset = request.int_arg("count", 10), request.int_arg("offset", 0)
        body = {"tags": tags[offset : offset + count], "total_items": len(tags), "_links": []}
        return json_response(200, partial(body, request))

    def post_member_tags(self, account: McAccount, request: Request) -> Response:
        lst = members.find_list(account, request)
        member = members.find(lst, request.params["hash"])
        tags = request.json_object().get("tags")
        if not isinstance(tags, list):
            raise invalid("tags", "This value should not be blank.")
        changes = [t for t in tags if isinstance(t, dict)]
        members.set_tags(member, changes, self.now(), lst.segments)
        members.register_tags(account, lst, member)
        return empty_response(204, {"content-type": "application/json; charset=utf-8"})

    def tag_search(self, account: McAccount, request: Request) -> Response:
        lst = members.find_list(account, request)
        prefix = (request.arg("name") or "").lower()
        tags = [
            {"id": i, "name": n} for n, i in lst.segments.items() if n.lower().startswith(prefix)
        ]
        return json_response(200, {"tags": tags, "total_items": len(tags)})

    def post_segment(self, account: McAccount, request: Request) -> Response:
        lst = members.find_list(account, request)
        body = request.json_object()
        name = str(body.get("name") or "")
        emails = body.get("static_segment")
        if not name or not isinstance(emails, list):
            raise invalid("static_segment", "Only static segments (tags) are emulated.")
        name = members.tag_spelling(lst.segments, name)
        segment_id = lst.segments.setdefault(name, account.new_id())
        now = self.now()
        for email in emails:
            member = lst.members.get(members.subscriber_hash(str(email)))
            if member is not None:
                members.set_tags(member, [{"name": name, "status": "active"}], now, lst.segments)
        return json_response(200, self._segment_json(lst, name, segment_id))

    def _segment_json(self, lst: McList, name: str, segment_id: int) -> dict[str, Any]:
        stamp = lst.date_created
        count = sum(1 for m in lst.members.values() if name in m.tags)
        return {
            "id": segment_id,
            "name": name,
            "member_count": count,
            "type": "static",
            "created_at": stamp,
            "updated_at": stamp,
            "list_id": lst.id,
            "_links": [],
        }

    def segment_members(self, account: McAccount, request: Request) -> Response:
        lst = members.find_list(account, request)
        segment_id = (
            int(request.params["segment_id"]) if request.params["segment_id"].isdigit() else -1
        )
        name = next((n for n, i in lst.segments.items() if i == segment_id), None)
        if name is None:
            raise not_found()
        body = request.json_object()
        adds, removes = body.get("members_to_add") or [], body.get("members_to_remove") or []
        if len(adds) > MAX_SEGMENT_MEMBERS or len(removes) > MAX_SEGMENT_MEMBERS:
            raise ProblemError(
                400,
                "Invalid Resource",
                "Maximum allowed member items exceeded, please provide at most 500 items in "
                "members_to_add field or members_to_remove field",
            )
        now = self.now()
        added, removed, missing = [], [], []
        for emails, status, done in ((adds, "active", added), (removes, "inactive", removed)):
            for email in emails:
                member = lst.members.get(members.subscriber_hash(str(email)))
                if member is None:
                    missing.append(str(email))
                    continue
                members.set_tags(member, [{"name": name, "status": status}], now, lst.segments)
                done.append(members.representation(lst, member, lst.segments))
        errors = [{"email_addresses": missing, "error": "Email addresses are not list members"}]
        return json_response(
            200,
            {
                "members_added": added,
                "members_removed": removed,
                "errors": errors if missing else [],
                "total_added": len(added),
                "total_removed": len(removed),
                "error_count": len(missing),
                "_links": [],
            },
        )
