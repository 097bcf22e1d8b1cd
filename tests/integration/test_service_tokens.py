"""Service-to-service tokens from a real identity service over HTTPS.

A service client is registered through the admin API; ServiceTokenClient gets
client_credentials tokens per audience, which a resource server's TokenVerifier
checks against the identity JWKS. Token requests are counted on the server side,
from the identity app's own ``lastro_http_requests_total`` metric.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from identity_flows import (
    Identity,
    admin_client,
    jwt_claims,
    module_identity,  # noqa: F401 - provides the `identity` fixture
)

from lastro.core.config import Settings
from lastro.core.observability import metrics_registry
from lastro.core.resilience import ResilientCall
from lastro.core.security.service_tokens import (
    REFRESH_FRACTION,
    ServiceTokenClient,
    ServiceTokenError,
)
from lastro.core.security.tokens import InvalidToken, TokenVerifier
from lastro.identity.domain import ACCESS_TOKEN_TTL


@pytest.fixture(scope="module")
async def transactions_service(identity: Identity) -> dict[str, Any]:
    """The transactions service's identity: it may call accounts and fraud."""
    return await admin_client(
        identity,
        name="transactions-service",
        grant_types=["client_credentials"],
        scopes=["ledger:write", "fraud:screen"],
        audiences=["accounts", "fraud"],
    )


def token_requests(status: int = 200) -> float:
    """How many token requests the identity app in this process has answered with ``status``."""
    value = metrics_registry().get_sample_value(
        "lastro_http_requests_total",
        {"route": "/oauth/token", "method": "POST", "status": str(status)},
    )
    return value or 0.0


def token_client(
    identity: Identity, service: dict[str, Any], settings: Settings, **options: Any
) -> ServiceTokenClient:
    return ServiceTokenClient(
        f"{identity.base}/oauth/token",
        service["client_id"],
        service["client_secret"],
        settings.ca_file,
        **options,
    )


def verifier(identity: Identity, settings: Settings, audience: str) -> TokenVerifier:
    return TokenVerifier(
        f"{identity.base}/.well-known/jwks.json", settings.jwt_issuer, audience, settings.ca_file
    )


async def test_token_for_an_audience_verifies_there_and_is_fetched_once(
    identity: Identity, transactions_service: dict[str, Any], settings: Settings
) -> None:
    before = token_requests()
    async with token_client(
        identity, transactions_service, settings, scope="ledger:write"
    ) as tokens:
        first = await tokens.headers("accounts")
        second = await tokens.headers("accounts")
    assert token_requests() - before == 1
    assert first == second
    scheme, _, token = first["Authorization"].partition(" ")
    assert scheme == "Bearer"

    principal = await verifier(identity, settings, "accounts").verify(token)
    assert principal.client_id == transactions_service["client_id"]
    assert principal.subject == transactions_service["client_id"]
    assert principal.audience == ("accounts",)
    assert principal.scopes == frozenset({"ledger:write"})
    with pytest.raises(InvalidToken):
        await verifier(identity, settings, "fraud").verify(token)


async def test_each_audience_gets_its_own_token(
    identity: Identity, transactions_service: dict[str, Any], settings: Settings
) -> None:
    async with token_client(identity, transactions_service, settings) as tokens:
        accounts = await tokens.token("accounts")
        fraud = await tokens.token("fraud")
    assert jwt_claims(accounts)["aud"] in ("accounts", ["accounts"])
    assert (await verifier(identity, settings, "fraud").verify(fraud)).audience == ("fraud",)
    with pytest.raises(InvalidToken):
        await verifier(identity, settings, "accounts").verify(fraud)


async def test_concurrent_callers_share_one_token_request(
    identity: Identity, transactions_service: dict[str, Any], settings: Settings
) -> None:
    before = token_requests()
    async with token_client(identity, transactions_service, settings) as tokens:
        issued = await asyncio.gather(*(tokens.token("fraud") for _ in range(25)))
    assert len(set(issued)) == 1
    assert token_requests() - before == 1


async def test_token_is_refreshed_after_most_of_its_lifetime(
    identity: Identity, transactions_service: dict[str, Any], settings: Settings
) -> None:
    now = [1000.0]
    lifetime = ACCESS_TOKEN_TTL.total_seconds()
    before = token_requests()
    async with token_client(
        identity, transactions_service, settings, clock=lambda: now[0]
    ) as tokens:
        first = await tokens.token("accounts")
        now[0] += (REFRESH_FRACTION - 0.01) * lifetime
        assert await tokens.token("accounts") == first
        assert token_requests() - before == 1
        now[0] += 0.02 * lifetime
        renewed = await tokens.token("accounts")
    assert token_requests() - before == 2
    assert renewed != first
    assert jwt_claims(renewed)["jti"] != jwt_claims(first)["jti"]


async def test_audience_the_client_may_not_use_is_a_clear_error_and_not_retried(
    identity: Identity, transactions_service: dict[str, Any], settings: Settings
) -> None:
    breaker_watch = ResilientCall("identity-token-test", timeout=5.0, fail_max=1, retries=3)
    before = token_requests(400)
    async with token_client(
        identity, transactions_service, settings, resilience=breaker_watch
    ) as tokens:
        with pytest.raises(ServiceTokenError, match="'transactions'") as refused:
            await tokens.headers("transactions")
    assert (refused.value.status, refused.value.error) == (400, "invalid_target")
    assert token_requests(400) - before == 1  # a refusal is final: no retry
    assert not breaker_watch.is_open  # and the issuer is not considered unhealthy


async def test_wrong_secret_is_refused_as_invalid_client(
    identity: Identity, transactions_service: dict[str, Any], settings: Settings
) -> None:
    impostor = {**transactions_service, "client_secret": "not-the-secret"}
    async with token_client(identity, impostor, settings) as tokens:
        with pytest.raises(ServiceTokenError) as refused:
            await tokens.token("accounts")
    assert refused.value.error == "invalid_client"
