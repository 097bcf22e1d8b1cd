"""The identity service over real HTTPS: OAuth2 flows, TOTP login, rotation, revocation.

The app runs on a random port with a dev-CA certificate against a throwaway schema
of the real PostgreSQL and the real KMS; a plain aiohttp client drives it the way a
browser and an OAuth client would.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pyotp
import pytest
from identity_flows import (
    REDIRECT_URI,
    Browser,
    Identity,
    admin_client,
    client_credentials,
    hidden_fields,
    jwt_claims,
    module_identity,  # noqa: F401 - provides the `identity` fixture
    pkce,
    sign_up,
)
from joserfc import jws
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.config import Settings
from lastro.core.security.tokens import InvalidToken, TokenVerifier
from lastro.identity.api import KEYS_KEY, SERVICE_KEY


@pytest.fixture(scope="module")
async def user_app(identity: Identity) -> dict[str, Any]:
    """A public (PKCE) client for a user-facing app."""
    return await admin_client(
        identity,
        name="wallet-app",
        confidential=False,
        grant_types=["authorization_code", "refresh_token"],
        scopes=["identity:self", "accounts:read"],
        audiences=["identity", "accounts"],
        redirect_uris=[REDIRECT_URI],
    )


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
    username, password = await sign_up(identity)

    # 1. password-only login → token with amr ["pwd"]
    first = await Browser(identity, client_id).password_login(username, password)
    claims = jwt_claims(first["access_token"])
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
    response = await browser.submit_password(await browser.login_page(), username, password)
    assert response.status == 200
    totp_page = hidden_fields(await response.text())
    assert totp_page["ticket"]
    code = totp.at(time.time() + 30)
    response = await browser.submit({**totp_page, "step": "otp", "otp": code})
    status, tokens = await browser.exchange(browser.code_from(response))
    assert status == 200, tokens
    claims = jwt_claims(tokens["access_token"])
    assert claims["amr"] == ["pwd", "otp"]
    assert claims["acr"] == "urn:lastro:acr:mfa"
    assert abs(claims["auth_time"] - time.time()) < 60

    # 4. the same TOTP code again is a replay: back to the login page with 401
    browser = Browser(identity, client_id)
    response = await browser.submit_password(await browser.login_page(), username, password)
    replay = hidden_fields(await response.text())
    response = await browser.submit({**replay, "step": "otp", "otp": code})
    assert response.status == 401

    # 5. a recovery code works once
    browser = Browser(identity, client_id)
    response = await browser.submit_password(await browser.login_page(), username, password)
    ticket_form = hidden_fields(await response.text())
    response = await browser.submit({**ticket_form, "step": "otp", "otp": recovery[0]})
    assert response.status == 302

    actions = await _audit_actions(engine, identity.schema)
    for expected in ("user.signed_up", "user.authenticated", "totp.enabled", "token.issued"):
        assert expected in actions


async def test_the_authorization_code_is_single_use_and_bound_to_the_verifier(
    identity: Identity, user_app: dict[str, Any]
) -> None:
    username, password = await sign_up(identity)
    browser = Browser(identity, user_app["client_id"])
    response = await browser.submit_password(await browser.login_page(), username, password)
    code = browser.code_from(response)
    wrong_verifier, _ = pkce()
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
    username, _ = await sign_up(identity)
    browser = Browser(identity, user_app["client_id"])
    response = await browser.submit_password(
        await browser.login_page(), username, "not-the-password"
    )
    assert response.status == 401
    assert "Location" not in response.headers


async def test_repeated_wrong_passwords_lock_the_username_out(
    identity: Identity, user_app: dict[str, Any]
) -> None:
    username, password = await sign_up(identity)
    browser = Browser(identity, user_app["client_id"])
    hidden = await browser.login_page()
    for _ in range(5):
        response = await browser.submit_password(hidden, username, "wrong-password!")
        assert response.status == 401
    response = await browser.submit_password(hidden, username, password)
    assert response.status == 429
    assert int(response.headers["Retry-After"]) >= 1


# ---------------------------------------------------------------- refresh and revocation


async def test_refresh_rotation_and_reuse_revokes_the_whole_family(
    identity: Identity, user_app: dict[str, Any], engine: AsyncEngine
) -> None:
    client_id = user_app["client_id"]
    username, password = await sign_up(identity)
    tokens = await Browser(identity, client_id).password_login(username, password)
    first = tokens["refresh_token"]

    status, rotated = await _refresh(identity, client_id, first)
    assert status == 200
    second = rotated["refresh_token"]
    assert second != first
    assert jwt_claims(rotated["access_token"])["amr"] == ["pwd"]  # the original authentication

    status, body = await _refresh(identity, client_id, first)  # reuse of a spent token
    assert (status, body["error"]) == (400, "invalid_grant")
    status, body = await _refresh(identity, client_id, second)  # the newest is dead too
    assert (status, body["error"]) == (400, "invalid_grant")
    assert "refresh_token.reused" in await _audit_actions(engine, identity.schema)


async def test_one_refresh_token_used_twice_at_once_rotates_once_and_revokes_the_family(
    identity: Identity, user_app: dict[str, Any], engine: AsyncEngine
) -> None:
    """Two requests race with the same refresh token: exactly one gets new tokens,
    the other is refused as reuse, and the family is revoked, so the winner's new
    refresh token is dead too (whoever holds the stolen copy gains nothing)."""
    client_id = user_app["client_id"]
    username, password = await sign_up(identity)
    tokens = await Browser(identity, client_id).password_login(username, password)
    token = tokens["refresh_token"]

    results = await asyncio.gather(*(_refresh(identity, client_id, token) for _ in range(2)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 400], results
    (winner,) = [body for status, body in results if status == 200]
    (loser,) = [body for status, body in results if status == 400]
    assert loser["error"] == "invalid_grant"
    status, body = await _refresh(identity, client_id, winner["refresh_token"])
    assert (status, body["error"]) == (400, "invalid_grant")
    async with engine.connect() as conn:
        reused = (
            await conn.execute(
                text(
                    f'SELECT outcome, details FROM "{identity.schema}".audit_log'
                    " WHERE action = 'refresh_token.reused' ORDER BY seq"
                )
            )
        ).all()
    assert reused and all(row.outcome == "denied" for row in reused)
    assert any(row.details["family_revoked"] for row in reused)


async def test_revoked_refresh_token_stops_working(
    identity: Identity, user_app: dict[str, Any]
) -> None:
    client_id = user_app["client_id"]
    username, password = await sign_up(identity)
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
    other = await admin_client(
        identity,
        name="other-app",
        confidential=False,
        grant_types=["authorization_code", "refresh_token"],
        scopes=["identity:self"],
        audiences=["identity"],
        redirect_uris=[REDIRECT_URI],
    )
    username, password = await sign_up(identity)
    tokens = await Browser(identity, user_app["client_id"]).password_login(username, password)
    status, body = await _refresh(identity, other["client_id"], tokens["refresh_token"])
    assert (status, body["error"]) == (400, "invalid_grant")
    status, _ = await _refresh(identity, user_app["client_id"], tokens["refresh_token"])
    assert status == 200


# ---------------------------------------------------------------- services and keys


@pytest.fixture(scope="module")
async def ledger_service(identity: Identity) -> dict[str, Any]:
    return await admin_client(
        identity,
        name="transactions-service",
        grant_types=["client_credentials"],
        scopes=["ledger:write"],
        audiences=["accounts", "fraud"],
    )


def _verifier(identity: Identity, settings: Settings, audience: str) -> TokenVerifier:
    return TokenVerifier(
        f"{identity.base}/.well-known/jwks.json", settings.jwt_issuer, audience, settings.ca_file
    )


async def test_service_token_verifies_against_the_jwks_with_its_audience(
    identity: Identity, ledger_service: dict[str, Any], settings: Settings
) -> None:
    token = await client_credentials(
        identity.http,
        identity.base,
        ledger_service["client_id"],
        ledger_service["client_secret"],
        "ledger:write",
        audience="accounts",
    )
    assert "refresh_token" not in token
    principal = await _verifier(identity, settings, "accounts").verify(token["access_token"])
    assert principal.subject == ledger_service["client_id"]
    assert principal.audience == ("accounts",)
    assert principal.scopes == frozenset({"ledger:write"})
    with pytest.raises(InvalidToken):
        await _verifier(identity, settings, "fraud").verify(token["access_token"])
    header = jws.extract_compact(token["access_token"].encode()).headers()
    assert (header["typ"], header["alg"]) == ("at+jwt", "ES256")


async def test_client_credentials_refuses_foreign_audience_scope_and_secret(
    identity: Identity, ledger_service: dict[str, Any]
) -> None:
    base, cid, secret = identity.base, ledger_service["client_id"], ledger_service["client_secret"]
    cases = [
        ({"scope": "ledger:write", "audience": "identity"}, secret, "invalid_target"),
        (
            {"scope": "ledger:write", "resource": "https://evil.example"},
            secret,
            "invalid_target",
        ),
        ({"scope": "identity:admin"}, secret, "invalid_scope"),
        ({"scope": "ledger:write"}, "wrong-secret", "invalid_client"),
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
        token = await client_credentials(
            identity.http,
            identity.base,
            ledger_service["client_id"],
            ledger_service["client_secret"],
            "ledger:write",
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
        keys = (await response.json())["keys"]
    published = [key["kid"] for key in keys]
    assert published[0] == new_kid and kid(old) in published
    # One rotation, one new key per algorithm: ES256 (access tokens) and RS256 (ID tokens)
    assert [(key["kty"], key["alg"]) for key in keys[:2]] == [("EC", "ES256"), ("RSA", "RS256")]
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
    username, password = await sign_up(identity)
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


async def test_housekeeping_purges_only_what_can_no_longer_be_used(
    identity: Identity, user_app: dict[str, Any], engine: AsyncEngine
) -> None:
    client_id = user_app["client_id"]
    username, password = await sign_up(identity)
    live = await Browser(identity, client_id).password_login(username, password)
    user_id = jwt_claims(live["access_token"])["sub"]
    s = identity.schema
    ids = {"u": user_id, "c": client_id, "f": f"fam_expired_{secrets.token_hex(4)}"}
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f'INSERT INTO "{s}".authorization_codes VALUES (:h, :c, :u, :r, :sc,'
                " ARRAY['identity'], 'challenge', 'S256', ARRAY['pwd'], 0,"
                " now() - interval '1 hour')"
            ),
            {**ids, "h": "expired-code", "r": REDIRECT_URI, "sc": "identity:self"},
        )
        await conn.execute(
            text(
                f"INSERT INTO \"{s}\".login_tickets VALUES (:h, :u, 0, now() - interval '1 hour')"
            ),
            {**ids, "h": "expired-ticket"},
        )
        await conn.execute(
            text(f'INSERT INTO "{s}".token_families (id, client_id, user_id) VALUES (:f, :c, :u)'),
            ids,
        )
        await conn.execute(
            text(
                f'INSERT INTO "{s}".refresh_tokens VALUES (:h, :f, :c, :u, :sc,'
                " ARRAY['identity'], ARRAY['pwd'], 0, now() - interval '31 days',"
                " now() - interval '1 day', NULL)"
            ),
            {**ids, "h": "expired-refresh", "sc": "identity:self"},
        )

    deleted = await identity.app[SERVICE_KEY].purge_expired()

    assert all(deleted[table] >= 1 for table in deleted), deleted
    async with engine.connect() as conn:
        left = await conn.scalar(
            text(
                f'SELECT (SELECT count(*) FROM "{s}".authorization_codes WHERE code_hash = '
                f"'expired-code') + (SELECT count(*) FROM \"{s}\".login_tickets WHERE "
                f"ticket_hash = 'expired-ticket') + (SELECT count(*) FROM \"{s}\".refresh_tokens"
                f" WHERE token_hash = 'expired-refresh') + (SELECT count(*) FROM"
                f' "{s}".token_families WHERE id = :f)'
            ),
            ids,
        )
    assert left == 0
    status, rotated = await _refresh(identity, client_id, live["refresh_token"])
    assert status == 200, rotated  # live tokens and their family are untouched
