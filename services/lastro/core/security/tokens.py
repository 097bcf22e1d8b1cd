"""Validation of OAuth 2.0 JWT access tokens (RFC 9068 profile) in every service.

Guarantees of :meth:`TokenVerifier.verify`: a token is accepted only when

* it is a compact JWS whose ``typ`` header is ``at+jwt`` (or ``application/at+jwt``)
  and whose ``alg`` is an asymmetric algorithm we allow (never ``none`` or HMAC);
* its signature verifies with the issuer's key named by ``kid``;
* ``iss`` equals the configured issuer, ``aud`` (a string or a list) names one of the
  configured audiences, ``exp``/``nbf``/``iat`` hold with :data:`LEEWAY_SECONDS` of
  clock skew, and the RFC 9068 claims ``sub``, ``client_id``, ``iat``, ``jti`` exist.

Anything else raises :class:`InvalidToken` (the caller answers 401). When the key set
cannot be fetched at all, :class:`KeySetUnavailable` is raised instead (503): we
never accept a token we could not check.

A token that passed every check is remembered, by its exact string, until the
earlier of its own expiry (``exp`` plus the leeway above, the moment a re-check
would refuse it) and :data:`VERIFIED_CACHE_SECONDS` after the check (which bounds
how long a key withdrawn from the JWKS keeps vouching for it). Only successes are
remembered, so a forged or expired token is checked in full every time; a token
whose signature verified cannot change, since any other string is another entry.

Keys come from a :class:`KeySource`. :class:`RemoteKeySet` fetches the JWKS over HTTPS
(verified against the configured CA), caches it, and refetches when a token names an
unknown ``kid`` (key rotation) at most once per ``min_refresh_interval``;
:class:`StaticKeySet` holds an in-memory JWKS for tests and fixed deployments.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Protocol

import aiohttp
from joserfc import jws, jwt
from joserfc.errors import ClaimError, ExpiredTokenError, JoseError
from joserfc.jwk import Key, KeySet, KeySetSerialization

from lastro.core.config import Settings
from lastro.core.security.tls import client_context

log = logging.getLogger(__name__)

ALLOWED_ALGORITHMS: Final = ("Ed25519", "ES256", "RS256", "PS256")
ACCESS_TOKEN_TYPES: Final = frozenset({"at+jwt", "application/at+jwt"})
LEEWAY_SECONDS: Final = 30
VERIFIED_CACHE_SECONDS: Final = 60.0
VERIFIED_CACHE_SIZE: Final = 4096


class InvalidToken(Exception):
    """The bearer token is missing, malformed, forged, expired or not meant for us.

    The message is safe to return to the client (``error_description``).
    """


class KeySetUnavailable(Exception):
    """The issuer's key set could not be obtained, so no token can be checked."""


@dataclass(frozen=True)
class Principal:
    """Who is calling, as asserted by a verified access token."""

    subject: str
    client_id: str
    scopes: frozenset[str]
    audience: tuple[str, ...]
    amr: tuple[str, ...] = ()
    acr: str | None = None
    auth_time: int | None = None
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def has_scopes(self, required: Collection[str]) -> bool:
        return self.scopes.issuperset(required)


class KeySource(Protocol):
    async def key_for(self, kid: str | None) -> Key:
        """The verification key named ``kid``; raises InvalidToken if there is none."""
        ...


def _lookup(keys: KeySet, kid: str | None) -> Key | None:
    if kid is None and len(keys.keys) != 1:
        return None
    try:
        return keys.get_by_kid(kid)
    except JoseError:
        return None


class StaticKeySet:
    """A fixed, in-memory JWKS (public keys only are needed)."""

    def __init__(self, jwks: KeySetSerialization) -> None:
        self._keys = KeySet.import_key_set(jwks)

    async def key_for(self, kid: str | None) -> Key:
        key = _lookup(self._keys, kid)
        if key is None:
            raise InvalidToken("unknown signing key")
        return key


