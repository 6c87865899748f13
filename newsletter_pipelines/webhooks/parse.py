"""Webhook bodies → inbox events: Mailchimp's PHP-style form, Brevo's JSON (single or batched).

Dedupe key: SHA-256 over provider, audience and the event's identifying content, as canonical
JSON (sorted keys), so a redelivery of the same event gets the same key:
- Mailchimp sends no event id: `type`, `fired_at` and the whole `data` (member id, list, email,
  merges, action, reason …) identify the event.
- Brevo: the whole event except its `id`, which is the id of the *webhook* that delivered it,
  not of the event (the same event through two webhooks is stored once). What remains — event
  name, email, the date and ts fields, list ids, campaign, changed attributes — identifies it.
"""

from __future__ import annotations

import hashlib
import json
import re
from itertools import pairwise
from typing import Any
from urllib.parse import parse_qsl

from newsletter_pipelines.state.events import NewEvent

MAX_FORM_FIELDS = 1000
MAX_KEY_DEPTH = 8
MAX_JSON_DEPTH = 32
MAX_EMAIL_LENGTH = 320
_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
# json.dumps with options builds an encoder per call; these are built once
_canonical = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode
_unicode_json = json.JSONEncoder(ensure_ascii=False).encode
_BREVO_TYPES = {
    "hardbounce": "hard_bounce",
    "hardbounced": "hard_bounce",
    "softbounce": "soft_bounce",
    "softbounced": "soft_bounce",
    "unsubscribe": "unsubscribed",
    "unsubscribed": "unsubscribed",
    "listaddition": "list_addition",
    "contactupdated": "contact_updated",
    "contactdeleted": "contact_deleted",
    "uniqueopened": "unique_opened",
}


class PayloadError(ValueError):
    """The body is not what the provider sends (answered 400)."""


def parse_form(body: bytes) -> dict[str, Any]:
    """A form-encoded body with bracket keys as nested dicts: `data[merges][FNAME]=Ann` →
    `{"data": {"merges": {"FNAME": "Ann"}}}`; `a[]=1&a[]=2` → `{"a": ["1", "2"]}`. A repeated
    plain key keeps its last value; a key that is both a value and a parent is an error."""
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError(f"not a form body: {exc}") from None
    result: dict[str, Any] = {}
    for key, value in pairs:
        match = _KEY.match(key)
        if match is None:
            raise PayloadError(f"malformed form key {key[:80]!r}")
        path = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
        if len(path) > MAX_KEY_DEPTH:
            raise PayloadError(f"form key nested deeper than {MAX_KEY_DEPTH}: {key[:80]!r}")
        _put(result, path, value, key)
    return result


def _put(tree: dict[str, Any], path: list[str], value: str, key: str) -> None:
    """Store `value` at `path` ("" = append to a list), creating the containers on the way."""
    node: dict[str, Any] | list[Any] = tree
    for part, following in pairwise(path):
        kind: type[dict[str, Any]] | type[list[Any]] = list if following == "" else dict
        if isinstance(node, list):
            child = kind()
            node.append(child)
        else:
            child = node.setdefault(part, kind())
            if not isinstance(child, kind):
                raise PayloadError(f"form key conflicts with another one: {key[:80]!r}")
        node = child
    if isinstance(node, list):
        node.append(value)
    elif isinstance(node.get(path[-1]), dict | list):
        raise PayloadError(f"form key conflicts with another one: {key[:80]!r}")
    else:
        node[path[-1]] = value


def mailchimp_events(body: bytes, audience: str) -> list[NewEvent]:
    """The one event of a Mailchimp delivery (`type`, `fired_at`, `data[...]`)."""
    form = parse_form(body)
    kind, fired_at, data = form.get("type"), form.get("fired_at"), form.get("data")
    if not isinstance(kind, str) or _TYPE.fullmatch(kind) is None:
        raise PayloadError("Mailchimp event without a valid `type`")
    if not isinstance(fired_at, str) or not fired_at:
        raise PayloadError("Mailchimp event without `fired_at`")
    if not isinstance(data, dict):
        raise PayloadError("Mailchimp event without `data[...]` fields")
    # upemail: the address the CRM still knows is the old one.
    email = _email(data.get("old_email") if kind == "upemail" else data.get("email"))
    identity = {"type": kind, "fired_at": fired_at, "data": data}
    return [
        NewEvent(
            audience=audience,
            provider="mailchimp",
            type=kind,
            email=email,
            payload=form,
            dedupe_key=dedupe_key("mailchimp", audience, identity),
        )
    ]


def brevo_events(body: bytes, audience: str) -> list[NewEvent]:
    """The events of a Brevo delivery: one JSON object, or an array of them (batched)."""
    try:
        document = json.loads(body, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PayloadError(f"not JSON: {str(exc)[:200]}") from None
    try:
        _unicode_json(document).encode()
    except UnicodeEncodeError:  # a lone surrogate such as "\ud800"
        raise PayloadError("text that is not valid Unicode") from None
    items = document if isinstance(document, list) else [document]
    if not items:
        raise PayloadError("empty batch")
    return [_brevo_event(item, audience, position) for position, item in enumerate(items)]


def _brevo_event(item: Any, audience: str, position: int) -> NewEvent:
    if not isinstance(item, dict):
        raise PayloadError(f"event {position}: not a JSON object")
    name = item.get("event")
    if not isinstance(name, str) or _TYPE.fullmatch(name) is None:
        raise PayloadError(f"event {position}: no valid `event`")
    if _depth_exceeds(item, MAX_JSON_DEPTH):
        raise PayloadError(f"event {position}: nested deeper than {MAX_JSON_DEPTH}")
    email = _email(item.get("email"))
    identity = {k: v for k, v in item.items() if k != "id"}
    return NewEvent(
        audience=audience,
        provider="brevo",
        type=brevo_type(name),
        email=email,
        payload=item,
        dedupe_key=dedupe_key("brevo", audience, identity),
    )


def _email(value: Any) -> str | None:
    """The event's address as given (empty: None); not a string, a NUL or absurdly long: 400."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or "\x00" in value or len(value) > MAX_EMAIL_LENGTH:
        raise PayloadError("the event's email is not an address")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _depth_exceeds(value: Any, limit: int) -> bool:
    if limit < 0:
        return True
    if isinstance(value, dict):
        return any(_depth_exceeds(v, limit - 1) for v in value.values())
    if isinstance(value, list):
        return any(_depth_exceeds(v, limit - 1) for v in value)
    return False


def brevo_type(name: str) -> str:
    """Brevo's event names vary in spelling (`hardBounce`, `hard_bounced`, `unsubscribe` …):
    one snake_case name per event."""
    compact = name.lower().replace("_", "")
    return _BREVO_TYPES.get(compact, name.lower())


def dedupe_key(provider: str, audience: str, identity: dict[str, Any]) -> str:
    """Hex SHA-256 of provider, audience and the event's identity as canonical JSON."""
    canonical = _canonical([provider, audience, identity])
    return hashlib.sha256(canonical.encode()).hexdigest()
