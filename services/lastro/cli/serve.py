"""`lastro serve <name>`: run one registered process (``lastro.core.registry``)."""

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

    from lastro.core.http import serve
    from lastro.core.observability import configure_logging, setup_tracing

    spec = registry.service(args.service)
    # The operator holds no data: it is given no database password or Vault token.
    settings = load_settings(data_plane=spec.kind != "operator")
    module = importlib.import_module(spec.module)
    configure_logging(spec.name, settings.log_level)
    exporter = None
    if settings.otlp_endpoint:  # an OpenTelemetry collector (the chart points at one)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint)
    setup_tracing(f"lastro-{spec.name}", exporter)
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
        await serve(app, settings, cert, key, settings.service_ports[spec.name])

    if settings.event_loop == "uvloop":
        # Measured on the transaction service: 5-6 % less CPU per request and fewer
        # wakeups than asyncio's loop (docs/benchmarks.md); LASTRO_EVENT_LOOP=asyncio
        # opts out.
        import uvloop

        uvloop.install()
    asyncio.run(main())
    return 0
