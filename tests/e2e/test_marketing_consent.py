"""Marketing consent, against the running stack: an offer published on
``lastro.marketing`` reaches by e-mail the customer who consented in their
notification preferences and nobody who did not."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer
from privacykit import (
    Api,
    operator_token,
    sign_in,
)

from lastro.core.config import Settings
from lastro.core.events import EventSigner, new_event
from lastro.core.security.tls import client_context
from lastro.core.security.transit import TransitClient
from lastro.devstack.smtp_sink import read_mail

REDIRECT_URI = "https://wallet.example/callback"
SCOPE = "accounts:read accounts:write notifications:read notifications:write"


async def _customer(
    identity: Api,
    accounts: Api,
    notifications: Api,
    wallet: str,
    label: str,
    consent: bool,
) -> dict[str, str]:
    username, password = f"{label}-{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    await identity.call(
        "POST", "/v1/users", expect=201, json={"username": username, "password": password}
    )
    token = await sign_in(identity, wallet, username, password, SCOPE)
    email = f"{username}@example.com"
    customer = await accounts.call(
        "POST",
        "/v1/customers",
        token=token,
        expect=201,
        json={"name": label, "email": email, "document_number": f"MK-{username}"},
    )
    await notifications.call(
        "PUT",
        "/v1/preferences",
        token=token,
        expect=200,
        json={"customer_id": customer["id"], "marketing_consent": consent},
    )
    return {"id": customer["id"], "email": email, "token": token}


async def _publish_offers(settings: Settings, customers: list[str], run: str) -> None:
    """What a campaign tool would publish: one signed event per customer, all on one
    partition (same key), so they are handled in this order."""
    transit = TransitClient.from_settings(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        signer = await EventSigner.from_transit(transit, settings.events_key_name)
        for customer_id in customers:
            event = new_event(
                "lastro.marketing.offer_published",
                "/campaigns",
                {
                    "customer_id": customer_id,
                    "offer_id": f"off_{run}",
                    "offer_title": f"No FX fees this May {run}",
                },
                subject=customer_id,
            )
            await producer.send_and_wait(
                "lastro.marketing",
                json.dumps(signer.sign(event.envelope())).encode(),
                key=f"campaign-{run}".encode(),
            )
    finally:
        await producer.stop()
        await transit.close()


async def _deliveries(notifications: Api, customer: dict[str, str]) -> list[dict[str, Any]]:
    page = await notifications.call(
        "GET", f"/v1/deliveries?customer_id={customer['id']}", token=customer["token"], expect=200
    )
    return [d for d in page["data"] if d["kind"] == "marketing.offer"]


async def test_an_offer_reaches_only_the_customer_who_consented(settings: Settings) -> None:
    run = secrets.token_hex(4)
    connector = aiohttp.TCPConnector(ssl=client_context(settings.ca_file))
    async with aiohttp.ClientSession(connector=connector) as http:
        identity = Api(http, settings.service_url("identity"))
        accounts = Api(http, settings.service_url("accounts"))
        notifications = Api(http, settings.service_url("notifications"))
        admin = await operator_token(identity, settings)
        wallet = await identity.call(
            "POST",
            "/v1/clients",
            token=admin,
            expect=201,
            json={
                "name": f"wallet-marketing-{run}",
                "confidential": False,
                "grant_types": ["authorization_code"],
                "scopes": SCOPE.split(),
                "audiences": ["accounts", "notifications"],
                "redirect_uris": [REDIRECT_URI],
            },
        )
        declined = await _customer(
            identity, accounts, notifications, wallet["client_id"], "nomail", consent=False
        )
        consented = await _customer(
            identity, accounts, notifications, wallet["client_id"], "yesmail", consent=True
        )
        await _publish_offers(settings, [declined["id"], consented["id"]], run)

        deadline = time.monotonic() + 30
        while not read_mail(settings.dev_dir / "mail", to=consented["email"]):
            assert time.monotonic() < deadline, "the consented customer got no offer"
            await asyncio.sleep(0.25)
        (mail,) = read_mail(settings.dev_dir / "mail", to=consented["email"])
        assert mail.subject == f"No FX fees this May {run}"
        assert len(await _deliveries(notifications, consented)) == 1
        # The offer to the customer without consent came first on the same partition:
        # it was handled, and planned no message.
        assert await _deliveries(notifications, declined) == []
        assert read_mail(settings.dev_dir / "mail", to=declined["email"]) == []
