"""Access-token validation: what is accepted, what is refused, and JWKS rotation."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from joserfc import jwt
from joserfc.jwk import OctKey

from issuerkit import TestIssuer
from lastro.core.security.tls import server_context
from lastro.core.security.tokens import (
    InvalidToken,
    KeySetUnavailable,
    RemoteKeySet,
    StaticKeySet,
    TokenVerifier,
)
from lastro.devstack.ca import DevCA


@pytest.fixture
def issuer() -> TestIssuer:
    return TestIssuer(issuer="https://identity.test", audience="accounts")


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_valid_token_yields_principal(issuer: TestIssuer) -> None:
    token = issuer.mint(
        scope="accounts:read transfers:write",
        subject="usr_1",
        client_id="cli_app",
        audience=["accounts", "transactions"],
        amr=["pwd", "otp"],
        acr="urn:lastro:acr:2fa",
        auth_time=1_700_000_000,
    )
    principal = await issuer.verifier().verify(token)
    assert principal.subject == "usr_1"
    assert principal.client_id == "cli_app"
    assert principal.scopes == frozenset({"accounts:read", "transfers:write"})
    assert principal.audience == ("accounts", "transactions")
    assert principal.amr == ("pwd", "otp")
    assert principal.acr == "urn:lastro:acr:2fa"
    assert principal.auth_time == 1_700_000_000
    assert principal.claims["iss"] == "https://identity.test"


async def test_ed25519_tokens_verify(issuer: TestIssuer) -> None:
    ed = TestIssuer(issuer=issuer.issuer, audience="accounts", algorithm="Ed25519")
    assert (await ed.verifier().verify(ed.mint(subject="usr_ed"))).subject == "usr_ed"


async def test_small_clock_skew_is_tolerated(issuer: TestIssuer) -> None:
    token = issuer.mint(issued_at=int(time.time()) - 310, expires_in=300)
    assert (await issuer.verifier().verify(token)).subject == "usr_test"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"audience": "transactions"}, "invalid or missing claim 'aud'"),
        ({"iss": "https://evil.test"}, "invalid or missing claim 'iss'"),
        ({"issued_at": 1_000_000, "expires_in": 60}, "token expired"),
        ({"nbf": 4_000_000_000}, "invalid or missing claim 'nbf'"),
        ({"iat": 4_000_000_000, "exp": 4_000_000_100}, "invalid or missing claim 'iat'"),
        ({"client_id": None}, "invalid or missing claim 'client_id'"),
        ({"jti": None}, "invalid or missing claim 'jti'"),
        ({"typ": "JWT"}, "not an access token (typ must be at+jwt)"),
    ],
)
async def test_claims_and_type_are_enforced(
    issuer: TestIssuer, overrides: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidToken) as refused:
        await issuer.verifier().verify(issuer.mint(**overrides))
    assert str(refused.value) == reason


async def test_tampered_payload_fails_signature(issuer: TestIssuer) -> None:
    header, payload, signature = issuer.mint(scope="accounts:read").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged = f"{header}.{_b64({**claims, 'scope': 'admin'})}.{signature}"
    with pytest.raises(InvalidToken, match="signature verification failed"):
        await issuer.verifier().verify(forged)


async def test_symmetric_and_unsigned_tokens_are_refused(issuer: TestIssuer) -> None:
    claims = json.loads(base64.urlsafe_b64decode(issuer.mint().split(".")[1] + "=="))
    kid = issuer.signing_key.kid
    hmac_token = jwt.encode(
        {"alg": "HS256", "kid": kid, "typ": "at+jwt"}, claims, OctKey.generate_key(256)
    )
    unsigned = f"{_b64({'alg': 'none', 'kid': kid, 'typ': 'at+jwt'})}.{_b64(claims)}."
    for token in (hmac_token, unsigned):
        with pytest.raises(InvalidToken, match="algorithm not allowed"):
            await issuer.verifier().verify(token)


async def test_token_from_unknown_key_is_refused(issuer: TestIssuer) -> None:
    stranger = TestIssuer(issuer=issuer.issuer, audience="accounts")
    with pytest.raises(InvalidToken, match="unknown signing key"):
        await issuer.verifier().verify(stranger.mint())


async def test_verifier_accepts_any_of_its_audiences(issuer: TestIssuer) -> None:
    verifier = TokenVerifier.from_key_source(
        StaticKeySet(issuer.jwks()), issuer=issuer.issuer, audience=["accounts", "internal"]
    )
    assert (await verifier.verify(issuer.mint(audience="internal"))).audience == ("internal",)


async def test_jwks_must_be_fetched_over_https() -> None:
    with pytest.raises(ValueError, match="HTTPS"):
        RemoteKeySet("http://identity.test/jwks.json", None)


class JwksServer:
    """An HTTPS JWKS endpoint that counts fetches."""

    def __init__(self, issuer: TestIssuer) -> None:
        self.issuer = issuer
        self.fetches = 0
        self.failing = False

    async def jwks(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.failing:
            raise web.HTTPServiceUnavailable()
        return web.json_response(self.issuer.jwks())


@pytest.fixture
async def jwks_server(
    issuer: TestIssuer, dev_ca: DevCA
) -> AsyncIterator[tuple[JwksServer, TestServer]]:
    state = JwksServer(issuer)
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", state.jwks)
    cert = dev_ca.issue("jwks")
    server = TestServer(app, host="localhost")
    await server.start_server(ssl=server_context(cert.cert, cert.key))
    try:
        yield state, server
    finally:
        await server.close()


def _remote_verifier(
    issuer: TestIssuer, server: TestServer, dev_ca: DevCA, min_refresh: float
) -> TokenVerifier:
    keys = RemoteKeySet(
        str(server.make_url("/.well-known/jwks.json")),
        dev_ca.cert_path,
        min_refresh_interval=min_refresh,
    )
    return TokenVerifier.from_key_source(keys, issuer=issuer.issuer, audience="accounts")


async def test_remote_keys_are_fetched_once_and_cached(
    issuer: TestIssuer, jwks_server: tuple[JwksServer, TestServer], dev_ca: DevCA
) -> None:
    state, server = jwks_server
    verifier = _remote_verifier(issuer, server, dev_ca, min_refresh=0)
    for _ in range(3):
        await verifier.verify(issuer.mint())
    assert state.fetches == 1


async def test_key_rotation_is_picked_up_on_unknown_kid(
    issuer: TestIssuer, jwks_server: tuple[JwksServer, TestServer], dev_ca: DevCA
) -> None:
    state, server = jwks_server
    verifier = _remote_verifier(issuer, server, dev_ca, min_refresh=0)
    await verifier.verify(issuer.mint())
    issuer.rotate()
    assert (await verifier.verify(issuer.mint(subject="usr_rotated"))).subject == "usr_rotated"
    assert state.fetches == 2


async def test_unknown_kid_refetches_are_rate_limited(
    issuer: TestIssuer, jwks_server: tuple[JwksServer, TestServer], dev_ca: DevCA
) -> None:
    state, server = jwks_server
    verifier = _remote_verifier(issuer, server, dev_ca, min_refresh=60)
    stranger = TestIssuer(issuer=issuer.issuer, audience="accounts")
    for _ in range(5):
        with pytest.raises(InvalidToken, match="unknown signing key"):
            await verifier.verify(stranger.mint())
    assert state.fetches == 1


async def test_unreachable_key_set_is_unavailable_not_accepted(
    issuer: TestIssuer, jwks_server: tuple[JwksServer, TestServer], dev_ca: DevCA
) -> None:
    state, server = jwks_server
    state.failing = True
    verifier = _remote_verifier(issuer, server, dev_ca, min_refresh=0)
    with pytest.raises(KeySetUnavailable):
        await verifier.verify(issuer.mint())
