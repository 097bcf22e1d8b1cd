"""What the smoke's steps share: the world they set up, the failure they raise, the
webhook receiver it hosts."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
from aiohttp import web

from lastro.demo import Api

TIMEOUT_SECONDS: Final = 30
SETTLE_SECONDS: Final = 30


class WebhookReceiver:
    """A merchant's HTTPS webhook receiver, in the smoke process: keeps what arrives."""

    def __init__(self, host: str, cert: Path, key: Path) -> None:
        self.host = host
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._tls.load_cert_chain(str(cert), str(key))
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _receive(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        self.arrived.set()
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks", self._receive)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0, ssl_context=self._tls)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"https://{self.host}:{port}/hooks"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class SmokeFailed(RuntimeError):
    """An answer was not what a working deployment gives."""


@dataclass
class World:
    """What the sign-in and account steps set up, for the checks to use."""

    http: aiohttp.ClientSession
    apis: dict[str, Api]
    run: str
    service_token: str = ""  # payments service: ledger:write ledger:read accounts:admin
    user_token: str = ""  # the signed-in user: accounts:read accounts:write
    customer: str = ""
    account: str = ""  # the user's EUR account
    settlement: str = ""  # the payments service's EUR settlement account
    savings: str = ""  # the user's second EUR account, opened by the first transfer check
    receiver: WebhookReceiver | None = None

    def api(self, service: str) -> Api:
        return self.apis[service]


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise SmokeFailed(message)


async def balance(world: World, account: str, token: str) -> dict[str, Any]:
    return await world.api("accounts").call(
        "GET", f"/v1/accounts/{account}/balance", token=token, expect=200
    )
