"""`lastro demo`: what the running platform does, seen the way its users see it.

Everything goes through the public HTTPS APIs of the running services, with real
OAuth2 tokens from the identity service: an operator registers a payments
service and a wallet app, two people sign up and sign in (authorization code +
PKCE, as their browser would), open customer profiles and euro accounts, money
arrives from the settlement account, moves between them (a retried request is
replayed, not posted twice), an overdraw is refused, and nobody sees anybody
else's account. Then Ana's account is frozen and she is told: a signed webhook to
her wallet's receiver and an e-mail in Portuguese (``demo_notifications.py``). Then
the money path (``demo_money.py``): a transfer through the transaction service, a
card payment with a refund, and a large transfer that asks for a second factor. It
ends by verifying the ledger and the audit chains.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import re
import secrets
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp

from lastro.core.config import Settings
from lastro.core.security.tls import client_context
from lastro.demo_notifications import notifications_scene
from lastro.identity.app import admin_secret_file

REDIRECT_URI = "https://wallet.example/callback"
WALLET_SCOPE: Final = (
    "accounts:read accounts:write transfers:read transfers:write "
    "notifications:read notifications:write"
)
"""What a customer's wallet app asks for when its user signs in."""


# How often a rate-limited request is sent again before the demo gives up.
RATE_LIMITED_ATTEMPTS: Final = 8


class DemoFailed(RuntimeError):
    """A step did not answer what it should have."""


@dataclass
class Api:
    http: aiohttp.ClientSession
    base: str

    async def call(
        self, method: str, path: str, *, token: str | None = None, expect: int, **kwargs: Any
    ) -> dict[str, Any]:
        """One request; a 429 is waited out (``Retry-After``) and sent again, as a
        well-behaved client does: the request was refused, not carried out."""
        headers = kwargs.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        for attempt in range(RATE_LIMITED_ATTEMPTS):
            async with self.http.request(
                method, f"{self.base}{path}", headers=headers, allow_redirects=False, **kwargs
            ) as response:
                body = (
                    await response.json(content_type=None) if response.content_length != 0 else {}
                )
                if response.status == 429 != expect and attempt < RATE_LIMITED_ATTEMPTS - 1:
                    await asyncio.sleep(retry_after(response))
                    continue
                if response.status != expect:
                    raise DemoFailed(
                        f"{method} {path}: expected {expect}, got {response.status}: {body}"
                    )
                return dict(body or {})
        raise AssertionError("unreachable")


def retry_after(response: aiohttp.ClientResponse) -> float:
    """The wait a 429 or 503 asks for (``Retry-After`` seconds), 1 s if it names none,
    never more than a minute."""
    try:
        return min(max(float(response.headers.get("Retry-After", "1")), 0.1), 60.0)
    except ValueError:
        return 1.0


def _say(text: str) -> None:
    print(text, flush=True)


def _eur(minor: int) -> str:
    sign = "-" if minor < 0 else ""
    return f"EUR {sign}{abs(minor) // 100:,}.{abs(minor) % 100:02d}"


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


async def client_credentials(
    identity: Api, client_id: str, secret: str, scope: str, audience: str
) -> str:
    body = await identity.call(
        "POST",
        "/oauth/token",
        expect=200,
        data={"grant_type": "client_credentials", "scope": scope, "audience": audience},
        headers={"Authorization": aiohttp.BasicAuth(client_id, secret).encode()},
    )
    return str(body["access_token"])


def _hidden_fields(page: str) -> dict[str, str]:
    found = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page)
    return {html.unescape(k): html.unescape(v) for k, v in found}


async def sign_in(
    identity: Api,
    client_id: str,
    username: str,
    password: str,
    scope: str = WALLET_SCOPE,
    *,
    otp: str | None = None,
    attempts: int = RATE_LIMITED_ATTEMPTS,
) -> str:
    """The authorization-code + PKCE flow, driven like a browser: login form (and, with
    ``otp``, the one-time-password page), redirect, token; a rate-limited sign-in is
    started again after the wait the server asks for, ``attempts`` times in all. The
    wait doubles with each attempt (up to a minute): a sign-in takes several requests
    in a row, so the one request the server's wait makes room for is not enough once
    the budget is spent."""
    for attempt in range(attempts - 1):
        token = await _authorize(identity, client_id, username, password, scope, otp)
        if isinstance(token, str):
            return token
        await asyncio.sleep(max(token, min(2.0**attempt, 60.0)))
    token = await _authorize(identity, client_id, username, password, scope, otp)
    if not isinstance(token, str):
        raise DemoFailed(f"sign-in of {username} still rate-limited")
    return token


