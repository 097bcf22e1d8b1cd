"""The answers every Lastro route can give for platform reasons, written once.

:func:`with_platform_answers` adds them to a service's OpenAPI document where its
``openapi.yaml`` does not say more: 401 and 403 on every operation that needs a token
(``core/http.py``'s auth), 429 (rate limits, ``core/ratelimit``) and 503
``dependency-unavailable`` (``core/outages.py``) on every operation; and it lists the
ISO 4217 codes :mod:`lastro.core.money` supports as the ``enum`` of every
``format: iso4217`` string. ``core/openapi.py`` loads every contract through it, so the
served ``/openapi.json`` is that completed document.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Final

from lastro.core import money
from lastro.core.problems import PROBLEM_CONTENT_TYPE

METHODS: Final = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


def _problem_answer(description: str, headers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    if headers:
        answer["headers"] = dict(headers)
    return answer


_RETRY_AFTER: Final = {
    "description": "Seconds to wait before retrying",
    "schema": {"type": "integer", "minimum": 0},
}
PLATFORM_ANSWERS: Final[Mapping[str, tuple[str, dict[str, Any]]]] = {
    "401": (
        "Unauthorized",
        _problem_answer(
            "No bearer token, or one that is invalid, expired, forged or for another"
            " audience (`unauthorized`, `WWW-Authenticate: Bearer`).",
            {"WWW-Authenticate": {"schema": {"type": "string"}}},
        ),
    ),
    "403": (
        "Forbidden",
        _problem_answer(
            "The token lacks a scope the operation needs (`insufficient-scope`), or the"
            " caller may not act on this resource.",
            {"WWW-Authenticate": {"schema": {"type": "string"}}},
        ),
    ),
    "429": (
        "TooManyRequests",
        _problem_answer(
            "A rate limit or a lockout holds (`rate-limited`, `locked-out`); retry after"
            " `Retry-After` seconds.",
            {"Retry-After": _RETRY_AFTER},
        ),
    ),
    "503": (
        "DependencyUnavailable",
        _problem_answer(
            "A dependency the request needs (database, cache, KMS, Kafka, the token"
            " issuer) is unavailable (`dependency-unavailable`); nothing was changed,"
            " retry after `Retry-After` seconds.",
            {"Retry-After": _RETRY_AFTER},
        ),
    ),
}
_PROBLEM_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
}


ISO_4217_FORMAT: Final = "iso4217"
"""A string schema with this ``format`` is a currency code: the completed document
lists the codes :mod:`lastro.core.money` supports as its ``enum``."""


def _with_currency_enums(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _with_currency_enums(item)
    elif isinstance(node, dict):
        if node.get("format") == ISO_4217_FORMAT and "enum" not in node:
            node["enum"] = sorted(money.CURRENCIES)
        for value in node.values():
            _with_currency_enums(value)


def needs_token(document: Mapping[str, Any], operation: Mapping[str, Any]) -> bool:
    """Whether ``core/http.py`` asks a token of this operation: its effective
    ``security`` is absent or has no empty alternative."""
    security = operation.get("security", document.get("security"))
    return security is None or (bool(security) and all(security))


def with_platform_answers(document: Mapping[str, Any]) -> dict[str, Any]:
    """``document`` with :data:`PLATFORM_ANSWERS` added to every operation that does
    not document that status itself (401 and 403 only where a token is needed), as
    ``$ref``s to shared ``components.responses``, and every ``format: iso4217``
    string with the supported currency codes as its ``enum``; the input is not
    changed."""
    completed: dict[str, Any] = copy.deepcopy(dict(document))
    _with_currency_enums(completed)
    components = completed.setdefault("components", {})
    components.setdefault("schemas", {}).setdefault("Problem", _PROBLEM_SCHEMA)
    shared = components.setdefault("responses", {})
    for name, answer in PLATFORM_ANSWERS.values():
        shared.setdefault(name, answer)
    for item in (completed.get("paths") or {}).values():
        for method in METHODS:
            operation = item.get(method)
            if not isinstance(operation, dict):
                continue
            answers = operation.setdefault("responses", {})
            for status, (name, _) in PLATFORM_ANSWERS.items():
                if status in ("401", "403") and not needs_token(completed, operation):
                    continue
                answers.setdefault(status, {"$ref": f"#/components/responses/{name}"})
    return completed
