"""Traces, metrics and logs shared by every service.

- Tracing: one OpenTelemetry ``TracerProvider`` per process; the W3C
  ``traceparent`` travels in HTTP headers and in Kafka record headers through the
  global propagator, so a trace started by a client continues through every
  service and every event it causes. Incoming requests get a SERVER span
  (:func:`tracing_middleware`; the operational routes ``/healthz``, ``/readyz`` and
  ``/metrics`` none), outgoing aiohttp requests a CLIENT span that injects
  ``traceparent`` (:func:`client_trace_config`, put on every session of the process
  by :func:`instrument_client_sessions`). Spans go over OTLP in production and, in
  the dev stack, to one JSON-lines file per process (:func:`file_span_exporter`),
  which ``lastro trace show`` reads.
- Metrics: one ``prometheus_client`` registry per process, served at ``/metrics``;
  :func:`record_certificate` exports the expiry of the certificates a process serves
  with and trusts.
- Logs: one JSON object per line with the current trace and span ids. Guarantee:
  values under sensitive keys (card data, credentials, personal data) are replaced
  by ``[REDACTED]`` at any depth, and digit runs that look like card numbers are
  masked anywhere in the line, so a PAN never reaches a log sink through this
  formatter.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final, TextIO

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from cryptography import x509
from cryptography.x509.oid import NameOID
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Gauge,
)

REDACTED: Final = "[REDACTED]"
MASKED_PAN: Final = "[PAN REDACTED]"

# ---------------------------------------------------------------- tracing


OPERATIONAL_ROUTES: Final = frozenset({"/healthz", "/readyz", "/metrics"})
"""Probes and scrapes: never traced (a span every few seconds per prober says nothing)."""


def setup_tracing(
    service_name: str,
    exporter: SpanExporter | Sequence[SpanExporter] | None = None,
    *,
    synchronous: bool = False,
    set_global: bool = True,
) -> TracerProvider:
    """Create the process's tracer provider for ``service_name``.

    Spans go to ``exporter`` (or to each of several) in batches (``synchronous=True``
    exports each span as it ends, for tests); without an exporter spans still carry
    ids for propagation and logs but are not exported. With ``set_global`` the
    provider becomes the OpenTelemetry global (which can be set once per process).
    """
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    exporters = [exporter] if isinstance(exporter, SpanExporter) else list(exporter or ())
    for each in exporters:
        processor: SpanProcessor = (
            SimpleSpanProcessor(each) if synchronous else BatchSpanProcessor(each)
        )
        provider.add_span_processor(processor)
    if set_global:
        trace.set_tracer_provider(provider)
    return provider


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """One finished span as the trace files hold it (``lastro trace show`` reads them)."""
    context = span.get_span_context()
    parent = span.parent
    return {
        "trace_id": trace.format_trace_id(context.trace_id) if context else None,
        "span_id": trace.format_span_id(context.span_id) if context else None,
        "parent_span_id": trace.format_span_id(parent.span_id) if parent else None,
        "name": span.name,
        "kind": span.kind.name,
        "service": span.resource.attributes.get(SERVICE_NAME, ""),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
    }


MAX_TRACE_FILE_BYTES: Final = 64 * 1024 * 1024


def file_span_exporter(path: Path) -> SpanExporter:
    """Spans appended to ``path`` as JSON lines (:func:`span_record`), for the dev stack.

    A file past 64 MiB is moved to ``<name>.1`` (replacing the previous one) when the
    process starts, so a long-lived dev stack keeps a bounded history."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size > MAX_TRACE_FILE_BYTES:
        path.replace(path.with_name(path.name + ".1"))
    out = path.open("a", encoding="utf-8")  # closed when the process ends
    return ConsoleSpanExporter(
        out=out,
        formatter=lambda span: json.dumps(span_record(span), default=str) + "\n",
    )


def inject_headers(carrier: dict[str, str], context: Context | None = None) -> dict[str, str]:
    """Add ``traceparent`` (and ``tracestate``) of the current span to ``carrier``; returns it."""
    propagate.inject(carrier, context=context)
    return carrier


def current_traceparent() -> str | None:
    """The current span's W3C ``traceparent`` (None outside any trace): captured where
    work is requested, so work done later in another task (a group commit, a queue)
    still belongs to the request's trace."""
    return inject_headers({}).get("traceparent")


def extract_context(headers: Mapping[str, str]) -> Context:
    """The remote parent context carried by incoming HTTP headers (empty if none)."""
    return propagate.extract(headers)


