"""The checks through the transaction and notification services: an idempotent
transfer, posted; the signed webhook a registered endpoint receives for one."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Any, Final

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from lastro.smoke.world import SETTLE_SECONDS, SmokeFailed, World, balance, expect

MOVE_MINOR: Final = 2_000  # EUR 20.00, through the transaction service
NOTIFIED_MINOR: Final = 500  # EUR 5.00, the transfer the webhook tells about


async def _savings(world: World) -> str:
    if not world.savings:
        opened = await world.api("accounts").call(
            "POST",
            "/v1/accounts",
            token=world.user_token,
            expect=201,
            json={"customer_id": world.customer, "currency": "EUR"},
        )
        world.savings = str(opened["id"])
    return world.savings


async def _transfer(world: World, amount: int, key: str) -> tuple[int, dict[str, Any], str]:
    """``POST /v1/transfers`` from the user's account to their savings, waiting up to
    10 s for it to rest; the status, the body and ``Idempotent-Replayed``."""
    base = world.api("transactions").base
    async with world.http.post(
        f"{base}/v1/transfers",
        json={
            "source_account_id": world.account,
            "destination_account_id": await _savings(world),
            "amount": amount,
            "currency": "EUR",
            "description": "lastro smoke transfer",
        },
        headers={
            "Authorization": f"Bearer {world.user_token}",
            "Idempotency-Key": key,
            "Prefer": "wait=10",
        },
    ) as response:
        body = await response.json(content_type=None)
        expect(
            response.status in (200, 201, 202),
            f"POST /v1/transfers: expected 201 or 202, got {response.status}: {body}",
        )
        return response.status, dict(body), response.headers.get("Idempotent-Replayed", "")


async def _posted(world: World, transfer: dict[str, Any]) -> dict[str, Any]:
    """The transfer once it rested; SmokeFailed unless it was posted."""
    deadline = asyncio.get_running_loop().time() + SETTLE_SECONDS
    while transfer["status"] not in ("posted", "settled", "declined", "failed"):
        expect(
            asyncio.get_running_loop().time() < deadline,
            f"transfer {transfer['id']} still {transfer['status']} after {SETTLE_SECONDS}s",
        )
        await asyncio.sleep(0.5)
        transfer = await world.api("transactions").call(
            "GET", f"/v1/transfers/{transfer['id']}", token=world.user_token, expect=200
        )
    expect(transfer["status"] == "posted", f"transfer ended {transfer['status']}: {transfer}")
    return transfer


async def transaction_transfer(world: World) -> str:
    """The user's account → their savings through the transaction service, sent twice
    with one Idempotency-Key: one transfer, posted; balances show it once."""
    savings = await _savings(world)
    before = await balance(world, world.account, world.user_token)
    key = f"smoke-{world.run}-{secrets.token_hex(8)}"
    _, first, _ = await _transfer(world, MOVE_MINOR, key)
    _, again, replayed = await _transfer(world, MOVE_MINOR, key)
    expect(again.get("id") == first.get("id"), f"the retry made a second transfer: {again}")
    expect(replayed == "true", "the retry was not marked Idempotent-Replayed: true")
    posted = await _posted(world, first)
    after = await balance(world, world.account, world.user_token)
    moved = int(before["posted"]) - int(after["posted"])
    expect(moved == MOVE_MINOR, f"the account gave {moved}, not {MOVE_MINOR} (sent twice)")
    received = await balance(world, savings, world.user_token)
    expect(
        int(received["posted"]) == MOVE_MINOR,
        f"savings hold {received['posted']}, not {MOVE_MINOR}",
    )
    return f"transfer {posted['id']} of EUR {MOVE_MINOR / 100:.2f} posted once (retry replayed)"


async def webhook_notification(world: World) -> str:
    """A registered endpoint receives the signed ``transaction.succeeded`` webhook of a
    transfer, once; the deliveries API records it delivered."""
    receiver = world.receiver
    expect(receiver is not None, "no webhook receiver (see --webhook-host)")
    assert receiver is not None
    notifications = world.api("notifications")
    endpoint = await notifications.call(
        "POST",
        "/v1/webhook-endpoints",
        token=world.user_token,
        expect=201,
        json={"url": receiver.url, "event_types": ["transaction.succeeded"]},
    )
    try:
        _, transfer, _ = await _transfer(world, NOTIFIED_MINOR, secrets.token_hex(16))
        transfer = await _posted(world, transfer)
        secret = Webhook(endpoint["secret"])

        def told() -> list[tuple[str, dict[str, Any]]]:
            """(webhook-id, payload) of each webhook about this transfer; every
            webhook that arrived must verify."""
            found = []
            for headers, body in receiver.received:
                try:
                    payload = secret.verify(body, headers)
                except WebhookVerificationError as exc:
                    raise SmokeFailed(f"a webhook's signature does not verify: {exc}") from None
                if payload.get("data", {}).get("transaction_id") == transfer["id"]:
                    found.append((headers.get("webhook-id", ""), payload))
            return found

        deadline = asyncio.get_running_loop().time() + SETTLE_SECONDS
        while not told():
            expect(
                asyncio.get_running_loop().time() < deadline,
                f"no webhook at {receiver.url} within {SETTLE_SECONDS}s",
            )
            receiver.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(receiver.arrived.wait(), 1)
        await asyncio.sleep(1)  # a second delivery would show up now
        mine = told()
        expect(len(mine) == 1, f"{len(mine)} webhooks about {transfer['id']}, not one")
        webhook_id, payload = mine[0]
        expect(payload.get("type") == "transaction.succeeded", f"webhook type: {payload}")
        expect(
            payload["data"].get("amount") == NOTIFIED_MINOR,
            f"the webhook tells of {payload['data'].get('amount')}, not {NOTIFIED_MINOR}",
        )
        log = await notifications.call(
            "GET",
            f"/v1/deliveries?endpoint_id={endpoint['id']}",
            token=world.user_token,
            expect=200,
        )
        statuses = [d["status"] for d in log["data"] if d["id"] == webhook_id]
        expect(statuses == ["delivered"], f"the deliveries API shows {webhook_id}: {statuses}")
    finally:
        await notifications.call(
            "DELETE", f"/v1/webhook-endpoints/{endpoint['id']}", token=world.user_token,
            expect=204,
        )  # fmt: skip
    return f"webhook {webhook_id} for {transfer['id']} received, signature valid"
