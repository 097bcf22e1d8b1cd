"""Cleanup contexts for the resources every service opens: the database (with its
migrations), Redis, and the outbox relay; and the readiness checks over them.

Each factory returns an aiohttp ``cleanup_ctx`` generator that opens the resource
when the app starts, stores it under a typed ``web.AppKey`` and closes it in
``finally`` when the app stops (or when a later context fails to start), so an
``app.py`` lists what it needs and nothing is opened while the app is built.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web
from redis.asyncio import BlockingConnectionPool, Redis
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.config import Settings
from lastro.core.db import create_engine, database_ready, migrate
from lastro.core.events import OutboxRelay
from lastro.core.http import ReadinessCheck
from lastro.core.security.transit import TransitClient

KAFKA_PROBE_TIMEOUT_SECONDS = 1.5

CleanupContext = Callable[[web.Application], AsyncIterator[None]]


def database(
    key: web.AppKey[AsyncEngine],
    settings: Settings,
    *,
    name: str,
    schema: str,
    migrations: Path,
    pool_size: int = 10,
    max_overflow: int = 10,
    bind: Callable[[AsyncEngine], AsyncEngine] | None = None,
    pre_ping: bool = True,
) -> CleanupContext:
    """An engine for ``schema``, migrated to its newest revision before the app
    serves; ``bind`` adapts what is stored (e.g. a schema translation);
    ``pre_ping=False`` for a service whose every statement runs through
    :func:`~lastro.core.db.in_transaction` or :func:`~lastro.core.db.read`
    (see :func:`~lastro.core.db.create_engine`)."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        engine = create_engine(
            settings, pool_size=pool_size, max_overflow=max_overflow, name=name, pre_ping=pre_ping
        )
        try:
            await migrate(engine, schema, migrations)
            app[key] = bind(engine) if bind is not None else engine
            yield
        finally:
            await engine.dispose()

    return context


# Connections a process keeps to Redis. A burst of requests waits for a free one instead
# of opening one each: 35 connections opened at once (each a TCP and a CLIENT SETINFO
# round trip) outlasted the rate limiter's 0.5 s budget and it failed open.
REDIS_CONNECTIONS = 16


def redis_pool(url: str) -> Redis:
    """A Redis client over a bounded, blocking connection pool (see above); closing the
    client closes the pool."""
    pool = BlockingConnectionPool.from_url(url, max_connections=REDIS_CONNECTIONS)
    return Redis.from_pool(pool)


def redis_client(key: web.AppKey[Redis], url: str) -> CleanupContext:
    """A Redis client (rate limits, lockouts) over :func:`redis_pool`; it connects on
    first use."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        client = redis_pool(url)
        try:
            app[key] = client
            yield
        finally:
            await client.aclose()

    return context


def outbox_relay(
    engine: web.AppKey[AsyncEngine] | AsyncEngine, outbox: Table, settings: Settings, *, name: str
) -> CleanupContext:
    """The relay publishing ``outbox`` to Kafka while the app runs (see
    :class:`~lastro.core.events.OutboxRelay`); it stops after its current batch.
    ``engine`` is the app's key for it, or the engine itself where the app opened it
    before it was built."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        pool = app[engine] if isinstance(engine, web.AppKey) else engine
        relay = OutboxRelay(pool, outbox, settings.kafka_bootstrap)
        try:
            await relay.start()
            stop = asyncio.Event()
            task = asyncio.create_task(relay.run(stop), name=f"{name}-outbox-relay")
            try:
                yield
            finally:
                stop.set()
                await task
        finally:
            await relay.stop()

    return context


def readiness(
    engine: web.AppKey[AsyncEngine],
    transit: web.AppKey[TransitClient],
    *,
    kafka: Settings | None = None,
) -> dict[str, ReadinessCheck]:
    """``/readyz`` checks: PostgreSQL answers, the KMS is healthy and, when given the
    settings, the Kafka broker accepts connections."""

    async def database(app: web.Application) -> bool:
        return await database_ready(app[engine])

    async def kms(app: web.Application) -> bool:
        return await app[transit].healthy()

    checks: dict[str, ReadinessCheck] = {"database": database, "kms": kms}
    if kafka is not None:
        host, port = kafka.kafka_bootstrap.split(",")[0].rsplit(":", 1)

        async def broker(app: web.Application) -> bool:
            connect = asyncio.open_connection(host, int(port))
            _, writer = await asyncio.wait_for(connect, KAFKA_PROBE_TIMEOUT_SECONDS)
            writer.close()
            await writer.wait_closed()
            return True

        checks["kafka"] = broker
    return checks
