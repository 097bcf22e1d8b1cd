"""Wiring of the notification service: `lastro serve notifications`.

On start (``cleanup_ctx``, in order): the database engine and the schema's
migrations; the KMS client and the keys (PII data keys, webhook secrets, event
signing, audit chain); the contact directory (accounts) with this service's own
OAuth client; the three channels; the use cases; the outbox relay; the event
consumer (transactions, fraud, accounts, identity); the planner and delivery
loops; the gauges and the secret housekeeping. They close in reverse order on
shutdown (the loops finish the batch in hand). ``/readyz`` checks PostgreSQL, the
KMS and the Kafka broker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.background import background, drain, periodic
from lastro.core.changes import ChangeRecorder
from lastro.core.config import ConfigError, Settings
from lastro.core.db import Tx, create_engine, in_transaction
from lastro.core.events import BACKGROUND_GATHER_SECONDS, EventConsumer, EventSigner
from lastro.core.http import create_app as create_service_app
from lastro.core.privacy import PRIVACY_KEY
from lastro.core.resources import database, outbox_relay, readiness
from lastro.core.security.fields import PII_KEY, SubjectKeys
from lastro.core.security.service_tokens import ServiceTokenClient
from lastro.core.security.tls import client_context
from lastro.core.security.tokens import TokenVerifier
from lastro.core.security.transit import TransitClient
from lastro.notifications import api, events, store
from lastro.notifications.channels import (
    EmailSender,
    Resolver,
    SmsSender,
    SystemResolver,
    WebhookSender,
    WebhookTargets,
    webhook_tls,
)
from lastro.notifications.contacts import ACCOUNTS, CONTACT_SCOPE, ContactDirectory, Headers
from lastro.notifications.contacts import service_client as registered_client
from lastro.notifications.dispatch import Dispatcher
from lastro.notifications.domain.webhooks import AddressPolicy
from lastro.notifications.ports import DispatchConfig
from lastro.notifications.privacy import Privacy
from lastro.notifications.sealing import Sealer, WebhookSecrets
from lastro.notifications.service import Notifications

log = logging.getLogger(__name__)

NAME: Final = "notifications"
AUDIENCE: Final = "notifications"
SOURCE: Final = "/notifications"
OPENAPI: Final = Path(__file__).parent / "openapi.yaml"
GAUGE_INTERVAL_SECONDS: Final = 5.0
SECRET_PURGE_INTERVAL_SECONDS: Final = 3600.0

ENGINE_KEY: Final = web.AppKey("engine", AsyncEngine)
WORK_ENGINE_KEY: Final = web.AppKey("work_engine", AsyncEngine)
# The background loops' pool: the consumer, the planner's and the delivery loop's
# statements (a fixed handful per batch), the gauges. Sized so they never wait and
# never overflow (an overflow connection is closed on return: a new TLS handshake).
WORK_POOL_SIZE: Final = 8
TRANSIT_KEY: Final = web.AppKey("transit", TransitClient)
DISPATCHER_KEY: Final = web.AppKey("dispatcher", Dispatcher)
SIGNER_KEY: Final = web.AppKey("signer", EventSigner)


@dataclass(frozen=True)
class Wiring:
    """What tests replace; production takes every default. ``contacts_auth`` gives
    the Authorization header for accounts (default: this service's own client
    credentials through identity); ``resolver`` resolves webhook hosts (default:
    the system's)."""

    schema: str = store.SCHEMA
    verifier: TokenVerifier | None = None
    contacts_auth: Headers | None = None
    resolver: Resolver | None = None
    consumer_group: str = NAME


async def _purge_secrets(app: web.Application) -> None:
    async def work(tx: Tx) -> int:
        return await store.purge_expired_secrets(tx, datetime.now(UTC))

    purged = await in_transaction(app[ENGINE_KEY], work)
    if purged:
        log.info("deleted %d expired webhook secrets", purged)


async def create_app(settings: Settings, wiring: Wiring | None = None) -> web.Application:
    """The notification service application (see the module docstring)."""
    wiring = wiring or Wiring()
    config = settings.notifications
    sms_api_key = settings.partner_api_keys.get("sms", "")
    if settings.env not in ("dev", "test") and not sms_api_key:
        raise ConfigError("LASTRO_SMS_API_KEY is required outside dev/test")

    async def work_engine(app: web.Application) -> AsyncIterator[None]:
        # No pre-ping (a round trip per checkout, 11 % of the service's CPU under load):
        # every unit of work here runs through in_transaction or _read, which retry
        # once on another connection when a pooled one died with a server restart.
        engine = create_engine(
            settings,
            pool_size=WORK_POOL_SIZE,
            max_overflow=0,
            name="lastro-notifications-work",
            pre_ping=False,
        )
        try:
            app[WORK_ENGINE_KEY] = store.bind_schema(engine, wiring.schema)
            yield
        finally:
            await engine.dispose()

    async def use_cases(app: web.Application) -> AsyncIterator[None]:
        engine = app[ENGINE_KEY]
        work = app[WORK_ENGINE_KEY]
        transit = TransitClient.from_settings(settings)
        tokens: ServiceTokenClient | None = None
        closing: list[ContactDirectory | WebhookSender | SmsSender | EmailSender] = []
        try:
            await transit.ensure_key(PII_KEY)
            signer = await EventSigner.from_transit(transit, settings.events_key_name)
            recorder = ChangeRecorder(
                source=SOURCE,
                outbox=store.outbox,
                audit_tables=store.audit,
                signer=signer,
                audit_key=await transit.local_hmac_key(settings.audit_key_name),
            )
            secrets = WebhookSecrets(transit)
            await secrets.prepare()
            bound = await secrets.bind_older(engine)
            if bound:
                log.info("bound %d webhook secrets to their rows", bound)
            subject_keys = SubjectKeys(transit)  # one cache: a shred forgets for both
            sealer = Sealer(engine, subject_keys)
            auth = wiring.contacts_auth
            if auth is None:
                client_id, client_secret = await registered_client(settings)
                tokens = ServiceTokenClient.from_settings(
                    settings, client_id, client_secret, scope=CONTACT_SCOPE
                )
                auth = _bearer(tokens)
            contacts = ContactDirectory(settings.service_url(ACCOUNTS), auth, settings.ca_file)
            targets = WebhookTargets(
                wiring.resolver or SystemResolver(), AddressPolicy(config.webhook_allow_cidrs)
            )
            dev_ca = str(settings.ca_file) if settings.env in ("dev", "test") else None
            webhooks = WebhookSender(targets, webhook_tls(dev_ca), config.webhook_timeout_seconds)
            internal_tls = client_context(settings.ca_file)
            mailer = EmailSender(
                config.smtp_host or settings.host,
                settings.smtp_port,
                internal_tls,
                config.mail_from,
                config.channel_timeout_seconds,
            )
            texter = SmsSender(
                settings.service_url("sms"),
                sms_api_key,
                internal_tls,
                config.channel_timeout_seconds,
            )
            closing += [contacts, webhooks, texter, mailer]
            dispatcher = Dispatcher(
                work,
                recorder,
                Sealer(work, subject_keys),
                secrets,
                contacts,
                webhooks,
                mailer,
                texter,
                DispatchConfig.from_settings(config),
            )
            app[TRANSIT_KEY] = transit
            app[SIGNER_KEY] = signer
            app[DISPATCHER_KEY] = dispatcher
            app[api.NOTIFICATIONS_KEY] = Notifications(
                engine,
                recorder,
                sealer,
                secrets,
                targets,
                contacts,
                on_deliveries=dispatcher.delivering.set,
            )
            app[PRIVACY_KEY] = Privacy(engine, recorder, sealer)
            yield
        finally:
            for resource in reversed(closing):
                await resource.close()
            if tokens is not None:
                await tokens.close()
            await transit.close()

    async def consume(app: web.Application, stop: asyncio.Event) -> None:
        consumer = EventConsumer(
            name=wiring.consumer_group,
            topics=events.CONSUMED_TOPICS,
            bootstrap_servers=settings.kafka_bootstrap,
            engine=app[WORK_ENGINE_KEY],
            inbox=store.inbox,
            signer=app[SIGNER_KEY],
            apply=events.apply_to(app[DISPATCHER_KEY]),
            wants=events.handles,
            gather_seconds=BACKGROUND_GATHER_SECONDS,
        )
        await consumer.serve(stop)

    poll = config.poll_seconds
    return create_service_app(
        name=NAME,
        settings=settings,
        openapi_path=OPENAPI,
        routes=api.routes,
        readiness=readiness(ENGINE_KEY, TRANSIT_KEY, kafka=settings),
        auth=wiring.verifier or TokenVerifier.from_settings(settings, audience=AUDIENCE),
        cleanup_ctx=[
            database(
                ENGINE_KEY,
                settings,
                name="lastro-notifications",
                schema=wiring.schema,
                migrations=store.MIGRATIONS,
                bind=lambda engine: store.bind_schema(engine, wiring.schema),
            ),
            work_engine,
            use_cases,
            outbox_relay(ENGINE_KEY, store.outbox, settings, name=NAME),
            background("notifications-consumer", consume),
            drain(
                "notifications-planner",
                lambda app: app[DISPATCHER_KEY].plan_due(),
                poll,
                wake=lambda app: app[DISPATCHER_KEY].planning,
            ),
            drain(
                "notifications-delivery",
                lambda app: app[DISPATCHER_KEY].deliver_due(),
                poll,
                wake=lambda app: app[DISPATCHER_KEY].delivering,
            ),
            periodic(
                "notifications-gauges",
                lambda app: app[DISPATCHER_KEY].refresh_gauges(),
                GAUGE_INTERVAL_SECONDS,
            ),
            periodic("notifications-secret-purge", _purge_secrets, SECRET_PURGE_INTERVAL_SECONDS),
        ],
    )


def _bearer(tokens: ServiceTokenClient) -> Headers:
    async def headers() -> dict[str, str]:
        return await tokens.headers(ACCOUNTS)

    return headers
