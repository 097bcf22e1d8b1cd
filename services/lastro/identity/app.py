"""Wiring of the identity service (the composition root): `lastro serve identity`.

Building the app does no I/O. On start (``cleanup_ctx``, in order): the Redis
client behind rate limits and lockouts; the database engine and the schema's
migrations; the KMS client, the keys the service needs (event signing, audit
chain, TOTP seeds, token signing), the re-encryption of ciphertexts written before
they were bound to their owner (identity_0003), and the use cases, with the
bootstrap admin client in dev and test; the outbox relay to Kafka; the housekeeping loop. Each is
closed in its context's ``finally``, in reverse order. ``/readyz`` checks
PostgreSQL and the KMS.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Final

from aiohttp import web
from joserfc.jwk import Key
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core import registry
from lastro.core.background import periodic
from lastro.core.config import Settings
from lastro.core.events import EventSigner
from lastro.core.http import create_app as create_service_app
from lastro.core.privacy import PRIVACY_KEY
from lastro.core.ratelimit import (
    AUTH,
    FailureLockout,
    RateLimitPolicy,
    policies_from_settings,
    rate_limit_middleware,
    route_classifier,
)
from lastro.core.resources import database, outbox_relay, readiness, redis_client
from lastro.core.security.tokens import InvalidToken, TokenVerifier
from lastro.core.security.transit import TransitClient
from lastro.identity import api, store
from lastro.identity.keys import SigningKeys
from lastro.identity.login import LoginForms, SignIn
from lastro.identity.oauth import OAuthServer
from lastro.identity.privacy import Privacy
from lastro.identity.service import IdentityService, recorder_for

log = logging.getLogger(__name__)

NAME: Final = "identity"
AUDIENCE: Final = "identity"
OPENAPI: Final = Path(__file__).parent / "openapi.yaml"
PURGE_INTERVAL_SECONDS: Final = 300.0
# Credential-handling routes get the strict AUTH policies and fail closed without Redis.
AUTH_ROUTES: Final = (
    "/oauth/token",
    "/oauth/authorize",
    "/oauth/revoke",
    "/v1/users",
    "/v1/users/me/totp",
    "/v1/users/me/totp/confirm",
)

ENGINE_KEY: Final = web.AppKey("engine", AsyncEngine)
TRANSIT_KEY: Final = web.AppKey("transit", TransitClient)
REDIS_KEY: Final = web.AppKey("redis", Redis)


def admin_secret_file(settings: Settings) -> Path:
    """Where the dev stack's bootstrap admin client credentials are written."""
    return settings.dev_dir / "secrets" / "identity_admin_secret"


async def create_app(settings: Settings) -> web.Application:
    """The app `lastro serve identity` runs (dev/test also bootstrap the admin client)."""
    bootstrap = admin_secret_file(settings) if settings.env in ("dev", "test") else None
    return await build_app(settings, bootstrap_secret_file=bootstrap)


class _OwnKeys:
    """The key source of the service's own token verifier: the signing keys the
    app opens on start, read in-process (no call to its own JWKS endpoint)."""

    keys: SigningKeys | None = None

    async def key_for(self, kid: str | None) -> Key:
        if self.keys is None:
            raise InvalidToken("the signing keys are not loaded yet")
        return await self.keys.key_for(kid)


async def build_app(
    settings: Settings,
    *,
    schema: str = store.SCHEMA,
    bootstrap_secret_file: Path | None = None,
    rate_limits: Mapping[str, Sequence[RateLimitPolicy]] | None = None,
    redis_prefix: str = "lastro",
) -> web.Application:
    """The identity application over ``schema``; nothing is opened until it starts.

    Rate limits (``core/ratelimit.py``): the routes in :data:`AUTH_ROUTES` use the
    ``auth`` policies and fail closed when Redis is down; repeated wrong passwords
    (per username) and wrong TOTP codes (per user) lock out with growing back-off.
    """

    async def keys_and_use_cases(app: web.Application) -> AsyncIterator[None]:
        transit = TransitClient.from_settings(settings)
        try:
            engine = app[ENGINE_KEY]
            changes = recorder_for(
                await EventSigner.from_transit(transit, settings.events_key_name),
                await transit.local_hmac_key(settings.audit_key_name),
            )
            lockout = FailureLockout(
                app[REDIS_KEY], name="identity-login", prefix=f"{redis_prefix}:lockout"
            )
            service = IdentityService(engine, transit, changes, lockout)
            keys = own_keys.keys = SigningKeys(engine, transit, changes)
            resources = {
                settings.service_url(spec.name): spec.audience
                for spec in registry.SERVICES
                if spec.audience is not None
            }
            oauth = OAuthServer(engine, keys, settings.jwt_issuer, changes, resources)
            await service.prepare()
            await keys.ensure()
            # One-off after identity_0003: ciphertexts written without associated data
            # are re-encrypted bound to their owner (a no-op once every row is bound).
            rebound = await keys.bind_legacy_keys(), await service.bind_legacy_secrets()
            if any(rebound):
                log.info(
                    "bound legacy ciphertexts: %d signing keys, %d users' TOTP seeds", *rebound
                )
            if bootstrap_secret_file is not None:
                created = await service.bootstrap_admin_client(bootstrap_secret_file)
                if created:
                    log.info(
                        "bootstrap admin client %s written to %s", created, bootstrap_secret_file
                    )
            app[TRANSIT_KEY] = transit
            app[api.ISSUER_KEY] = settings.jwt_issuer
            app[api.SERVICE_KEY] = service
            app[api.KEYS_KEY] = keys
            app[api.OAUTH_KEY] = oauth
            forms = LoginForms(app[REDIS_KEY], prefix=f"{redis_prefix}:login-form")
            app[api.SIGN_IN_KEY] = SignIn(oauth, service, forms)
            app[PRIVACY_KEY] = Privacy(engine, changes)
            yield
        finally:
            await transit.close()

    async def purge_expired(app: web.Application) -> None:
        """Housekeeping: expired codes, tickets and refresh tokens (a failed round
        harms nothing; the next one retries)."""
        deleted = await app[api.SERVICE_KEY].purge_expired()
        if any(deleted.values()):
            log.info("purged expired identity rows", extra={"deleted": deleted})

    own_keys = _OwnKeys()
    limits = rate_limit_middleware(
        REDIS_KEY,
        rate_limits or policies_from_settings(settings),
        route_classifier(dict.fromkeys(AUTH_ROUTES, AUTH)),
        prefix=f"{redis_prefix}:rl:identity",
    )
    return create_service_app(
        name=NAME,
        settings=settings,
        openapi_path=OPENAPI,
        routes=api.routes,
        readiness=readiness(ENGINE_KEY, TRANSIT_KEY),
        auth=TokenVerifier.from_key_source(own_keys, issuer=settings.jwt_issuer, audience=AUDIENCE),
        cleanup_ctx=[
            redis_client(REDIS_KEY, settings.redis_url),
            database(
                ENGINE_KEY,
                settings,
                name="lastro-identity",
                schema=schema,
                migrations=store.MIGRATIONS,
                bind=lambda engine: store.bind_schema(engine, schema),
            ),
            keys_and_use_cases,
            outbox_relay(ENGINE_KEY, store.outbox, settings, name=NAME),
            periodic("identity-purge", purge_expired, PURGE_INTERVAL_SECONDS),
        ],
        middlewares=[limits],
    )
