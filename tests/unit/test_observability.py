from __future__ import annotations

import io
import json
import logging
import sys

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from lastro.core.observability import (
    REDACTED,
    JsonFormatter,
    configure_logging,
    context_from_kafka,
    extract_context,
    inject_headers,
    is_sensitive_key,
    kafka_headers,
    metrics_registry,
    setup_tracing,
    tracing_middleware,
)

PAN = "4111111111111111"


def _service(name: str) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = setup_tracing(name, exporter, synchronous=True, set_global=False)
    return provider, exporter


def _only(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    spans = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(spans) == 1, [s.name for s in exporter.get_finished_spans()]
    return spans[0]


def test_trace_continues_through_http_headers() -> None:
    client, client_spans = _service("transactions")
    server, server_spans = _service("accounts")

    with client.get_tracer("test").start_as_current_span("post_transfer", kind=SpanKind.CLIENT):
        headers = inject_headers({"content-type": "application/json"})
    assert headers["traceparent"].startswith("00-")

    with server.get_tracer("test").start_as_current_span(
        "create_posting", context=extract_context(headers), kind=SpanKind.SERVER
    ):
        pass

    parent = _only(client_spans, "post_transfer")
    child = _only(server_spans, "create_posting")
    assert parent.context is not None and child.context is not None
    assert child.context.trace_id == parent.context.trace_id
    assert child.parent is not None and child.parent.span_id == parent.context.span_id
    assert child.resource.attributes["service.name"] == "accounts"


def test_trace_continues_through_kafka_headers() -> None:
    producer, producer_spans = _service("transactions")
    consumer, consumer_spans = _service("fraud")

    with producer.get_tracer("test").start_as_current_span("publish", kind=SpanKind.PRODUCER):
        headers = kafka_headers()
    assert all(isinstance(v, bytes) for _, v in headers)
    assert "traceparent" in dict(headers)

    # aiokafka hands headers back as a tuple of (str, bytes) pairs, possibly with None values
    received = (*headers, ("unrelated", None), ("bad", b"\xff\xfe"))
    with consumer.get_tracer("test").start_as_current_span(
        "analyse", context=context_from_kafka(received), kind=SpanKind.CONSUMER
    ):
        pass

    parent = _only(producer_spans, "publish")
    child = _only(consumer_spans, "analyse")
    assert parent.context is not None and child.context is not None
    assert child.context.trace_id == parent.context.trace_id
    assert child.parent is not None and child.parent.span_id == parent.context.span_id


def test_without_headers_a_new_trace_starts() -> None:
    provider, spans = _service("fraud")
    with provider.get_tracer("test").start_as_current_span(
        "analyse", context=context_from_kafka(None)
    ):
        pass
    assert _only(spans, "analyse").parent is None


async def test_middleware_starts_server_span_from_incoming_traceparent() -> None:
    client, client_spans = _service("transactions")
    server, server_spans = _service("accounts")

    async def balance(request: web.Request) -> web.Response:
        current = trace.get_current_span().get_span_context()
        return web.json_response({"trace_id": format(current.trace_id, "032x")})

    app = web.Application(middlewares=[tracing_middleware(server.get_tracer("lastro.http"))])
    app.router.add_get("/v1/accounts/{id}/balance", balance)
    with client.get_tracer("test").start_as_current_span("get_balance"):
        headers = inject_headers({})
    # an in-process server on loopback: the real aiohttp request pipeline, no external service
    async with TestClient(TestServer(app)) as http:
        response = await http.get("/v1/accounts/acc_123/balance", headers=headers)
        body = await response.json()

    span = _only(server_spans, "GET /v1/accounts/{id}/balance")
    parent = _only(client_spans, "get_balance")
    assert span.kind is SpanKind.SERVER
    assert span.context is not None and parent.context is not None
    assert span.context.trace_id == parent.context.trace_id
    assert span.parent is not None and span.parent.span_id == parent.context.span_id
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 200
    assert response.status == 200
    assert body["trace_id"] == format(parent.context.trace_id, "032x")


async def test_middleware_marks_server_errors() -> None:
    server, server_spans = _service("accounts")

    async def broken(request: web.Request) -> web.Response:
        raise web.HTTPServiceUnavailable()

    request = make_mocked_request("POST", "/internal/v1/postings")
    with pytest.raises(web.HTTPServiceUnavailable):
        await tracing_middleware(server.get_tracer("lastro.http"))(request, broken)
    span = server_spans.get_finished_spans()[0]
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 503


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("lastro.test")
    return logger.makeRecord(
        "lastro.test", logging.WARNING, __file__, 1, msg, args, None, extra=extra
    )


def test_log_line_is_json_with_trace_ids() -> None:
    provider, _ = _service("accounts")
    formatter = JsonFormatter("accounts")
    with provider.get_tracer("test").start_as_current_span("post") as span:
        line = formatter.format(_record("posted %s", "txn_1", account_id="acc_1"))
        context = span.get_span_context()

    entry = json.loads(line)
    assert "\n" not in line
    assert entry["message"] == "posted txn_1"
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "lastro.test"
    assert entry["service"] == "accounts"
    assert entry["account_id"] == "acc_1"
    assert entry["timestamp"].endswith("Z")
    assert entry["trace_id"] == format(context.trace_id, "032x")
    assert entry["span_id"] == format(context.span_id, "016x")


def test_log_line_outside_a_span_has_null_trace_ids() -> None:
    entry = json.loads(JsonFormatter("fraud").format(_record("idle")))
    assert entry["trace_id"] is None and entry["span_id"] is None


def test_sensitive_fields_and_card_numbers_never_reach_the_log() -> None:
    secrets = {
        "card_number": PAN,
        "cvv": "737",
        "password": "hunter2-correct-horse",
        "access_token": "eyJhbGciOi.secret-jwt",
        "customer": {
            "email": "ana@example.com",
            "phoneNumber": "+5511999990000",
            "full_name": "Ana Souza",
            "tax_id": "123.456.789-09",
            "cards": [{"pan": "5500005555555559"}],
            "iban": "DE89370400440532013000",
        },
    }
    try:
        raise ValueError(f"acquirer refused {PAN}")
    except ValueError:
        record = _record(
            "charging card 4242 4242 4242 4242 and %s for order 42",
            "5555-5555-5555-4444",
            customer_id="cus_1",
            **secrets,
        )
        record.exc_info = sys.exc_info()
    line = JsonFormatter("transactions").format(record)
    entry = json.loads(line)

    plaintexts = [
        PAN,
        "hunter2",
        "eyJhbGciOi",
        "ana@example.com",
        "5511999990000",
        "Ana Souza",
        "123.456.789-09",
        "5500005555555559",
        "DE89370400440532013000",
        "4242 4242 4242 4242",
        "5555-5555-5555-4444",
    ]
    for plaintext in plaintexts:
        assert plaintext not in line
    assert entry["card_number"] == REDACTED
    assert entry["customer"]["email"] == REDACTED
    assert entry["customer"]["cards"] == [{"pan": REDACTED}]
    assert entry["cvv"] == REDACTED
    assert entry["customer_id"] == "cus_1"
    assert entry["message"].endswith("for order 42")
    assert "acquirer refused" in entry["exception"]


@pytest.mark.parametrize(
    ("key", "sensitive"),
    [
        ("card_number", True),
        ("cardNumber", True),
        ("customer_name", True),
        ("refresh_token", True),
        ("client-secret", True),
        ("document", True),
        ("amount", False),
        ("account_id", False),
        ("hostname", False),
        ("company", False),
    ],
)
def test_sensitive_keys_are_recognised_by_their_words(key: str, sensitive: bool) -> None:
    assert is_sensitive_key(key) is sensitive


def test_configure_logging_writes_json_lines_and_replaces_itself() -> None:
    first, second = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    level = root.level
    try:
        configure_logging("notifications", "INFO", stream=first)
        configure_logging("notifications", "INFO", stream=second)
        logging.getLogger("lastro.notifications").info("delivered to %s", "ana@example.com")
    finally:
        for handler in [h for h in root.handlers if h.formatter.__class__ is JsonFormatter]:
            root.removeHandler(handler)
        root.setLevel(level)
    assert first.getvalue() == ""
    lines = second.getvalue().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["service"] == "notifications"


def test_metrics_registry_is_shared() -> None:
    assert metrics_registry() is metrics_registry()
    assert metrics_registry().get_sample_value("process_cpu_seconds_total") is not None