async def _authorize(
    identity: Api, client_id: str, username: str, password: str, scope: str, otp: str | None
) -> str | float:
    """One sign-in: the access token, or the seconds to wait when rate-limited."""
    verifier, challenge = _pkce()
    state = secrets.token_urlsafe(8)
    query = urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
            "scope": scope,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    async with identity.http.get(f"{identity.base}/oauth/authorize?{query}") as page:
        if page.status == 429:
            return retry_after(page)
        form = _hidden_fields(await page.text())
        # The login form session's cookie goes back with each form, as a browser sends
        # it (the client's cookie jar keeps none for an IP address).
        cookies = "; ".join(f"{name}={morsel.value}" for name, morsel in page.cookies.items())
    async with identity.http.post(
        f"{identity.base}/oauth/authorize",
        data={**form, "step": "password", "username": username, "password": password},
        headers={"Cookie": cookies},
        allow_redirects=False,
    ) as answer:
        if answer.status == 429:
            return retry_after(answer)
        location = answer.headers.get("Location", "")
        ticket = _hidden_fields(await answer.text()) if otp else {}
    if otp:
        async with identity.http.post(
            f"{identity.base}/oauth/authorize",
            data={**ticket, "step": "otp", "otp": otp},
            headers={"Cookie": cookies},
            allow_redirects=False,
        ) as answer:
            if answer.status == 429:
                return retry_after(answer)
            location = answer.headers.get("Location", "")
    params = parse_qs(urlsplit(location).query)
    if params.get("state") != [state] or "code" not in params:
        raise DemoFailed(f"sign-in of {username} did not redirect with a code")
    tokens = await identity.call(
        "POST",
        "/oauth/token",
        expect=200,
        data={
            "grant_type": "authorization_code",
            "code": params["code"][0],
            "redirect_uri": REDIRECT_URI,
            "client_id": client_id,
            "code_verifier": verifier,
        },
    )
    return str(tokens["access_token"])


async def operator_token(identity: Api, settings: Settings) -> str:
    """An identity:admin token from the bootstrap admin client's credentials."""
    admin_id, admin_secret = admin_secret_file(settings).read_text().strip().split(":")
    return await client_credentials(identity, admin_id, admin_secret, "identity:admin", "identity")


async def register_service(
    identity: Api, admin: str, name: str, scopes: list[str], audience: str
) -> tuple[dict[str, Any], str]:
    """Register a client_credentials client; returns it and a token for ``audience``."""
    client = await identity.call(
        "POST",
        "/v1/clients",
        token=admin,
        expect=201,
        json={
            "name": name,
            "grant_types": ["client_credentials"],
            "scopes": scopes,
            "audiences": [audience],
        },
    )
    token = await client_credentials(
        identity, client["client_id"], client["client_secret"], " ".join(scopes), audience
    )
    return client, token


