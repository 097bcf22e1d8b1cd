"""The operational routes of every Lastro app, never behind a token.

``/healthz`` (the process is alive), ``/readyz`` (every readiness check passes within
:data:`READINESS_TIMEOUT_SECONDS`, else a 503 ``not-ready`` naming the failing ones),
``/metrics`` (the process registry in the Prometheus text format) and, when the
service has a contract, ``/openapi.json`` (the completed document) and ``/docs``
(Swagger UI from the ``swagger-ui-bundle-v2`` package: Swagger UI 5, which renders
OpenAPI 3.1; served locally, no CDN; "Try it out" calls the serving origin).
``core.http.create_app`` adds them with :func:`add_operational_routes`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.exposition import generate_latest
from swagger_ui_bundle import swagger_ui_path

from lastro.core.handlers import json_response
from lastro.core.observability import metrics_registry
from lastro.core.openapi import ApiContract
from lastro.core.problems import Problem

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[web.Application], Awaitable[bool]]

READINESS_TIMEOUT_SECONDS: Final = 2.0
_DOCS_ASSETS: Final = "/docs/assets"


async def _healthz(request: web.Request) -> web.Response:
    return json_response({"status": "alive"})


def _readyz(
    checks: Mapping[str, ReadinessCheck],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def run(check: ReadinessCheck, app: web.Application) -> bool:
        try:
            return await asyncio.wait_for(check(app), READINESS_TIMEOUT_SECONDS)
        except Exception:
            log.warning("readiness check failed", exc_info=True)
            return False

    async def readyz(request: web.Request) -> web.Response:
        results = await asyncio.gather(*(run(c, request.app) for c in checks.values()))
        states = {n: "ok" if ok else "failing" for n, ok in zip(checks, results, strict=True)}
        failing = [n for n, s in states.items() if s != "ok"]
        if failing:
            raise Problem(
                503,
                "not-ready",
                "Service not ready",
                f"Failing dependencies: {', '.join(failing)}.",
                checks=states,
            )
        return json_response({"status": "ready", "checks": states})

    return readyz


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(metrics_registry())
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


_DOCS_HTML: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} API</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script></body></html>
"""
# "Try it out" must call the server that serves this page, wherever it is deployed:
# its origin goes first in the UI's server list, the contract's own entries follow.
_DOCS_INIT_JS: Final = """window.onload = async function () {
  const spec = await (await fetch("/openapi.json")).json();
  const here = {url: window.location.origin, description: "this server"};
  spec.servers = [here].concat((spec.servers || []).filter((s) => s.url !== here.url));
  window.ui = SwaggerUIBundle({spec: spec, dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis], layout: "BaseLayout", validatorUrl: null});
};
"""


def add_operational_routes(
    app: web.Application,
    name: str,
    contract: ApiContract | None,
    checks: Mapping[str, ReadinessCheck],
) -> frozenset[web.AbstractResource]:
    """Add the operational routes (module docstring) to ``app``; returns their
    resources, which authentication lets through."""
    router = app.router
    routes = [
        router.add_get("/healthz", _healthz),
        router.add_get("/readyz", _readyz(checks)),
        router.add_get("/metrics", _metrics),
    ]
    if contract is not None:
        spec = json.dumps(contract.document, default=str).encode()
        html = _DOCS_HTML.format(title=name, assets=_DOCS_ASSETS).encode()

        async def openapi_json(request: web.Request) -> web.Response:
            return web.Response(body=spec, content_type="application/json")

        async def docs(request: web.Request) -> web.Response:
            return web.Response(body=html, content_type="text/html")

        async def docs_init(request: web.Request) -> web.Response:
            return web.Response(text=_DOCS_INIT_JS, content_type="text/javascript")

        routes += [
            router.add_get("/openapi.json", openapi_json),
            router.add_get("/docs", docs),
            router.add_get("/docs/init.js", docs_init),
        ]
        router.add_static(_DOCS_ASSETS, swagger_ui_path)
    resources = {route.resource for route in routes if route.resource is not None}
    resources |= {r for r in router.resources() if r.canonical == _DOCS_ASSETS}
    return frozenset(resources)