class RemoteKeySet:
    """The issuer's JWKS fetched over HTTPS, cached for ``cache_ttl`` seconds.

    An unknown ``kid`` triggers a refetch, but refetches are spaced by at least
    ``min_refresh_interval`` seconds so forged ``kid`` values cannot make us hammer
    the issuer. If a refresh fails, the last good key set keeps being used.
    """

    def __init__(
        self,
        jwks_url: str,
        ca_file: Path | None,
        *,
        cache_ttl: float = 300.0,
        min_refresh_interval: float = 30.0,
        timeout: float = 5.0,
    ) -> None:
        if not jwks_url.startswith("https://"):
            raise ValueError("the JWKS must be fetched over HTTPS")
        self._url = jwks_url
        self._ca_file = ca_file
        self._cache_ttl = cache_ttl
        self._min_refresh = min_refresh_interval
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._keys: KeySet | None = None
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._lock = asyncio.Lock()

    async def key_for(self, kid: str | None) -> Key:
        now = time.monotonic()
        if self._keys is None or now - self._fetched_at > self._cache_ttl:
            await self._refresh(force=False)
        key = _lookup(self._keys, kid) if self._keys is not None else None
        if key is None and await self._refresh(force=True):
            key = _lookup(self._keys, kid) if self._keys is not None else None
        if key is None:
            if self._keys is None:
                raise KeySetUnavailable(f"no key set could be fetched from {self._url}")
            raise InvalidToken("unknown signing key")
        return key

    async def _refresh(self, *, force: bool) -> bool:
        """Refetch unless one happened within the rate limit; True if keys changed."""
        async with self._lock:
            now = time.monotonic()
            if now - self._attempted_at < self._min_refresh:
                return False
            if not force and self._keys is not None and now - self._fetched_at <= self._cache_ttl:
                return False
            self._attempted_at = now
            try:
                keys = KeySet.import_key_set(await self._fetch())
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, JoseError) as exc:
                log.warning("JWKS refresh from %s failed: %r", self._url, exc)
                return False
            changed = keys != self._keys
            self._keys = keys
            self._fetched_at = now
            return changed

    async def _fetch(self) -> KeySetSerialization:
        ssl = client_context(self._ca_file) if self._ca_file is not None else True
        async with (
            aiohttp.ClientSession(timeout=self._timeout) as session,
            session.get(self._url, ssl=ssl) as response,
        ):
            response.raise_for_status()
            data: KeySetSerialization = await response.json(content_type=None)
            return data


class VerifiedTokens:
    """Principals of tokens that verified, by exact token string, each until a deadline.

    Bounded to ``max_entries``: when full, expired entries go first, then the
    oldest eighth. Not shared between processes; a miss only costs a full check.
    """

    def __init__(self, max_entries: int = VERIFIED_CACHE_SIZE) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self._max_entries = max_entries
        self._entries: dict[str, tuple[float, Principal]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str, now: float) -> Principal | None:
        """The principal remembered for ``token`` if its deadline is still ahead of ``now``."""
        entry = self._entries.get(token)
        if entry is None:
            return None
        if now >= entry[0]:
            del self._entries[token]
            return None
        return entry[1]

    def put(self, token: str, principal: Principal, deadline: float, now: float) -> None:
        """Remember ``principal`` for ``token`` until ``deadline`` (ignored if already past)."""
        if deadline <= now:
            return
        if len(self._entries) >= self._max_entries:
            self._evict(now)
        self._entries[token] = (deadline, principal)

    def _evict(self, now: float) -> None:
        for token in [t for t, (deadline, _) in self._entries.items() if deadline <= now]:
            del self._entries[token]
        excess = len(self._entries) - self._max_entries * 7 // 8
        for token in list(self._entries)[: max(excess, 0)]:
            del self._entries[token]


