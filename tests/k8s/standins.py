"""STAND-INS, for the operator tests only: a fraud admin API and one privacy API.

These small aiohttp servers speak the contracts of docs/interfaces.md ("Fraud rules",
"Privacy API") over HTTPS with the dev CA, and check the operator's service tokens with
the same TokenVerifier production uses; they let tests/k8s/test_operator.py make the
services misbehave (unavailable, slow to acknowledge, refusing) in ways the real ones
will not on demand. They are not the services: rules are not compiled (an expression
naming `features.near_threshold` is refused, as a fraud service older than the
operator's validator would refuse a feature it does not know yet), and the privacy
stand-in holds rows in a list. tests/k8s/test_operator_live.py runs the operator
against the real fraud service and notifications database.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from issuerkit import TestIssuer
from lastro.core.security.tls import server_context
from lastro.core.security.tokens import InvalidToken, TokenVerifier
from lastro.devstack.ca import DevCA


def _problem(status: int, title: str, detail: str) -> web.Response:
    return web.json_response(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status=status,
        content_type="application/problem+json",
    )


async def _authorised(
    request: web.Request, verifier: TokenVerifier, scope: str
) -> web.Response | None:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return _problem(401, "Unauthorized", "a bearer token is required")
    try:
        principal = await verifier.verify(header.removeprefix("Bearer "))
    except InvalidToken as exc:
        return _problem(401, "Unauthorized", str(exc))
    if not principal.has_scopes({scope}):
        return _problem(403, "Forbidden", f"scope {scope} is required")
    return None


@dataclass
class FraudAdminStandIn:
    """Rules by id; every applied change bumps ``ruleset_version``. A change becomes
    visible to GET only after ``ack_delay`` seconds, like a rule travelling through the
    compacted topic to the replica that answers."""

    verifier: TokenVerifier
    ack_delay: float = 0.3
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    ruleset_version: int = 1
    unavailable: bool = False
    puts: list[dict[str, Any]] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_put("/v1/rules/{id}", self.put)
        app.router.add_get("/v1/rules/{id}", self.get)
        app.router.add_delete("/v1/rules/{id}", self.delete)
        return app

    def _apply_later(self, change: Any) -> None:
        async def later() -> None:
            await asyncio.sleep(self.ack_delay)
            change()
            self.ruleset_version += 1

        asyncio.get_running_loop().create_task(later())

    async def put(self, request: web.Request) -> web.Response:
        if refused := await _authorised(request, self.verifier, "fraud:admin"):
            return refused
        if self.unavailable:
            return _problem(503, "Service Unavailable", "rule store unavailable")
        rule = await request.json()
        rule_id = request.match_info["id"]
        if rule.get("id") != rule_id:
            return _problem(422, "Unprocessable Content", "id does not match the path")
        if "features.near_threshold" in rule["expression"]:  # a fraud service older than
            return _problem(  # the operator's validator, which knows this feature
                422, "Invalid rule", "expression: undeclared reference to 'near_threshold'"
            )
        self.puts.append(rule)
        self._apply_later(lambda: self.rules.__setitem__(rule_id, rule))
        return web.json_response({"id": rule_id, "revision": rule["revision"]}, status=202)

    async def get(self, request: web.Request) -> web.Response:
        if refused := await _authorised(request, self.verifier, "fraud:admin"):
            return refused
        if self.unavailable:
            return _problem(503, "Service Unavailable", "rule store unavailable")
        rule = self.rules.get(request.match_info["id"])
        if rule is None:
            return _problem(404, "Not Found", "no such rule")
        return web.json_response({**rule, "ruleset_version": self.ruleset_version})

    async def delete(self, request: web.Request) -> web.Response:
        if refused := await _authorised(request, self.verifier, "fraud:admin"):
            return refused
        rule_id = request.match_info["id"]
        self.deletes.append(rule_id)
        self._apply_later(lambda: self.rules.pop(rule_id, None))
        return web.Response(status=204)


@dataclass
class PrivacyStandIn:
    """The notifications service's purge endpoint over a list of delivery timestamps."""

    verifier: TokenVerifier
    deliveries: list[datetime] = field(default_factory=list)
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/internal/v1/privacy/purge", self.purge)
        return app

    async def purge(self, request: web.Request) -> web.Response:
        if refused := await _authorised(request, self.verifier, "privacy:admin"):
            return refused
        body = await request.json()
        self.requests.append((request.headers.get("X-Request-Id", ""), body))
        if body["data_class"] != "notifications.deliveries":
            return _problem(
                422, "Unknown data class", f"notifications holds no {body['data_class']}"
            )
        cutoff = datetime.fromisoformat(body["older_than"].replace("Z", "+00:00"))
        expired = [at for at in self.deliveries if at < cutoff]
        if not body.get("dry_run"):
            self.deliveries = [at for at in self.deliveries if at >= cutoff]
        return web.json_response(
            {
                "service": "notifications",
                "data_class": body["data_class"],
                "action": body["action"],
                "cutoff": body["older_than"],
                "affected": len(expired),
            }
        )


@asynccontextmanager
async def serve_tls(app: web.Application, ca_dir: Path, name: str) -> AsyncIterator[str]:
    """Serve ``app`` on an ephemeral loopback port with a dev-CA certificate."""
    issued = DevCA(ca_dir).issue(name)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(issued.cert, issued.key))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class IssuerTokens:
    """The operator's TokenSource in tests: tokens minted by a TestIssuer per audience."""

    def __init__(self, issuer: TestIssuer) -> None:
        self.issuer = issuer

    async def headers(self, audience: str) -> dict[str, str]:
        token = self.issuer.mint(
            audience=audience,
            scope="fraud:admin privacy:admin",
            subject="cli_operator",
            client_id="cli_operator",
        )
        return {"Authorization": f"Bearer {token}"}
