"""Contract checks: every request to and answer from the sandbox against the official specs.

The specs are read from `api_specs_dir` (never copied into the repository) and loaded once per
test session by openapi-core. Requests to the sandbox are re-based onto the spec's server URL
(`/mailchimp/3.0/lists` → `https://server.api.mailchimp.com/3.0/lists`), still percent-encoded
so that an encoded `/` stays inside its path parameter.

In-memory errata, each restoring the spec's evident intent rather than loosening it:
- an empty `content: {}` on a response means "no body" in OpenAPI 3, but openapi-core then
  demands a body; those empty maps are dropped (204 answers);
- Mailchimp's converted spec types each merge-field *value* as `object`, while its own
  description and Mailchimp's documentation use strings (`"FNAME": "Elinore"`); merge-field
  values are left untyped;
- Brevo's "one of `emails` | `ids` | `extIds`" bodies are `oneOf` branches that each declare one
  property but require none, so every body matches all branches and `oneOf` can never pass;
  each branch gets its property as `required`;
- Brevo's `success`/`failure` are `oneOf` an array of ids or an array of emails; an empty array
  matches both, so such all-array `oneOf`s are checked as `anyOf`.
Answers with a status the operation does not declare (Brevo lists few: 401, 429 and 5xx are
only named in its `info.description`) are checked against the provider's error schema.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import yaml
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.deserializing.media_types.util import json_loads
from openapi_core.templating.responses.exceptions import ResponseNotFound
from openapi_schema_validator import OAS30Validator
from werkzeug.datastructures import Headers, ImmutableMultiDict

from newsletter_pipelines.sandbox import BREVO_PREFIX, MAILCHIMP_PREFIX

# Mailchimp answers errors as RFC 9457 problem documents; they are JSON.
_CONFIG = Config(extra_media_type_deserializers={"application/problem+json": json_loads})
MAILCHIMP_SPEC = "mailchimp-marketing.json"
BREVO_SPEC = "brevo-v3.yaml"


@dataclass(frozen=True)
class Spec:
    """One provider's loaded specification and where its paths start."""

    name: str
    prefix: str
    server: str
    api: OpenAPI
    error_schema: dict[str, Any]


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _apply_errata(document: dict[str, Any]) -> dict[str, Any]:
    for path_item in document["paths"].values():
        for operation in path_item.values():
            if not isinstance(operation, dict):
                continue
            for response in (operation.get("responses") or {}).values():
                if isinstance(response, dict) and response.get("content") == {}:
                    del response["content"]
    for node in list(_walk(document)):
        merge = (node.get("properties") or {}).get("merge_fields")
        if (
            isinstance(merge, dict)
            and merge.get("additionalProperties", {}).get("type") == "object"
        ):
            merge["additionalProperties"] = {}
        branches = node.get("oneOf")
        if not isinstance(branches, list) or not all(isinstance(b, dict) for b in branches):
            continue
        if all(len(b.get("properties") or {}) == 1 and "required" not in b for b in branches):
            for branch in branches:
                branch["required"] = list(branch["properties"])
        elif all(b.get("type") == "array" for b in branches):
            node["anyOf"] = node.pop("oneOf")
    return document


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = document
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def load_mailchimp(specs_dir: Path) -> Spec:
    """The Mailchimp Marketing spec (OpenAPI 3 conversion), with errata applied."""
    document = _apply_errata(json.loads((specs_dir / MAILCHIMP_SPEC).read_text()))
    schema = document["components"]["schemas"]["ProblemDetailDocument"]
    return Spec(
        "mailchimp",
        MAILCHIMP_PREFIX,
        "https://server.api.mailchimp.com/3.0",
        OpenAPI.from_dict(document, config=_CONFIG),
        {**schema, "components": document["components"]},
    )


def load_brevo(specs_dir: Path) -> Spec:
    """The Brevo v3 spec, with errata applied."""
    with (specs_dir / BREVO_SPEC).open() as handle:
        document = _apply_errata(yaml.load(handle, Loader=yaml.CSafeLoader))
    schema = _resolve(document, document["components"]["schemas"]["errorModel"])
    return Spec(
        "brevo",
        BREVO_PREFIX,
        "https://api.brevo.com/v3",
        OpenAPI.from_dict(document, config=_CONFIG),
        schema,
    )


