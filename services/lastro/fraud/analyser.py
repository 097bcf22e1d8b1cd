"""Wiring of the streaming analyser: ``lastro serve fraud-analyser``.

A worker: it answers only the operational routes (``/healthz``, ``/readyz``,
``/metrics``) on its own port. On start (``cleanup_ctx``, in order): the database
engine (the fraud schema, migrated by whichever fraud process starts first); the
KMS (event signing, audit), Redis and the profile store, the account service
client, the use case; the outbox relay (alerts reach ``lastro.fraud``); the
consumer of ``lastro.transactions`` in the group ``fraud-analyser`` (restarted
after a failure, from its last committed offset); the loop that asks the account
service to freeze accounts of high-severity alerts. ``/readyz`` checks
PostgreSQL, the KMS, Redis and Kafka.

Partitions of ``lastro.transactions`` are keyed by source account, so one
customer's payments reach one analyser replica in order; the receiving side of an
internal transfer may be updated from another partition concurrently, which the
profile store's compare-and-set turns into a retry, never a lost update.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiohttp import web
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.background import background
from lastro.core.config import Settings
from lastro.core.events import BACKGROUND_GATHER_SECONDS, EventConsumer, EventSigner
from lastro.core.http import create_app as create_service_app
from lastro.core.resources import database, outbox_relay, readiness, redis_client
from lastro.core.security.tls import client_context
from lastro.core.security.transit import TransitClient
from lastro.fraud.analysis import Analysis, learns_from
from lastro.fraud.app import recorder_for, redis_probe
from lastro.fraud.clients import AccountFreezer, Answer, ServiceTokens, Sibling, TokenSource
from lastro.fraud.domain.alerts import AlertCase
from lastro.fraud.domain.detectors import DEFAULT_CONFIG, DetectorConfig
from lastro.fraud.effects import EffectKind, Effects
from lastro.fraud.events import ANALYSER_GROUP, TRANSACTIONS_TOPIC
from lastro.fraud.service import AlertRecorder
from lastro.fraud.store import tables
from lastro.fraud.store.profiles import DEFAULT_PREFIX, ProfileStore

log = logging.getLogger(__name__)

NAME: Final = "fraud-analyser"
FREEZE_ACTOR: Final = "service:fraud-analyser/freezes"

ENGINE_KEY: Final = web.AppKey("engine", AsyncEngine)
REDIS_KEY: Final = web.AppKey("redis", Redis)
TRANSIT_KEY: Final = web.AppKey("transit", TransitClient)
SIGNER_KEY: Final = web.AppKey("signer", EventSigner)
ANALYSIS_KEY: Final = web.AppKey("analysis", Analysis)
FREEZES_KEY: Final = web.AppKey("freezes", Effects)


@dataclass(frozen=True)
class Wiring:
    """What tests replace; production takes every default. ``tokens``: the
    Authorization headers for the account service (default: this service's client
    credentials); ``accounts_url`` (default: the account service)."""

    schema: str = tables.SCHEMA
    redis_prefix: str = DEFAULT_PREFIX
    consumer_group: str = ANALYSER_GROUP
    tokens: TokenSource | None = None
    accounts_url: str | None = None
    config: DetectorConfig = DEFAULT_CONFIG


def freezes(freezer: AccountFreezer) -> EffectKind:
    """Asking the account service to freeze the alert's account (audited
    ``account.freeze_requested`` with the answer)."""

    async def call(case: AlertCase) -> Answer:
        assert case.alert.account_id is not None
        return await freezer.freeze(case.alert.account_id)

    return EffectKind(
        column="freeze",
        name="freeze",
        action="account.freeze_requested",
        call=call,
        target=lambda case: case.alert.account_id or case.id,
    )


async def create_app(settings: Settings, wiring: Wiring | None = None) -> web.Application:
    """The analyser worker (see the module docstring)."""
    wiring = wiring or Wiring()

    async def use_cases(app: web.Application) -> AsyncIterator[None]:
        engine = app[ENGINE_KEY]
        transit = TransitClient.from_settings(settings)
        tokens = ServiceTokens(settings)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_context(settings.ca_file))
        )
        try:
            signer = await EventSigner.from_transit(transit, settings.events_key_name)
            recorder = recorder_for(signer, await transit.local_hmac_key(settings.audit_key_name))
            accounts = Sibling(
                "accounts",
                wiring.accounts_url or settings.service_url("accounts"),
                session,
                wiring.tokens or tokens,
            )
            effects = Effects(engine, recorder, freezes(AccountFreezer(accounts)), FREEZE_ACTOR)
            profiles = ProfileStore(
                app[REDIS_KEY],
                prefix=wiring.redis_prefix,
                profile_ttl_seconds=settings.fraud.profile_ttl_days * 86400,
            )
            app[TRANSIT_KEY] = transit
            app[SIGNER_KEY] = signer
            app[FREEZES_KEY] = effects
            app[ANALYSIS_KEY] = Analysis(
                profiles,
                AlertRecorder(recorder),
                config=wiring.config,
                on_freeze_pending=effects.wake.set,
            )
            yield
        finally:
            await session.close()
            await tokens.close()
            await transit.close()

    async def consume(app: web.Application, stop: asyncio.Event) -> None:
        """The transaction events, until ``stop`` (restarted after failures)."""
        consumer = EventConsumer(
            name=wiring.consumer_group,
            topics=[TRANSACTIONS_TOPIC],
            bootstrap_servers=settings.kafka_bootstrap,
            engine=app[ENGINE_KEY],
            inbox=tables.inbox,
            signer=app[SIGNER_KEY],
            apply=app[ANALYSIS_KEY].apply,
            wants=learns_from,
            gather_seconds=BACKGROUND_GATHER_SECONDS,
        )
        await consumer.serve(stop)

    async def deliver_freezes(app: web.Application, stop: asyncio.Event) -> None:
        await app[FREEZES_KEY].run(stop)

    return create_service_app(
        name=NAME,
        settings=settings,
        openapi_path=None,
        readiness={
            **readiness(ENGINE_KEY, TRANSIT_KEY, kafka=settings),
            "redis": redis_probe(REDIS_KEY),
        },
        cleanup_ctx=[
            database(
                ENGINE_KEY,
                settings,
                name="lastro-fraud-analyser",
                schema=wiring.schema,
                migrations=tables.MIGRATIONS,
                pool_size=5,
                max_overflow=5,
                bind=lambda engine: tables.bind_schema(engine, wiring.schema),
                pre_ping=False,  # every statement in in_transaction or read
            ),
            redis_client(REDIS_KEY, settings.redis_url),
            use_cases,
            outbox_relay(ENGINE_KEY, tables.outbox, settings, name=NAME),
            background("fraud-analyser-consumer", consume),
            background("fraud-analyser-freezes", deliver_freezes),
        ],
    )
