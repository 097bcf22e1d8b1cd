"""Serving the identity app over real HTTPS and driving its OAuth flows, for tests.

:func:`serve_identity` runs the identity app on a random port with a dev-CA
certificate, against a throwaway schema of the real PostgreSQL and the real KMS, and
bootstraps its admin client; the ``identity`` fixture (:func:`module_identity`,
imported into a test module) serves one per test module. :class:`Browser` drives the
authorization endpoint the way a user's browser would (authorization code + PKCE,
with the TOTP step).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pyotp
import pytest
from aiohttp import web
from schemas import unique_schema
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.config import Settings
from lastro.core.ratelimit import AUTH, DEFAULT_POLICIES, RateLimitPolicy
from lastro.core.security.tls import client_context, server_context
from lastro.devstack.ca import DevCA
from lastro.identity.api import SERVICE_KEY
from lastro.identity.app import build_app

REDIRECT_URI = "https://app.example/callback"
USER_SCOPE = "identity:self accounts:read"


@dataclass
class Identity:
    base: str
    http: aiohttp.ClientSession
    app: web.Application
    schema: str
    admin_token: str
    admin_id: str
    admin_secret: str


@asynccontextmanager
async def serve_https(
    app: web.Application, settings: Settings, name: str, port: int = 0
) -> AsyncIterator[str]:
    """Serve ``app`` on ``port`` (a random one by default) with a dev-CA certificate;
    yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    cert = DevCA(settings.dev_dir / "ca").issue(name)
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_context(cert.cert, cert.key))
    try:
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield f"https://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


# Tests log in many times from one IP; the per-username and per-user lockouts stay real.
GENEROUS_LIMITS: Final = {**DEFAULT_POLICIES, AUTH: (RateLimitPolicy("auth-ip", 10_000, 60, "ip"),)}


@asynccontextmanager
async def serve_identity(
    settings: Settings,
    engine: AsyncEngine,
    secret_dir: Path,
    *,
    real_limits: bool = False,
    port: int = 0,
) -> AsyncIterator[Identity]:
    """The identity app over HTTPS in a fresh schema, with a bootstrap admin token.

    Login limits are :data:`GENEROUS_LIMITS` unless ``real_limits``, which serves the
    configured policies (``policies_from_settings``). Either way the Redis keys live
    under the schema's name, so each call starts with fresh limits and lockouts, and
    the bootstrap admin token has already spent one auth request of this client IP.
    The schema is dropped afterwards.
    """
    schema = unique_schema("identity_test")
    limits = None if real_limits else GENEROUS_LIMITS
    app = await build_app(settings, schema=schema, rate_limits=limits, redis_prefix=schema)
    connector = aiohttp.TCPConnector(ssl=client_context(settings.ca_file))
    try:
        async with (
            serve_https(app, settings, "identity", port) as base,
            aiohttp.ClientSession(connector=connector) as http,
        ):
            secret_file = secret_dir / "identity_admin_secret"
            await app[SERVICE_KEY].bootstrap_admin_client(secret_file)
            admin_id, admin_secret = secret_file.read_text().strip().split(":")
            token = await client_credentials(http, base, admin_id, admin_secret, "identity:admin")
            yield Identity(base, http, app, schema, token["access_token"], admin_id, admin_secret)
    finally:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# Named apart from the fixture so test parameters called ``identity`` do not shadow it.
@pytest.fixture(scope="module", name="identity")
async def module_identity(
    settings: Settings, engine: AsyncEngine, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Identity]:
    """The ``identity`` fixture: one identity app per test module (generous login limits)."""
    async with serve_identity(settings, engine, tmp_path_factory.mktemp("identity")) as served:
        yield served


async def client_credentials(
    http: aiohttp.ClientSession, base: str, client_id: str, secret: str, scope: str, **extra: str
) -> dict[str, Any]:
    async with http.post(
        f"{base}/oauth/token",
        data={"grant_type": "client_credentials", "scope": scope, **extra},
        headers={"Authorization": aiohttp.encode_basic_auth(client_id, secret)},
    ) as response:
        body: dict[str, Any] = await response.json()
        assert response.status == 200, body
        return body


