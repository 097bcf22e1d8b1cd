"""The notification part of `lastro demo`, as Ana and her bank's operator see it.

Ana's wallet registers a webhook receiver for her account events (a local HTTPS
receiver in this process; loopback is allowed for development only) and chooses
Portuguese. The operator freezes her account: the receiver gets one signed
webhook (verified with the ``standardwebhooks`` package, as a merchant would), her
mailbox (the dev stack's SMTP sink) one e-mail, and the delivery log shows each
attempt. The account is unfrozen afterwards.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from lastro.core.config import Settings
from lastro.core.security.tls import server_context
from lastro.devstack.ca import DevCA
from lastro.devstack.smtp_sink import StoredMail, read_mail

WAIT_SECONDS = 30.0


class Caller(Protocol):
    async def call(
        self, method: str, path: str, *, token: str | None = None, expect: int, **kwargs: Any
    ) -> dict[str, Any]: ...


async def _until(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while asyncio.get_running_loop().time() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.2)
    raise TimeoutError(f"no {what} within {WAIT_SECONDS:.0f}s")


async def notifications_scene(
    settings: Settings,
    notifications: Caller,
    accounts: Caller,
    say: Callable[[str], None],
    *,
    ana: dict[str, str],
    operator: str,
) -> None:
    """Freeze Ana's account and show what reaches her receiver and mailbox."""
    received: list[tuple[dict[str, str], bytes]] = []

    async def receive(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(text="thanks")

    app = web.Application()
    app.router.add_post("/lastro-events", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    cert = DevCA(settings.dev_dir / "ca").issue("demo-receiver")
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(cert.cert, cert.key))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        say("== Ana's wallet registers a webhook for account events; she chooses Portuguese")
        endpoint = await notifications.call(
            "POST",
            "/v1/webhook-endpoints",
            token=ana["token"],
            expect=201,
            json={
                "url": f"https://127.0.0.1:{port}/lastro-events",
                "description": "Ana's wallet",
                "event_types": ["account.frozen"],
            },
        )
        await notifications.call(
            "PUT",
            "/v1/preferences",
            token=ana["token"],
            expect=200,
            json={"customer_id": ana["customer"], "locale": "pt-BR", "timezone": "Europe/Lisbon"},
        )
        say(f"   endpoint {endpoint['id']}, signing secret {endpoint['secret'][:10]}…")

        say("== The operator freezes Ana's account")
        await accounts.call(
            "POST", f"/v1/accounts/{ana['account']}/freeze", token=operator, expect=200
        )
        headers, body = (await _until(lambda: _first(received), "webhook"))[0]
        try:
            Webhook(endpoint["secret"]).verify(body, headers)
            verified = True
        except WebhookVerificationError:
            verified = False
        payload = json.loads(body)
        say(
            f"   webhook {headers.get('webhook-id')}: {payload['type']}, "
            f"signature verified: {verified}"
        )
        mails: list[StoredMail] = await _until(lambda: _mail(settings, ana["email"]), "e-mail")
        mail = mails[-1]
        say(f"   e-mail to {ana['email']} over {mail.tls}: {mail.subject!r}")

        async def settled() -> list[dict[str, Any]]:
            page = await notifications.call(
                "GET",
                f"/v1/deliveries?customer_id={ana['customer']}",
                token=ana["token"],
                expect=200,
            )
            found: list[dict[str, Any]] = page["data"]
            done = len(found) == 2 and all(d["status"] != "pending" for d in found)
            return found if done else []

        for delivery in await _until(settled, "settled deliveries"):
            say(
                f"   delivery {delivery['id']} {delivery['channel']:<7} {delivery['status']} "
                f"after {delivery['attempt_count']} attempt(s)"
            )
        await accounts.call(
            "POST", f"/v1/accounts/{ana['account']}/unfreeze", token=operator, expect=200
        )
    finally:
        await runner.cleanup()


async def _first(received: list[Any]) -> list[Any]:
    return received[:1]


async def _mail(settings: Settings, address: str) -> list[StoredMail]:
    return read_mail(settings.dev_dir / "mail", to=address)