class _OpenApiRequest:
    """An httpx request seen by openapi-core, re-based onto the spec's server."""

    def __init__(self, request: httpx.Request, spec: Spec) -> None:
        server = httpx.URL(spec.server)
        self.host_url = f"{server.scheme}://{server.host}"
        raw_path = request.url.raw_path.decode("ascii").split("?", 1)[0]
        self.path = server.path.rstrip("/") + raw_path[len(spec.prefix) :]
        self.method = request.method.lower()
        self.body = request.content or None
        self.content_type = request.headers.get("content-type", "")
        query = parse_qsl(request.url.query.decode(), keep_blank_values=True)
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(query),
            header=Headers(list(request.headers.items())),
            cookie=ImmutableMultiDict(),
        )


class _OpenApiResponse:
    """An httpx response seen by openapi-core."""

    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.content_type = response.headers.get("content-type", "")
        self.headers = Headers(list(response.headers.items()))
        self.data = response.content


class ContractChecker:
    """Validates traffic with openapi-core; thread-safe, keeps every violation it saw."""

    def __init__(self, specs: list[Spec]) -> None:
        self._specs = specs
        self._lock = threading.Lock()
        self.violations: list[str] = []
        self.checked = 0

    @contextmanager
    def expecting_violations(self) -> Iterator[None]:
        """For tests of the checker: the block must produce violations, which are then dropped."""
        with self._lock:
            before = len(self.violations)
        yield
        with self._lock:
            assert len(self.violations) > before, "expected a contract violation"
            del self.violations[before:]

    def spec_for(self, request: httpx.Request) -> Spec | None:
        """The spec covering this request, or None (control API, result files)."""
        path = request.url.path
        return next((s for s in self._specs if path.startswith(s.prefix + "/")), None)

    def check(self, request: httpx.Request, response: httpx.Response | None) -> list[str]:
        """Violations of the request (and of its response, when there is one)."""
        spec = self.spec_for(request)
        if spec is None:
            return []
        wrapped = _OpenApiRequest(request, spec)
        problems = []
        with self._lock:
            try:
                spec.api.validate_request(wrapped)
            except Exception as exc:
                problems.append(f"request {request.method} {request.url.path}: {_explain(exc)}")
            if response is not None:
                problems += self._check_response(spec, wrapped, request, response)
            self.checked += 1
            self.violations += problems
        return problems

    def _check_response(
        self, spec: Spec, wrapped: _OpenApiRequest, request: httpx.Request, response: httpx.Response
    ) -> list[str]:
        where = f"response {response.status_code} to {request.method} {request.url.path}"
        try:
            spec.api.validate_response(wrapped, _OpenApiResponse(response))
        except ResponseNotFound:
            return self._check_undeclared(spec, where, response)
        except Exception as exc:
            return [f"{where}: {_explain(exc)}"]
        return []

    @staticmethod
    def _check_undeclared(spec: Spec, where: str, response: httpx.Response) -> list[str]:
        if response.status_code < 400:
            return [f"{where}: status not declared by the spec"]
        try:
            OAS30Validator(spec.error_schema).validate(response.json())
        except Exception as exc:
            return [f"{where}: error body: {_explain(exc)}"]
        return []


def _explain(exc: Exception) -> str:
    cause = exc.__cause__
    details = [str(e).split("\n", 1)[0] for e in getattr(cause, "schema_errors", [])]
    return f"{type(exc).__name__}: {exc}" + (f" ({'; '.join(details)})" if details else "")


class ValidatingTransport(httpx.BaseTransport):
    """Wraps a transport; every exchange is checked, and a violation fails the call at once."""

    def __init__(self, inner: httpx.BaseTransport, checker: ContractChecker) -> None:
        self._inner = inner
        self._checker = checker

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Forward, then validate request and answer."""
        request.read()
        try:
            response = self._inner.handle_request(request)
        except httpx.TransportError:
            self._raise(self._checker.check(request, None))
            raise
        response.read()
        self._raise(self._checker.check(request, response))
        return response

    @staticmethod
    def _raise(problems: list[str]) -> None:
        if problems:
            raise ContractViolation("\n".join(p[:2000] for p in problems))


class ContractViolation(AssertionError):  # noqa: N818 - reads as what it is
    """Traffic that does not match the official specification."""
