"""Wiring of the identity service: the app and its resources (`lastro serve identity`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Final

from aiohttp import web
from redis.asyncio import Redis

from lastro.core import registry
from lastro.core.background import periodic
from lastro.core.config import Settings
from lastro.core.db import create_engine, database_ready, migrate
from lastro.core.events import EventSigner, OutboxRelay
from lastro.core.http import create_app as create_service_app
from lastro.core.ratelimit import (
    AUTH,
    FailureLockout,
    RateLimitPolicy,
    policies_from_settings,
    rate_limit_middleware,
    route_classifier,
)
from lastro.core.security.tokens import TokenVerifier
from lastro.core.security.transit import TransitClient
from lastro.identity import api, store
from lastro.identity.keys import SigningKeys
from lastro.identity.oauth import OAuthServer
from lastro.identity.service import IdentityService

log = logging.getLogger(__name__)

PURGE_INTERVAL_SECONDS: Final = 300.0


OPENAPI: Final = Path(__file__).parent / "openapi.yaml"
MIGRATIONS: Final = Path(__file__).parent / "migrations"
AUDIENCE: Final = "identity"
# Credential-handling routes get the strict AUTH policies and fail closed without Redis.
AUTH_ROUTES: Final = (
    "/oauth/token",
    "/oauth/authorize",
    "/oauth/revoke",
    "/v1/users",
    "/v1/users/me/totp",
    "/v1/users/me/totp/confirm",
)


def admin_secret_file(settings: Settings) -> Path:
    """Where the dev stack's bootstrap admin client credentials are written."""
    return settings.dev_dir / "secrets" / "identity_admin_secret"


async def create_app(settings: Settings) -> web.Application:
    """The app `lastro serve identity` runs (dev/test also bootstrap the admin client)."""
    bootstrap = admin_secret_file(settings) if settings.env in ("dev", "test") else None
    return await build_app(settings, bootstrap_secret_file=bootstrap)


async def build_app(
    settings: Settings,
    *,
    schema: str = store.SCHEMA,
    bootstrap_secret_file: Path | None = None,
    rate_limits: Mapping[str, Sequence[RateLimitPolicy]] | None = None,
    redis_prefix: str = "lastro",
) -> web.Application:
    """The identity application. On start it migrates ``schema``, makes sure the KMS
    keys and a signing key exist and, when ``bootstrap_secret_file`` is given, the
    bootstrap admin client (see :meth:`IdentityService.bootstrap_admin_client`).

    Rate limits (``core/ratelimit.py``): the routes in :data:`AUTH_ROUTES` use the
    ``auth`` policies and fail closed when Redis is down; repeated wrong passwords
    (per username) and wrong TOTP codes (per user) lock out with growing back-off.
    """
    base_engine = create_engine(settings, name="lastro-identity")
    engine = store.bind_schema(base_engine, schema)
    transit = TransitClient.from_settings(settings)
    audit_key = await transit.local_hmac_key(settings.audit_key_name)
    signer = await EventSigner.from_transit(transit, settings.events_key_name)
    keys = SigningKeys(engine, transit, audit_key)
    service = IdentityService(engine, transit, audit_key, signer)
    resources = {
        settings.service_url(spec.name): spec.audience
        for spec in registry.SERVICES
        if spec.audience is not None
    }
    oauth = OAuthServer(engine, keys, settings.jwt_issuer, audit_key, resources)
    verifier = TokenVerifier.from_key_source(keys, issuer=settings.jwt_issuer, audience=AUDIENCE)
    redis = Redis.from_url(settings.redis_url)
    limits = rate_limit_middleware(
        redis,
        rate_limits or policies_from_settings(settings),
        route_classifier(dict.fromkeys(AUTH_ROUTES, AUTH)),
        prefix=f"{redis_prefix}:rl:identity",
    )
    lockout = FailureLockout(redis, name="identity-login", prefix=f"{redis_prefix}:lockout")

    async def purge_expired(app: web.Application) -> None:
        """Housekeeping: expired codes, tickets and refresh tokens (a failed round
        harms nothing; the next one retries)."""
        deleted = await service.purge_expired()
        if any(deleted.values()):
            log.info("purged expired identity rows", extra={"deleted": deleted})

    async def resources_ctx(app: web.Application) -> AsyncIterator[None]:
        await migrate(base_engine, schema, MIGRATIONS)
        await service.prepare()
        await keys.ensure()
        if bootstrap_secret_file is not None:
            created = await service.bootstrap_admin_client(bootstrap_secret_file)
            if created:
                log.info("bootstrap admin client %s written to %s", created, bootstrap_secret_file)
        yield
        await redis.aclose()
        await transit.close()
        await base_engine.dispose()

    async def outbox_relay(app: web.Application) -> AsyncIterator[None]:
        """Publishes the identity events (new-device sign-ins, 2FA changes) to Kafka."""
        relay = OutboxRelay(engine, store.outbox, settings.kafka_bootstrap)
        await relay.start()
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop), name="identity-outbox-relay")
        try:
            yield
        finally:
            stop.set()
            await task
            await relay.stop()

    app = create_service_app(
        name="identity",
        settings=settings,
        openapi_path=OPENAPI,
        routes=api.routes,
        readiness={
            "database": lambda app: database_ready(engine),
            "kms": lambda app: transit.healthy(),
        },
        auth=verifier,
        cleanup_ctx=[
            resources_ctx,
            outbox_relay,
            periodic("identity-purge", purge_expired, PURGE_INTERVAL_SECONDS),
        ],
        middlewares=[limits],
    )
    app[api.SERVICE_KEY] = service
    app[api.OAUTH_KEY] = oauth
    app[api.KEYS_KEY] = keys
    app[api.ISSUER_KEY] = settings.jwt_issuer
    app[api.LOCKOUT_KEY] = lockout
    return app
