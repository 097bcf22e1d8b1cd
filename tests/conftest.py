"""Fixtures shared by every test layer. Nothing here starts the shared
infrastructure: `make test` brings the dev stack up first, and these fixtures
connect to it. Only ``disruptive`` tests get a stack of their own
(:func:`disruptive_stack`, started once per session on first use)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lastro.core.config import Settings, load_settings
from lastro.core.observability import setup_tracing
from stackkit import own_stack


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def recorded_spans() -> InMemorySpanExporter:
    """Every span this test process ends, through the OpenTelemetry global provider
    (which can be set once per process, so every test layer shares this one); tests
    call ``clear()`` first and look for their own trace ids."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = setup_tracing("lastro-tests", synchronous=True)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture(scope="session")
def disruptive_stack() -> Iterator[tuple[Settings, dict[str, str]]]:
    """A stack of its own (settings, environment) for tests that restart or rotate
    parts of it, so the shared stack and everything using it are never disturbed."""
    with own_stack("disruptive") as stack:
        yield stack
