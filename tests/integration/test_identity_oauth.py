"""The identity service over real HTTPS: OAuth2 flows, TOTP login, rotation, revocation.

The app runs on a random port with a dev-CA certificate against a throwaway schema
of the real PostgreSQL and the real KMS; a plain aiohttp client drives it the way a
browser and an OAuth client would.
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
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pyotp
import pytest
from aiohttp import web
from joserfc import jws
from schemas import unique_schema
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.config import Settings
from lastro.core.ratelimit import AUTH, DEFAULT_POLICIES, RateLimitPolicy
from lastro.core.security.tls import client_context, server_context
from lastro.core.security.tokens import InvalidToken, TokenVerifier
from lastro.devstack.ca import DevCA
from lastro.identity.api import KEYS_KEY, SERVICE_KEY
from lastro.identity.app import build_app

REDIRECT_URI = "https://app.example/callback"


@dataclass
class Identity:
    base: str
    http: aiohttp.ClientSession
    app: web.Application
    schema: str
    admin_token: str


@pytest.fixture(scope="module")
async def identity(
    settings: Settings, engine: AsyncEngine, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Identity]:
    schema = unique_schema("identity_test")
    # Generous limits: these tests log in many times from one IP; the lockout is real.
    generous = {**DEFAULT_POLICIES, AUTH: (RateLimitPolicy("auth-ip", 10_000, 60, "ip"),)}
    app = await build_app(settings, schema=schema, rate_limits=generous, redis_prefix=schema)
    runner = web.AppRunner(app)
    await runner.setup()
    cert = DevCA(settings.dev_dir / "ca").issue("identity")
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(cert.cert, cert.key))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    connector = aiohttp.TCPConnector(ssl=client_context(settings.ca_file))
    http = aiohttp.ClientSession(connector=connector)
    base = f"https://127.0.0.1:{port}"
    secret_file = tmp_path_factory.mktemp("identity") / "identity_admin_secret"
    await app[SERVICE_KEY].bootstrap_admin_client(secret_file)
    admin_id, admin_secret = secret_file.read_text().strip().split(":")
    token = await _client_credentials(http, base, admin_id, admin_secret, "identity:admin")
    try:
        yield Identity(base, http, app, schema, token["access_token"])
    finally:
        await http.close()
        await runner.cleanup()
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def _client_credentials(
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


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def _hidden_fields(page: str) -> dict[str, str]:
    found = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page)
    return {html.unescape(k): html.unescape(v) for k, v in found}


async def _admin_client(identity: Identity, **fields: Any) -> dict[str, Any]:
    async with identity.http.post(
        f"{identity.base}/v1/clients",
        json=fields,
        headers={"Authorization": f"Bearer {identity.admin_token}"},
    ) as response:
        body: dict[str, Any] = await response.json()
        assert response.status == 201, body
        return body


@pytest.fixture(scope="module")
async def user_app(identity: Identity) -> dict[str, Any]:
    """A public (PKCE) client for a user-facing app."""
    return await _admin_client(
        identity,
        name="wallet-app",
        confidential=False,
        grant_types=["authorization_code", "refresh_token"],
        scopes=["identity:self", "accounts:read"],
        audiences=["identity", "accounts"],
        redirect_uris=[REDIRECT_URI],
    )


async def _sign_up(identity: Identity) -> tuple[str, str]:
    username = f"user{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(16)
    async with identity.http.post(
        f"{identity.base}/v1/users", json={"username": username, "password": password}
    ) as response:
        assert response.status == 201, await response.text()
    return username, password


class Browser:
    """Drives the authorization endpoint the way a user's browser would."""

    def __init__(self, identity: Identity, client_id: str) -> None:
        self.identity = identity
        self.client_id = client_id
        self.verifier, self.challenge = _pkce()
        self.state = secrets.token_urlsafe(8)

    def authorize_url(self, **overrides: str) -> str:
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": REDIRECT_URI,
            "scope": "identity:self accounts:read",
            "state": self.state,
            "code_challenge": self.challenge,
            "code_challenge_method": "S256",
            **overrides,
        }
        return f"{self.identity.base}/oauth/authorize?{urlencode(params)}"

    async def login_page(self) -> dict[str, str]:
        async with self.identity.http.get(self.authorize_url()) as response:
            assert response.status == 200
            page = await response.text()
        assert "Sign in" in page
        return _hidden_fields(page)

    async def submit(self, form: dict[str, str]) -> aiohttp.ClientResponse:
        response = await self.identity.http.post(
            f"{self.identity.base}/oauth/authorize", data=form, allow_redirects=False
        )
        await response.read()
        return response

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
        hidden = await self.login_page()
        response = await self.submit(
            {**hidden, "step": "password", "username": username, "password": password}
        )
        status, tokens = await self.exchange(self.code_from(response))
        assert status == 200, tokens
        return tokens


