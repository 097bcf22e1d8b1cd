"""STAND-IN for the simulated SMS gateway, for tests only, until the real fake
(``services/lastro/external``, contract in docs/interfaces.md) is on main.

A separate HTTPS process speaking the documented contract: ``POST /v1/messages``
``{"to": E.164, "body", "reference"}`` with ``Authorization: Bearer <key>`` and
``Idempotency-Key`` (same key + same body → the stored answer, other body → 422)
answers ``{"id": "sms_…", "status": "queued"}``; ``GET /v1/messages?to=&reference=``
lists what it kept; ``POST /admin/faults`` ``{"error_rate": "1", "outage": bool}`` and
``POST /admin/reset``. Usage::

    python sms_standin.py --port P --cert C --key K --api-key K
"""

from __future__ import annotations

import argparse
import json
import re
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiohttp import web

from lastro.core.security.tls import server_context

E164 = re.compile(r"\+[1-9][0-9]{7,14}")
STATE = web.AppKey("state", dict)


def _problem(status: int, detail: str) -> web.Response:
    return web.json_response(
        {"type": "about:blank", "title": detail, "status": status},
        status=status,
        content_type="application/problem+json",
    )


async def send(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if request.headers.get("Authorization") != f"Bearer {state['api_key']}":
        return _problem(401, "bad api key")
    if state["outage"] or Decimal(state["error_rate"]) >= 1:
        return _problem(503, "gateway unavailable")
    key = request.headers.get("Idempotency-Key")
    if not key:
        return _problem(400, "Idempotency-Key required")
    raw = await request.read()
    try:
        body = json.loads(raw)
    except ValueError:
        return _problem(400, "malformed json")
    if not isinstance(body, dict) or not E164.fullmatch(str(body.get("to", ""))):
        return _problem(422, "to must be E.164")
    if not isinstance(body.get("body"), str) or not body["body"]:
        return _problem(422, "body required")
    seen = state["keys"].get(key)
    if seen is not None:
        if seen["request"] != body:
            return _problem(422, "Idempotency-Key reused with another body")
        return web.json_response(seen["answer"], status=201)
    message = {
        "id": f"sms_{uuid.uuid4().hex}",
        "to": body["to"],
        "body": body["body"],
        "reference": body.get("reference"),
        "status": "queued",
    }
    state["messages"].append(message)
    answer = {"id": message["id"], "status": "queued"}
    state["keys"][key] = {"request": body, "answer": answer}
    return web.json_response(answer, status=201)


async def listing(request: web.Request) -> web.Response:
    state = request.app[STATE]
    found: list[dict[str, Any]] = state["messages"]
    for name in ("to", "reference"):
        if name in request.query:
            found = [m for m in found if m.get(name) == request.query[name]]
    return web.json_response({"object": "list", "data": found})


async def faults(request: web.Request) -> web.Response:
    body = await request.json()
    state = request.app[STATE]
    state["outage"] = bool(body.get("outage", False))
    state["error_rate"] = str(body.get("error_rate", "0"))
    return web.json_response({"outage": state["outage"], "error_rate": state["error_rate"]})


async def reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.update(messages=[], keys={}, outage=False, error_rate="0")
    return web.json_response({"reset": True})


def build(api_key: str) -> web.Application:
    app = web.Application()
    app[STATE] = {
        "api_key": api_key,
        "messages": [],
        "keys": {},
        "outage": False,
        "error_rate": "0",
    }
    app.router.add_post("/v1/messages", send)
    app.router.add_get("/v1/messages", listing)
    app.router.add_post("/admin/faults", faults)
    app.router.add_post("/admin/reset", reset)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--api-key", required=True)
    args = parser.parse_args()
    web.run_app(
        build(args.api_key),
        host="127.0.0.1",
        port=args.port,
        ssl_context=server_context(args.cert, args.key),
        print=None,
        access_log=None,
    )


if __name__ == "__main__":
    main()
