"""Vault's HTTP conventions as the dev KMS speaks them (see :mod:`lastro.devstack.kms`).

Response envelopes (``{"data": ...}`` and ``{"errors": [...]}``), the token a request
presents, strict body and parameter parsing (every field an endpoint does not implement
is a 400 naming it), ``batch_input`` handling, and the request metrics middleware.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Histogram

from lastro.devstack.kms_keyring import KMSError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Body = Mapping[str, Any]


def errors(status: int, *messages: str) -> web.Response:
    """Vault's error shape."""
    return web.json_response({"errors": list(messages)}, status=status)


def envelope(data: Mapping[str, Any], status: int = 200) -> web.Response:
    """Vault's response envelope around ``data``."""
    return web.json_response(
        {
            "request_id": str(uuid.uuid4()),
            "lease_id": "",
            "renewable": False,
            "lease_duration": 0,
            "data": data,
            "wrap_info": None,
            "warnings": None,
            "auth": None,
        },
        status=status,
    )


def presented_token(request: web.Request) -> str:
    """``X-Vault-Token``, else an ``Authorization: Bearer`` token, else empty."""
    token = request.headers.get("X-Vault-Token", "")
    if not token:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            token = value.strip()
    return token


def metrics_middleware(registry: CollectorRegistry) -> Middleware:
    """Counts and times every request by route template, method and status."""
    requests_total = Counter(
        "lastro_kms_requests_total",
        "KMS requests served, by route template, method and status.",
        ("path", "method", "status"),
        registry=registry,
    )
    latency = Histogram(
        "lastro_kms_request_duration_seconds",
        "KMS request latency, by route template and method.",
        ("path", "method"),
        registry=registry,
    )

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            resource = request.match_info.route.resource
            path = resource.canonical if resource is not None else "unmatched"
            requests_total.labels(path, request.method, str(status)).inc()
            latency.labels(path, request.method).observe(time.perf_counter() - started)

    return observe


def only(given: Collection[str], allowed: Collection[str], what: str) -> None:
    """400 naming every field or parameter this KMS does not implement here."""
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise KMSError(f"unsupported {what} for this endpoint: {', '.join(unknown)}")


async def read_body(request: web.Request, fields: Collection[str] = ()) -> Body:
    """The JSON object body, holding only ``fields`` (and, as Vault allows, the key
    ``name`` of the path, which must then match it); no query parameters allowed."""
    only(request.query, (), "query parameter(s)")
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise KMSError("failed to parse JSON input") from None
    if not isinstance(body, dict):
        raise KMSError("request body must be a JSON object")
    only(body, {*fields, "name"}, "field(s)")
    if "name" in body and body["name"] != request.match_info.get("name"):
        raise KMSError("'name' in the body differs from the key named in the path")
    return body


def int_field(body: Body, name: str, default: int | None = None) -> int | None:
    value = body.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise KMSError(f"'{name}' must be an integer")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise KMSError(f"'{name}' must be an integer") from None


def bool_field(body: Body, name: str) -> bool | None:
    value = body.get(name)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise KMSError(f"'{name}' must be a boolean")


def batch(
    body: Body, operation: Callable[[Body], dict[str, Any]], item_fields: Collection[str]
) -> web.Response:
    """One item, or ``batch_input``: per-item results, 400 if any item failed (as Vault).
    An item holding a field outside ``item_fields`` fails like any other bad item."""
    items = body.get("batch_input")
    if items is None:
        return envelope(operation(body))
    if not isinstance(items, list) or not items:
        raise KMSError("'batch_input' must be a non-empty list")
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    for item in items:
        try:
            if not isinstance(item, dict):
                raise KMSError("each batch item must be a JSON object")
            only(item, item_fields, "batch item field(s)")
            result = operation(item)
        except KMSError as exc:
            result = {"error": exc.message}
            failures.append(exc.message)
        if isinstance(item, dict) and "reference" in item:
            result["reference"] = item["reference"]
        results.append(result)
    if failures:
        return web.json_response(
            {"errors": failures, "data": {"batch_results": results}}, status=400
        )
    return envelope({"batch_results": results})
