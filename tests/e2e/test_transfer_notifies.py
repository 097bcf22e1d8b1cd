"""A transfer posted by the transaction service produces one signed webhook at a
merchant receiver (signature verified), one e-mail in the SMTP sink and one SMS at
the gateway, within seconds. Everything over HTTPS against the running dev stack
(`lastro dev up`: identity, accounts, transactions + worker, notifications, sms,
smtp), as users see it.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid

import aiohttp
from aiohttp import web
from standardwebhooks import Webhook

from lastro.core.config import Settings
from lastro.core.security.tls import client_context, server_context
from lastro.demo import REDIRECT_URI, Api, operator_token, register_service, sign_in
from lastro.devstack.ca import DevCA
from lastro.devstack.components import Service
from lastro.devstack.smtp_sink import read_mail

SCOPES = [
    "accounts:read",
    "accounts:write",
    "transfers:read",
    "transfers:write",
    "notifications:read",
    "notifications:write",
]


async def test_a_transfer_is_told_by_webhook_email_and_sms_once(settings: Settings) -> None:
    for name in (
        "identity",
        "accounts",
        "transactions",
        "transactions-worker",
        "notifications",
        "sms",
    ):
        assert Service(settings, name).healthy(), f"{name} is not running: `lastro dev up`"
    received: list[tuple[dict[str, str], bytes]] = []

    async def receive(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hooks", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    cert = DevCA(settings.dev_dir / "ca").issue("e2e-merchant")
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(cert.cert, cert.key))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    connector = aiohttp.TCPConnector(ssl=client_context(settings.ca_file))
    try:
        async with aiohttp.ClientSession(connector=connector) as http:
            identity = Api(http, settings.service_url("identity"))
            accounts = Api(http, settings.service_url("accounts"))
            transactions = Api(http, settings.service_url("transactions"))
            notifications = Api(http, settings.service_url("notifications"))
            run = secrets.token_hex(3)
            admin = await operator_token(identity, settings)
            _, ledger = await register_service(
                identity,
                admin,
                f"e2e-payments-{run}",
                ["ledger:write", "accounts:admin"],
                "accounts",
            )
            wallet = await identity.call(
                "POST",
                "/v1/clients",
                token=admin,
                expect=201,
                json={
                    "name": f"e2e-wallet-{run}",
                    "confidential": False,
                    "grant_types": ["authorization_code"],
                    "scopes": SCOPES,
                    "audiences": ["accounts", "transactions", "notifications"],
                    "redirect_uris": [REDIRECT_URI],
                },
            )
            username, password = f"e2e-{run}", secrets.token_urlsafe(16)
            await identity.call(
                "POST", "/v1/users", expect=201, json={"username": username, "password": password}
            )
            token = await sign_in(identity, wallet["client_id"], username, password)
            email, phone = f"{username}@example.com", f"+5511{secrets.randbelow(10**9):09d}"
            customer = await accounts.call(
                "POST",
                "/v1/customers",
                token=token,
                expect=201,
                json={"name": "Ana E2E", "email": email, "phone": phone, "document_number": run},
            )
            source, target = [
                (
                    await accounts.call(
                        "POST",
                        "/v1/accounts",
                        token=token,
                        expect=201,
                        json={"customer_id": customer["id"], "currency": "EUR"},
                    )
                )["id"]
                for _ in range(2)
            ]
            settlement = await accounts.call(
                "POST",
                "/internal/v1/accounts",
                token=ledger,
                expect=201,
                json={"currency": "EUR", "purpose": "settlement"},
            )
            await accounts.call(
                "POST",
                "/internal/v1/postings",
                token=ledger,
                expect=201,
                json={
                    "external_id": f"e2e-fund-{run}",
                    "entries": [
                        {
                            "account_id": settlement["id"],
                            "direction": "debit",
                            "amount": 50_000,
                            "currency": "EUR",
                        },
                        {
                            "account_id": source,
                            "direction": "credit",
                            "amount": 50_000,
                            "currency": "EUR",
                        },
                    ],
                },
            )
            endpoint = await notifications.call(
                "POST",
                "/v1/webhook-endpoints",
                token=token,
                expect=201,
                json={
                    "url": f"https://127.0.0.1:{port}/hooks",
                    "event_types": ["transaction.succeeded"],
                },
            )

            transfer = await transactions.call(
                "POST",
                "/v1/transfers",
                token=token,
                expect=201,
                headers={"Idempotency-Key": str(uuid.uuid4()), "Prefer": "wait=5"},
                json={
                    "source_account_id": source,
                    "destination_account_id": target,
                    "amount": 12_345,
                    "currency": "EUR",
                },
            )

            deadline = asyncio.get_running_loop().time() + 15
            while asyncio.get_running_loop().time() < deadline:
                mails = read_mail(settings.dev_dir / "mail", to=email)
                async with http.get(
                    f"{settings.service_url('sms')}/v1/messages",
                    params={"to": phone},
                    headers={"Authorization": f"Bearer {settings.partner_api_keys['sms']}"},
                ) as r:
                    texts = (await r.json())["messages"]
                if received and mails and texts:
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(1)  # anything extra would show up now

            assert len(received) == 1
            headers, body = received[0]
            payload = Webhook(endpoint["secret"]).verify(body, headers)
            assert payload["type"] == "transaction.succeeded"
            assert payload["data"]["transaction_id"] == transfer["id"]
            assert payload["data"]["amount"] == 12_345
            (mail,) = read_mail(settings.dev_dir / "mail", to=email)
            assert mail.tls.startswith("TLSv1.") and "€123.45" in mail.subject
            assert len(texts) == 1 and "€123.45" in texts[0]["body"]
            log = await notifications.call(
                "GET", f"/v1/deliveries?customer_id={customer['id']}", token=token, expect=200
            )
            assert sorted(d["channel"] for d in log["data"]) == ["email", "sms", "webhook"]
            assert {d["status"] for d in log["data"]} == {"delivered"}
    finally:
        await runner.cleanup()
