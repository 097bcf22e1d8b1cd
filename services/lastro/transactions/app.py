"""Wiring of the transaction API: ``lastro serve transactions``.

On start (``cleanup_ctx``, in order): the database engine and the schema's
migrations; the KMS (event signing key, audit key, PII data keys, blind index);
Redis; the HTTP clients of its dependencies (accounts, fraud, acquirer, FX
provider) with their service token; the journal and the use cases; the
subscription that wakes ``Prefer: wait`` requests; the outbox relay; the hourly
purge of expired idempotency keys. They close in reverse order. ``/readyz``
checks PostgreSQL, the KMS, Redis and Kafka.

Middlewares after authentication: rate limits (``core/ratelimit.py``), then
``Idempotency-Key`` on every operation marked ``x-idempotent`` in
``openapi.yaml`` (``core/idempotency.py``, stored in this schema, 24 h).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Final

from aiohttp import web
from redis.asyncio import Redis

from lastro.core.background import periodic
from lastro.core.changes import ChangeRecorder
from lastro.core.config import Settings
from lastro.core.db import create_engine, database_ready, open_statement_pool
from lastro.core.events import EventSigner
from lastro.core.http import ReadinessCheck
from lastro.core.http import create_app as create_service_app
from lastro.core.idempotency import (
    idempotency_middleware,
    idempotent_operations,
    purge_expired_keys,
)
from lastro.core.openapi import ApiContract
from lastro.core.privacy import PRIVACY_KEY
from lastro.core.ratelimit import policies_from_settings, rate_limit_middleware, route_classifier
from lastro.core.resources import outbox_relay, redis_pool
from lastro.core.security.fields import PII_KEY, BlindIndex, SubjectKeys
from lastro.core.security.tokens import TokenVerifier
from lastro.core.security.transit import TransitClient
from lastro.transactions import api
from lastro.transactions.clients import dependencies
from lastro.transactions.events import SOURCE
from lastro.transactions.journal import Journal
from lastro.transactions.notices import Waiter
from lastro.transactions.privacy import Privacy
from lastro.transactions.service import Transactions
from lastro.transactions.store import migrate_transactions
from lastro.transactions.store.tables import tables as schema_tables

log = logging.getLogger(__name__)

NAME: Final = "transactions"
AUDIENCE: Final = "transactions"
OPENAPI: Final = Path(__file__).parent / "openapi.yaml"
KAFKA_PROBE_TIMEOUT_SECONDS: Final = 1.5
PURGE_INTERVAL_SECONDS: Final = 3600.0

TRANSIT_KEY: Final = web.AppKey("transit", TransitClient)
REDIS_KEY: Final = web.AppKey("redis", Redis)


def kafka_probe(settings: Settings) -> ReadinessCheck:
    """A readiness check: the Kafka broker accepts connections."""

    async def kafka_ready(app: web.Application) -> bool:
        connect = asyncio.open_connection(settings.host, settings.kafka_port)
        _, writer = await asyncio.wait_for(connect, KAFKA_PROBE_TIMEOUT_SECONDS)
        writer.close()
        await writer.wait_closed()
        return True

    return kafka_ready


def redis_probe(redis: Redis) -> ReadinessCheck:
    async def redis_ready(app: web.Application) -> bool:
        return bool(await redis.ping())

    return redis_ready


async def create_app(
    settings: Settings, *, verifier: TokenVerifier | None = None
) -> web.Application:
    """The transaction API over ``settings.transactions.schema``."""
    config = settings.transactions
    schema = config.schema
    t = schema_tables(schema)
    engine = create_engine(
        settings, pool_size=40, max_overflow=10, name="lastro-transactions", pre_ping=False
    )
    redis = redis_pool(settings.redis_url)
    keys = await open_statement_pool(settings, name="lastro-transactions-keys", max_size=8)

    async def database(app: web.Application) -> AsyncIterator[None]:
        try:
            await migrate_transactions(engine, schema)
            yield
        finally:
            await keys.close()
            await engine.dispose()

    async def use_cases(app: web.Application) -> AsyncIterator[None]:
        transit = TransitClient.from_settings(settings)
        try:
            await transit.ensure_key(PII_KEY)
            signer = await EventSigner.from_transit(transit, settings.events_key_name)
            audit_key = await transit.local_hmac_key(settings.audit_key_name)
            index = await BlindIndex.from_transit(transit)
            recorder = ChangeRecorder(
                source=SOURCE,
                outbox=t.outbox,
                audit_tables=t.audit,
                signer=signer,
                audit_key=audit_key,
            )
            journal = Journal(engine, t, recorder)
            async with dependencies(settings, redis) as deps:
                app[TRANSIT_KEY] = transit
                app[api.TRANSACTIONS_KEY] = Transactions(
                    engine,
                    t,
                    journal,
                    deps,
                    config,
                    subject_keys=SubjectKeys(transit),
                    blind_index=index,
                )
                app[PRIVACY_KEY] = Privacy(engine, t, recorder, SubjectKeys(transit))
                yield
                await journal.close()
        finally:
            await transit.close()

    async def notices(app: web.Application) -> AsyncIterator[None]:
        waiter = Waiter(redis, schema)
        app[api.WAITER_KEY] = waiter
        stop = asyncio.Event()
        task = asyncio.create_task(waiter.run(stop), name="transactions-waiter")
        try:
            yield
        finally:
            stop.set()
            await task
            await redis.aclose()

    async def purge_keys(app: web.Application) -> None:
        removed = await purge_expired_keys(engine, t.idempotency)
        if removed:
            log.info("purged %d expired idempotency keys", removed)

    contract = ApiContract.load(OPENAPI)
    limits = rate_limit_middleware(
        redis,
        policies_from_settings(settings),
        route_classifier({}),
        prefix=f"lastro:rl:{schema}",
    )
    idempotency = idempotency_middleware(
        engine, keys, t.idempotency, idempotent_operations(contract), retention=timedelta(hours=24)
    )
    app = create_service_app(
        name=NAME,
        settings=settings,
        openapi_path=OPENAPI,
        routes=api.routes,
        readiness={
            "database": lambda app: database_ready(engine),
            "kms": lambda app: app[TRANSIT_KEY].healthy(),
            "redis": redis_probe(redis),
            "kafka": kafka_probe(settings),
        },
        auth=verifier or TokenVerifier.from_settings(settings, audience=AUDIENCE),
        cleanup_ctx=[
            database,
            use_cases,
            notices,
            outbox_relay(engine, t.outbox, settings, name="transactions"),
            periodic("transactions-idempotency-purge", purge_keys, PURGE_INTERVAL_SECONDS),
        ],
        middlewares=[limits, idempotency],
    )
    app[api.MAX_WAIT_KEY] = config.max_wait
    return app
