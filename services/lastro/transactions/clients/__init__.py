"""Adapters for everything the transaction service calls over HTTPS.

Each dependency has one breaker (state in ``lastro_circuit_breaker_state{name}``)
and its own timeout: ``accounts`` (money calls, idempotent, retried), ``fraud``
(one attempt within the screening budget), ``acquirer`` (idempotency keys, so
retried) and ``fx`` (reads, retried once). :func:`dependencies` opens them all
over one HTTP session verified against the configured CA.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

import aiohttp
from aiobreaker import CircuitBreaker
from redis.asyncio import Redis

from lastro.core.config import Settings
from lastro.core.resilience import ResilientCall, is_transient
from lastro.core.security.service_tokens import ServiceTokenClient, dev_service_credentials
from lastro.core.security.tls import client_context
from lastro.transactions.clients.acquirer import AcquirerClient
from lastro.transactions.clients.fraud import FraudClient
from lastro.transactions.clients.fx import FxRates
from lastro.transactions.clients.http import Endpoint
from lastro.transactions.clients.ledger import LedgerClient

SCOPES = ["ledger:read", "ledger:write", "fraud:screen"]
AUDIENCES = ["accounts", "fraud"]


@dataclass(frozen=True)
class Dependencies:
    ledger: LedgerClient
    fraud: FraudClient
    acquirer: AcquirerClient
    fx: FxRates
    calls: Mapping[str, ResilientCall]


async def service_credentials(settings: Settings) -> tuple[str, str]:
    """The transaction service's client credentials (configured, or on the local
    stack registered once and kept in ``.dev/secrets/transactions_client``)."""
    config = settings.transactions
    if config.client_id and config.client_secret:
        return config.client_id, config.client_secret
    return await dev_service_credentials(
        settings,
        "transactions",
        scopes=SCOPES,
        audiences=AUDIENCES,
        secret_file=settings.dev_dir / "secrets" / "transactions_client",
    )


@asynccontextmanager
async def dependencies(settings: Settings, redis: Redis) -> AsyncIterator[Dependencies]:
    config = settings.transactions
    client_id, secret = await service_credentials(settings)
    connector = aiohttp.TCPConnector(ssl=client_context(settings.ca_file), limit=400)
    session = aiohttp.ClientSession(connector=connector)
    tokens = ServiceTokenClient.from_settings(settings, client_id, secret)
    reset = config.breaker_reset_seconds
    accounts_breaker = CircuitBreaker(
        fail_max=config.breaker_fail_max,
        timeout_duration=timedelta(seconds=reset),
        exclude=[lambda exc: not is_transient(exc)],
        name="accounts",
    )
    calls = {
        "accounts": ResilientCall("accounts", timeout=5.0, breaker=accounts_breaker),
        "accounts-caller": ResilientCall("accounts", timeout=5.0, breaker=accounts_breaker),
        "fraud": ResilientCall(
            "fraud",
            timeout=config.fraud_timeout_ms / 1000,
            retries=0,
            fail_max=config.breaker_fail_max,
            # Open, it fails the worker's questions fast while the worker waits for
            # fraud, up to the fallback's patience: probe again soon.
            reset_timeout=config.fraud_breaker_reset_seconds,
        ),
        "acquirer": ResilientCall(
            "acquirer",
            timeout=config.acquirer_timeout_ms / 1000,
            retries=2,
            fail_max=config.breaker_fail_max,
            reset_timeout=reset,
        ),
        "fx": ResilientCall(
            "fx", timeout=1.0, retries=1, fail_max=config.breaker_fail_max, reset_timeout=reset
        ),
    }

    async def accounts_token() -> Mapping[str, str]:
        return await tokens.headers("accounts")

    async def fraud_token() -> Mapping[str, str]:
        return await tokens.headers("fraud")

    async def acquirer_key() -> Mapping[str, str]:
        return {"Authorization": f"Bearer {settings.partner_api_keys['acquirer']}"}

    async def fx_key() -> Mapping[str, str]:
        return {"Authorization": f"Bearer {settings.partner_api_keys['fx']}"}

    for audience in AUDIENCES:  # warm the token cache; a failure is retried on first use
        with contextlib.suppress(Exception):
            await tokens.token(audience)
    accounts_url = settings.service_url("accounts")
    try:
        yield Dependencies(
            ledger=LedgerClient(
                Endpoint("accounts", accounts_url, session, calls["accounts"], accounts_token),
                Endpoint("accounts", accounts_url, session, calls["accounts-caller"]),
            ),
            fraud=FraudClient(
                Endpoint("fraud", config.fraud_url, session, calls["fraud"], fraud_token),
                concurrency=config.fraud_concurrency,
            ),
            acquirer=AcquirerClient(
                Endpoint("acquirer", config.acquirer_url, session, calls["acquirer"], acquirer_key),
                settings.acquirer_webhook_secret,
            ),
            fx=FxRates(
                Endpoint("fx", config.fx_url, session, calls["fx"], fx_key),
                redis,
                fresh=config.fx_rate_ttl,
                max_staleness=config.fx_max_staleness,
                prefix=f"lastro:fx:{config.schema}",
            ),
            calls=calls,
        )
    finally:
        await tokens.close()
        await session.close()
