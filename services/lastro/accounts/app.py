"""Wiring of the account service (the composition root): `lastro serve accounts`.

On start (``cleanup_ctx``, in order): the database engine and the schema's
migrations; the KMS client, the keys it needs (PII data keys, blind index,
event signing, audit chain) and the use cases; the outbox relay to Kafka; the
hold-expiry sweeper; the Redis client behind the rate limits. Each is opened in
its context and closed in its ``finally``, in reverse order on shutdown.
``/readyz`` checks PostgreSQL, the KMS and the Kafka broker.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Final

from aiohttp import web
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.accounts import api
from lastro.accounts.customers import Customers
from lastro.accounts.privacy import Privacy
from lastro.accounts.service import Ledger
from lastro.accounts.store import MIGRATIONS, ledger_tables
from lastro.accounts.subject_requests import SubjectRequests
from lastro.core import registry
from lastro.core.background import periodic
from lastro.core.config import Settings
from lastro.core.events import EventSigner
from lastro.core.http import create_app as create_service_app
from lastro.core.privacy import PRIVACY_KEY
from lastro.core.privacy_client import PrivacyClient
from lastro.core.ratelimit import policies_from_settings, rate_limit_middleware, route_classifier
from lastro.core.resources import database, outbox_relay, readiness, redis_client
from lastro.core.security.fields import PII_KEY, BlindIndex, SubjectKeys
from lastro.core.security.service_tokens import dev_service_credentials
from lastro.core.security.tokens import TokenVerifier
from lastro.core.security.transit import TransitClient

log = logging.getLogger(__name__)

NAME: Final = "accounts"
AUDIENCE: Final = "accounts"
OPENAPI: Final = Path(__file__).parent / "openapi.yaml"
SWEEP_INTERVAL_SECONDS: Final = 2.0

ENGINE_KEY: Final = web.AppKey("engine", AsyncEngine)
TRANSIT_KEY: Final = web.AppKey("transit", TransitClient)
REDIS_KEY: Final = web.AppKey("redis", Redis)


async def _release_expired_holds(app: web.Application) -> None:
    """One hold sweep; a failed one is retried on the next tick (holds past expiry
    are refused anyway)."""
    expired = await app[api.LEDGER_KEY].expire_due_holds()
    if expired:
        log.info("released %d expired holds", len(expired))


async def privacy_credentials(settings: Settings) -> tuple[str, str]:
    """The client the data-subject fan-out calls the privacy API with
    (``LASTRO_PRIVACY_CLIENT_ID``/``_SECRET``; on the local stack registered once:
    scope ``privacy:admin``, every privacy service's audience)."""
    if settings.privacy_client_id and settings.privacy_client_secret:
        return settings.privacy_client_id, settings.privacy_client_secret
    return await dev_service_credentials(
        settings,
        "accounts-privacy",
        scopes=[registry.PRIVACY_SCOPE],
        audiences=[s.audience for s in registry.privacy_services() if s.audience],
        secret_file=settings.dev_dir / "secrets" / "accounts_privacy_client",
    )


async def create_app(
    settings: Settings,
    *,
    verifier: TokenVerifier | None = None,
    schema: str = "accounts",
    pii_key: str = PII_KEY,
    privacy_services: Sequence[registry.ServiceSpec] | None = None,
) -> web.Application:
    """The account service application over ``schema`` (tests pass a throwaway one,
    a verifier trusting their own issuer and, to rotate it, their own PII key, and
    may limit data-subject requests to some ``privacy_services``; production trusts
    the identity service's JWKS for audience ``accounts`` and asks every registry
    service holding personal data)."""

    async def keys_and_use_cases(app: web.Application) -> AsyncIterator[None]:
        transit = TransitClient.from_settings(settings)
        try:
            await transit.ensure_key(pii_key)
            signer = await EventSigner.from_transit(transit, settings.events_key_name)
            audit_key = await transit.local_hmac_key(settings.audit_key_name)
            index = await BlindIndex.from_transit(transit)
            engine = app[ENGINE_KEY]
            ledger = Ledger(engine, signer, audit_key, schema=schema)
            app[TRANSIT_KEY] = transit
            app[api.LEDGER_KEY] = ledger
            customers = Customers(engine, ledger, SubjectKeys(transit, pii_key), index)
            app[api.CUSTOMERS_KEY] = customers
            own = Privacy(engine, ledger, customers)
            app[PRIVACY_KEY] = own
            await transit.ensure_key(settings.privacy_key_name)
            fan_out = PrivacyClient(settings, lambda: privacy_credentials(settings))
            app[api.SUBJECTS_KEY] = SubjectRequests(
                engine,
                ledger,
                customers,
                transit,
                fan_out,
                registry.privacy_services() if privacy_services is None else privacy_services,
                local=own,
                key_name=settings.privacy_key_name,
            )
            try:
                yield
            finally:
                await ledger.aclose()  # drain postings already queued for a group commit
                await fan_out.close()
        finally:
            await transit.close()

    limits = rate_limit_middleware(
        REDIS_KEY,
        policies_from_settings(settings),
        route_classifier({}),
        prefix=f"lastro:rl:{schema}",
    )

    return create_service_app(
        name=NAME,
        settings=settings,
        openapi_path=OPENAPI,
        routes=api.routes,
        readiness=readiness(ENGINE_KEY, TRANSIT_KEY, kafka=settings),
        auth=verifier or TokenVerifier.from_settings(settings, audience=AUDIENCE),
        cleanup_ctx=[
            database(
                ENGINE_KEY,
                settings,
                name="lastro-accounts",
                schema=schema,
                migrations=MIGRATIONS,
                pool_size=20,
                max_overflow=20,
                # Every statement runs in in_transaction or read, which replace a
                # connection the server dropped: no ping per checkout (three round
                # trips each, three to five checkouts per transfer).
                pre_ping=False,
            ),
            keys_and_use_cases,
            outbox_relay(ENGINE_KEY, ledger_tables(schema).outbox, settings, name=NAME),
            periodic("accounts-hold-sweeper", _release_expired_holds, SWEEP_INTERVAL_SECONDS),
            redis_client(REDIS_KEY, settings.redis_url),
        ],
        middlewares=[limits],
    )
