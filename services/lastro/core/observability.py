"""Traces, metrics and logs shared by every service.

- Tracing: one OpenTelemetry ``TracerProvider`` per process; the W3C
  ``traceparent`` travels in HTTP headers and in Kafka record headers through the
  global propagator, so a trace started by a client continues through every
  service and every event it causes.
- Metrics: one ``prometheus_client`` registry per process, served at ``/metrics``.
- Logs: one JSON object per line with the current trace and span ids. Guarantee:
  values under sensitive keys (card data, credentials, personal data) are replaced
  by ``[REDACTED]`` at any depth, and digit runs that look like card numbers are
  masked anywhere in the line, so a PAN never reaches a log sink through this
  formatter.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Final, TextIO

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
)

REDACTED: Final = "[REDACTED]"
MASKED_PAN: Final = "[PAN REDACTED]"

# ---------------------------------------------------------------- tracing


def setup_tracing(
    service_name: str,
    exporter: SpanExporter | None = None,
    *,
    synchronous: bool = False,
    set_global: bool = True,
) -> TracerProvider:
    """Create the process's tracer provider for ``service_name``.

    Spans go to ``exporter`` in batches (``synchronous=True`` exports each span as
    it ends, for tests); without an exporter spans still carry ids for propagation
    and logs but are not exported. With ``set_global`` the provider becomes the
    OpenTelemetry global (which can be set once per process).
    """
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    if exporter is not None:
        processor: SpanProcessor = (
            SimpleSpanProcessor(exporter) if synchronous else BatchSpanProcessor(exporter)
        )
        provider.add_span_processor(processor)
    if set_global:
        trace.set_tracer_provider(provider)
    return provider


def inject_headers(carrier: dict[str, str], context: Context | None = None) -> dict[str, str]:
    """Add ``traceparent`` (and ``tracestate``) of the current span to ``carrier``; returns it."""
    propagate.inject(carrier, context=context)
    return carrier


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


def tracing_middleware(tracer: trace.Tracer | None = None) -> Middleware:
    """aiohttp middleware: one SERVER span per request, child of the incoming ``traceparent``.

    The span is named ``METHOD /route/{template}`` (never the raw path, which may
    hold identifiers), records the status code and marks 5xx and unhandled
    exceptions as errors. Without ``tracer`` the global provider is used.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        active = tracer or trace.get_tracer("lastro.http")
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
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


# ---------------------------------------------------------------- metrics

_REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    _REGISTRY.register(_collector)


def metrics_registry() -> CollectorRegistry:
    """The one registry every Lastro metric is registered in and ``/metrics`` serves."""
    return _REGISTRY


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
