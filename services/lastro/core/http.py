"""The aiohttp application factory every Lastro service is built with.

:func:`create_app` returns an application whose behaviour is the same in every
service:

* **Errors** are RFC 9457 ``application/problem+json`` (see ``core/problems.py``):
  a :class:`~lastro.core.errors.DomainError` raised by a use case is rendered with
  its own type, title and status; unknown route 404, wrong method 405, malformed
  JSON 400 ``malformed-json``, contract violations 422 ``validation-error`` with
  ``errors: [{field, detail}]``, any ``web.HTTPException`` mapped to its status,
  a dependency outage (``core/outages.py``: database down or restarting, KMS,
  Kafka, Redis, another service) a 503 ``dependency-unavailable`` with
  ``Retry-After`` (one warning line is logged, no traceback), and any other
  unexpected exception a 500 ``internal-error`` that names nothing internal (the
  traceback is logged).
* **Security headers** on every response (``core/security/headers.py``, also used
  by the dev KMS): HSTS, ``nosniff``, ``no-referrer``, ``Server: lastro``, a
  Content-Security-Policy and ``Cache-Control: no-store`` on anything credentialed.
* **Request ids**: ``X-Request-Id`` is taken from the request when well-formed,
  otherwise generated, and echoed on every response.
* **Tracing, access log, metrics**: a SERVER span per request continuing the
  incoming ``traceparent`` (``core/observability.py``; none for ``/healthz``,
  ``/readyz`` and ``/metrics``); one record per request on
  the ``lastro.http.access`` logger with method, path, route, status, duration_ms,
  request_id and trace/span ids (a JSON line under ``configure_logging``); and, in
  the process registry served at ``/metrics``,
  ``lastro_http_requests_total{route,method,status}`` and
  ``lastro_http_request_duration_seconds{route,method}``.
* **Contract**: requests to operations of the service's ``openapi.yaml`` are
  validated before the handler runs (``core/openapi.py``); handlers read the
  validated body with ``await json_body(request)`` and coerced path/query
  parameters from ``request[PARAMS_KEY]``. A body of a media type the operation
  does not declare is a 415 before the handler runs.
* **Auth** (when a :class:`BearerVerifier` is given: Lastro's JWT
  :class:`~lastro.core.security.tokens.TokenVerifier`, or a simulated third party's
  API keys): the scopes a route needs are
  declared in one place, the operation's ``security`` requirement in
  ``openapi.yaml`` (or the document-level default). Alternatives are ORed, the
  scopes listed within one requirement object are all required. ``security: []``
  (or an empty ``{}`` alternative) makes an operation public; an operation with no
  requirement, and a route the contract does not describe, still needs a valid
  token. Missing token → 401 ``WWW-Authenticate: Bearer realm=...``; invalid,
  forged, expired or wrong-audience token → 401 ``error="invalid_token"``; missing
  scope → 403 ``error="insufficient_scope"``. Handlers find the caller in
  ``request[PRINCIPAL_KEY]``.
* **Operational routes**, never behind a token (``core/operational.py``):
  ``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json`` and ``/docs`` (Swagger UI).

Middleware order, outermost first: security headers, request id, tracing, access log/metrics,
problem rendering, auth, the service's own ``middlewares``, contract validation.

Handlers import what they use from here: the request keys, :func:`json_body`,
:func:`json_response` and :func:`caller_of` (defined in ``core/handlers.py``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from opentelemetry import trace
from prometheus_client import Counter, Histogram

from lastro.core.collector import prepare_collector
from lastro.core.config import Settings
from lastro.core.errors import DependencyUnavailable, DomainError
from lastro.core.handlers import BODY_KEY as BODY_KEY
from lastro.core.handlers import PARAMS_KEY as PARAMS_KEY
from lastro.core.handlers import PRINCIPAL_KEY as PRINCIPAL_KEY
from lastro.core.handlers import REQUEST_ID_KEY as REQUEST_ID_KEY
from lastro.core.handlers import caller_of as caller_of
from lastro.core.handlers import json_body as json_body
from lastro.core.handlers import json_response as json_response
from lastro.core.observability import metrics_registry, record_certificate, tracing_middleware
from lastro.core.openapi import ApiContract
from lastro.core.operational import ReadinessCheck as ReadinessCheck
from lastro.core.operational import add_operational_routes
from lastro.core.outages import dependency_outage
from lastro.core.problems import Problem, status_slug
from lastro.core.security.headers import security_headers
from lastro.core.security.tls import server_context
from lastro.core.security.tokens import InvalidToken, KeySetUnavailable, Principal

log = logging.getLogger(__name__)
access_log = logging.getLogger("lastro.http.access")

CleanupContext = Callable[[web.Application], AsyncIterator[None]]

SETTINGS_KEY: Final = web.AppKey("settings", Settings)
SERVICE_NAME_KEY: Final = web.AppKey("service_name", str)

REQUEST_ID_HEADER: Final = "X-Request-Id"
_REQUEST_ID_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Characters that would end or escape an RFC 9110 quoted-string in a challenge.
_UNQUOTABLE: Final = str.maketrans("", "", '"\\')


class BearerVerifier(Protocol):
    """Checks the credential of ``Authorization: Bearer <credential>``."""

    async def verify(self, token: str) -> Principal:
        """The caller the credential names; raises InvalidToken (401) when it names
        none, KeySetUnavailable (503) when it cannot be checked right now."""
        ...


def _route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _problem_from_http(exc: web.HTTPException) -> Problem:
    default_text = f"{exc.status}: {exc.reason}"
    detail = exc.text if exc.text and exc.text != default_text else None
    headers = {
        k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")
    }
    return Problem(exc.status, status_slug(exc.status), exc.reason, detail, headers=headers)


@web.middleware
async def _request_id(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = given if _REQUEST_ID_RE.fullmatch(given) else uuid.uuid4().hex
    request[REQUEST_ID_KEY] = request_id
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers[REQUEST_ID_HEADER] = request_id
        raise
    response.headers[REQUEST_ID_HEADER] = request_id
    return response


_REQUESTS: Final = Counter(
    "lastro_http_requests_total",
    "HTTP requests served, by route template, method and status.",
    ("route", "method", "status"),
    registry=metrics_registry(),
)
_LATENCY: Final = Histogram(
    "lastro_http_request_duration_seconds",
    "HTTP request latency, by route template and method.",
    ("route", "method"),
    registry=metrics_registry(),
)


@web.middleware
async def _observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away before we answered
        raise
    finally:
        elapsed = time.perf_counter() - started
        route = _route_of(request)
        _REQUESTS.labels(route, request.method, str(status)).inc()
        _LATENCY.labels(route, request.method).observe(elapsed)
        fields: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "route": route,
            "status": status,
            "duration_ms": round(elapsed * 1000, 3),
            "request_id": request.get(REQUEST_ID_KEY),
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            fields["trace_id"] = trace.format_trace_id(span_context.trace_id)
            fields["span_id"] = trace.format_span_id(span_context.span_id)
        access_log.info("%s %s %d", request.method, request.path, status, extra=fields)


@web.middleware
async def _problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as problem:
        return problem.to_response(instance=request.path)
    except DomainError as error:
        return error.problem().to_response(instance=request.path)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _problem_from_http(exc).to_response(instance=request.path)
    except Exception as error:
        outage = dependency_outage(error)
        if outage is not None:
            log.warning(
                "%s %s: %s unavailable (%s: %s)",
                request.method,
                request.path,
                outage.extra["dependency"],
                type(error).__name__,
                error,
            )
            return outage.problem().to_response(instance=request.path)
        log.exception("unhandled error in %s %s", request.method, request.path)
        return Problem(
            500,
            "internal-error",
            "Internal server error",
            "The request could not be completed; quote the X-Request-Id when reporting it.",
        ).to_response(instance=request.path)


def _bearer_challenge(realm: str, error: str | None = None, **params: str) -> str:
    parts = [f'realm="{realm}"']
    if error:
        parts.append(f'error="{error}"')
    parts += [f'{k}="{v.translate(_UNQUOTABLE)}"' for k, v in params.items()]
    return "Bearer " + ", ".join(parts)


def _authenticate(
    name: str,
    verifier: BearerVerifier,
    contract: ApiContract | None,
    operational: frozenset[web.AbstractResource],
) -> Middleware:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        if request.match_info.http_exception is not None or resource in operational:
            return await handler(request)
        operation = contract.find(request) if contract is not None else None
        if operation is not None and operation.public:
            return await handler(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem(
                401,
                "unauthenticated",
                "Authentication required",
                "Send an access token as 'Authorization: Bearer <token>'.",
                headers={"WWW-Authenticate": _bearer_challenge(name)},
            )
        try:
            principal = await verifier.verify(token.strip())
        except InvalidToken as exc:
            raise Problem(
                401,
                "invalid-token",
                "Invalid access token",
                str(exc),
                headers={
                    "WWW-Authenticate": _bearer_challenge(
                        name, "invalid_token", error_description=str(exc)
                    )
                },
            ) from None
        except KeySetUnavailable as exc:
            # The one outage answer (core/outages.py): the issuer's keys are a dependency.
            log.warning("cannot verify tokens: %s", exc)
            raise DependencyUnavailable(
                "Access tokens cannot be verified right now; retry later.",
                dependency="identity",
            ) from None
        alternatives = operation.security if operation is not None else None
        if alternatives and not any(principal.has_scopes(alt) for alt in alternatives):
            needed = " ".join(sorted(alternatives[0]))
            raise Problem(
                403,
                "insufficient-scope",
                "Insufficient scope",
                f"This operation requires the scope(s): {needed}.",
                headers={
                    "WWW-Authenticate": _bearer_challenge(name, "insufficient_scope", scope=needed)
                },
            )
        request[PRINCIPAL_KEY] = principal
        return await handler(request)

    return authenticate


def _validate(contract: ApiContract) -> Middleware:
    @web.middleware
    async def validate(request: web.Request, handler: Handler) -> web.StreamResponse:
        operation = contract.find(request)
        if operation is not None:
            request[PARAMS_KEY] = operation.read_params(request)
            operation.check_media_type(request)
            if operation.body is not None:
                request[BODY_KEY] = await operation.read_body(request)
        return await handler(request)

    return validate


def create_app(
    *,
    name: str,
    settings: Settings,
    openapi_path: Path | None,
    routes: Iterable[web.AbstractRouteDef] = (),
    readiness: Mapping[str, ReadinessCheck] | None = None,
    auth: BearerVerifier | None = None,
    cleanup_ctx: Sequence[CleanupContext] = (),
    middlewares: Sequence[Middleware] = (),
    tracer: trace.Tracer | None = None,
) -> web.Application:
    """Build a service's application (behaviour in the module docstring).

    ``readiness`` checks receive the application, so they can reach resources
    that ``cleanup_ctx`` generators stored under typed ``web.AppKey``s. Fails at
    start (ValueError) when the contract declares scopes but no verifier is given:
    a service never runs open by accident.
    """
    contract = ApiContract.load(openapi_path) if openapi_path is not None else None
    if auth is None and contract is not None:
        guarded = [op for op in contract.operations.values() if op.security and not op.public]
        if guarded:
            raise ValueError(f"{name}: the contract requires tokens but no verifier was given")
    app = web.Application()
    app[SETTINGS_KEY] = settings
    app[SERVICE_NAME_KEY] = name
    operational = add_operational_routes(app, name, contract, readiness or {})
    app.router.add_routes(routes)

    chain: list[Middleware] = [
        security_headers,
        _request_id,
        tracing_middleware(tracer),
        _observe,
        _problems,
    ]
    if auth is not None:
        chain.append(_authenticate(name, auth, contract, operational))
    chain.extend(middlewares)
    if contract is not None:
        chain.append(_validate(contract))
    app.middlewares.extend(chain)
    app.cleanup_ctx.extend(cleanup_ctx)
    return app


async def serve(
    app: web.Application,
    settings: Settings,
    cert: Path,
    key: Path,
    port: int,
    *,
    stop: asyncio.Event | None = None,
    shutdown_timeout: float = 15.0,
) -> None:
    """Serve ``app`` over HTTPS only until SIGTERM/SIGINT (or ``stop`` is set).

    Shutdown is graceful: the listener closes first, in-flight requests get
    ``shutdown_timeout`` seconds to finish, then cleanup contexts run. The expiry of
    the serving certificate and of the CA is exported as a metric
    (``lastro_tls_certificate_expiry_timestamp_seconds``).
    """
    record_certificate(cert, "serving")
    if settings.ca_file.is_file():
        record_certificate(settings.ca_file, "ca")
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    prepare_collector(settings.gc_gen0_threshold)
    try:
        host = settings.listen_host
        site = web.TCPSite(
            runner,
            host,
            port,
            ssl_context=server_context(cert, key),
            reuse_port=settings.reuse_port or None,
        )
        await site.start()
        log.info("%s listening on https://%s:%d", app[SERVICE_NAME_KEY], host, port)
        await _until_stopped(stop)
    finally:
        await runner.cleanup()


async def _until_stopped(stop: asyncio.Event | None) -> None:
    if stop is not None:
        await stop.wait()
        return
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, event.set)
    try:
        await event.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
