"""A STAND-IN for the transaction service's review-outcome endpoint, for tests only.

It is not the transaction service: it implements
``POST /internal/v1/transactions/{id}/review-outcome`` as branch ``transactions``
defines it (docs/interfaces.md; ``ReviewOutcome`` in its openapi.yaml), so the
fraud service's call can be tested before that service lands. Run as its own
process over HTTPS with a dev-CA certificate; it checks the caller's service token
as the transaction service will (audience ``transactions``, scope
``transactions:review``, against the identity service's JWKS) and requires an
``Idempotency-Key``.

    python tests/integration/transactions_stand_in.py --port 17903

Behaviour: a transaction the test declared held (``POST /admin/held``
``{"transaction_id"}``) takes the first outcome (``legitimate`` → ``posted``,
``fraud`` → ``declined``); the same outcome again answers the same state; the
other one 409; an unknown transaction 404. ``POST /admin/script``
``{"down": true}`` answers 503 to everything; ``GET /admin/outcomes`` lists what
was received (with the Idempotency-Key and the token's client id).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "services"))

from lastro.core.config import load_settings
from lastro.core.security.tls import server_context
from lastro.core.security.tokens import InvalidToken, RemoteKeySet, TokenVerifier
from lastro.devstack.ca import DevCA

VERIFIER = web.AppKey("verifier", TokenVerifier)
STATE = web.AppKey("state", dict)


def fresh_state() -> dict[str, Any]:
    return {"held": {}, "received": [], "down": False}


def _problem(status: int, detail: str) -> web.Response:
    return web.json_response(
        {"type": "about:blank", "title": detail, "status": status, "detail": detail},
        status=status,
        content_type="application/problem+json",
    )


async def review_outcome(request: web.Request) -> web.Response:
    state = request.app[STATE]
    _, _, token = request.headers.get("Authorization", "").partition(" ")
    try:
        principal = await request.app[VERIFIER].verify(token.strip())
    except InvalidToken as error:
        return _problem(401, str(error))
    if "transactions:review" not in principal.scopes:
        return _problem(403, "insufficient_scope")
    if state["down"]:
        return _problem(503, "down")
    key = request.headers.get("Idempotency-Key")
    if not key:
        return _problem(400, "Idempotency-Key is required")
    body = await request.json()
    txn_id = request.match_info["id"]
    state["received"].append(
        {"transaction_id": txn_id, "body": body, "key": key, "client_id": principal.client_id}
    )
    if body.get("outcome") not in ("legitimate", "fraud"):
        return _problem(422, "outcome must be legitimate or fraud")
    held = state["held"].get(txn_id)
    if held is None:
        return _problem(404, "unknown transaction")
    if held["outcome"] is None:
        held["outcome"] = body["outcome"]
    elif held["outcome"] != body["outcome"]:
        return _problem(409, f"already resolved as {held['outcome']}")
    status = "posted" if held["outcome"] == "legitimate" else "declined"
    return web.json_response({"id": txn_id, "status": status, "review_outcome": held["outcome"]})


async def hold(request: web.Request) -> web.Response:
    body = await request.json()
    request.app[STATE]["held"][body["transaction_id"]] = {"outcome": None}
    return web.json_response({"held": body["transaction_id"]})


async def script(request: web.Request) -> web.Response:
    given = await request.json()
    if "down" in given:
        request.app[STATE]["down"] = bool(given["down"])
    return web.json_response({"down": request.app[STATE]["down"]})


async def outcomes(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE]["received"])


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive", "stand_in": True})


def build() -> web.Application:
    settings = load_settings()
    app = web.Application()
    keys = RemoteKeySet(settings.jwks_url, settings.ca_file)
    app[VERIFIER] = TokenVerifier.from_key_source(
        keys, issuer=settings.jwt_issuer, audience="transactions"
    )

    async def warm(app: web.Application) -> None:
        with contextlib.suppress(InvalidToken):
            await keys.key_for(None)

    app.on_startup.append(warm)
    app[STATE] = fresh_state()
    app.router.add_post("/internal/v1/transactions/{id}/review-outcome", review_outcome)
    app.router.add_post("/admin/held", hold)
    app.router.add_post("/admin/script", script)
    app.router.add_get("/admin/outcomes", outcomes)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    settings = load_settings()
    cert = DevCA(settings.dev_dir / "ca").issue("transactions-stand-in")
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
