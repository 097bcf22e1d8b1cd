"""Token signing keys, stored in PostgreSQL with the private half encrypted by the KMS
(Transit ``encrypt``, with the kid as associated data so a ciphertext decrypts only for
its own key), rotated without downtime.

One schedule per algorithm (:data:`ALGORITHMS`): access tokens are signed ES256
(:data:`ALGORITHM`); ID tokens with the algorithm the client registered
(``id_token_signed_response_alg``), RS256 by default as OpenID Connect Core 1.0 §2
and §15.1 require of a provider. A rotation rotates every algorithm; the JWKS
publishes the live keys of all of them.

Schedule (rules in :mod:`lastro.identity.domain`): the key that signs is the most
recently activated one; a rotation adds a key that may be published ahead of its
activation (so verifiers with a cached JWKS already know it) and schedules the
previous keys to leave the JWKS only after every token they could have signed
has expired. Every replica re-reads the schedule at least every
``SIGNER_CACHE_TTL``; decrypted private keys are kept in memory only.

:class:`SigningKeys` is also a :class:`~lastro.core.security.tokens.KeySource`, so
the identity service verifies tokens for its own API without calling itself.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from joserfc import jwt
from joserfc.jwk import ECKey, JWKRegistry, Key, KeyParameters, KeySetSerialization, RSAKey

from lastro.core.changes import Caller, ChangeRecorder
from lastro.core.db import Engine, Tx, in_transaction
from lastro.core.security.binding import bind_rows
from lastro.core.security.tokens import InvalidToken
from lastro.core.security.transit import TransitClient
from lastro.identity import domain, store

ALGORITHM: Final = "ES256"
"""Access tokens (RFC 9068) are signed with this."""
ID_TOKEN_DEFAULT: Final = "RS256"  # noqa: S105 - an algorithm name, not a secret
"""ID tokens of a client that registered no ``id_token_signed_response_alg``."""
ALGORITHMS: Final = (ID_TOKEN_DEFAULT, ALGORITHM)
"""Every algorithm with a key schedule; also what a client may register as
``id_token_signed_response_alg``, in the order discovery lists them."""
RSA_BITS: Final = 2048
TRANSIT_KEY: Final = "identity-signing-keys"
_UNKNOWN_KID_RELOAD_SECONDS: Final = 5.0


def _now() -> datetime:
    return datetime.now(UTC)


class SigningKeys:
    """The issuer's key ring (see module docstring)."""

    def __init__(self, engine: Engine, transit: TransitClient, changes: ChangeRecorder) -> None:
        self._engine = engine
        self._transit = transit
        self._changes = changes
        self._private: dict[str, Key] = {}
        self._public: dict[str, Key] = {}
        self._rows: list[store.SigningKeyRow] = []
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    async def ensure(self) -> None:
        """Create the first key when there is none (safe to run on every replica)."""
        await self._transit.ensure_key(TRANSIT_KEY)

        async def work(conn: Tx) -> None:
            await store.lock_signing_keys(conn)
            live = {row.alg for row in await store.live_signing_keys(conn, _now())}
            for alg in ALGORITHMS:
                if alg not in live:
                    await self._add_key(conn, _now(), "system:bootstrap", alg)

        await in_transaction(self._engine, work)
        await self.reload()

    async def rotate(self, publish_ahead: timedelta = timedelta(0), actor: str = "system") -> str:
        """Add a new signing key for every algorithm; the kid of the access-token one.

        They are published at once and sign from ``now + publish_ahead`` (use the
        verifiers' JWKS cache TTL in production); the previous keys stay published
        until their last possible token expires. Audited; atomic.
        """

        async def work(conn: Tx) -> str:
            await store.lock_signing_keys(conn)
            activates_at = _now() + publish_ahead
            previous = [row.kid for row in await store.live_signing_keys(conn, _now())]
            kids = {alg: await self._add_key(conn, activates_at, actor, alg) for alg in ALGORITHMS}
            await store.expire_signing_keys(conn, previous, domain.retirement_time(activates_at))
            return kids[ALGORITHM]

        kid = await in_transaction(self._engine, work)
        await self.reload()
        return kid

    async def _add_key(self, conn: Tx, activates_at: datetime, actor: str, alg: str) -> str:
        parameters: KeyParameters = {"alg": alg, "use": "sig"}
        key: Key
        if alg == ALGORITHM:
            key = ECKey.generate_key("P-256", parameters=parameters, auto_kid=True)
        else:  # RSA key generation takes tens of milliseconds: off the event loop
            key = await asyncio.to_thread(
                RSAKey.generate_key, RSA_BITS, parameters=parameters, auto_kid=True
            )
        private = json.dumps(key.as_dict(private=True)).encode()
        kid = str(key.kid)
        ciphertext = await self._transit.encrypt(
            TRANSIT_KEY, private, associated_data=domain.signing_key_binding(kid)
        )
        await store.insert_signing_key(
            conn,
            store.SigningKeyRow(
                kid=kid,
                alg=alg,
                public_jwk=dict(key.as_dict(private=False)),
                private_jwk=ciphertext,
                activates_at=activates_at,
                expires_at=None,
                private_bound=True,
            ),
        )
        await self._changes.audit(
            conn,
            Caller(actor),
            action="signing_key.rotated",
            target=kid,
            details={"alg": alg, "activates_at": activates_at.isoformat()},
        )
        return kid

    async def reload(self) -> None:
        """Re-read the schedule from the database."""
        async with self._engine.connect() as conn:
            rows = await store.live_signing_keys(conn, _now())
        # Keys activated together (one rotation) list the access-token key first.
        rows.sort(key=lambda r: (r.activates_at, r.alg != ALGORITHM))
        self._rows = rows
        self._public = {row.kid: JWKRegistry.import_key(row.public_jwk) for row in rows}
        self._loaded_at = time.monotonic()

    async def _fresh(self) -> None:
        if time.monotonic() - self._loaded_at > domain.SIGNER_CACHE_TTL.total_seconds():
            async with self._lock:
                if time.monotonic() - self._loaded_at > domain.SIGNER_CACHE_TTL.total_seconds():
                    await self.reload()

    def _windows(self, alg: str | None = None) -> list[domain.KeyWindow]:
        return [
            domain.KeyWindow(r.kid, r.activates_at, r.expires_at)
            for r in self._rows
            if alg is None or r.alg == alg
        ]

    async def signing_key(self, alg: str = ALGORITHM) -> Key:
        """The private key that signs ``alg`` now (decrypted through the KMS once per
        process)."""
        await self._fresh()
        kid = domain.signing_kid(self._windows(alg), _now())
        if kid is None:  # e.g. the first key of an algorithm another replica just added
            await self.reload()
            kid = domain.signing_kid(self._windows(alg), _now())
        if kid is None:
            raise RuntimeError(f"no active {alg} signing key; run SigningKeys.ensure()")
        if kid not in self._private:
            row = next(r for r in self._rows if r.kid == kid)
            binding = domain.signing_key_binding(kid) if row.private_bound else None
            plaintext = await self._transit.decrypt(
                TRANSIT_KEY, row.private_jwk, associated_data=binding
            )
            self._private[kid] = JWKRegistry.import_key(json.loads(plaintext))
        return self._private[kid]

    async def bind_legacy_keys(self) -> int:
        """Re-encrypt private halves written before identity_0003 with their kid as
        Transit associated data; returns how many were bound (``core.security.binding``:
        idempotent, safe on every replica at once, a row the KMS refuses stays readable)."""
        async with self._engine.connect() as conn:
            legacy = await store.unbound_signing_keys(conn)

        async def reseal(row: store.SigningKeyRow) -> str:
            binding = domain.signing_key_binding(row.kid)
            return await self._transit.bind(TRANSIT_KEY, row.private_jwk, binding)

        async def swap(conn: Tx, row: store.SigningKeyRow, sealed: str) -> bool:
            return await store.bind_signing_key(conn, row.kid, row.private_jwk, sealed)

        bound = await bind_rows(
            self._engine,
            legacy,
            reseal=reseal,
            swap=swap,
            name=lambda row: f"signing key {row.kid}",
        )
        if legacy:
            await self.reload()
        return bound

    async def jwks(self) -> KeySetSerialization:
        """Public keys to publish: current, next (if pre-published) and previous ones
        whose tokens may still be valid."""
        await self._fresh()
        kids = domain.published_kids(self._windows(), _now())
        return {"keys": [dict(self._public[kid].as_dict(private=False)) for kid in kids]}

    async def key_for(self, kid: str | None) -> Key:
        """KeySource for the service's own verifier."""
        await self._fresh()
        kids = domain.published_kids(self._windows(), _now())
        stale = time.monotonic() - self._loaded_at > _UNKNOWN_KID_RELOAD_SECONDS
        if kid is not None and kid not in kids and stale:
            await self.reload()  # a key another replica just added; spaced out against forged kids
            kids = domain.published_kids(self._windows(), _now())
        if kid is None or kid not in kids:
            raise InvalidToken("unknown signing key")
        return self._public[kid]


def sign_access_token(claims: dict[str, Any], key: Key) -> str:
    """Compact JWS with the RFC 9068 ``typ`` header (pure CPU; safe in a worker thread)."""
    header = {"alg": ALGORITHM, "kid": key.kid, "typ": "at+jwt"}
    return jwt.encode(header, claims, key, algorithms=[ALGORITHM])
