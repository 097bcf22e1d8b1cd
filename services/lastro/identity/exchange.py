"""What one OAuth request brings to authlib, and what it wants written.

authlib sees an aiohttp request through :class:`HttpRequest` (method, URL, headers,
query and form, read before authlib runs, so it needs no event loop) and answers with
an :data:`OAuthResponse`. :class:`Exchange` is everything
:class:`~lastro.identity.oauth.OAuthServer` loaded for the request up front (the
client as authlib's :class:`OAuthClient`, the code or refresh token presented, the
signing key) and everything the grants of :mod:`lastro.identity.grants` want written
in the commit step (tokens :class:`Issued`, codes, rotations, revocations).
Everything here is synchronous and does no I/O.
"""

from __future__ import annotations

import base64
import binascii
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final
from urllib.parse import unquote

from authlib.oauth2.rfc6749 import ClientMixin, OAuth2Payload, OAuth2Request
from joserfc.jwk import Key
from multidict import MultiMapping

from lastro.identity import domain, store

Headers = list[tuple[str, str]]
# authlib's (status, body, headers): body is a dict (JSON) or a string.
OAuthResponse = tuple[int, Any, Headers]

SECRET_AUTH_METHODS: Final = ("client_secret_basic", "client_secret_post")
TOKEN_AUTH_METHODS: Final = (*SECRET_AUTH_METHODS, "none")


# ---------------------------------------------------------------- request adapter


class _Payload(OAuth2Payload):
    """Parameters from the query and the form; ``data`` keeps each name's first value."""

    def __init__(self, values: defaultdict[str, list[str]]) -> None:
        self._datalist = values
        self._data = {key: found[0] for key, found in values.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class HttpRequest(OAuth2Request):
    """An aiohttp request as authlib sees it: method, URL, headers, query and form,
    read before authlib runs (so it needs no event loop)."""

    payload: _Payload

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Mapping[str, str],
        query: MultiMapping[str],
        form: MultiMapping[str],
    ) -> None:
        super().__init__(method=method, uri=uri, headers=dict(headers))
        merged: defaultdict[str, list[str]] = defaultdict(list)
        for source in (query, form):
            for key, value in source.items():
                merged[key].append(value)
        self._query = {key: query[key] for key in query}
        self._form = {key: form[key] for key in form}
        self.payload = _Payload(merged)

    @property
    def args(self) -> dict[str, str | None]:
        return dict(self._query)

    @property
    def form(self) -> dict[str, str]:
        return self._form


def presented_client_id(http: HttpRequest) -> str | None:
    """The client id from HTTP Basic credentials or the form, before authentication."""
    scheme, _, value = (http.headers or {}).get("Authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return unquote(decoded.partition(":")[0]) or None
    return http.payload.data.get("client_id")


# ---------------------------------------------------------------- authlib models and the exchange


class OAuthClient(ClientMixin):
    def __init__(self, row: store.ClientRow) -> None:
        self.row = row

    def get_client_id(self) -> str:
        return self.row.id

    # authlib calls these with None and reads None as "no default" / "refused";
    # its stubs are narrower than that contract.
    def get_default_redirect_uri(self) -> str | None:  # type: ignore[override]
        return self.row.redirect_uris[0] if len(self.row.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str | None:  # type: ignore[override]
        return domain.allowed_scope(scope, self.row.scopes)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.row.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        hashed = self.row.secret_hash
        return hashed is not None and domain.verify_secret(hashed, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.row.secret_hash is not None:
            return method in SECRET_AUTH_METHODS
        return method == "none"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.row.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.row.grant_types


@dataclass(frozen=True)
class Grantee:
    """The end user behind a user token, with the audiences and family of the grant."""

    authentication: domain.Authentication
    audiences: tuple[str, ...]
    family_id: str | None = None


@dataclass
class Issued:
    token: dict[str, Any]
    client_id: str
    grant_type: str
    scope: str
    audiences: tuple[str, ...]
    jti: str
    grantee: Grantee | None


@dataclass
class Exchange:
    """What one OAuth request read (loaded before authlib ran) and wants written."""

    now: datetime
    client: OAuthClient | None
    signing_key: Key | None
    """The access-token key (ES256), when the request may issue tokens."""
    id_token_key: Key | None = None
    """The key for the client's ID tokens (its ``id_token_signed_response_alg``)."""
    code: store.CodeRow | None = None
    refresh: store.RefreshRow | None = None
    requested_audiences: tuple[str, ...] = ()
    nonce_in_use: bool = False  # a live code of the client already carries the request's nonce
    audiences: tuple[str, ...] = ()
    authentication: domain.Authentication | None = None
    issued: list[Issued] = field(default_factory=list)
    new_code: store.CodeRow | None = None
    redeemed_code: store.CodeRow | None = None
    rotated: store.RefreshRow | None = None
    reused: store.RefreshRow | None = None
    revoked: store.RefreshRow | None = None
