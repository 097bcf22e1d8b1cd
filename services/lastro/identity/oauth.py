"""The OAuth 2.0 authorization server: authlib's grants behind aiohttp.

authlib's server is synchronous and calls storage hooks (``query_client``,
``save_token``, ...) in the middle of its protocol logic. We keep authlib doing all
the protocol work (request validation, client authentication, PKCE, error
responses) and keep its hooks free of I/O, in three steps per request:

1. **Load** (async): everything a hook could ask for is read up front: the
   client named by the request, the authorization code or refresh token it
   presents (by fingerprint), and the current signing key.
2. **Decide** (authlib, in a worker thread because argon2id client-secret checks
   and signing are CPU work): a fresh :class:`_Server` per request answers the
   hooks from what was loaded and records what should be written in an
   :class:`Exchange` instead of writing it.
3. **Commit** (async, one transaction): the recorded effects are applied with
   guarded statements (a code is deleted only once, a refresh token is rotated
   only once) together with their audit records. If a guard finds that a
   concurrent request won the race, the response becomes ``invalid_grant`` and
   nothing it issued is stored.

Guarantees:

* Authorization code + PKCE: ``code_challenge`` with method ``S256`` is required
  (``plain`` refused); a code is redeemed once, by its client, before it expires.
* Refresh tokens rotate on every use. Presenting a spent refresh token (reuse)
  revokes its whole family, so the thief's and the user's newest tokens both stop
  working; the reuse is audited.
* Revocation (RFC 7009) of a refresh token revokes its family. Access tokens are
  self-contained 10-minute JWTs and are not individually revocable
  (``token_type_hint=access_token`` answers ``unsupported_token_type``).
* Access tokens follow RFC 9068 (see :func:`lastro.identity.domain.access_token_claims`)
  and carry the audiences the client asked for with ``audience`` or RFC 8707
  ``resource`` (``invalid_target`` when not allowed).

OAuth endpoints answer in the RFC 6749 error format (``{"error": ...}``), not
problem+json, because OAuth clients expect it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeVar
from urllib.parse import unquote

from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    ClientMixin,
    InvalidGrantError,
    InvalidScopeError,
    OAuth2Error,
    OAuth2Payload,
    OAuth2Request,
    grants,
)
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from joserfc.jwk import Key
from multidict import MultiMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lastro.core.audit import AuditStream
from lastro.core.db import in_transaction
from lastro.core.ids import new_id
from lastro.identity import domain, store
from lastro.identity.keys import SigningKeys, sign_access_token

Headers = list[tuple[str, str]]
# authlib's (status, body, headers): body is a dict (JSON) or a string.
OAuthResponse = tuple[int, Any, Headers]

_T = TypeVar("_T")

SECRET_AUTH_METHODS: Final = ("client_secret_basic", "client_secret_post")
TOKEN_AUTH_METHODS: Final = (*SECRET_AUTH_METHODS, "none")


class InvalidTargetError(OAuth2Error):  # type: ignore[misc]
    """RFC 8707: the requested audience/resource is not allowed for this client."""

    error = "invalid_target"


# ---------------------------------------------------------------- request adapter


class _Payload(OAuth2Payload):  # type: ignore[misc]
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


class HttpRequest(OAuth2Request):  # type: ignore[misc]
    """An aiohttp request as authlib sees it: method, URL, headers, query and form,
    read before authlib runs (so it needs no event loop)."""

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
    def args(self) -> dict[str, str]:
        return self._query

    @property
    def form(self) -> dict[str, str]:
        return self._form


def presented_client_id(http: HttpRequest) -> str | None:
    """The client id from HTTP Basic credentials or the form, before authentication."""
    scheme, _, value = http.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return unquote(decoded.partition(":")[0]) or None
    return http.payload.data.get("client_id")


# ---------------------------------------------------------------- authlib models


class OAuthClient(ClientMixin):  # type: ignore[misc]
    def __init__(self, row: store.ClientRow) -> None:
        self.row = row

    def get_client_id(self) -> str:
        return self.row.id

    def get_default_redirect_uri(self) -> str | None:
        return self.row.redirect_uris[0] if len(self.row.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str | None:
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
class _Code:
    row: store.CodeRow

    @property
    def code_challenge(self) -> str:
        return self.row.code_challenge

    @property
    def code_challenge_method(self) -> str:
        return self.row.code_challenge_method

    def get_redirect_uri(self) -> str:
        return self.row.redirect_uri

    def get_scope(self) -> str:
        return self.row.scope


@dataclass(frozen=True)
class _Refresh:
    row: store.RefreshRow

    def check_client(self, client: OAuthClient) -> bool:
        return self.row.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return self.row.scope


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
    code: store.CodeRow | None = None
    refresh: store.RefreshRow | None = None
    requested_audiences: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()
    authentication: domain.Authentication | None = None
    issued: list[Issued] = field(default_factory=list)
    new_code: store.CodeRow | None = None
    redeemed_code: store.CodeRow | None = None
    rotated: store.RefreshRow | None = None
    reused: store.RefreshRow | None = None
    revoked: store.RefreshRow | None = None


# ---------------------------------------------------------------- grants


def _exchange(grant: Any) -> Exchange:
    server: _Server = grant.server
    return server.exchange


def _resolve_audiences(exchange: Exchange, client: OAuthClient) -> tuple[str, ...]:
    resolved = domain.resolve_audience(exchange.requested_audiences, client.row.audiences)
    if resolved is None:
        raise InvalidTargetError("The requested audience is not allowed for this client.")
    return tuple(resolved)


class _ClientCredentialsGrant(grants.ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = list(SECRET_AUTH_METHODS)

    def validate_token_request(self) -> None:
        super().validate_token_request()
        exchange = _exchange(self)
        exchange.audiences = _resolve_audiences(exchange, self.request.client)


class _S256Challenge(CodeChallenge):  # type: ignore[misc]
    """PKCE with S256 only, and required on every authorization request."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send 'code_challenge'.")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("'code_challenge_method' must be S256.")
        super().validate_code_challenge(grant, redirect_uri)


