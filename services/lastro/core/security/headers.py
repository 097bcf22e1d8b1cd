"""The security headers on every answer of every Lastro process (the dev KMS too).

``Strict-Transport-Security`` (one year), ``X-Content-Type-Options: nosniff``,
``Referrer-Policy: no-referrer``, ``Server: lastro`` (no versions, also on the 400s
aiohttp's parser gives before any middleware runs), a Content-Security-Policy (a page
policy on HTML that Swagger UI works under, else ``default-src 'none'``) and
``Cache-Control: no-store`` unless the handler chose its own caching for a request
that carried no credentials: an authenticated answer (or one to a request with an
``Authorization`` header or a cookie) is never stored by a browser or proxy, whatever
the handler said. :func:`security_headers` is the outermost middleware of every app
``core.http.create_app`` builds.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Final

from aiohttp import hdrs, web, web_response
from aiohttp.typedefs import Handler

from lastro.core.handlers import PRINCIPAL_KEY

SERVER_HEADER: Final = "lastro"
# aiohttp answers a request its parser rejects (a bad request line or header, an
# oversized one: 400, 413, 431) in ``RequestHandler.handle_error``, before routing:
# no middleware, ``on_response_prepare`` signal or runner option reaches that answer
# (aio-libs/aiohttp#3287, #8870), and its ``Server`` header is the module default
# ``Python/<v> aiohttp/<v>``. The one value of ours it reads is this module global,
# looked up each time a response's headers are prepared, so every answer of every
# Lastro process (the dev KMS too) names no versions. tests/unit/test_http_app.py
# sends a malformed request to hold aiohttp to it.
web_response.SERVER_SOFTWARE = SERVER_HEADER  # type: ignore[attr-defined]  # see above
HSTS: Final = "max-age=31536000; includeSubDomains"
# HTML pages: only this origin's scripts, styles and fetches (Swagger UI needs inline
# styles and data: images), never framed, forms post back here only.
PAGE_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self'; connect-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# Everything else (JSON, scripts, assets): nothing may run or load from it if it is
# opened as a document, and nobody may frame it.
API_CSP: Final = "default-src 'none'; frame-ancestors 'none'"


def _carries_credentials(request: web.Request) -> bool:
    return (
        PRINCIPAL_KEY in request
        or hdrs.AUTHORIZATION in request.headers
        or hdrs.COOKIE in request.headers
    )


def harden(request: web.Request, headers: MutableMapping[str, str], content_type: str) -> None:
    """Add the security headers (module docstring) to a response's ``headers``."""
    headers[hdrs.SERVER] = SERVER_HEADER
    headers["Strict-Transport-Security"] = HSTS
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    if _carries_credentials(request) or hdrs.CACHE_CONTROL not in headers:
        headers[hdrs.CACHE_CONTROL] = "no-store"
    if content_type == "text/html":
        headers.setdefault("Content-Security-Policy", PAGE_CSP)
        headers.setdefault("X-Frame-Options", "DENY")
    else:
        headers.setdefault("Content-Security-Policy", API_CSP)


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer of the app, errors and redirects included, carries the security
    headers; the outermost middleware of every Lastro app (and of the dev KMS)."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        harden(request, exc.headers, exc.content_type)
        raise
    harden(request, response.headers, response.content_type)
    return response
