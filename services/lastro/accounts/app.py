"""Wiring of the account service: `lastro serve accounts`.

On start (``cleanup_ctx``, in order): the database engine and the schema's
migrations; the KMS client, the keys it needs (PII data keys, blind index,
event signing, audit chain) and the use cases; the outbox relay to Kafka; the
hold-expiry sweeper. They close in reverse order on shutdown. ``/readyz``
checks PostgreSQL, the KMS and the Kafka broker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

from aiohttp import web
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.accounts import api
from lastro.accounts.customers import Customers
from lastro.accounts.service import Ledger
from lastro.accounts.store import migrate_accounts
from lastro.core.background import periodic
from lastro.core.config import Settings
from lastro.core.db import create_engine, database_ready
from lastro.core.events import EventSigner, OutboxRelay
from lastro.core.http import create_app as create_service_app
from lastro.core.ratelimit import policies_from_settings, rate_limit_middleware, route_classifier
from lastro.core.security.fields import PII_KEY, BlindIndex, SubjectKeys
from lastro.core.security.tokens import TokenVerifier
from lastro.core.security.transit import TransitClient

log = logging.getLogger(__name__)

NAME: Final = "accounts"
AUDIENCE: Final = "accounts"
OPENAPI: Final = Path(__file__).parent / "openapi.yaml"
SWEEP_INTERVAL_SECONDS: Final = 2.0
KAFKA_PROBE_TIMEOUT_SECONDS: Final = 1.5

ENGINE_KEY: Final = web.AppKey("engine", AsyncEngine)
TRANSIT_KEY: Final = web.AppKey("transit", TransitClient)


async def _release_expired_holds(app: web.Application) -> None:
    """One hold sweep; a failed one is retried on the next tick (holds past expiry
    are refused anyway)."""
    expired = await app[api.LEDGER_KEY].expire_due_holds()
    if expired:
        log.info("released %d expired holds", len(expired))


async def create_app(
    settings: Settings, *, verifier: TokenVerifier | None = None, schema: str = "accounts"
) -> web.Application:
    """The account service application over ``schema`` (tests pass a throwaway one
    and a verifier trusting their own issuer; production trusts the identity
    service's JWKS for audience ``accounts``)."""

    async def database(app: web.Application) -> AsyncIterator[None]:
        engine = create_engine(settings, pool_size=20, max_overflow=20, name="lastro-accounts")
        try:
            await migrate_accounts(engine, schema)
            app[ENGINE_KEY] = engine
            yield
        finally:
            await engine.dispose()

    async def keys_and_use_cases(app: web.Application) -> AsyncIterator[None]:
        transit = TransitClient.from_settings(settings)
        try:
            await transit.ensure_key(PII_KEY)
            signer = await EventSigner.from_transit(transit, settings.events_key_name)
            audit_key = await transit.local_hmac_key(settings.audit_key_name)
            index = await BlindIndex.from_transit(transit)
            engine = app[ENGINE_KEY]
            ledger = Ledger(engine, signer, audit_key, schema=schema)
            app[TRANSIT_KEY] = transit
            app[api.LEDGER_KEY] = ledger
            app[api.CUSTOMERS_KEY] = Customers(engine, ledger, SubjectKeys(transit), index)
            yield
            await ledger.aclose()  # drain postings already queued for a group commit
        finally:
            await transit.close()

    async def outbox_relay(app: web.Application) -> AsyncIterator[None]:
        relay = OutboxRelay(
            app[ENGINE_KEY], app[api.LEDGER_KEY].tables.outbox, settings.kafka_bootstrap
        )
        await relay.start()
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop), name="accounts-outbox-relay")
        try:
            yield
        finally:
            stop.set()
            await task
            await relay.stop()

    redis = Redis.from_url(settings.redis_url)
    limits = rate_limit_middleware(
        redis,
        policies_from_settings(settings),
        route_classifier({}),
        prefix=f"lastro:rl:{schema}",
    )

    async def rate_limiter(app: web.Application) -> AsyncIterator[None]:
        yield
        await redis.aclose()

    async def kafka_ready(app: web.Application) -> bool:
        host, port = settings.kafka_bootstrap.split(",")[0].rsplit(":", 1)
        connect = asyncio.open_connection(host, int(port))
        _, writer = await asyncio.wait_for(connect, KAFKA_PROBE_TIMEOUT_SECONDS)
        writer.close()
        await writer.wait_closed()
        return True

    return create_service_app(
        name=NAME,
        settings=settings,
        openapi_path=OPENAPI,
        routes=api.routes,
        readiness={
            "database": lambda app: database_ready(app[ENGINE_KEY]),
            "kms": lambda app: app[TRANSIT_KEY].healthy(),
            "kafka": kafka_ready,
        },
        auth=verifier or TokenVerifier.from_settings(settings, audience=AUDIENCE),
        cleanup_ctx=[
            database,
            keys_and_use_cases,
            outbox_relay,
            periodic("accounts-hold-sweeper", _release_expired_holds, SWEEP_INTERVAL_SECONDS),
            rate_limiter,
        ],
        middlewares=[limits, api.ledger_problems],
    )