class _AuthorizationCodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = list(TOKEN_AUTH_METHODS)

    def validate_authorization_request(self) -> str:
        redirect_uri: str = super().validate_authorization_request()
        exchange = _exchange(self)
        try:
            exchange.audiences = _resolve_audiences(exchange, self.request.client)
        except InvalidTargetError as error:
            error.redirect_uri = redirect_uri
            raise
        return redirect_uri

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        exchange = _exchange(self)
        grantee: Grantee = request.user
        data = request.payload.data
        exchange.new_code = store.CodeRow(
            code_hash=domain.fingerprint(code),
            client_id=request.client.get_client_id(),
            user_id=grantee.authentication.user_id,
            redirect_uri=data.get("redirect_uri") or request.client.get_default_redirect_uri(),
            scope=request.scope,
            audiences=exchange.audiences,
            code_challenge=data["code_challenge"],
            code_challenge_method=data["code_challenge_method"],
            amr=grantee.authentication.amr,
            auth_time=grantee.authentication.auth_time,
            expires_at=exchange.now + domain.AUTHORIZATION_CODE_TTL,
        )

    def query_authorization_code(self, code: str, client: OAuthClient) -> _Code | None:
        row = _exchange(self).code
        if row is None or row.code_hash != domain.fingerprint(code):
            return None
        if row.client_id != client.get_client_id() or row.expires_at <= _exchange(self).now:
            return None
        return _Code(row)

    def delete_authorization_code(self, authorization_code: _Code) -> None:
        _exchange(self).redeemed_code = authorization_code.row

    def authenticate_user(self, authorization_code: _Code) -> Grantee:
        row = authorization_code.row
        return Grantee(domain.Authentication(row.user_id, row.amr, row.auth_time), row.audiences)


class _RefreshTokenGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = list(TOKEN_AUTH_METHODS)
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> _Refresh | None:
        exchange = _exchange(self)
        row = exchange.refresh
        if row is None or row.token_hash != domain.fingerprint(refresh_token):
            return None
        if row.family_revoked_at is not None or row.expires_at <= exchange.now:
            return None
        if row.rotated_at is not None:
            exchange.reused = row  # a spent token came back: the family is compromised
            return None
        return _Refresh(row)

    def authenticate_user(self, refresh_token: _Refresh) -> Grantee:
        row = refresh_token.row
        return Grantee(
            domain.Authentication(row.user_id, row.amr, row.auth_time),
            row.audiences,
            row.family_id,
        )

    def revoke_old_credential(self, refresh_token: _Refresh) -> None:
        _exchange(self).rotated = refresh_token.row


