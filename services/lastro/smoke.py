"""`python -m lastro.smoke`: is a deployed Lastro alive, end to end? Exit 0 if so.

The same script checks the local stack (tests/e2e/test_smoke.py) and a cluster
(.github/workflows/e2e-kind.yml), through HTTPS only, with real OAuth2 tokens:

1. sign in: the identity service's bootstrap admin client (``--admin-credentials``,
   a ``client_id:secret`` file; default: the local stack's) registers a payments
   service client and a wallet app; a new user signs up and signs in (authorization
   code + PKCE, driven like a browser, as ``lastro demo`` does);
2. open two accounts: the user's EUR account (customer API) and a settlement account
   (the payments service's system account);
3. then each check in :data:`CHECKS`. Today: a ledger transfer from settlement to the
   user, sent twice with the same idempotency key (the accounts postings API is
   idempotent on ``external_id``, docs/interfaces.md: the key is sent as that), which
   must be replayed, not posted twice; the same key with another amount must be
   refused; the balances read back must show the transfer once.

A check is one ``async def check(world: World) -> str`` (what it proved) appended to
:data:`CHECKS`; a failed expectation raises :class:`SmokeFailed`, and the script exits
1 with the step and what was seen, e.g. ``smoke FAILED in ledger_transfer: POST
/internal/v1/postings: expected 200, got 503: {...}``.

``--base-url`` is where every route the smoke uses is served (a gateway); ``--url
accounts=https://…`` sends one service's routes elsewhere (the local stack, or
port-forwards: the chart's Ingress publishes no ``/internal`` route).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import ssl
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp

from lastro.demo import REDIRECT_URI, Api, DemoFailed, client_credentials, sign_in

SERVICES: Final = ("identity", "accounts")
TIMEOUT_SECONDS: Final = 30
TRANSFER_MINOR: Final = 12_345  # EUR 123.45


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

    def api(self, service: str) -> Api:
        return self.apis[service]


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise SmokeFailed(message)


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
            "scopes": ["accounts:read", "accounts:write"],
            "audiences": ["accounts"],
            "redirect_uris": [REDIRECT_URI],
        },
    )
    username, password = f"smoke-{world.run}", secrets.token_urlsafe(16)
    await identity.call(
        "POST", "/v1/users", expect=201, json={"username": username, "password": password}
    )
    world.user_token = await sign_in(
        identity, wallet["client_id"], username, password, "accounts:read accounts:write"
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


async def _balance(world: World, account: str, token: str) -> dict[str, Any]:
    return await world.api("accounts").call(
        "GET", f"/v1/accounts/{account}/balance", token=token, expect=200
    )


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

    async def send(amount: int, expect: int) -> tuple[dict[str, Any], str | None]:
        async with world.http.post(
            f"{accounts.base}/internal/v1/postings",
            json=posting(amount),
            headers={"Authorization": f"Bearer {world.service_token}"},
        ) as response:
            body = await response.json(content_type=None)
            _expect(
                response.status == expect,
                f"POST /internal/v1/postings ({key}, {amount}): expected {expect},"
                f" got {response.status}: {body}",
            )
            return dict(body), response.headers.get("Idempotent-Replayed")

    before = await _balance(world, world.account, world.user_token)
    first, _ = await send(TRANSFER_MINOR, 201)
    again, replayed = await send(TRANSFER_MINOR, 200)
    _expect(again.get("id") == first.get("id"), f"the retry posted anew: {first} then {again}")
    _expect(replayed == "true", "the retry was not marked Idempotent-Replayed: true")
    conflict, _ = await send(TRANSFER_MINOR + 1, 422)
    _expect(
        str(conflict.get("type", "")).endswith("external-id-conflict"),
        f"the same key with another amount was not refused as a conflict: {conflict}",
    )
    after = await _balance(world, world.account, world.user_token)
    for kind in ("posted", "available"):
        moved = int(after[kind]) - int(before[kind])
        _expect(
            moved == TRANSFER_MINOR,
            f"{kind} balance moved by {moved}, not {TRANSFER_MINOR} (sent twice, posted once)",
        )
    _expect(after.get("currency") == "EUR", f"balance in {after.get('currency')}, not EUR")
    settlement = await _balance(world, world.settlement, world.service_token)
    _expect(
        int(settlement["posted"]) == -TRANSFER_MINOR,
        f"settlement posted balance is {settlement['posted']}, not -{TRANSFER_MINOR}",
    )
    return (
        f"posting {first['id']} of EUR {TRANSFER_MINOR / 100:.2f} replayed on retry,"
        f" refused with another amount; balance {after['posted']} EUR minor units"
    )


Check = Callable[[World], Awaitable[str]]
# What the smoke proves once signed in with two accounts; a new check is one entry.
CHECKS: Final[tuple[Check, ...]] = (ledger_transfer,)


def _client_context(ca: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca is not None:
        context.load_verify_locations(cafile=str(ca))
    return context


async def run_smoke(
    urls: dict[str, str],
    admin: tuple[str, str],
    ca: Path | None,
    say: Callable[[str], None] = print,
    checks: Sequence[Check] = CHECKS,
) -> None:
    """Every step in order; raises SmokeFailed naming the step that failed."""
    connector = aiohttp.TCPConnector(ssl=_client_context(ca))
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        world = World(
            http, {s: Api(http, u.rstrip("/")) for s, u in urls.items()}, secrets.token_hex(4)
        )

        async def signed_in(w: World) -> str:
            return await sign_in_users(w, *admin)

        steps: list[tuple[str, Check]] = [("sign_in", signed_in), ("open_accounts", open_accounts)]
        steps += [(check.__name__, check) for check in checks]
        for name, step in steps:
            try:
                say(f"smoke: {name}: {await step(world)}")
            except (SmokeFailed, DemoFailed) as exc:
                raise SmokeFailed(f"{name}: {exc}") from exc
            except (aiohttp.ClientError, TimeoutError, ssl.SSLError) as exc:
                raise SmokeFailed(f"{name}: {type(exc).__name__}: {exc}") from exc


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lastro.smoke",
        description="Sign in, open two accounts, move money idempotently; exit 0 if it works.",
    )
    parser.add_argument("--base-url", required=True, help="where every route is served")
    parser.add_argument(
        "--url",
        action="append",
        default=[],
        metavar="SERVICE=URL",
        help=f"one service's routes elsewhere ({', '.join(SERVICES)}); repeatable",
    )
    parser.add_argument("--ca", type=Path, help="CA bundle the servers' certificates chain to")
    parser.add_argument(
        "--admin-credentials",
        type=Path,
        help="file holding the identity admin client as client_id:secret"
        " (default: the local stack's .dev/secrets/identity_admin_secret)",
    )
    return parser.parse_args(argv)


def service_urls(base_url: str, overrides: Sequence[str]) -> dict[str, str]:
    urls = dict.fromkeys(SERVICES, base_url)
    for item in overrides:
        service, sep, url = item.partition("=")
        if not sep or service not in SERVICES or not url.startswith("https://"):
            raise SmokeFailed(f"--url {item!r}: expected one of {', '.join(SERVICES)}=https://…")
        urls[service] = url
    return urls


def admin_credentials(path: Path | None) -> tuple[str, str]:
    if path is None:
        from lastro.core.config import load_settings
        from lastro.identity.app import admin_secret_file

        path = admin_secret_file(load_settings(data_plane=False))
    try:
        client_id, sep, secret = path.read_text().strip().partition(":")
    except OSError as exc:
        raise SmokeFailed(f"admin credentials: {exc}") from exc
    if not (sep and client_id and secret):
        raise SmokeFailed(f"admin credentials: {path} does not hold client_id:secret")
    return client_id, secret


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        urls = service_urls(args.base_url, args.url)
        admin = admin_credentials(args.admin_credentials)
        asyncio.run(run_smoke(urls, admin, args.ca))
    except SmokeFailed as exc:
        print(f"smoke FAILED in {exc}", file=sys.stderr)
        return 1
    print("smoke: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
