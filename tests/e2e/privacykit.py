"""Clients of the running stack for the privacy tests: client registration, service
tokens and people signing up, over ``lastro.demo``'s client (which waits out a ``429``,
as every test process signs in from 127.0.0.1 and shares identity's per-IP limit)."""

from __future__ import annotations

from typing import Any

from lastro.demo import REDIRECT_URI, Api, client_credentials, operator_token, sign_in

__all__ = [
    "Api",
    "client_credentials",
    "operator_token",
    "register_client",
    "service_token",
    "sign_in",
    "sign_up",
    "wallet",
]


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