class _Revocation(RevocationEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = list(TOKEN_AUTH_METHODS)
    SUPPORTED_TOKEN_TYPES = ("refresh_token",)

    def query_token(self, token_string: str, token_type_hint: str | None) -> _Refresh | None:
        row = self.server.exchange.refresh
        if row is None or row.token_hash != domain.fingerprint(token_string):
            return None
        return _Refresh(row)

    def revoke_token(self, token: _Refresh, request: OAuth2Request) -> None:
        self.server.exchange.revoked = token.row


# ---------------------------------------------------------------- the per-request server


class _Server(AuthorizationServer):  # type: ignore[misc]
    """authlib's server bound to one request's :class:`Exchange` (no I/O in hooks)."""

    def __init__(self, issuer: str, exchange: Exchange) -> None:
        super().__init__(scopes_supported=domain.SCOPES)
        self.issuer = issuer
        self.exchange = exchange
        self.register_grant(_ClientCredentialsGrant)
        self.register_grant(_AuthorizationCodeGrant, [_S256Challenge(required=True)])
        self.register_grant(_RefreshTokenGrant)
        self.register_endpoint(_Revocation)

    def query_client(self, client_id: str) -> OAuthClient | None:
        client = self.exchange.client
        return client if client is not None and client.get_client_id() == client_id else None

    def generate_token(
        self,
        grant_type: str,
        client: OAuthClient,
        user: Grantee | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        granted = client.get_allowed_scope(scope)
        if granted is None:
            raise InvalidScopeError()
        exchange = self.exchange
        audiences = user.audiences if user is not None else exchange.audiences
        subject = user.authentication.user_id if user is not None else client.get_client_id()
        claims = domain.access_token_claims(
            issuer=self.issuer,
            subject=subject,
            client_id=client.get_client_id(),
            audience=audiences,
            scope=granted,
            issued_at=int(exchange.now.timestamp()),
            authentication=user.authentication if user is not None else None,
        )
        assert exchange.signing_key is not None
        token: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": sign_access_token(claims, exchange.signing_key),
            "expires_in": int(domain.ACCESS_TOKEN_TTL.total_seconds()),
            "scope": granted,
        }
        if include_refresh_token and user is not None:
            token["refresh_token"] = domain.new_secret()
        exchange.issued.append(
            Issued(
                token, client.get_client_id(), grant_type, granted, audiences, claims["jti"], user
            )
        )
        return token

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        """Recorded by generate_token already; written in the commit step."""

    def create_oauth2_request(self, request: HttpRequest) -> HttpRequest:
        return request

    def handle_response(self, status: int, body: Any, headers: Headers) -> OAuthResponse:
        return status, body, list(headers)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """authlib's signal hook; we audit in the commit step instead."""


# ---------------------------------------------------------------- async facade


@dataclass(frozen=True)
class AuthorizationRequest:
    """A validated authorization request, ready for the login page."""

    client_name: str
    scope: str
    params: dict[str, str]


def _error_response(error: OAuth2Error) -> OAuthResponse:
    """An OAuth error raised outside authlib's own request handling, as a response."""
    status, body, headers = error()
    return status, dict(body), list(headers)


# RFC 6749 Appendix A: OAuth parameter values are printable ASCII (VSCHAR and
# narrower). authlib echoes some of them in error descriptions and raises
# ValueError on anything else, so other text is refused before authlib sees it.
_VSCHARS: Final = re.compile(r"[\x20-\x7e]*")


def _non_ascii_parameters(http: HttpRequest) -> OAuthResponse | None:
    """400 ``invalid_request`` when a parameter name or value is not printable ASCII."""
    for name, values in http.payload.datalist.items():
        if not all(_VSCHARS.fullmatch(text) for text in (name, *values)):
            return _error_response(
                InvalidRequestError(description="parameters must be printable ASCII")
            )
    return None


class OAuthServer:
    """Entry points the HTTP handlers call (see module docstring for the flow)."""

    def __init__(
        self,
        engine: AsyncEngine,
        keys: SigningKeys,
        issuer: str,
        audit_key: bytes,
        resources: Mapping[str, str],
        audit_stream: AuditStream | None = None,
    ) -> None:
        self._engine = engine
        self._keys = keys
        self._issuer = issuer
        self._audit_key = audit_key
        self._audit_stream = audit_stream
        self._resources = dict(resources)  # RFC 8707 resource URI -> audience name

    def _requested_audiences(self, http: HttpRequest) -> tuple[str, ...] | None:
        datalist = http.payload.datalist
        wanted = [name for value in datalist.get("audience", []) for name in value.split()]
        for resource in datalist.get("resource", []):
            name = self._resources.get(resource.rstrip("/"))
            if name is None:
                return None
            wanted.append(name)
        return tuple(wanted)

    async def _load(self, http: HttpRequest, *, sign: bool) -> Exchange:
        requested = self._requested_audiences(http)
        client_id = presented_client_id(http)
        form = http.form
        async with self._engine.connect() as conn:
            client_row = await store.client_by_id(conn, client_id) if client_id else None
            code = (
                await store.code_by_hash(conn, domain.fingerprint(form["code"]))
                if form.get("code") and form.get("grant_type") == "authorization_code"
                else None
            )
            presented = form.get("refresh_token") or form.get("token")
            refresh = (
                await store.refresh_by_hash(conn, domain.fingerprint(presented))
                if presented
                else None
            )
        return Exchange(
            now=datetime.now(UTC),
            client=OAuthClient(client_row) if client_row else None,
            signing_key=await self._keys.signing_key() if sign else None,
            code=code,
            refresh=refresh,
            # an unknown resource URI is not allowed for any client
            requested_audiences=requested if requested is not None else ("\x00unknown",),
        )

    async def _run(self, exchange: Exchange, step: Callable[[_Server], _T]) -> _T:
        server = _Server(self._issuer, exchange)
        return await asyncio.to_thread(step, server)

    # ------------------------------------------------------------ token endpoint

    async def token(self, http: HttpRequest, source_ip: str | None) -> OAuthResponse:
        """POST /oauth/token for every grant."""
        refused = _non_ascii_parameters(http)
        if refused is not None:
            return refused
        exchange = await self._load(http, sign=True)
        response = await self._run(exchange, lambda s: s.create_token_response(http))
        return await self._commit(exchange, response, source_ip)

    async def revoke(self, http: HttpRequest, source_ip: str | None) -> OAuthResponse:
        """POST /oauth/revoke (RFC 7009)."""
        refused = _non_ascii_parameters(http)
        if refused is not None:
            return refused
        exchange = await self._load(http, sign=False)
        response = await self._run(
            exchange, lambda s: s.create_endpoint_response("revocation", http)
        )
        return await self._commit(exchange, response, source_ip)

    # ------------------------------------------------------------ authorization endpoint

    async def check_authorization(self, http: HttpRequest) -> AuthorizationRequest | OAuthResponse:
        """Validate GET /oauth/authorize before showing the login page. An invalid
        request answers an OAuth error: redirected to the client when its redirect URI
        is trusted, otherwise a 400 shown to the user."""
        refused = _non_ascii_parameters(http)
        if refused is not None:
            return refused
        exchange = await self._load(http, sign=False)

        def validate(server: _Server) -> AuthorizationRequest | OAuthResponse:
            try:
                grant = server.get_consent_grant(http)
            except OAuth2Error as error:
                return server.handle_error_response(http, error)  # type: ignore[no-any-return]
            params = dict(http.payload.data)
            return AuthorizationRequest(grant.client.row.name, grant.request.scope or "", params)

        return await self._run(exchange, validate)

    async def authorize(
        self, http: HttpRequest, authentication: domain.Authentication, source_ip: str | None
    ) -> OAuthResponse:
        """Issue an authorization code to the authenticated user and redirect back."""
        exchange = await self._load(http, sign=False)

        def respond(server: _Server) -> OAuthResponse:
            try:
                grant = server.get_consent_grant(http)
            except OAuth2Error as error:
                return server.handle_error_response(http, error)  # type: ignore[no-any-return]
            grantee = Grantee(authentication, exchange.audiences)
            return server.create_authorization_response(http, grant_user=grantee, grant=grant)  # type: ignore[no-any-return]

        response = await self._run(exchange, respond)
        return await self._commit(exchange, response, source_ip)

    # ------------------------------------------------------------ commit

    async def _commit(
        self, exchange: Exchange, response: OAuthResponse, source_ip: str | None
    ) -> OAuthResponse:
        if not (exchange.issued or exchange.new_code or exchange.reused or exchange.revoked):
            return response

        async def work(conn: AsyncConnection) -> OAuthResponse:
            if exchange.reused is not None:
                await self._revoke_family(conn, exchange.reused, "refresh_token.reused", source_ip)
                return response
            if exchange.revoked is not None:
                await self._revoke_family(
                    conn, exchange.revoked, "refresh_token.revoked", source_ip
                )
                return response
            if exchange.redeemed_code is not None and not await store.consume_code(
                conn, exchange.redeemed_code.code_hash
            ):
                return _error_response(
                    InvalidGrantError("The authorization code was already used.")
                )
            rotated = exchange.rotated
            if rotated is not None and not await store.rotate_refresh(conn, rotated.token_hash):
                # Lost the race to a concurrent use of the same refresh token: that is reuse.
                await self._revoke_family(conn, rotated, "refresh_token.reused", source_ip)
                return _error_response(InvalidGrantError("The refresh token was already used."))
            if exchange.new_code is not None:
                await store.insert_code(conn, exchange.new_code)
            for issued in exchange.issued:
                await self._record_issued(conn, exchange, issued, source_ip)
            return response

        return await in_transaction(self._engine, work)

    async def _revoke_family(
        self, conn: AsyncConnection, row: store.RefreshRow, action: str, source_ip: str | None
    ) -> None:
        revoked = await store.revoke_family(conn, row.family_id, action)
        await self._audit(
            conn,
            actor=row.client_id,
            action=action,
            target=row.family_id,
            outcome="family_revoked" if revoked else "already_revoked",
            source_ip=source_ip,
            user_id=row.user_id,
        )

    async def _record_issued(
        self, conn: AsyncConnection, exchange: Exchange, issued: Issued, source_ip: str | None
    ) -> None:
        grantee = issued.grantee
        refresh = issued.token.get("refresh_token")
        family_id = grantee.family_id if grantee is not None else None
        if refresh is not None and grantee is not None:
            if family_id is None:
                family_id = new_id("fam")
                await store.insert_family(
                    conn, family_id, issued.client_id, grantee.authentication.user_id
                )
            await store.insert_refresh(
                conn,
                store.RefreshRow(
                    token_hash=domain.fingerprint(refresh),
                    family_id=family_id,
                    client_id=issued.client_id,
                    user_id=grantee.authentication.user_id,
                    scope=issued.scope,
                    audiences=issued.audiences,
                    amr=grantee.authentication.amr,
                    auth_time=grantee.authentication.auth_time,
                    issued_at=exchange.now,
                    expires_at=exchange.now + domain.REFRESH_TOKEN_TTL,
                ),
            )
        await self._audit(
            conn,
            actor=grantee.authentication.user_id if grantee else issued.client_id,
            action="token.issued",
            target=issued.client_id,
            outcome="success",
            source_ip=source_ip,
            grant_type=issued.grant_type,
            scope=issued.scope,
            audiences=list(issued.audiences),
            jti=issued.jti,
            family_id=family_id,
        )

    async def _audit(self, conn: AsyncConnection, **fields: Any) -> None:
        await store.write_audit(conn, self._audit_key, stream=self._audit_stream, **fields)


def metadata_document(issuer: str, scopes: list[str]) -> dict[str, Any]:
    """RFC 8414 / OIDC discovery metadata for this server."""
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/oauth/authorize",
        "token_endpoint": f"{issuer}/oauth/token",
        "revocation_endpoint": f"{issuer}/oauth/revoke",
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "scopes_supported": scopes,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "token_endpoint_auth_methods_supported": list(TOKEN_AUTH_METHODS),
        "revocation_endpoint_auth_methods_supported": list(TOKEN_AUTH_METHODS),
        "code_challenge_methods_supported": ["S256"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256"],
        "acr_values_supported": [domain.ACR_PASSWORD, domain.ACR_MFA],
        "claims_supported": [
            "iss",
            "sub",
            "aud",
            "exp",
            "iat",
            "jti",
            "client_id",
            "scope",
            "amr",
            "acr",
            "auth_time",
        ],
        "authorization_response_iss_parameter_supported": False,
    }
