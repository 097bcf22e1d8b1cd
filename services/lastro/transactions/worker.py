"""Wiring of the transaction worker: ``lastro serve transactions-worker``.

A member of the Kafka consumer group ``transactions-worker`` on
``lastro.transactions.commands`` (6 partitions, keyed by source account): each
command names a transaction or a batch, and :class:`Processor` moves it on from
its stored state. Commands of one account are handled in order, others
concurrently (``core.events.CommandConsumer``). Beside the consumer: the outbox
relay (its events), the notices that wake ``Prefer: wait`` requests, and two
sweepers: stuck rows (a lost command, a dependency that was down, an owed
compensation, an expired challenge) get a new command every few seconds;
reviews nobody resolved in time get the configured expiry policy.

Serves only the operational routes (``/healthz``, ``/readyz``, ``/metrics``) on
its own port; ``/readyz`` also fails while the consumer holds no partition
assignment yet.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Final

from aiohttp import web

from lastro.core.background import periodic
from lastro.core.changes import ChangeRecorder
from lastro.core.config import Settings, TransactionSettings
from lastro.core.db import create_engine, database_ready
from lastro.core.events import CloudEvent, CommandConsumer, EventSigner
from lastro.core.http import create_app as create_service_app
from lastro.core.resources import outbox_relay, redis_pool
from lastro.core.security.transit import TransitClient
from lastro.transactions.app import kafka_probe, redis_probe
from lastro.transactions.clients import dependencies
from lastro.transactions.domain.machine import Policy
from lastro.transactions.events import COMMANDS_TOPIC, SOURCE
from lastro.transactions.journal import Journal
from lastro.transactions.notices import Notifier
from lastro.transactions.processor import Processor
from lastro.transactions.store import migrate_transactions
from lastro.transactions.store.tables import tables as schema_tables

log = logging.getLogger(__name__)

NAME: Final = "transactions-worker"
RESUME_INTERVAL_SECONDS: Final = 5.0
REVIEW_SWEEP_SECONDS: Final = 30.0

PROCESSOR_KEY: Final = web.AppKey("processor", Processor)
CONSUMER_KEY: Final = web.AppKey("consumer", CommandConsumer)


def policy_of(config: TransactionSettings) -> Policy:
    return Policy(
        fraud_fallback_limits=dict(config.fraud_fallback_limits),
        fraud_fallback_limits_sca=dict(config.fraud_fallback_limits_sca),
        review_timeout=timedelta(seconds=config.review_timeout),
        review_expiry_post=config.review_expiry_policy == "post",
        challenge_timeout=timedelta(seconds=config.challenge_timeout),
        fraud_fallback_after=timedelta(milliseconds=config.fraud_fallback_after_ms),
    )


async def create_app(settings: Settings) -> web.Application:
    """The worker over ``settings.transactions.schema``, in consumer group
    ``settings.transactions.worker_group``."""
    config = settings.transactions
    schema = config.schema
    t = schema_tables(schema)
    engine = create_engine(
        settings, pool_size=50, max_overflow=10, name="lastro-transactions-worker", pre_ping=False
    )
    redis = redis_pool(settings.redis_url)
    transit = TransitClient.from_settings(settings)
    signer_box: list[EventSigner] = []

    async def database(app: web.Application) -> AsyncIterator[None]:
        try:
            await migrate_transactions(engine, schema)
            yield
        finally:
            await engine.dispose()

    async def processing(app: web.Application) -> AsyncIterator[None]:
        try:
            signer = await EventSigner.from_transit(transit, settings.events_key_name)
            signer_box.append(signer)
            audit_key = await transit.local_hmac_key(settings.audit_key_name)
            recorder = ChangeRecorder(
                source=SOURCE,
                outbox=t.outbox,
                audit_tables=t.audit,
                signer=signer,
                audit_key=audit_key,
            )
            journal = Journal(engine, t, recorder)
            notifier = Notifier(redis, schema)
            stop = asyncio.Event()
            notices = asyncio.create_task(notifier.run(stop), name="transactions-notices")
            async with dependencies(settings, redis) as deps:
                app[PROCESSOR_KEY] = Processor(
                    engine, t, journal, deps, policy_of(config), notify=notifier.notify
                )
                yield
                await journal.close()
            stop.set()
            await notices
        finally:
            await transit.close()
            await redis.aclose()

    async def consumer(app: web.Application) -> AsyncIterator[None]:
        processor = app[PROCESSOR_KEY]

        async def handle(command: CloudEvent) -> None:
            data = command.data
            if data.get("instance") != schema:
                return  # another instance's command on the shared topic
            if "batch_id" in data:
                await processor.advance_batch(str(data["batch_id"]))
            else:
                await processor.advance(str(data["transaction_id"]))

        commands = CommandConsumer(
            name=config.worker_group,
            topics=[COMMANDS_TOPIC],
            bootstrap_servers=settings.kafka_bootstrap,
            signer=signer_box[0],
            handle=handle,
        )
        app[CONSUMER_KEY] = commands
        stop = asyncio.Event()
        task = asyncio.create_task(commands.serve(stop), name="transactions-commands")
        try:
            yield
        finally:
            stop.set()
            await task

    async def resume_stuck(app: web.Application) -> None:
        await app[PROCESSOR_KEY].resume_stuck(config.stuck_after)

    async def expire_reviews(app: web.Application) -> None:
        await app[PROCESSOR_KEY].expire_reviews()

    async def partitions_assigned(app: web.Application) -> bool:
        return bool(app[CONSUMER_KEY].assignment())

    return create_service_app(
        name=NAME,
        settings=settings,
        openapi_path=None,
        readiness={
            "database": lambda app: database_ready(engine),
            "redis": redis_probe(redis),
            "kafka": kafka_probe(settings),
            "partitions": partitions_assigned,
        },
        cleanup_ctx=[
            database,
            processing,
            outbox_relay(engine, t.outbox, settings, name="transactions-worker"),
            consumer,
            periodic("transactions-resume-stuck", resume_stuck, RESUME_INTERVAL_SECONDS),
            periodic("transactions-review-expiry", expire_reviews, REVIEW_SWEEP_SECONDS),
        ],
    )
