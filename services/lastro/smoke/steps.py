"""The smoke's first steps (sign in, open accounts) and the ledger check."""

from __future__ import annotations

import secrets
from typing import Any, Final

from lastro.demo import REDIRECT_URI, client_credentials, sign_in
from lastro.smoke.world import World, balance, expect

TRANSFER_MINOR: Final = 12_345  # EUR 123.45
WALLET_SCOPES: Final = (
    "accounts:read accounts:write transfers:read transfers:write"
    " notifications:read notifications:write"
)


async def sign_in_users(world: World, admin_id: str, admin_secret: str) -> str:
    """Register the smoke's clients with the admin client; sign a new user in (PKCE)."""
    identity = world.api("identity")
    admin = await client_credentials(identity, admin_id, admin_secret, "identity:admin", "identity")
    scopes = ["ledger:write", "ledger:read", "accounts:admin"]
    payments = await identity.call(
        "POST",
        "/v1/clients",
        token=admin,
        expect=201,
        json={
            "name": f"smoke-payments-{world.run}",
            "grant_types": ["client_credentials"],
            "scopes": scopes,
            "audiences": ["accounts"],
        },
    )
    world.service_token = await client_credentials(
        identity, payments["client_id"], payments["client_secret"], " ".join(scopes), "accounts"
    )
    wallet = await identity.call(
        "POST",
        "/v1/clients",
        token=admin,
        expect=201,
        json={
            "name": f"smoke-wallet-{world.run}",
            "confidential": False,
            "grant_types": ["authorization_code"],
            "scopes": WALLET_SCOPES.split(),
            "audiences": ["accounts", "transactions", "notifications"],
            "redirect_uris": [REDIRECT_URI],
        },
    )
    username, password = f"smoke-{world.run}", secrets.token_urlsafe(16)
    await identity.call(
        "POST", "/v1/users", expect=201, json={"username": username, "password": password}
    )
    world.user_token = await sign_in(
        identity, wallet["client_id"], username, password, WALLET_SCOPES
    )
    return f"signed in as {username} (PKCE) and as service {payments['client_id']}"


async def open_accounts(world: World) -> str:
    """The user's customer profile and EUR account, and a EUR settlement account."""
    accounts = world.api("accounts")
    customer = await accounts.call(
        "POST",
        "/v1/customers",
        token=world.user_token,
        expect=201,
        json={
            "name": "Smoke Test",
            "email": f"smoke-{world.run}@example.com",
            "document_number": f"SMOKE-{world.run.upper()}",
        },
    )
    world.customer = str(customer["id"])
    account = await accounts.call(
        "POST",
        "/v1/accounts",
        token=world.user_token,
        expect=201,
        json={"customer_id": world.customer, "currency": "EUR"},
    )
    world.account = str(account["id"])
    settlement = await accounts.call(
        "POST",
        "/internal/v1/accounts",
        token=world.service_token,
        expect=201,
        json={"currency": "EUR", "purpose": "settlement"},
    )
    world.settlement = str(settlement["id"])
    return f"opened {world.account} for {world.customer} and settlement {world.settlement}"


async def ledger_transfer(world: World) -> str:
    """Settlement → the user's account, idempotently; balances show it exactly once."""
    accounts = world.api("accounts")
    key = f"smoke_{world.run}_{secrets.token_hex(4)}"

    def posting(amount: int) -> dict[str, Any]:
        return {
            "external_id": key,
            "description": "lastro smoke transfer",
            "entries": [
                {
                    "account_id": world.settlement,
                    "direction": "debit",
                    "amount": amount,
                    "currency": "EUR",
                },
                {
                    "account_id": world.account,
                    "direction": "credit",
                    "amount": amount,
                    "currency": "EUR",
                },
            ],
        }

    async def send(amount: int, status: int) -> tuple[dict[str, Any], str | None]:
        async with world.http.post(
            f"{accounts.base}/internal/v1/postings",
            json=posting(amount),
            headers={"Authorization": f"Bearer {world.service_token}"},
        ) as response:
            body = await response.json(content_type=None)
            expect(
                response.status == status,
                f"POST /internal/v1/postings ({key}, {amount}): expected {status},"
                f" got {response.status}: {body}",
            )
            return dict(body), response.headers.get("Idempotent-Replayed")

    before = await balance(world, world.account, world.user_token)
    first, _ = await send(TRANSFER_MINOR, 201)
    again, replayed = await send(TRANSFER_MINOR, 200)
    expect(again.get("id") == first.get("id"), f"the retry posted anew: {first} then {again}")
    expect(replayed == "true", "the retry was not marked Idempotent-Replayed: true")
    conflict, _ = await send(TRANSFER_MINOR + 1, 422)
    expect(
        str(conflict.get("type", "")).endswith("external-id-conflict"),
        f"the same key with another amount was not refused as a conflict: {conflict}",
    )
    after = await balance(world, world.account, world.user_token)
    for kind in ("posted", "available"):
        moved = int(after[kind]) - int(before[kind])
        expect(
            moved == TRANSFER_MINOR,
            f"{kind} balance moved by {moved}, not {TRANSFER_MINOR} (sent twice, posted once)",
        )
    expect(after.get("currency") == "EUR", f"balance in {after.get('currency')}, not EUR")
    settlement = await balance(world, world.settlement, world.service_token)
    expect(
        int(settlement["posted"]) == -TRANSFER_MINOR,
        f"settlement posted balance is {settlement['posted']}, not -{TRANSFER_MINOR}",
    )
    return (
        f"posting {first['id']} of EUR {TRANSFER_MINOR / 100:.2f} replayed on retry,"
        f" refused with another amount; balance {after['posted']} EUR minor units"
    )
