"""What a request handler of any Lastro service reads and answers with.

The typed request keys the app factory (``core/http.py``) fills before a handler runs
(the request id, the authenticated caller, the contract-validated parameters and
body), :func:`json_body`, :func:`json_response` and :func:`caller_of`. They live apart
from the factory so that its pieces (``core/operational.py``,
``core/security/headers.py``) can use them too; handlers import them from
``core.http``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from aiohttp import web

from lastro.core.changes import Caller
from lastro.core.openapi import parse_json
from lastro.core.security.tokens import Principal

REQUEST_ID_KEY: Final = web.RequestKey("request_id", str)
PRINCIPAL_KEY: Final = web.RequestKey("principal", Principal)
PARAMS_KEY: Final = web.RequestKey("params", dict[str, Any])
BODY_KEY: Final = web.RequestKey("body", object)


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A compact ``application/json`` response."""
    return web.Response(
        status=status,
        body=json.dumps(data, separators=(",", ":")).encode(),
        content_type="application/json",
        headers=headers,
    )


async def json_body(request: web.Request) -> Any:
    """The request's JSON body: contract-validated when the operation declares one,
    else parsed here. Malformed JSON raises a 400 ``malformed-json`` Problem."""
    if BODY_KEY in request:
        return request[BODY_KEY]
    body = parse_json(await request.read())
    request[BODY_KEY] = body
    return body


def caller_of(request: web.Request) -> Caller:
    """The authenticated caller of ``request`` as the audit log records it:
    ``<client id>/<subject>``, the peer address and the request id."""
    principal = request[PRINCIPAL_KEY]
    return Caller(
        f"{principal.client_id}/{principal.subject}",
        source_ip=request.remote,
        request_id=request.get(REQUEST_ID_KEY),
    )