def kafka_headers(context: Context | None = None) -> list[tuple[str, bytes]]:
    """Trace context for the current span as Kafka record headers (UTF-8 values)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return [(key, value.encode("utf-8")) for key, value in carrier.items()]


def context_from_kafka(headers: Iterable[tuple[str, bytes | None]] | None) -> Context:
    """The remote parent context carried by a Kafka record's headers (empty if none).

    Header names are matched case-insensitively; undecodable or empty values are ignored.
    """
    carrier: dict[str, str] = {}
    for key, value in headers or ():
        if value is None:
            continue
        try:
            carrier[key.lower()] = value.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return propagate.extract(carrier)


def tracing_middleware(
    tracer: trace.Tracer | None = None, *, untraced: frozenset[str] = OPERATIONAL_ROUTES
) -> Middleware:
    """aiohttp middleware: one SERVER span per request, child of the incoming ``traceparent``.

    The span is named ``METHOD /route/{template}`` (never the raw path, which may
    hold identifiers), records the status code and marks 5xx and unhandled
    exceptions as errors. Routes in ``untraced`` (probes, scrapes) get no span.
    Without ``tracer`` the global provider is used (looked up once: before a provider
    is set, the API's proxy tracer follows the one set later).
    """
    active = tracer or trace.get_tracer("lastro.http")

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        if route in untraced:
            return await handler(request)
        with active.start_as_current_span(
            f"{request.method} {route}",
            context=extract_context(request.headers),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": request.method,
                "http.route": route,
                "url.scheme": request.scheme,
            },
            record_exception=True,
            set_status_on_exception=True,
        ) as span:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                _record_status(span, exc.status)
                raise
            _record_status(span, response.status)
            return response

    return middleware


def _record_status(span: trace.Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


def client_trace_config(tracer: trace.Tracer | None = None) -> aiohttp.TraceConfig:
    """aiohttp client tracing: one CLIENT span per outgoing request, child of the
    current span, whose context is injected as ``traceparent`` into the request, so
    the called service's SERVER span continues the caller's trace.

    The span is named after the method (paths hold identifiers); the address, port
    and path (never the query string, which may carry credentials) are attributes.
    A 5xx answer or a failed request marks it as an error.
    """

    async def on_start(
        session: aiohttp.ClientSession,
        ctx: SimpleNamespace,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        active = tracer or trace.get_tracer("lastro.http.client")
        url = params.url
        span = active.start_span(
            params.method,
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": params.method,
                "server.address": url.host or "",
                "server.port": url.port or 0,
                "url.scheme": url.scheme,
                "url.path": url.path,
            },
        )
        ctx.lastro_span = span
        propagate.inject(params.headers, context=trace.set_span_in_context(span))

    async def on_end(
        session: aiohttp.ClientSession,
        ctx: SimpleNamespace,
        params: aiohttp.TraceRequestEndParams,
    ) -> None:
        span: trace.Span | None = getattr(ctx, "lastro_span", None)
        if span is not None:
            _record_status(span, params.response.status)
            span.end()

    async def on_exception(
        session: aiohttp.ClientSession,
        ctx: SimpleNamespace,
        params: aiohttp.TraceRequestExceptionParams,
    ) -> None:
        span: trace.Span | None = getattr(ctx, "lastro_span", None)
        if span is not None:
            span.record_exception(params.exception)
            span.set_status(Status(StatusCode.ERROR, type(params.exception).__name__))
            span.end()

    config = aiohttp.TraceConfig()
    config.on_request_start.append(on_start)
    config.on_request_end.append(on_end)
    config.on_request_exception.append(on_exception)
    return config


def instrument_client_sessions() -> None:
    """Give every ``aiohttp.ClientSession`` created from now on in this process the
    :func:`client_trace_config` (what OpenTelemetry's aiohttp-client instrumentation
    does, without its pinned semantic-conventions release). Idempotent."""
    original = aiohttp.ClientSession.__init__
    if getattr(original, "_lastro_traced", False):
        return

    @functools.wraps(original)
    def traced_init(self: aiohttp.ClientSession, *args: Any, **kwargs: Any) -> None:
        kwargs["trace_configs"] = [*(kwargs.get("trace_configs") or ()), client_trace_config()]
        original(self, *args, **kwargs)

    traced_init._lastro_traced = True  # type: ignore[attr-defined]
    aiohttp.ClientSession.__init__ = traced_init  # type: ignore[method-assign]


# ---------------------------------------------------------------- metrics

_REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    _REGISTRY.register(_collector)


def metrics_registry() -> CollectorRegistry:
    """The one registry every Lastro metric is registered in and ``/metrics`` serves."""
    return _REGISTRY


CERTIFICATE_EXPIRY: Final = Gauge(
    "lastro_tls_certificate_expiry_timestamp_seconds",
    "Expiry (notAfter, Unix time) of a certificate the process serves with (serving) or "
    "trusts (ca), by its subject's common name.",
    ["certificate", "subject"],
    registry=_REGISTRY,
)


def record_certificate(path: Path, role: str) -> None:
    """Export the notAfter of the PEM certificate at ``path`` (the first one in the
    file) under ``certificate=role``. Read once, when the process loads it: a file
    renewed on disk but not reloaded still shows the expiry the process really serves."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    subject = str(names[0].value) if names else cert.subject.rfc4514_string()
    CERTIFICATE_EXPIRY.labels(role, subject).set(cert.not_valid_after_utc.timestamp())


# ---------------------------------------------------------------- logging

_SENSITIVE_KEYS: Final = tuple(
    tuple(token.split("_"))
    for token in (
        "card_number",
        "pan",
        "cvv",
        "cvc",
        "pin",
        "password",
        "passwd",
        "secret",
        "token",
        "authorization",
        "email",
        "phone",
        "name",
        "document",
        "tax_id",
        "cpf",
        "cnpj",
        "ssn",
        "iban",
    )
)
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_WORD_SEPARATOR = re.compile(r"[^a-z0-9]+")
# 13-19 digits, optionally grouped by single spaces or hyphens, not part of a longer number.
_CARD_NUMBER = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")

_RESERVED_ATTRS: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime"}
)