async def run_demo(settings: Settings) -> None:
    connector = aiohttp.TCPConnector(ssl=client_context(settings.ca_file))
    async with aiohttp.ClientSession(connector=connector) as http:
        identity = Api(http, settings.service_url("identity"))
        accounts = Api(http, settings.service_url("accounts"))
        run = secrets.token_hex(3)

        _say("== Operator: register the payments service and the wallet app")
        admin = await operator_token(identity, settings)
        payments, service = await register_service(
            identity,
            admin,
            f"payments-{run}",
            ["ledger:write", "ledger:read", "accounts:admin"],
            "accounts",
        )
        wallet = await identity.call(
            "POST",
            "/v1/clients",
            token=admin,
            expect=201,
            json={
                "name": f"wallet-{run}",
                "confidential": False,
                "grant_types": ["authorization_code", "refresh_token"],
                "scopes": WALLET_SCOPE.split(),
                "audiences": ["accounts", "transactions", "notifications"],
                "redirect_uris": [REDIRECT_URI],
            },
        )
        _say(f"   payments service {payments['client_id']}, wallet app {wallet['client_id']}")

        people: dict[str, dict[str, str]] = {}
        for name, full_name in (("ana", "Ana Souza"), ("bruno", "Bruno Lima")):
            username, password = f"{name}-{run}", secrets.token_urlsafe(16)
            await identity.call(
                "POST", "/v1/users", expect=201, json={"username": username, "password": password}
            )
            token = await sign_in(identity, wallet["client_id"], username, password)
            customer = await accounts.call(
                "POST",
                "/v1/customers",
                token=token,
                expect=201,
                json={
                    "name": full_name,
                    "email": f"{username}@example.com",
                    "document_number": f"DOC-{secrets.token_hex(4).upper()}",
                },
            )
            account = await accounts.call(
                "POST",
                "/v1/accounts",
                token=token,
                expect=201,
                json={"customer_id": customer["id"], "currency": "EUR"},
            )
            people[name] = {
                "token": token,
                "customer": customer["id"],
                "account": account["id"],
                "email": f"{username}@example.com",
            }
            _say(f"== {full_name} signs up, signs in (PKCE), opens {account['id']} in EUR")

        settlement = await accounts.call(
            "POST",
            "/internal/v1/accounts",
            token=service,
            expect=201,
            json={"currency": "EUR", "purpose": "settlement"},
        )
        ana, bruno = people["ana"], people["bruno"]

        async def post(
            external_id: str, debit: str, credit: str, amount: int, expect: int
        ) -> dict[str, Any]:
            return await accounts.call(
                "POST",
                "/internal/v1/postings",
                token=service,
                expect=expect,
                json={
                    "external_id": external_id,
                    "description": external_id,
                    "entries": [
                        {
                            "account_id": debit,
                            "direction": "debit",
                            "amount": amount,
                            "currency": "EUR",
                        },
                        {
                            "account_id": credit,
                            "direction": "credit",
                            "amount": amount,
                            "currency": "EUR",
                        },
                    ],
                },
            )

        _say(f"== A deposit of {_eur(100_000)} reaches Ana through the settlement account")
        await post(f"txn_deposit_{run}", settlement["id"], ana["account"], 100_000, 201)
        _say(f"== Ana pays Bruno {_eur(25_050)}; the payment service retries the same request")
        first = await post(f"txn_pay_{run}", ana["account"], bruno["account"], 25_050, 201)
        again = await post(f"txn_pay_{run}", ana["account"], bruno["account"], 25_050, 200)
        same = again["id"] == first["id"]
        _say(f"   posting {first['id']}; the retry returned the same posting: {same}")
        _say(f"== Ana tries to send {_eur(500_000)}: more than she has")
        refused = await post(f"txn_big_{run}", ana["account"], bruno["account"], 500_000, 409)
        _say(f"   refused: {refused['type']} ({refused.get('detail', '')})")

        for name in ("ana", "bruno"):
            person = people[name]
            balance = await accounts.call(
                "GET",
                f"/v1/accounts/{person['account']}/balance",
                token=person["token"],
                expect=200,
            )
            _say(
                f"== {name.title()}'s balance: posted {_eur(balance['posted'])}, "
                f"available {_eur(balance['available'])}"
            )
        entries = await accounts.call(
            "GET", f"/v1/accounts/{ana['account']}/entries?limit=10", token=ana["token"], expect=200
        )
        for entry in entries["data"]:
            _say(f"   {entry['created_at'][:19]} {entry['direction']:<6} {_eur(entry['amount'])}")
        hidden = await accounts.call(
            "GET", f"/v1/accounts/{bruno['account']}", token=ana["token"], expect=404
        )
        _say(f"== Ana asks for Bruno's account: {hidden['status']} {hidden['title']}")

        notifications = Api(http, settings.service_url("notifications"))
        try:
            await notifications_scene(
                settings, notifications, accounts, _say, ana=ana, operator=service
            )
        except TimeoutError as exc:
            raise DemoFailed(f"notifications: {exc}") from exc

        from lastro.fraud_demo import run_fraud_demo

        await run_fraud_demo(settings, identity, accounts, admin, people, _say)

        from lastro.demo_money import money_demo  # it builds on this module's helpers

        await money_demo(settings, http, admin, run)