async def _refresh(identity: Identity, client_id: str, token: str) -> tuple[int, dict[str, Any]]:
    async with identity.http.post(
        f"{identity.base}/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": token, "client_id": client_id},
    ) as response:
        return response.status, await response.json()


async def _audit_actions(engine: AsyncEngine, schema: str) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(text(f'SELECT action FROM "{schema}".audit_log ORDER BY seq'))
        return [row.action for row in rows]


# ---------------------------------------------------------------- the full user flow


async def test_authorization_code_pkce_flow_with_totp_step(
    identity: Identity, user_app: dict[str, Any], engine: AsyncEngine
) -> None:
    client_id = user_app["client_id"]
    username, password = await _sign_up(identity)

    # 1. password-only login → token with amr ["pwd"]
    first = await Browser(identity, client_id).password_login(username, password)
    claims = _claims(first["access_token"])
    assert claims["amr"] == ["pwd"]
    assert sorted(claims["aud"]) == ["accounts", "identity"]
    assert claims["scope"] == "identity:self accounts:read"
    assert claims["sub"].startswith("usr_") and claims["client_id"] == client_id
    assert "refresh_token" in first

    # 2. enrol TOTP with that token (QR as a PNG data URI), confirm with a code
    bearer = {"Authorization": f"Bearer {first['access_token']}"}
    async with identity.http.post(f"{identity.base}/v1/users/me/totp", headers=bearer) as r:
        assert r.status == 201
        enrolment = await r.json()
    assert enrolment["provisioning_uri"].startswith("otpauth://totp/Lastro:")
    assert enrolment["qr_png"].startswith("data:image/png;base64,iVBOR")
    totp = pyotp.TOTP(enrolment["secret"])
    async with identity.http.post(
        f"{identity.base}/v1/users/me/totp/confirm", headers=bearer, json={"code": totp.now()}
    ) as r:
        assert r.status == 200
        recovery = (await r.json())["recovery_codes"]
    assert len(recovery) == 10

    # 3. login now stops at the TOTP page; the confirming code's step is spent, so use
    #    the next step's code (still inside the ±1 window)
    browser = Browser(identity, client_id)
    hidden = await browser.login_page()
    response = await browser.submit(
        {**hidden, "step": "password", "username": username, "password": password}
    )
    assert response.status == 200
    totp_page = _hidden_fields(await response.text())
    assert totp_page["ticket"]
    code = totp.at(time.time() + 30)
    response = await browser.submit({**totp_page, "step": "otp", "otp": code})
    status, tokens = await browser.exchange(browser.code_from(response))
    assert status == 200, tokens
    claims = _claims(tokens["access_token"])
    assert claims["amr"] == ["pwd", "otp"]
    assert claims["acr"] == "urn:lastro:acr:mfa"
    assert abs(claims["auth_time"] - time.time()) < 60

    # 4. the same TOTP code again is a replay: back to the login page with 401
    browser = Browser(identity, client_id)
    hidden = await browser.login_page()
    response = await browser.submit(
        {**hidden, "step": "password", "username": username, "password": password}
    )
    replay = _hidden_fields(await response.text())
    response = await browser.submit({**replay, "step": "otp", "otp": code})
    assert response.status == 401

    # 5. a recovery code works once
    browser = Browser(identity, client_id)
    hidden = await browser.login_page()
    response = await browser.submit(
        {**hidden, "step": "password", "username": username, "password": password}
    )
    ticket_form = _hidden_fields(await response.text())
    response = await browser.submit({**ticket_form, "step": "otp", "otp": recovery[0]})
    assert response.status == 302

    actions = await _audit_actions(engine, identity.schema)
    for expected in ("user.signed_up", "user.login", "totp.enabled", "token.issued"):
        assert expected in actions