@lru_cache(maxsize=4096)
def is_sensitive_key(key: str) -> bool:
    """Whether a field named ``key`` holds data that must never be logged.

    The key is split into words (snake, kebab or camel case); it is sensitive when
    its words contain a sensitive term, e.g. ``customer_name``, ``accessToken``,
    ``card-number``. Pure, so answers are memoised: every log record asks about
    the same few field names.
    """
    words = _WORD_SEPARATOR.split(_CAMEL_BOUNDARY.sub("_", key).lower())
    for term in _SENSITIVE_KEYS:
        size = len(term)
        if any(tuple(words[i : i + size]) == term for i in range(len(words) - size + 1)):
            return True
    return False


def mask_card_numbers(text: str) -> str:
    """Replace every 13-19 digit run (spaces or hyphens allowed) with a fixed mask."""
    return _CARD_NUMBER.sub(MASKED_PAN, text)


def redact(value: object) -> object:
    """A JSON-ready copy of ``value`` with sensitive keys redacted and card numbers masked."""
    if isinstance(value, Mapping):
        return {
            str(key): REDACTED if is_sensitive_key(str(key)) else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(item) for item in value]
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        masked = mask_card_numbers(str(value))
        return value if masked == str(value) else masked
    return mask_card_numbers(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, service, trace ids, extras."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        span_context = trace.get_current_span().get_span_context()
        entry: dict[str, object] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_card_numbers(record.getMessage()),
            "service": self.service,
            "trace_id": trace.format_trace_id(span_context.trace_id)
            if span_context.is_valid
            else None,
            "span_id": trace.format_span_id(span_context.span_id)
            if span_context.is_valid
            else None,
        }
        extras = {k: v for k, v in record.__dict__.items() if k not in _RESERVED_ATTRS}
        for key, value in extras.items():
            if key not in entry:
                entry[key] = REDACTED if is_sensitive_key(key) else redact(value)
        if record.exc_info:
            entry["exception"] = mask_card_numbers(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = mask_card_numbers(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False)


class _JsonHandler(logging.StreamHandler[TextIO]):
    """Marks the handler ``configure_logging`` installs so a second call replaces it."""


def configure_logging(
    service: str, level: int | str = logging.INFO, stream: TextIO | None = None
) -> logging.Handler:
    """Send every log record of the process as JSON lines to ``stream`` (stdout by default).

    Idempotent: a previous handler installed by this function is replaced; other
    handlers on the root logger are left alone.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _JsonHandler)]:
        root.removeHandler(handler)
    handler = _JsonHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root.addHandler(handler)
    root.setLevel(level)
    return handler
