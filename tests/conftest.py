"""Fixtures shared by every test layer. Nothing here starts infrastructure:
`make test` brings the dev stack up first, and these fixtures connect to it."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lastro.core.config import Settings, load_settings
from lastro.core.observability import setup_tracing


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
