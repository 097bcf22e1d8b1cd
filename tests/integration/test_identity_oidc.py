"""The identity service as an OpenID Connect provider, seen by a relying party built
without authlib: requests-oauthlib for discovery-driven code + PKCE, PyJWT to verify
the ID token against the published JWKS.

The provider runs over real HTTPS (dev CA) against a throwaway schema of the real
PostgreSQL and KMS, with its issuer set to the address it is served at, so every
endpoint the relying party uses comes from the discovery document.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import secrets
import socket
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
from identity_flows import (
    REDIRECT_URI,
    Identity,
    admin_client,
    hidden_fields,
    serve_identity,
    sign_up,
)
from requests_oauthlib import OAuth2Session
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.config import Settings


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
async def provider(
    settings: Settings, engine: AsyncEngine, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Identity]:
    port = _free_port()
    own = dataclasses.replace(settings, jwt_issuer=f"https://127.0.0.1:{port}")
    async with serve_identity(own, engine, tmp_path_factory.mktemp("oidc"), port=port) as served:
        yield served


@pytest.fixture(scope="module")
async def relying_party(provider: Identity) -> dict[str, Any]:
    return await admin_client(
        provider,
        name="oidc-rp",
        confidential=False,
        grant_types=["authorization_code", "refresh_token"],
        scopes=["openid", "profile", "identity:self"],
        audiences=["identity"],
        redirect_uris=[REDIRECT_URI],
    )


def _half_hash(token: str) -> str:
    """OIDC Core 3.1.3.6: base64url of the left half of SHA-256 (RS256 and ES256 both
    hash with SHA-256) of the token."""
    digest = hashlib.sha256(token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


def _sign_in(browser: requests.Session, url: str, ca: str, username: str, password: str) -> str:
    """What the user does in the browser: open the login page, submit the form;
    returns the redirect back to the relying party."""
    page = browser.get(url, allow_redirects=False, verify=ca, timeout=10)
    assert page.status_code == 200, page.text
    form = {**hidden_fields(page.text), "username": username, "password": password}
    action = urlsplit(url)._replace(query="").geturl()
    answer = browser.post(action, data=form, allow_redirects=False, verify=ca, timeout=10)
    assert answer.status_code == 302, answer.text
    location: str = answer.headers["Location"]
    return location


def _relying_party_flow(
    issuer: str, ca: str, client_id: str, username: str, password: str, scope: list[str]
) -> dict[str, Any]:
    """Discovery, code + PKCE with a nonce, token exchange, ID token verification and
    userinfo, all from the discovery document; returns what it saw."""
    discovery = f"{issuer}/.well-known/openid-configuration"
    metadata = requests.get(discovery, verify=ca, timeout=10).json()
    session = OAuth2Session(client_id, redirect_uri=REDIRECT_URI, scope=scope, pkce="S256")
    nonce = secrets.token_urlsafe(16)
    url, state = session.authorization_url(metadata["authorization_endpoint"], nonce=nonce)
    with requests.Session() as browser:
        callback = _sign_in(browser, url, ca, username, password)
    assert parse_qs(urlsplit(callback).query)["state"] == [state]
    token = session.fetch_token(
        metadata["token_endpoint"],
        authorization_response=callback,
        include_client_id=True,
        verify=ca,
        timeout=10,
    )
    seen: dict[str, Any] = {"metadata": metadata, "token": dict(token), "nonce": nonce}
    if "id_token" in token:
        jwks = requests.get(metadata["jwks_uri"], verify=ca, timeout=10).json()
        header = jwt.get_unverified_header(token["id_token"])
        kid = header["kid"]
        jwk = next(k for k in jwks["keys"] if k["kid"] == kid)
        seen["id_token_header"] = header
        seen["id_token_jwk"] = jwk
        key = jwt.PyJWK(jwk)
        seen["id_token"] = jwt.decode(
            token["id_token"],
            key,
            algorithms=metadata["id_token_signing_alg_values_supported"],
            audience=client_id,
            issuer=metadata["issuer"],
            options={"require": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce"]},
        )
    userinfo = session.get(metadata["userinfo_endpoint"], verify=ca, timeout=10)
    seen["userinfo"] = (userinfo.status_code, userinfo.json())
    return seen


async def test_a_relying_party_without_authlib_signs_a_user_in_from_discovery(
    provider: Identity, relying_party: dict[str, Any], settings: Settings
) -> None:
    username, password = await sign_up(provider)
    seen = await asyncio.to_thread(
        _relying_party_flow,
        provider.base,
        str(settings.ca_file),
        relying_party["client_id"],
        username,
        password,
        ["openid", "profile"],
    )
    metadata = seen["metadata"]
    assert metadata["issuer"] == provider.base
    assert "openid" in metadata["scopes_supported"]
    assert metadata["userinfo_endpoint"] == f"{provider.base}/oauth/userinfo"
    assert {"nonce", "at_hash", "auth_time", "acr", "amr"} <= set(metadata["claims_supported"])

    # No id_token_signed_response_alg registered: RS256 (OpenID Connect Core §2, §15.1)
    assert seen["id_token_header"]["alg"] == "RS256"
    assert (seen["id_token_jwk"]["kty"], seen["id_token_jwk"]["alg"]) == ("RSA", "RS256")
    claims = seen["id_token"]
    assert claims["nonce"] == seen["nonce"]
    assert claims["at_hash"] == _half_hash(seen["token"]["access_token"])
    assert claims["sub"].startswith("usr_")
    assert claims["amr"] == ["pwd"] and claims["acr"] == "urn:lastro:acr:pwd"
    assert claims["iat"] - 300 < claims["auth_time"] <= claims["iat"]
    assert seen["userinfo"] == (200, {"sub": claims["sub"], "preferred_username": username})


async def test_a_client_registered_for_es256_gets_es256_id_tokens_and_access_tokens_stay_es256(
    provider: Identity, settings: Settings
) -> None:
    client = await admin_client(
        provider,
        name="oidc-rp-es256",
        confidential=False,
        grant_types=["authorization_code"],
        scopes=["openid", "identity:self"],
        audiences=["identity"],
        redirect_uris=[REDIRECT_URI],
        id_token_signed_response_alg="ES256",
    )
    assert client["id_token_signed_response_alg"] == "ES256"
    username, password = await sign_up(provider)
    seen = await asyncio.to_thread(
        _relying_party_flow,
        provider.base,
        str(settings.ca_file),
        client["client_id"],
        username,
        password,
        ["openid", "identity:self"],
    )
    assert seen["id_token_header"]["alg"] == "ES256"
    assert seen["id_token_jwk"]["kty"] == "EC"
    assert seen["id_token"]["at_hash"] == _half_hash(seen["token"]["access_token"])
    access = jwt.get_unverified_header(seen["token"]["access_token"])
    assert (access["typ"], access["alg"]) == ("at+jwt", "ES256")


async def test_an_unknown_id_token_algorithm_is_refused_at_registration(
    provider: Identity,
) -> None:
    async with provider.http.post(
        f"{provider.base}/v1/clients",
        headers={"Authorization": f"Bearer {provider.admin_token}"},
        json={
            "name": "oidc-rp-none",
            "grant_types": ["authorization_code"],
            "scopes": ["openid"],
            "audiences": ["identity"],
            "redirect_uris": [REDIRECT_URI],
            "id_token_signed_response_alg": "none",
        },
    ) as answer:
        assert answer.status == 422
        problem = await answer.json()
    assert "id_token_signed_response_alg" in json.dumps(problem)


async def test_no_id_token_without_the_openid_scope(
    provider: Identity, relying_party: dict[str, Any], settings: Settings
) -> None:
    username, password = await sign_up(provider)
    seen = await asyncio.to_thread(
        _relying_party_flow,
        provider.base,
        str(settings.ca_file),
        relying_party["client_id"],
        username,
        password,
        ["identity:self"],
    )
    assert "id_token" not in seen["token"]
    status, body = seen["userinfo"]
    assert status == 403 and body["type"].endswith("/insufficient-scope")


async def test_discovery_advertises_only_what_is_implemented(provider: Identity) -> None:
    async with provider.http.get(f"{provider.base}/.well-known/openid-configuration") as r:
        metadata = await r.json()
    assert metadata["response_types_supported"] == ["code"]
    assert metadata["id_token_signing_alg_values_supported"] == ["RS256", "ES256"]
    assert metadata["request_uri_parameter_supported"] is False
    assert "token_endpoint_auth_signing_alg_values_supported" not in metadata
    for endpoint in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri"):
        path = urlsplit(metadata[endpoint]).path
        async with provider.http.options(f"{provider.base}{path}") as answer:
            assert answer.status != 404, endpoint


async def test_prompt_none_answers_login_required_as_no_sign_in_session_is_kept(
    provider: Identity, relying_party: dict[str, Any]
) -> None:
    query = {
        "response_type": "code",
        "client_id": relying_party["client_id"],
        "redirect_uri": REDIRECT_URI,
        "scope": "openid",
        "state": "s1",
        "nonce": "n1",
        "prompt": "none",
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256",
    }
    async with provider.http.get(
        f"{provider.base}/oauth/authorize", params=query, allow_redirects=False
    ) as answer:
        assert answer.status == 302
        redirect = parse_qs(urlsplit(answer.headers["Location"]).query)
    assert redirect["error"] == ["login_required"] and redirect["state"] == ["s1"]