def jwt_claims(token: str) -> dict[str, Any]:
    """The unverified payload of a JWT (for asserting what the issuer put in it)."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def hidden_fields(page: str) -> dict[str, str]:
    found = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page)
    return {html.unescape(k): html.unescape(v) for k, v in found}


async def admin_client(identity: Identity, **fields: Any) -> dict[str, Any]:
    """Register an OAuth client through the admin API; the answer includes its secret."""
    async with identity.http.post(
        f"{identity.base}/v1/clients",
        json=fields,
        headers={"Authorization": f"Bearer {identity.admin_token}"},
    ) as response:
        body: dict[str, Any] = await response.json()
        assert response.status == 201, body
        return body


async def sign_up(identity: Identity) -> tuple[str, str]:
    username = f"user{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(16)
    async with identity.http.post(
        f"{identity.base}/v1/users", json={"username": username, "password": password}
    ) as response:
        assert response.status == 201, await response.text()
    return username, password


async def enrol_totp(identity: Identity, access_token: str) -> tuple[pyotp.TOTP, dict[str, Any]]:
    """Enrol and confirm TOTP for the token's user; returns the TOTP and the enrolment.

    The confirming code's time step is spent: the next login must use a later step.
    """
    bearer = {"Authorization": f"Bearer {access_token}"}
    async with identity.http.post(f"{identity.base}/v1/users/me/totp", headers=bearer) as r:
        assert r.status == 201, await r.text()
        enrolment: dict[str, Any] = await r.json()
    totp = pyotp.TOTP(enrolment["secret"])
    async with identity.http.post(
        f"{identity.base}/v1/users/me/totp/confirm", headers=bearer, json={"code": totp.now()}
    ) as r:
        assert r.status == 200, await r.text()
        enrolment["recovery_codes"] = (await r.json())["recovery_codes"]
    return totp, enrolment


class Browser:
    """Drives the authorization endpoint the way a user's browser would, keeping the
    cookies the server sets (its own jar: the shared client session stores none for
    an IP address, and each browser is a separate user agent)."""

    def __init__(self, identity: Identity, client_id: str, scope: str = USER_SCOPE) -> None:
        self.identity = identity
        self.client_id = client_id
        self.scope = scope
        self.verifier, self.challenge = pkce()
        self.state = secrets.token_urlsafe(8)
        self.cookies: dict[str, str] = {}

    def _keep_cookies(self, response: aiohttp.ClientResponse) -> None:
        for name, morsel in response.cookies.items():
            assert morsel["secure"] and morsel["httponly"], name
            self.cookies[name] = morsel.value

    def _cookie_header(self) -> dict[str, str]:
        if not self.cookies:
            return {}
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}

    def authorize_url(self, **overrides: str) -> str:
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": REDIRECT_URI,
            "scope": self.scope,
            "state": self.state,
            "code_challenge": self.challenge,
            "code_challenge_method": "S256",
            **overrides,
        }
        return f"{self.identity.base}/oauth/authorize?{urlencode(params)}"

    async def login_page(self) -> dict[str, str]:
        async with self.identity.http.get(
            self.authorize_url(), headers=self._cookie_header()
        ) as response:
            assert response.status == 200
            page = await response.text()
            self._keep_cookies(response)
        assert "Sign in" in page
        return hidden_fields(page)

    async def submit(
        self, form: dict[str, str], headers: dict[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        response = await self.identity.http.post(
            f"{self.identity.base}/oauth/authorize",
            data=form,
            allow_redirects=False,
            headers={**self._cookie_header(), **(headers or {})},
        )
        await response.read()
        self._keep_cookies(response)
        return response

    async def submit_password(
        self, form: dict[str, str], username: str, password: str
    ) -> aiohttp.ClientResponse:
        """The login form's password step (``form``: the page's hidden fields)."""
        return await self.submit(
            {**form, "step": "password", "username": username, "password": password}
        )

    def code_from(self, response: aiohttp.ClientResponse) -> str:
        assert response.status == 302, response.status
        location = urlsplit(response.headers["Location"])
        assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT_URI
        query = parse_qs(location.query)
        assert query["state"] == [self.state]
        return query["code"][0]

    async def exchange(self, code: str, verifier: str | None = None) -> tuple[int, dict[str, Any]]:
        async with self.identity.http.post(
            f"{self.identity.base}/oauth/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT_URI,
                "client_id": self.client_id,
                "code_verifier": verifier or self.verifier,
            },
        ) as response:
            return response.status, await response.json()

    async def password_login(self, username: str, password: str) -> dict[str, Any]:
        response = await self.submit_password(await self.login_page(), username, password)
        status, tokens = await self.exchange(self.code_from(response))
        assert status == 200, tokens
        return tokens

    async def totp_login(self, username: str, password: str, code: str) -> dict[str, Any]:
        """Password, then the TOTP page with ``code``; the tokens of the completed login."""
        response = await self.submit_password(await self.login_page(), username, password)
        assert response.status == 200, response.status
        ticket = hidden_fields(await response.text())
        assert ticket["ticket"]
        response = await self.submit({**ticket, "step": "otp", "otp": code})
        status, tokens = await self.exchange(self.code_from(response))
        assert status == 200, tokens
        return tokens


def next_totp_code(totp: pyotp.TOTP) -> str:
    """The next step's code: still inside the ±1 window, and not yet spent."""
    return totp.at(time.time() + 30)
