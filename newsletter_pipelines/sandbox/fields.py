"""Mailchimp's partial responses: `fields=` and `exclude_fields=` with dot notation."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from newsletter_pipelines.sandbox.core import Request

Tree = dict[str, "Tree"]


def _tree(paths: list[str]) -> Tree:
    root: Tree = {}
    for path in paths:
        node = root
        for part in path.split("."):
            node = node.setdefault(part, {})
    return root


def _keep(value: Any, tree: Tree) -> Any:
    if not tree:
        return value
    if isinstance(value, list):
        if not any(tree.values()):  # whole fields of each item: one holding no other stays
            keys = tree.keys()
            return [
                item if isinstance(item, dict) and item.keys() <= keys else _keep(item, tree)
                for item in value
            ]
        return [_keep(item, tree) for item in value]
    if isinstance(value, dict):
        return {k: _keep(v, tree[k]) if tree[k] else v for k, v in value.items() if k in tree}
    return value


def _drop(value: Any, tree: Tree) -> Any:
    if isinstance(value, list):
        return [_drop(item, tree) for item in value]
    if isinstance(value, dict):
        return {
            k: _drop(v, tree[k]) if k in tree else v
            for k, v in value.items()
            if k not in tree or tree[k]
        }
    return value


def partial(body: dict[str, Any], request: Request) -> dict[str, Any]:
    """`body` reduced to the request's `fields`, or without its `exclude_fields`."""
    fields, excluded = request.list_arg("fields"), request.list_arg("exclude_fields")
    if fields:
        return _keep(body, _tree(fields))
    if excluded:
        return _drop(body, _tree(excluded))
    return body


def item_fields(request: Request, collection: str) -> Collection[str] | None:
    """The top-level fields of each item of `collection` that the request's `fields` keeps
    (None: every field), so a long page builds only those; `partial` does the rest."""
    fields = request.list_arg("fields")
    if not fields:
        return None
    tree = _tree(fields)
    if collection not in tree:
        return ()
    return tree[collection].keys() or None
