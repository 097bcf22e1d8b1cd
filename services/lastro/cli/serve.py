"""`lastro serve <name>`: run one registered process (``lastro.core.registry``).

Every process gets the same observability whatever its module: JSON logs, traces
(OTLP when ``LASTRO_OTLP_ENDPOINT`` is set, a JSON-lines file per process under
``LASTRO_TRACES_DIR``, CLIENT spans on every aiohttp session) and, for an API service
that owns a schema, the periodic verification of its audit chain as metrics."""

from __future__ import annotations

import argparse
from typing import Any

from lastro.core import registry
from lastro.core.config import load_settings


def register(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run one service, worker or simulated third party")
    serve.add_argument("service", choices=[spec.name for spec in registry.SERVICES])
    serve.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import importlib

    from opentelemetry.sdk.trace.export import SpanExporter

    from lastro.core.http import serve
    from lastro.core.observability import (
        configure_logging,
        file_span_exporter,
        instrument_client_sessions,
        setup_tracing,
    )

    spec = registry.service(args.service)
    # The operator holds no data: it is given no database password or Vault token.
    settings = load_settings(data_plane=spec.kind != "operator")
    module = importlib.import_module(spec.module)
    configure_logging(spec.name, settings.log_level)
    exporters: list[SpanExporter] = []
    if settings.otlp_endpoint:  # an OpenTelemetry collector (the chart points at one)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporters.append(OTLPSpanExporter(endpoint=settings.otlp_endpoint))
    if settings.traces_dir is not None:  # the dev stack: one JSON-lines file per process
        exporters.append(file_span_exporter(settings.traces_dir / f"{spec.name}.jsonl"))
    setup_tracing(f"lastro-{spec.name}", exporters)
    instrument_client_sessions()
    if spec.kind == "operator":  # Kopf, not an HTTP app (operator/lastro_operator)
        module.run(settings)
        return 0

    if settings.tls_cert_file and settings.tls_key_file:
        cert, key = settings.tls_cert_file, settings.tls_key_file
    else:  # dev/test: a certificate from the dev CA
        from lastro.devstack.ca import DevCA

        issued = DevCA(settings.dev_dir / "ca").issue(spec.name)
        cert, key = issued.cert, issued.key

    async def main() -> None:
        app = await module.create_app(settings)
        if spec.kind == "api" and spec.schema is not None:  # its audit chain, as metrics
            from lastro.core.audit_monitor import chain_verification

            app.cleanup_ctx.append(chain_verification(settings, spec.schema))
        await serve(app, settings, cert, key, settings.service_ports[spec.name])

    if settings.event_loop == "uvloop":
        # Measured on the transaction service: 5-6 % less CPU per request and fewer
        # wakeups than asyncio's loop (docs/benchmarks.md); LASTRO_EVENT_LOOP=asyncio
        # opts out.
        import uvloop

        uvloop.install()
    asyncio.run(main())
    return 0
