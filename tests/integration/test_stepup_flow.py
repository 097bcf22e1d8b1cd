"""Step-up authentication (RFC 9470) end to end, with tokens issued by the real identity app.

The resource server here is a stand-in: a small app built with ``core.http.create_app``
whose ``POST /v1/transfers`` (contract in ``data/stepup_transfers_openapi.yaml``) calls
``core.stepup`` exactly as the transaction service's transfer and payout handlers will;
the real endpoint arrives with the transaction service. Its TokenVerifier fetches the
identity app's JWKS over HTTPS, so every token below is a real one from a real login.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
from aiohttp import web
from identity_flows import (
    REDIRECT_URI,
    Browser,
    Identity,
    admin_client,
    enrol_totp,
    jwt_claims,
    module_identity,  # noqa: F401 - provides the `identity` fixture
    next_totp_code,
    serve_https,
    sign_up,
)

from lastro.core.config import Settings
from lastro.core.http import PRINCIPAL_KEY, create_app, json_body, json_response
from lastro.core.security.tokens import TokenVerifier
from lastro.core.stepup import DEFAULT_MAX_AGE, MFA_ACR, require_recent_otp, requires_step_up

CONTRACT: Final = Path(__file__).parent / "data" / "stepup_transfers_openapi.yaml"
# Largest amount (minor units) moved without step-up: EUR 1,000.00. No USD entry:
# a currency without a threshold always needs step-up.
THRESHOLDS: Final = {"EUR": 100_000}
MAX_AGE_KEY: Final = web.AppKey("max_age", int)
# The stand-in service's clock, so a test can let time pass without sleeping.
CLOCK_KEY: Final = web.AppKey("clock", Callable[[], float])
SCOPE: Final = "identity:self transfers:write"


async def create_transfer(request: web.Request) -> web.Response:
    transfer = await json_body(request)
    if requires_step_up(transfer["amount"], transfer["currency"], THRESHOLDS):
        require_recent_otp(
            request[PRINCIPAL_KEY], max_age=request.app[MAX_AGE_KEY], now=request.app[CLOCK_KEY]()
        )
    return json_response({"object": "transfer", "status": "received", **transfer}, status=201)


@asynccontextmanager
async def transfers_service(
    identity: Identity,
    settings: Settings,
    max_age: int,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[str]:
    """The stand-in transfer API over HTTPS, trusting the identity app's JWKS."""
    verifier = TokenVerifier(
        f"{identity.base}/.well-known/jwks.json",
        settings.jwt_issuer,
        "transactions",
        settings.ca_file,
    )
    app = create_app(
        name="transactions",
        settings=settings,
        openapi_path=CONTRACT,
        routes=[web.post("/v1/transfers", create_transfer)],
        auth=verifier,
    )
    app[MAX_AGE_KEY] = max_age
    app[CLOCK_KEY] = clock
    async with serve_https(app, settings, "transactions") as base:
        yield base


@dataclass
class Transfers:
    base: str
    http: aiohttp.ClientSession

    async def create(
        self, token: str, amount: int, currency: str = "EUR"
    ) -> aiohttp.ClientResponse:
        response = await self.http.post(
            f"{self.base}/v1/transfers",
            json={"amount": amount, "currency": currency},
            headers={"Authorization": f"Bearer {token}"},
        )
        await response.read()
        return response


@pytest.fixture(scope="module")
async def transfers(identity: Identity, settings: Settings) -> AsyncIterator[Transfers]:
    async with transfers_service(identity, settings, DEFAULT_MAX_AGE) as base:
        yield Transfers(base, identity.http)


@pytest.fixture(scope="module")
async def wallet_app(identity: Identity) -> dict[str, Any]:
    """A public (PKCE) client for the user's wallet app: it may move money."""
    return await admin_client(
        identity,
        name="wallet-app",
        confidential=False,
        grant_types=["authorization_code", "refresh_token"],
        scopes=["identity:self", "transfers:write"],
        audiences=["identity", "transactions"],
        redirect_uris=[REDIRECT_URI],
    )


def assert_step_up_challenge(response: aiohttp.ClientResponse, max_age: int) -> None:
    assert response.status == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer error="insufficient_user_authentication"'), challenge
    assert f'acr_values="{MFA_ACR}"' in challenge
    assert f'max_age="{max_age}"' in challenge
    assert response.content_type == "application/problem+json"


async def test_large_transfer_needs_a_fresh_totp_login(
    identity: Identity, wallet_app: dict[str, Any], transfers: Transfers
) -> None:
    client_id = wallet_app["client_id"]
    username, password = await sign_up(identity)
    password_only = (await Browser(identity, client_id, SCOPE).password_login(username, password))[
        "access_token"
    ]
    assert jwt_claims(password_only)["amr"] == ["pwd"]

    # A small transfer needs no second factor; a large one gets the RFC 9470 challenge.
    assert (await transfers.create(password_only, 5_000)).status == 201
    assert (await transfers.create(password_only, 100_000)).status == 201  # at the threshold
    large = await transfers.create(password_only, 250_000)
    assert_step_up_challenge(large, DEFAULT_MAX_AGE)
    problem = await large.json()
    assert problem["type"].endswith("insufficient-user-authentication")
    assert (problem["acr_values"], problem["max_age"]) == (MFA_ACR, DEFAULT_MAX_AGE)
    # No threshold for the currency: any amount needs step-up.
    assert_step_up_challenge(await transfers.create(password_only, 100, "USD"), DEFAULT_MAX_AGE)

    # Enrolling TOTP does not upgrade the token already held.
    totp, _ = await enrol_totp(identity, password_only)
    assert_step_up_challenge(await transfers.create(password_only, 250_000), DEFAULT_MAX_AGE)

    # Signing in again with the TOTP code: amr includes otp, auth_time is fresh.
    stepped_up = (
        await Browser(identity, client_id, SCOPE).totp_login(
            username, password, next_totp_code(totp)
        )
    )["access_token"]
    assert jwt_claims(stepped_up)["amr"] == ["pwd", "otp"]
    response = await transfers.create(stepped_up, 250_000)
    assert response.status == 201, await response.text()
    assert (await response.json())["amount"] == 250_000


async def test_otp_login_older_than_max_age_is_challenged_again(
    identity: Identity, wallet_app: dict[str, Any], settings: Settings
) -> None:
    max_age = 60
    later = [0.0]  # seconds the stand-in service's clock runs ahead
    client_id = wallet_app["client_id"]
    username, password = await sign_up(identity)
    first = await Browser(identity, client_id, SCOPE).password_login(username, password)
    totp, _ = await enrol_totp(identity, first["access_token"])
    stepped_up = (
        await Browser(identity, client_id, SCOPE).totp_login(
            username, password, next_totp_code(totp)
        )
    )["access_token"]
    async with transfers_service(
        identity, settings, max_age, clock=lambda: time.time() + later[0]
    ) as base:
        strict = Transfers(base, identity.http)
        assert (await strict.create(stepped_up, 250_000)).status == 201
        later[0] = max_age + 2  # auth_time has whole-second resolution
        assert_step_up_challenge(await strict.create(stepped_up, 250_000), max_age)