def _string_list(value: object, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise InvalidToken(f"claim '{name}' is malformed")


def _scopes(value: object) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(value.split())
    return frozenset(_string_list(value, "scope"))


class TokenVerifier:
    """Checks bearer access tokens for one resource server (see module docstring)."""

    def __init__(
        self,
        jwks_url: str,
        issuer: str,
        audience: str | Collection[str],
        ca_file: Path | None,
        *,
        leeway: int = LEEWAY_SECONDS,
    ) -> None:
        self._setup(RemoteKeySet(jwks_url, ca_file), issuer, audience, leeway)

    @classmethod
    def from_key_source(
        cls,
        keys: KeySource,
        *,
        issuer: str,
        audience: str | Collection[str],
        leeway: int = LEEWAY_SECONDS,
    ) -> TokenVerifier:
        """A verifier over any key source (``StaticKeySet`` in tests)."""
        verifier = cls.__new__(cls)
        verifier._setup(keys, issuer, audience, leeway)
        return verifier

    @classmethod
    def from_settings(cls, settings: Settings, audience: str | Collection[str]) -> TokenVerifier:
        """The verifier for a service: the configured issuer, its JWKS and CA bundle."""
        return cls(settings.jwks_url, settings.jwt_issuer, audience, settings.ca_file)

    def _setup(
        self, keys: KeySource, issuer: str, audience: str | Collection[str], leeway: int
    ) -> None:
        self._keys = keys
        self.issuer = issuer
        self.audiences: tuple[str, ...] = (
            (audience,) if isinstance(audience, str) else tuple(audience)
        )
        if not self.audiences:
            raise ValueError("a verifier needs at least one audience")
        self._leeway = leeway
        self._verified = VerifiedTokens()
        # Built once: the claim rules do not change for the life of the verifier.
        self._claims = jwt.JWTClaimsRegistry(
            leeway=leeway,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "values": list(self.audiences)},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
            client_id={"essential": True},
            jti={"essential": True},
        )

    async def verify(self, token: str) -> Principal:
        """The principal of a valid access token; raises InvalidToken otherwise.

        Raises KeySetUnavailable when the issuer's keys cannot be fetched. A token
        that verified is answered from memory until its ``exp`` (+ leeway) or
        :data:`VERIFIED_CACHE_SECONDS`, whichever comes first (module docstring).
        """
        now = time.time()
        remembered = self._verified.get(token, now)
        if remembered is not None:
            return remembered
        principal = await self._check(token)
        deadline = float(principal.claims["exp"]) + self._leeway
        self._verified.put(token, principal, min(deadline, now + VERIFIED_CACHE_SECONDS), now)
        return principal

    async def _check(self, token: str) -> Principal:
        """Every check of the module docstring, in full."""
        try:
            header = jws.extract_compact(token.encode("ascii")).headers()
        except (JoseError, ValueError, UnicodeError):
            raise InvalidToken("malformed token") from None
        if str(header.get("typ", "")).lower() not in ACCESS_TOKEN_TYPES:
            raise InvalidToken("not an access token (typ must be at+jwt)")
        if header.get("alg") not in ALLOWED_ALGORITHMS:
            raise InvalidToken("signing algorithm not allowed")
        kid = header.get("kid")
        key = await self._keys.key_for(kid if isinstance(kid, str) else None)
        try:
            claims = jwt.decode(token, key, algorithms=list(ALLOWED_ALGORITHMS)).claims
            self._claims.validate(claims)
        except ExpiredTokenError:
            raise InvalidToken("token expired") from None
        except JoseError as exc:
            raise InvalidToken(_describe(exc)) from None
        return self._principal(claims)

    @staticmethod
    def _principal(claims: Mapping[str, Any]) -> Principal:
        client_id = claims["client_id"]
        acr = claims.get("acr")
        auth_time = claims.get("auth_time")
        if not isinstance(client_id, str) or not (acr is None or isinstance(acr, str)):
            raise InvalidToken("claim 'client_id' or 'acr' is malformed")
        if auth_time is not None and (
            isinstance(auth_time, bool) or not isinstance(auth_time, int)
        ):
            raise InvalidToken("claim 'auth_time' is malformed")
        return Principal(
            subject=claims["sub"],
            client_id=client_id,
            scopes=_scopes(claims.get("scope")),
            audience=_string_list(claims["aud"], "aud"),
            amr=_string_list(claims.get("amr"), "amr"),
            acr=acr,
            auth_time=auth_time,
            claims=MappingProxyType(dict(claims)),
        )


def _describe(exc: JoseError) -> str:
    """A client-safe description of why a token failed."""
    if isinstance(exc, ClaimError):
        return f"invalid or missing claim '{exc.claim}'"
    if exc.error == "bad_signature":
        return "signature verification failed"
    return "invalid token"
