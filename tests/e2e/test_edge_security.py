"""The edge of every running service: security headers on every route, TLS suites.

Generic over the registry: every API service the dev stack runs is covered, and each
one's routes come from the OpenAPI document it serves, so a new service or route is
tested without touching this file. Every operation is called once without and once
with a token carrying every scope the service accepts; whatever the answer (200, 401,
404, 422...), it must carry the security headers. TLS is checked with ``openssl
s_client``, an independent implementation: TLS 1.3 and TLS 1.2 AEAD suites are
accepted, a TLS 1.2 CBC suite and TLS 1.1 are refused.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from lastro.core import registry
from lastro.core.config import Settings
from lastro.core.security.tls import client_context
from lastro.demo import Api, operator_token, register_service
from lastro.devstack.components import available_services

API_SERVICES = [
    spec for spec in registry.SERVICES if spec.kind == "api" and spec.name in available_services()
]
OPERATIONAL = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/init.js")
METHODS = ("get", "put", "post", "delete", "patch")
ONE_YEAR = 365 * 24 * 3600


def assert_hardened(response: aiohttp.ClientResponse, credentialed: bool) -> None:
    where = f"{response.method} {response.url.path} -> {response.status}"
    headers = response.headers
    max_age = re.search(r"max-age=(\d+)", headers.get("Strict-Transport-Security", ""))
    assert max_age is not None and int(max_age.group(1)) >= ONE_YEAR, where
    assert headers.get("X-Content-Type-Options") == "nosniff", where
    assert headers.get("Referrer-Policy") == "no-referrer", where
    assert headers.get("Server") == "lastro", where
    policy = headers.get("Content-Security-Policy", "")
    assert "default-src 'none'" in policy, where
    if response.content_type == "text/html":
        assert "frame-ancestors 'none'" in policy or headers.get("X-Frame-Options") == "DENY"
    cache = headers.get("Cache-Control", "")
    if credentialed:
        assert cache == "no-store", where
    else:
        assert cache == "no-store" or cache.startswith("public, max-age="), where


def _concrete(path: str) -> str:
    """The path template with every parameter replaced by an unknown id."""
    return re.sub(r"\{[^}]+\}", f"x_{secrets.token_hex(4)}", path)


@pytest.fixture(scope="module")
async def http(settings: Settings) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=client_context(settings.ca_file))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


@pytest.fixture(scope="module")
async def admin(settings: Settings, http: aiohttp.ClientSession) -> str:
    return await operator_token(Api(http, settings.service_url("identity")), settings)


async def _every_scope_token(
    settings: Settings, http: aiohttp.ClientSession, admin: str, spec: registry.ServiceSpec
) -> str:
    assert spec.audience is not None
    identity = Api(http, settings.service_url("identity"))
    name = f"edge-{spec.name}-{secrets.token_hex(3)}"
    _, token = await register_service(identity, admin, name, sorted(spec.scopes), spec.audience)
    return token


@pytest.mark.parametrize("spec", API_SERVICES, ids=[s.name for s in API_SERVICES])
async def test_every_route_of_every_service_answers_with_the_security_headers(
    spec: registry.ServiceSpec, settings: Settings, http: aiohttp.ClientSession, admin: str
) -> None:
    base = settings.service_url(spec.name)
    token = await _every_scope_token(settings, http, admin, spec)
    async with http.get(f"{base}/openapi.json") as response:
        contract: dict[str, Any] = await response.json()
    calls = [("get", path) for path in OPERATIONAL]
    calls += [("get", "/docs/assets/swagger-ui.css"), ("get", "/no/such/route")]
    calls += [("delete", "/healthz")]
    for path, item in contract["paths"].items():
        calls += [(method, _concrete(path)) for method in METHODS if method in item]
    assert len(calls) > len(OPERATIONAL) + 3, f"{spec.name} documents no operation"
    seen: set[int] = set()
    for method, path in calls:
        for credentials in ({}, {"Authorization": f"Bearer {token}"}):
            body = {} if method in ("post", "put", "patch") else None
            async with http.request(
                method, f"{base}{path}", json=body, headers=credentials, allow_redirects=False
            ) as response:
                await response.read()
                assert response.status < 500, f"{method.upper()} {path}: {response.status}"
                assert_hardened(response, credentialed=bool(credentials))
                seen.add(response.status)
    assert {200, 401, 404} <= seen


async def test_a_customers_personal_data_is_never_stored_by_a_cache(
    settings: Settings, http: aiohttp.ClientSession, admin: str
) -> None:
    token = await _every_scope_token(settings, http, admin, registry.service("accounts"))
    accounts = settings.service_url("accounts")
    bearer = {"Authorization": f"Bearer {token}"}
    email = f"pia-{secrets.token_hex(4)}@example.com"
    person = {"name": "Pia Privacy", "email": email, "document_number": "PD123456"}
    async with http.post(f"{accounts}/v1/customers", json=person, headers=bearer) as created:
        assert created.status == 201, await created.text()
        customer = await created.json()
        assert created.headers["Cache-Control"] == "no-store"
    async with http.get(f"{accounts}/v1/customers/{customer['id']}", headers=bearer) as response:
        assert response.status == 200
        document = await response.json()
        assert document["email"] == email and document["name"] == "Pia Privacy"
        assert response.headers["Cache-Control"] == "no-store"
        assert_hardened(response, credentialed=True)


def _endpoints(settings: Settings) -> list[tuple[str, str, int]]:
    """(name, host, port) of every TLS listener of the stack that serves HTTP."""
    found = []
    for spec in API_SERVICES:
        address = urlsplit(settings.service_url(spec.name))
        found.append((spec.name, address.hostname or "", address.port or 443))
    kms = urlsplit(settings.vault_addr)
    found.append(("kms", kms.hostname or "", kms.port or 443))
    return found


def _handshake(settings: Settings, host: str, port: int, *options: str) -> tuple[bool, str]:
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is part of every Debian install"
    result = subprocess.run(
        [
            openssl,
            "s_client",
            "-connect",
            f"{host}:{port}",
            "-CAfile",
            str(settings.ca_file),
            "-verify_return_error",
            *options,
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    return result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("listener", range(len(API_SERVICES) + 1))
def test_tls_is_1_3_or_1_2_with_aead_suites_only(listener: int, settings: Settings) -> None:
    name, host, port = _endpoints(settings)[listener]
    ok, out = _handshake(settings, host, port, "-tls1_3")
    assert ok and "TLSv1.3" in out, f"{name}: TLS 1.3 refused:\n{out}"
    for aead in ("ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305"):
        ok, out = _handshake(settings, host, port, "-tls1_2", "-cipher", aead)
        assert ok and f"Cipher is {aead}" in out, f"{name}: {aead} refused:\n{out}"
    for cbc in ("ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA"):
        ok, out = _handshake(settings, host, port, "-tls1_2", "-cipher", cbc)
        assert not ok, f"{name}: the CBC suite {cbc} was accepted:\n{out}"
    ok, out = _handshake(settings, host, port, "-tls1_1")
    assert not ok, f"{name}: TLS 1.1 was accepted:\n{out}"
