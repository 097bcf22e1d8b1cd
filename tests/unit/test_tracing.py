"""Tracing across a call: the caller's CLIENT span, the traceparent it injects, the
callee's SERVER span; probes untraced; span files and `lastro trace show`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import generate_latest

from lastro.cli.trace import build_tree, read_spans, render_trace, run_show, trace_files
from lastro.core.observability import (
    client_trace_config,
    file_span_exporter,
    metrics_registry,
    record_certificate,
    setup_tracing,
    tracing_middleware,
)
from lastro.devstack.ca import DevCA


def _provider(name: str) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return setup_tracing(name, exporter, synchronous=True, set_global=False), exporter


def _named(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(found) == 1, [s.name for s in exporter.get_finished_spans()]
    return found[0]


@pytest.fixture
async def callee() -> tuple[TestServer, InMemorySpanExporter]:
    provider, exporter = _provider("accounts")

    async def posting(request: web.Request) -> web.Response:
        return web.json_response({"traceparent": request.headers.get("traceparent")})

    async def broken(request: web.Request) -> web.Response:
        return web.json_response({}, status=503)

    app = web.Application(middlewares=[tracing_middleware(provider.get_tracer("t"))])
    app.router.add_post("/internal/v1/postings", posting)
    app.router.add_get("/healthz", posting)
    app.router.add_get("/broken", broken)
    server = TestServer(app)
    await server.start_server()
    yield server, exporter
    await server.close()


async def test_a_call_continues_the_callers_trace_through_a_client_span(
    callee: tuple[TestServer, InMemorySpanExporter],
) -> None:
    server, server_spans = callee
    caller, client_spans = _provider("transactions")
    tracer = caller.get_tracer("t")
    config = client_trace_config(tracer)
    with tracer.start_as_current_span("post_transfer") as parent:
        async with (
            aiohttp.ClientSession(trace_configs=[config]) as http,
            http.post(server.make_url("/internal/v1/postings?secret=1"), json={}) as answer,
        ):
            sent = (await answer.json())["traceparent"]

    client = _named(client_spans, "POST")
    served = _named(server_spans, "POST /internal/v1/postings")
    assert client.kind is SpanKind.CLIENT and served.kind is SpanKind.SERVER
    assert client.parent is not None and client.parent.span_id == parent.get_span_context().span_id
    trace_id = parent.get_span_context().trace_id
    assert client.context is not None and served.context is not None
    assert client.context.trace_id == served.context.trace_id == trace_id
    assert served.parent is not None and served.parent.span_id == client.context.span_id
    assert sent.split("-")[2] == f"{client.context.span_id:016x}"
    assert client.attributes is not None
    assert client.attributes["url.path"] == "/internal/v1/postings"  # never the query string
    assert client.attributes["http.response.status_code"] == 200


async def test_a_failed_call_marks_the_client_span_as_an_error(
    callee: tuple[TestServer, InMemorySpanExporter],
) -> None:
    server, _ = callee
    caller, client_spans = _provider("transactions")
    config = client_trace_config(caller.get_tracer("t"))
    async with aiohttp.ClientSession(trace_configs=[config]) as http:
        async with http.get(server.make_url("/broken")) as answer:
            assert answer.status == 503
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get("http://127.0.0.1:9/unreachable")
    answered, unreachable = client_spans.get_finished_spans()
    assert answered.status.status_code is StatusCode.ERROR
    assert unreachable.status.status_code is StatusCode.ERROR
    assert unreachable.events and unreachable.events[0].name == "exception"


async def test_probes_get_no_span(callee: tuple[TestServer, InMemorySpanExporter]) -> None:
    server, server_spans = callee
    async with aiohttp.ClientSession() as http, http.get(server.make_url("/healthz")) as answer:
        assert answer.status == 200
    assert server_spans.get_finished_spans() == ()


def test_spans_written_to_files_are_drawn_as_one_tree_across_processes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = setup_tracing(
        "lastro-accounts", file_span_exporter(tmp_path / "accounts.jsonl"), set_global=False
    )
    worker = setup_tracing(
        "lastro-worker", file_span_exporter(tmp_path / "worker.jsonl"), set_global=False
    )
    tracer = api.get_tracer("t")
    with (
        tracer.start_as_current_span("POST /v1/transfers", kind=SpanKind.SERVER),
        tracer.start_as_current_span("publish lastro.transactions", kind=SpanKind.PRODUCER) as pub,
    ):
        context = pub.get_span_context()
        carried = trace.set_span_in_context(trace.NonRecordingSpan(context))
    with worker.get_tracer("t").start_as_current_span(
        "consume lastro.transactions", context=carried, kind=SpanKind.CONSUMER
    ):
        pass
    with api.get_tracer("t").start_as_current_span("GET /v1/other"):
        pass
    api.shutdown()
    worker.shutdown()

    trace_id = f"{context.trace_id:032x}"
    records = [json.loads(line) for line in (tmp_path / "accounts.jsonl").read_text().splitlines()]
    assert {r["service"] for r in records} == {"lastro-accounts"}
    spans = [s for s in read_spans(trace_files(tmp_path)) if s["trace_id"] == trace_id]
    roots = build_tree(spans)
    assert [root.record["name"] for root in roots] == ["POST /v1/transfers"]
    (publish_node,) = roots[0].children
    assert [c.record["name"] for c in publish_node.children] == ["consume lastro.transactions"]

    assert run_show(argparse.Namespace(trace_id=trace_id, dir=tmp_path)) == 0
    drawn = capsys.readouterr().out.splitlines()
    assert drawn[0].startswith(f"trace {trace_id}: 3 spans in 2 processes")
    assert "lastro-worker" in drawn[-1] and "└─ consume lastro.transactions" in drawn[-1]
    assert run_show(argparse.Namespace(trace_id="0" * 32, dir=tmp_path)) == 1


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "x.jsonl").write_text('{"trace_id": "ab", "span_id": "1"}\n{"trace_id": "a')
    assert [s["span_id"] for s in read_spans(trace_files(tmp_path))] == ["1"]
    assert render_trace("ab", []) == "trace ab: no spans found"


def test_certificate_expiry_is_exported_by_role_and_subject(dev_ca: DevCA) -> None:
    issued = dev_ca.issue("expiry-test")
    record_certificate(issued.cert, "serving")
    exposed = generate_latest(metrics_registry()).decode()
    line = next(
        line
        for line in exposed.splitlines()
        if line.startswith("lastro_tls_certificate_expiry_timestamp_seconds{")
        and 'subject="lastro-expiry-test"' in line
    )
    assert 'certificate="serving"' in line
    cert = x509.load_pem_x509_certificate(issued.cert.read_bytes())
    assert float(line.rsplit(" ", 1)[1]) == cert.not_valid_after_utc.timestamp()
