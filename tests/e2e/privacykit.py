"""Clients of the running stack for the privacy tests, as a well-behaved client is:
a ``429`` is waited out (``Retry-After``) and asked again, since every test process
signs in from 127.0.0.1 and shares the identity service's per-IP limit on its
authentication routes."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from lastro import demo
from lastro.core.config import Settings
from lastro.demo import Api, DemoFailed
from lastro.identity.app import admin_secret_file

REDIRECT_URI = "https://wallet.example/callback"
PATIENCE = 90


def _wait(response: aiohttp.ClientResponse) -> float:
    return min(float(response.headers.get("Retry-After", "1")), 5.0)


class PatientApi(Api):
    """``Api`` that waits out rate limits instead of failing on them."""

    async def call(
        self, method: str, path: str, *, token: str | None = None, expect: int, **kwargs: Any
    ) -> dict[str, Any]:
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        for _ in range(PATIENCE):
            async with self.http.request(
                method, f"{self.base}{path}", headers=headers, allow_redirects=False, **kwargs
            ) as response:
                if response.status == 429:
                    await asyncio.sleep(_wait(response))
                    continue
                body = (
                    await response.json(content_type=None) if response.content_length != 0 else {}
                )
                if response.status != expect:
                    raise DemoFailed(
                        f"{method} {path}: expected {expect}, got {response.status}: {body}"
                    )
                return dict(body or {})
        raise DemoFailed(f"{method} {path}: still rate-limited")


async def client_credentials(
    identity: Api, client_id: str, secret: str, scope: str, audience: str
) -> str:
    body = await identity.call(
        "POST",
        "/oauth/token",
        expect=200,
        data={"grant_type": "client_credentials", "scope": scope, "audience": audience},
        headers={"Authorization": aiohttp.encode_basic_auth(client_id, secret)},
    )
    return str(body["access_token"])


async def operator_token(identity: Api, settings: Settings) -> str:
    admin_id, admin_secret = admin_secret_file(settings).read_text().strip().split(":")
    return await client_credentials(identity, admin_id, admin_secret, "identity:admin", "identity")


async def register_client(
    identity: Api, admin: str, name: str, scopes: list[str], audiences: list[str]
) -> dict[str, Any]:
    return await identity.call(
        "POST",
        "/v1/clients",
        token=admin,
        expect=201,
        json={
            "name": name,
            "grant_types": ["client_credentials"],
            "scopes": scopes,
            "audiences": audiences,
        },
    )


async def service_token(
    identity: Api, admin: str, name: str, scopes: list[str], audience: str
) -> str:
    client = await register_client(identity, admin, name, scopes, [audience])
    return await client_credentials(
        identity, client["client_id"], client["client_secret"], " ".join(scopes), audience
    )


async def wallet(identity: Api, admin: str, name: str, scopes: list[str]) -> str:
    """A public app people sign in to (authorization code + PKCE, refresh tokens)."""
    audiences = sorted({scope.split(":")[0] for scope in scopes})
    client = await identity.call(
        "POST",
        "/v1/clients",
        token=admin,
        expect=201,
        json={
            "name": name,
            "confidential": False,
            "grant_types": ["authorization_code", "refresh_token"],
            "scopes": scopes,
            "audiences": audiences,
            "redirect_uris": [REDIRECT_URI],
        },
    )
    return str(client["client_id"])


async def sign_up(identity: Api, username: str, password: str) -> str:
    user = await identity.call(
        "POST", "/v1/users", expect=201, json={"username": username, "password": password}
    )
    return str(user["id"])


async def sign_in(identity: Api, client_id: str, username: str, password: str, scope: str) -> str:
    """The authorization-code + PKCE flow a browser drives (the login form's session
    cookie sent back, a rate-limited sign-in started again); the access token."""
    return await demo.sign_in(identity, client_id, username, password, scope, attempts=PATIENCE)
