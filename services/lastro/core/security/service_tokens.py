"""Service-to-service authentication: OAuth 2.0 client_credentials tokens per audience.

A service that calls a sibling (transactions → accounts, transactions → fraud) sends
an access token whose ``aud`` names the callee; the callee's :class:`TokenVerifier`
refuses any other audience. :class:`ServiceTokenClient` obtains those tokens from the
identity service's token endpoint (``audience=<service>``) and caches them.

Guarantees of :meth:`ServiceTokenClient.token`:

* one cached token per audience, reused until :data:`REFRESH_FRACTION` of its
  lifetime has passed (measured from when it was requested, so never later than
  the issuer intended);
* single flight: concurrent callers needing the same audience share one request;
* the token endpoint is called through :class:`~lastro.core.resilience.ResilientCall`
  (timeout, circuit breaker, retries with full-jitter backoff: a token request is
  idempotent), over HTTPS verified against the configured CA;
* if a refresh fails while the cached token is still valid (more than
  :data:`EXPIRY_MARGIN_SECONDS` left), the cached token is returned and the next
  call tries again; a token past that margin is never returned;
* a refusal by the issuer (wrong audience, unknown client, bad secret, scope not
  allowed) raises :class:`ServiceTokenError` with the OAuth ``error`` code, is not
  retried and does not count against the issuer's breaker.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

import aiohttp

from lastro.core.config import Settings
from lastro.core.errors import DependencyUnavailable
from lastro.core.resilience import ResilientCall, TransientError
from lastro.core.security.tls import client_context

log = logging.getLogger(__name__)

REFRESH_FRACTION: Final = 0.8
EXPIRY_MARGIN_SECONDS: Final = 10.0
DEFAULT_TIMEOUT_SECONDS: Final = 5.0


class ServiceTokenError(Exception):
    """The token endpoint refused to issue a token (an OAuth error answer).

    ``error`` is the RFC 6749 error code (``invalid_target`` for an audience the
    client may not ask for, ``invalid_client``, ``invalid_scope``, ...).
    """

    def __init__(self, audience: str, status: int, error: str, description: str) -> None:
        detail = f": {description}" if description else ""
        super().__init__(f"token for audience {audience!r} refused ({status} {error}){detail}")
        self.audience = audience
        self.status = status
        self.error = error


@dataclass(frozen=True)
class _Cached:
    access_token: str
    refresh_at: float
    usable_until: float


class ServiceTokenClient:
    """Client-credentials access tokens for one service identity, cached per audience.

    ``scope`` (space-separated) is sent when given; otherwise the issuer grants all
    scopes the client is allowed. ``clock`` is a monotonic clock, injectable for
    tests; ``resilience`` replaces the default ResilientCall named ``identity-token``.
    Use as an async context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        ca_file: Path | None,
        *,
        scope: str | None = None,
        resilience: ResilientCall | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not token_url.startswith("https://"):
            raise ValueError("tokens must be requested over HTTPS")
        self._url = token_url
        self._authorization = {"Authorization": aiohttp.encode_basic_auth(client_id, client_secret)}
        self._ca_file = ca_file
        self._scope = scope
        self._call = resilience or ResilientCall(
            "identity-token", timeout=DEFAULT_TIMEOUT_SECONDS, retries=3
        )
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._inflight: dict[str, asyncio.Task[_Cached]] = {}
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, client_id: str, client_secret: str, *, scope: str | None = None
    ) -> ServiceTokenClient:
        """A client of the configured identity service's token endpoint."""
        token_url = f"{settings.service_url('identity')}/oauth/token"
        return cls(token_url, client_id, client_secret, settings.ca_file, scope=scope)

    async def __aenter__(self) -> ServiceTokenClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Cancel pending fetches and close the HTTP session."""
        for task in list(self._inflight.values()):
            task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def headers(self, audience: str) -> dict[str, str]:
        """The ``Authorization`` header for a call to the service named ``audience``."""
        return {"Authorization": f"Bearer {await self.token(audience)}"}

    async def token(self, audience: str) -> str:
        """A valid access token for ``audience`` (see the module docstring's guarantees).

        Raises ServiceTokenError when the issuer refuses, CircuitOpen or the transport
        error when it cannot be reached and no valid cached token remains.
        """
        cached = self._cache.get(audience)
        now = self._clock()
        if cached is not None and now < cached.refresh_at:
            return cached.access_token
        try:
            fresh = await asyncio.shield(self._fetch_once(audience))
        except ServiceTokenError:
            raise
        except Exception as exc:
            if cached is not None and self._clock() < cached.usable_until:
                log.warning("token refresh for %r failed (%r); using cached token", audience, exc)
                return cached.access_token
            raise
        return fresh.access_token

    def _fetch_once(self, audience: str) -> asyncio.Task[_Cached]:
        task = self._inflight.get(audience)
        if task is None:
            task = asyncio.create_task(self._fetch(audience), name=f"service-token:{audience}")
            self._inflight[audience] = task
            task.add_done_callback(lambda done: self._settled(audience, done))
        return task

    def _settled(self, audience: str, task: asyncio.Task[_Cached]) -> None:
        if self._inflight.get(audience) is task:
            del self._inflight[audience]
        if not task.cancelled():
            task.exception()  # retrieved here too: every waiter may have been cancelled

    async def _fetch(self, audience: str) -> _Cached:
        form = {"grant_type": "client_credentials", "audience": audience}
        if self._scope:
            form["scope"] = self._scope

        async def request() -> _Cached:
            started = self._clock()
            post = self._http().post(self._url, data=form, headers=self._authorization)
            async with post as response:
                if response.status >= 500 or response.status == 429:
                    raise TransientError(f"token endpoint answered {response.status}")
                body = _json_or_none(await response.read())
                if response.status != 200:
                    raise _refusal(audience, response.status, body)
            return _cached_from(body, started)

        fresh = await self._call.call(request, idempotent=True)
        self._cache[audience] = fresh
        return fresh

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            ssl = client_context(self._ca_file) if self._ca_file is not None else True
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl))
        return self._session


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _refusal(audience: str, status: int, body: Any) -> ServiceTokenError:
    if isinstance(body, dict):
        return ServiceTokenError(
            audience,
            status,
            str(body.get("error", "unknown_error")),
            str(body.get("error_description", "")),
        )
    return ServiceTokenError(audience, status, "unknown_error", "")


def _cached_from(body: Any, started: float) -> _Cached:
    if not isinstance(body, dict):
        raise TransientError("token endpoint answered a non-object")
    token, lifetime, kind = body.get("access_token"), body.get("expires_in"), body.get("token_type")
    if not isinstance(token, str) or not isinstance(lifetime, int) or lifetime <= 0:
        raise TransientError("token endpoint answer lacks access_token or expires_in")
    if not isinstance(kind, str) or kind.lower() != "bearer":
        raise TransientError(f"unexpected token_type {kind!r}")
    return _Cached(
        access_token=token,
        refresh_at=started + REFRESH_FRACTION * lifetime,
        usable_until=started + lifetime - EXPIRY_MARGIN_SECONDS,
    )


async def dev_service_credentials(
    settings: Settings,
    name: str,
    *,
    scopes: list[str],
    audiences: list[str],
    secret_file: Path,
) -> tuple[str, str]:
    """Client credentials for service ``name`` on the local stack (dev/test only).

    Returns the ``client_id:client_secret`` in ``secret_file`` when it exists and
    was registered with these ``scopes`` and ``audiences`` (a service that joins the
    registry later widens them: the client is then registered again); otherwise
    registers a client_credentials client through the identity service's admin API
    (with the bootstrap admin client the dev stack wrote) and stores it there (mode
    0600, its grants beside it in ``<secret_file>.grants``). A file lock
    makes processes of one service starting together register it once. Outside
    dev/test credentials come from configuration (``LASTRO_<NAME>_CLIENT``).
    """
    if settings.env not in ("dev", "test"):
        raise RuntimeError(f"{name}: client credentials must be configured outside dev/test")
    lock = await asyncio.to_thread(_lock_beside, secret_file)
    try:
        grants = f"scopes={' '.join(sorted(scopes))}\naudiences={' '.join(sorted(audiences))}\n"
        stored = await asyncio.to_thread(_read_credentials, secret_file, grants)
        if stored is None:
            stored = await _register_dev_client(settings, name, scopes, audiences)
            await asyncio.to_thread(_write_credentials, secret_file, stored, grants)
        return stored
    finally:
        await asyncio.to_thread(lock.close)


def _lock_beside(secret_file: Path) -> IO[str]:
    """An exclusive lock on ``<secret_file>.lock`` (released when the file closes)."""
    secret_file.parent.mkdir(parents=True, exist_ok=True)
    lock = secret_file.with_suffix(".lock").open("a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def _grants_file(secret_file: Path) -> Path:
    return secret_file.with_name(secret_file.name + ".grants")


def _read_credentials(secret_file: Path, grants: str) -> tuple[str, str] | None:
    """The stored client, unless it was registered with other grants (or none
    recorded: a file written before grants were)."""
    recorded = _grants_file(secret_file)
    if not secret_file.exists() or not recorded.exists() or recorded.read_text() != grants:
        return None
    client_id, _, secret = secret_file.read_text().strip().partition(":")
    return client_id, secret


def _write_credentials(secret_file: Path, credentials: tuple[str, str], grants: str) -> None:
    secret_file.touch(mode=0o600)
    secret_file.write_text(f"{credentials[0]}:{credentials[1]}\n")
    _grants_file(secret_file).write_text(grants)


# A busy dev stack may rate-limit the admin token request (identity's per-IP auth limit
# is shared by every process on 127.0.0.1): wait it out this many times.
_ADMIN_TOKEN_ATTEMPTS: Final = 20


async def _admin_token(
    http: aiohttp.ClientSession, identity: str, admin_id: str, admin_secret: str
) -> str:
    """The bootstrap admin client's token; a 429 is waited out (``Retry-After``), and an
    identity service that cannot answer is a :class:`DependencyUnavailable` (a 503 for
    a request that needed it, never a 500)."""
    for _ in range(_ADMIN_TOKEN_ATTEMPTS):
        async with http.post(
            f"{identity}/oauth/token",
            data={"grant_type": "client_credentials", "scope": "identity:admin"},
            headers={"Authorization": aiohttp.encode_basic_auth(admin_id, admin_secret)},
        ) as response:
            if response.status == 200:
                return str((await response.json())["access_token"])
            if response.status != 429 and response.status < 500:
                raise RuntimeError(f"the bootstrap admin client was refused: {response.status}")
            wait = min(float(response.headers.get("Retry-After", "1") or 1), 10.0)
        await asyncio.sleep(wait)
    raise DependencyUnavailable("identity did not issue an admin token", dependency="identity")


async def _register_dev_client(
    settings: Settings, name: str, scopes: list[str], audiences: list[str]
) -> tuple[str, str]:
    admin_file = settings.dev_dir / "secrets" / "identity_admin_secret"
    admin_id, _, admin_secret = admin_file.read_text().strip().partition(":")
    identity = settings.service_url("identity")
    connector = aiohttp.TCPConnector(ssl=client_context(settings.ca_file))
    async with aiohttp.ClientSession(connector=connector) as http:
        token = await _admin_token(http, identity, admin_id, admin_secret)
        async with http.post(
            f"{identity}/v1/clients",
            json={
                "name": f"{name}-service",
                "grant_types": ["client_credentials"],
                "scopes": scopes,
                "audiences": audiences,
            },
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            body = await response.json()
            if response.status != 201:
                raise RuntimeError(f"registering the {name} client failed: {body}")
    log.info("registered service client %s for %s", body["client_id"], name)
    return str(body["client_id"]), str(body["client_secret"])
