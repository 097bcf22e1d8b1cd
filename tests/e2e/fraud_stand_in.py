"""A STAND-IN for the fraud service's screening endpoint, for tests only.

It is not the fraud service: it implements the screening contract of
docs/interfaces.md ("Fraud screening") with scripted answers, so the transaction
service's call site and its documented fallback can be tested before (and
independently of) the real detectors. Run as its own process over HTTPS with a
dev-CA certificate; it checks the caller's service token exactly as the fraud
service will (audience ``fraud``, scope ``fraud:screen``).

    python tests/e2e/fraud_stand_in.py --port 17004

Admin (tests only, no token): ``POST /admin/script`` with
``{"default": "approve", "by_amount": {"7001": "review"}, "latency_ms": 0,
"down": false}`` (``down``: answer 503); ``GET /admin/screenings`` lists the
requests received; ``POST /admin/reset``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "services"))

from lastro.core.config import load_settings
from lastro.core.ids import new_id
from lastro.core.security.tls import server_context
from lastro.core.security.tokens import InvalidToken, RemoteKeySet, TokenVerifier
from lastro.devstack.ca import DevCA

DECISIONS = ("approve", "challenge", "review", "decline")
VERIFIER = web.AppKey("verifier", TokenVerifier)
STATE = web.AppKey("state", dict)


def fresh_state() -> dict[str, Any]:
    return {"default": "approve", "by_amount": {}, "latency_ms": 0, "down": False, "seen": {}}


async def screen(request: web.Request) -> web.Response:
    state = request.app[STATE]
    _, _, token = request.headers.get("Authorization", "").partition(" ")
    try:
        principal = await request.app[VERIFIER].verify(token.strip())
    except InvalidToken as error:
        return web.json_response({"error": str(error)}, status=401)
    if "fraud:screen" not in principal.scopes:
        return web.json_response({"error": "insufficient_scope"}, status=403)
    if state["latency_ms"]:
        await asyncio.sleep(state["latency_ms"] / 1000)
    if state["down"]:
        return web.json_response({"error": "down"}, status=503)
    body = await request.json()
    txn_id = body["transaction_id"]
    seen = state["seen"]
    if txn_id in seen:  # idempotent on the transaction id: the first decision again
        return web.json_response(seen[txn_id]["answer"])
    decision = state["by_amount"].get(str(body["amount"]), state["default"])
    answer = {
        "screening_id": new_id("scr"),
        "decision": decision,
        "score": 0 if decision == "approve" else 80,
        "ruleset_version": 1,
        "reasons": []
        if decision == "approve"
        else [
            {
                "rule_id": f"stand-in-{decision}",
                "mode": "enforce",
                "action": decision,
                "severity": "high",
                "description": "scripted by the test",
                "features": {},
            }
        ],
        "shadow": [],
    }
    seen[txn_id] = {"request": body, "answer": answer}
    return web.json_response(answer)


async def script(request: web.Request) -> web.Response:
    given = await request.json()
    state = request.app[STATE]
    for key in ("default", "by_amount", "latency_ms", "down"):
        if key in given:
            state[key] = given[key]
    if state["default"] not in DECISIONS:
        return web.json_response({"error": "unknown decision"}, status=422)
    return web.json_response({k: v for k, v in state.items() if k != "seen"})


async def screenings(request: web.Request) -> web.Response:
    return web.json_response([item["request"] for item in request.app[STATE]["seen"].values()])


async def reset(request: web.Request) -> web.Response:
    request.app[STATE].clear()
    request.app[STATE].update(fresh_state())
    return web.json_response({"status": "reset"})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive", "stand_in": True})


def build() -> web.Application:
    settings = load_settings()
    app = web.Application()
    keys = RemoteKeySet(settings.jwks_url, settings.ca_file)
    app[VERIFIER] = TokenVerifier.from_key_source(
        keys, issuer=settings.jwt_issuer, audience="fraud"
    )

    async def warm(app: web.Application) -> None:
        # Fetch the identity service's keys now, not inside the first 300 ms budget.
        with contextlib.suppress(InvalidToken):
            await keys.key_for(None)

    app.on_startup.append(warm)
    app[STATE] = fresh_state()
    app.router.add_post("/internal/v1/screenings", screen)
    app.router.add_post("/admin/script", script)
    app.router.add_get("/admin/screenings", screenings)
    app.router.add_post("/admin/reset", reset)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    settings = load_settings()
    cert = DevCA(settings.dev_dir / "ca").issue("fraud-stand-in")
    web.run_app(
        build(),
        host="127.0.0.1",
        port=args.port,
        ssl_context=server_context(cert.cert, cert.key),
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