async def test_the_authorization_code_is_single_use_and_bound_to_the_verifier(
    identity: Identity, user_app: dict[str, Any]
) -> None:
    username, password = await _sign_up(identity)
    browser = Browser(identity, user_app["client_id"])
    hidden = await browser.login_page()
    response = await browser.submit(
        {**hidden, "step": "password", "username": username, "password": password}
    )
    code = browser.code_from(response)
    wrong_verifier, _ = _pkce()
    status, body = await browser.exchange(code, wrong_verifier)
    assert (status, body["error"]) == (400, "invalid_grant")
    status, _ = await browser.exchange(code)
    assert status == 200
    status, body = await browser.exchange(code)
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_pkce_plain_and_missing_challenge_are_refused(
    identity: Identity, user_app: dict[str, Any]
) -> None:
    browser = Browser(identity, user_app["client_id"])
    for overrides in ({"code_challenge_method": "plain"}, {"code_challenge": ""}):
        async with identity.http.get(
            browser.authorize_url(**overrides), allow_redirects=False
        ) as response:
            assert response.status == 302
            query = parse_qs(urlsplit(response.headers["Location"]).query)
        assert query["error"] == ["invalid_request"]


async def test_wrong_password_shows_the_login_page_again(
    identity: Identity, user_app: dict[str, Any]
) -> None:
    username, _ = await _sign_up(identity)
    browser = Browser(identity, user_app["client_id"])
    hidden = await browser.login_page()
    response = await browser.submit(
        {**hidden, "step": "password", "username": username, "password": "not-the-password"}
    )
    assert response.status == 401
    assert "Location" not in response.headers


async def test_repeated_wrong_passwords_lock_the_username_out(
    identity: Identity, user_app: dict[str, Any]
) -> None:
    username, password = await _sign_up(identity)
    browser = Browser(identity, user_app["client_id"])
    hidden = await browser.login_page()
    for _ in range(5):
        response = await browser.submit(
            {**hidden, "step": "password", "username": username, "password": "wrong-password!"}
        )
        assert response.status == 401
    response = await browser.submit(
        {**hidden, "step": "password", "username": username, "password": password}
    )
    assert response.status == 429
    assert int(response.headers["Retry-After"]) >= 1


# ---------------------------------------------------------------- refresh and revocation


async def test_refresh_rotation_and_reuse_revokes_the_whole_family(
    identity: Identity, user_app: dict[str, Any], engine: AsyncEngine
) -> None:
    client_id = user_app["client_id"]
    username, password = await _sign_up(identity)
    tokens = await Browser(identity, client_id).password_login(username, password)
    first = tokens["refresh_token"]

    status, rotated = await _refresh(identity, client_id, first)
    assert status == 200
    second = rotated["refresh_token"]
    assert second != first
    assert _claims(rotated["access_token"])["amr"] == ["pwd"]  # the original authentication

    status, body = await _refresh(identity, client_id, first)  # reuse of a spent token
    assert (status, body["error"]) == (400, "invalid_grant")
    status, body = await _refresh(identity, client_id, second)  # the newest is dead too
    assert (status, body["error"]) == (400, "invalid_grant")
    assert "refresh_token.reused" in await _audit_actions(engine, identity.schema)


async def test_revoked_refresh_token_stops_working(
    identity: Identity, user_app: dict[str, Any]
) -> None:
    client_id = user_app["client_id"]
    username, password = await _sign_up(identity)
    tokens = await Browser(identity, client_id).password_login(username, password)
    async with identity.http.post(
        f"{identity.base}/oauth/revoke",
        data={"token": tokens["refresh_token"], "client_id": client_id},
    ) as response:
        assert response.status == 200
    status, body = await _refresh(identity, client_id, tokens["refresh_token"])
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_another_client_cannot_use_or_revoke_a_users_refresh_token(
    identity: Identity, user_app: dict[str, Any]
) -> None:
    other = await _admin_client(
        identity,
        name="other-app",
        confidential=False,
        grant_types=["authorization_code", "refresh_token"],
        scopes=["identity:self"],
        audiences=["identity"],
        redirect_uris=[REDIRECT_URI],
    )
    username, password = await _sign_up(identity)
    tokens = await Browser(identity, user_app["client_id"]).password_login(username, password)
    status, body = await _refresh(identity, other["client_id"], tokens["refresh_token"])
    assert (status, body["error"]) == (400, "invalid_grant")
    status, _ = await _refresh(identity, user_app["client_id"], tokens["refresh_token"])
    assert status == 200


# ---------------------------------------------------------------- services and keys


@pytest.fixture(scope="module")
async def ledger_service(identity: Identity) -> dict[str, Any]:
    return await _admin_client(
        identity,
        name="transactions-service",
        grant_types=["client_credentials"],
        scopes=["accounts:internal"],
        audiences=["accounts", "fraud"],
    )


def _verifier(identity: Identity, settings: Settings, audience: str) -> TokenVerifier:
    return TokenVerifier(
        f"{identity.base}/.well-known/jwks.json", settings.jwt_issuer, audience, settings.ca_file
    )


async def test_service_token_verifies_against_the_jwks_with_its_audience(
    identity: Identity, ledger_service: dict[str, Any], settings: Settings
) -> None:
    token = await _client_credentials(
        identity.http,
        identity.base,
        ledger_service["client_id"],
        ledger_service["client_secret"],
        "accounts:internal",
        audience="accounts",
    )
    assert "refresh_token" not in token
    principal = await _verifier(identity, settings, "accounts").verify(token["access_token"])
    assert principal.subject == ledger_service["client_id"]
    assert principal.audience == ("accounts",)
    assert principal.scopes == frozenset({"accounts:internal"})
    with pytest.raises(InvalidToken):
        await _verifier(identity, settings, "fraud").verify(token["access_token"])
    header = jws.extract_compact(token["access_token"].encode()).headers()
    assert (header["typ"], header["alg"]) == ("at+jwt", "ES256")


async def test_client_credentials_refuses_foreign_audience_scope_and_secret(
    identity: Identity, ledger_service: dict[str, Any]
) -> None:
    base, cid, secret = identity.base, ledger_service["client_id"], ledger_service["client_secret"]
    cases = [
        ({"scope": "accounts:internal", "audience": "identity"}, secret, "invalid_target"),
        (
            {"scope": "accounts:internal", "resource": "https://evil.example"},
            secret,
            "invalid_target",
        ),
        ({"scope": "identity:admin"}, secret, "invalid_scope"),
        ({"scope": "accounts:internal"}, "wrong-secret", "invalid_client"),
    ]
    for data, client_secret, error in cases:
        async with identity.http.post(
            f"{base}/oauth/token",
            data={"grant_type": "client_credentials", **data},
            headers={"Authorization": aiohttp.encode_basic_auth(cid, client_secret)},
        ) as response:
            body = await response.json()
        assert body["error"] == error, (data, body)


async def test_signing_key_rotation_keeps_old_tokens_valid(
    identity: Identity, ledger_service: dict[str, Any], settings: Settings
) -> None:
    async def mint() -> str:
        token = await _client_credentials(
            identity.http,
            identity.base,
            ledger_service["client_id"],
            ledger_service["client_secret"],
            "accounts:internal",
            resource=f"{settings.service_url('accounts')}/",
        )
        return str(token["access_token"])

    def kid(token: str) -> str:
        return str(jws.extract_compact(token.encode()).headers()["kid"])

    old = await mint()
    new_kid = await identity.app[KEYS_KEY].rotate(actor="test")
    new = await mint()
    assert kid(new) == new_kid != kid(old)
    async with identity.http.get(f"{identity.base}/.well-known/jwks.json") as response:
        published = [key["kid"] for key in (await response.json())["keys"]]
    assert published[0] == new_kid and kid(old) in published
    verifier = _verifier(identity, settings, "accounts")
    assert (await verifier.verify(old)).subject == ledger_service["client_id"]
    assert (await verifier.verify(new)).subject == ledger_service["client_id"]


async def test_discovery_metadata_names_the_endpoints(
    identity: Identity, settings: Settings
) -> None:
    async with identity.http.get(f"{identity.base}/.well-known/openid-configuration") as r:
        metadata = await r.json()
    assert metadata["issuer"] == settings.jwt_issuer
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["jwks_uri"].endswith("/.well-known/jwks.json")
    assert set(metadata["grant_types_supported"]) == {
        "authorization_code",
        "client_credentials",
        "refresh_token",
    }


async def test_admin_routes_need_the_admin_scope(
    identity: Identity, user_app: dict[str, Any]
) -> None:
    username, password = await _sign_up(identity)
    tokens = await Browser(identity, user_app["client_id"]).password_login(username, password)
    async with identity.http.post(
        f"{identity.base}/v1/clients",
        json={
            "name": "x",
            "grant_types": ["client_credentials"],
            "scopes": [],
            "audiences": ["accounts"],
        },
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    ) as response:
        assert response.status == 403


async def test_secrets_are_not_stored_in_clear(
    identity: Identity, engine: AsyncEngine, ledger_service: dict[str, Any]
) -> None:
    async with engine.connect() as conn:
        client = (
            await conn.execute(
                text(f'SELECT secret_hash FROM "{identity.schema}".clients WHERE id = :id'),
                {"id": ledger_service["client_id"]},
            )
        ).one()
        keys = (
            await conn.execute(text(f'SELECT private_jwk FROM "{identity.schema}".signing_keys'))
        ).all()
    assert client.secret_hash.startswith("$argon2id$")
    assert all(row.private_jwk.startswith("vault:v") for row in keys)
