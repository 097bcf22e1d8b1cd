"""authlib's OAuth 2.0 server, adapted so that its hooks do no I/O.

One :class:`Server` per request answers authlib's storage hooks from what
:class:`~lastro.identity.oauth.OAuthServer` loaded up front (an
:class:`~lastro.identity.exchange.Exchange`) and records what should be written
instead of writing it: the grants (client credentials, authorization code with PKCE
S256 only and, for the ``openid`` scope, an OpenID Connect ID token through authlib's
:class:`OpenIDCode` extension, rotating refresh tokens), RFC 7009 revocation, and the
code and refresh-token models authlib calls. The request and client models are in
:mod:`lastro.identity.exchange`. Everything here is synchronous and runs in a worker
thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from authlib.oauth2.rfc6749 import (
    AuthorizationCodeMixin,
    AuthorizationServer,
    ClientMixin,
    InvalidScopeError,
    OAuth2Error,
    OAuth2Request,
    TokenMixin,
    grants,
)
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import UserInfo
from authlib.oidc.core import grants as oidc_grants
from authlib.oidc.core.models import AuthorizationCodeMixin as OpenIDCodeMixin
from joserfc.jwk import Key

from lastro.identity import domain, store
from lastro.identity.exchange import (
    SECRET_AUTH_METHODS,
    TOKEN_AUTH_METHODS,
    Exchange,
    Grantee,
    Headers,
    HttpRequest,
    Issued,
    OAuthClient,
    OAuthResponse,
)
from lastro.identity.keys import sign_access_token


class InvalidTargetError(OAuth2Error):
    """RFC 8707: the requested audience/resource is not allowed for this client."""

    error = "invalid_target"


# ---------------------------------------------------------------- code and refresh-token models


@dataclass(frozen=True)
class _Code(OpenIDCodeMixin):
    row: store.CodeRow

    def get_nonce(self) -> str | None:
        return self.row.nonce

    def get_auth_time(self) -> int:
        return self.row.auth_time

    def get_acr(self) -> str:
        return domain.Authentication(self.row.user_id, self.row.amr, self.row.auth_time).acr

    def get_amr(self) -> list[str]:
        return list(self.row.amr)

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
class _Refresh(TokenMixin):
    row: store.RefreshRow

    def check_client(self, client: ClientMixin) -> bool:
        return self.row.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return self.row.scope


# ---------------------------------------------------------------- grants


def _exchange(grant: Any) -> Exchange:
    server: Server = grant.server
    return server.exchange


def _client(request: OAuth2Request) -> OAuthClient:
    """The authenticated client of a request authlib validated."""
    assert isinstance(request.client, OAuthClient)
    return request.client


def _resolve_audiences(exchange: Exchange, client: OAuthClient) -> tuple[str, ...]:
    resolved = domain.resolve_audience(exchange.requested_audiences, client.row.audiences)
    if resolved is None:
        raise InvalidTargetError("The requested audience is not allowed for this client.")
    return tuple(resolved)


class _ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = list(SECRET_AUTH_METHODS)

    def validate_token_request(self) -> None:
        super().validate_token_request()
        exchange = _exchange(self)
        exchange.audiences = _resolve_audiences(exchange, _client(self.request))


class _S256Challenge(CodeChallenge):
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


class _AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = list(TOKEN_AUTH_METHODS)

    def validate_authorization_request(self) -> str:
        redirect_uri: str = super().validate_authorization_request()
        exchange = _exchange(self)
        try:
            exchange.audiences = _resolve_audiences(exchange, _client(self.request))
        except InvalidTargetError as error:
            error.redirect_uri = redirect_uri
            raise
        return redirect_uri

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        exchange = _exchange(self)
        grantee = request.user
        assert isinstance(grantee, Grantee) and request.payload is not None
        client = _client(request)
        data = request.payload.data
        exchange.new_code = store.CodeRow(
            code_hash=domain.fingerprint(code),
            client_id=client.get_client_id(),
            user_id=grantee.authentication.user_id,
            redirect_uri=data.get("redirect_uri") or client.get_default_redirect_uri() or "",
            scope=request.scope or "",
            audiences=exchange.audiences,
            code_challenge=data["code_challenge"],
            code_challenge_method=data["code_challenge_method"],
            amr=grantee.authentication.amr,
            auth_time=grantee.authentication.auth_time,
            expires_at=exchange.now + domain.AUTHORIZATION_CODE_TTL,
            nonce=data.get("nonce") or None,
        )

    def query_authorization_code(self, code: str, client: ClientMixin) -> _Code | None:
        row = _exchange(self).code
        if row is None or row.code_hash != domain.fingerprint(code):
            return None
        if row.client_id != client.get_client_id() or row.expires_at <= _exchange(self).now:
            return None
        return _Code(row)

    def delete_authorization_code(self, authorization_code: AuthorizationCodeMixin) -> None:
        assert isinstance(authorization_code, _Code)
        _exchange(self).redeemed_code = authorization_code.row

    def authenticate_user(self, authorization_code: AuthorizationCodeMixin) -> Grantee:
        assert isinstance(authorization_code, _Code)
        row = authorization_code.row
        return Grantee(domain.Authentication(row.user_id, row.amr, row.auth_time), row.audiences)


class _OpenIDCode(oidc_grants.OpenIDCode):
    """OpenID Connect Core 1.0 §3.1 on the authorization-code grant (authlib): for the
    ``openid`` scope the token response carries an ID token signed with the current key
    of the client's ``id_token_signed_response_alg`` (RS256 unless it registered
    ES256), with ``iss``, ``aud`` (the client), ``sub``, ``iat``,
    ``exp``, and from the code ``nonce``, ``auth_time``, ``acr`` and ``amr``, plus
    ``at_hash`` of the access token. A nonce a live code of the client already carries
    is refused (replay)."""

    server: Server  # the per-request server, set when the grant calls the extension

    def exists_nonce(self, nonce: str, request: OAuth2Request) -> bool:
        return self.server.exchange.nonce_in_use

    def __call__(self, grant: Any) -> None:
        self.server = grant.server
        super().__call__(grant)

    def resolve_client_private_key(self, client: ClientMixin) -> Key:
        key = self.server.exchange.id_token_key
        assert key is not None
        return key

    def get_client_algorithm(self, client: ClientMixin) -> str:
        assert isinstance(client, OAuthClient)
        return client.row.id_token_signed_response_alg

    def get_encode_header(self, client: ClientMixin) -> dict[str, str]:
        key = self.resolve_client_private_key(client)
        alg = self.get_client_algorithm(client)
        return {"alg": alg, "kid": key.kid or "", "typ": "JWT"}

    def get_client_claims(self, client: ClientMixin) -> dict[str, Any]:
        issued_at = int(self.server.exchange.now.timestamp())
        return {
            "iss": self.server.issuer,
            "aud": [client.get_client_id()],
            "iat": issued_at,
            "exp": issued_at + int(domain.ID_TOKEN_TTL.total_seconds()),
        }

    def generate_user_info(self, user: Grantee, scope: str) -> UserInfo:
        return UserInfo(sub=user.authentication.user_id)


class _RefreshTokenGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = list(TOKEN_AUTH_METHODS)
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(  # type: ignore[override]  # None: refused
        self, refresh_token: str
    ) -> _Refresh | None:
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

    def authenticate_user(self, refresh_token: TokenMixin) -> Grantee:
        assert isinstance(refresh_token, _Refresh)
        row = refresh_token.row
        return Grantee(
            domain.Authentication(row.user_id, row.amr, row.auth_time),
            row.audiences,
            row.family_id,
        )

    def revoke_old_credential(self, refresh_token: TokenMixin) -> None:
        assert isinstance(refresh_token, _Refresh)
        _exchange(self).rotated = refresh_token.row


class _Revocation(RevocationEndpoint):
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


class Server(AuthorizationServer):
    """authlib's server bound to one request's :class:`Exchange` (no I/O in hooks)."""

    def __init__(self, issuer: str, exchange: Exchange) -> None:
        super().__init__(scopes_supported=domain.SCOPES)
        self.issuer = issuer
        self.exchange = exchange
        self.register_grant(_ClientCredentialsGrant)
        self.register_grant(_AuthorizationCodeGrant, [_S256Challenge(required=True), _OpenIDCode()])
        self.register_grant(_RefreshTokenGrant)
        self.register_endpoint(_Revocation)

    def query_client(  # type: ignore[override]  # None: unknown client
        self, client_id: str
    ) -> OAuthClient | None:
        client = self.exchange.client
        return client if client is not None and client.get_client_id() == client_id else None

    def generate_token(
        self,
        grant_type: str,
        client: ClientMixin,
        user: Grantee | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        assert isinstance(client, OAuthClient)
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

    def handle_response(
        self, status: int, body: Any, headers: Mapping[str, str] | Headers
    ) -> OAuthResponse:
        return status, body, list(headers.items() if isinstance(headers, Mapping) else headers)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """authlib's signal hook; we audit in the commit step instead."""

    # Typed entry points: every response goes through handle_response above, so
    # authlib's untyped results are OAuthResponse.

    def token_response(self, http: HttpRequest) -> OAuthResponse:
        return cast(OAuthResponse, self.create_token_response(http))

    def revocation_response(self, http: HttpRequest) -> OAuthResponse:
        response = self.create_endpoint_response("revocation", http)  # type: ignore[no-untyped-call]
        return cast(OAuthResponse, response)

    def consent_grant(self, http: HttpRequest) -> Any:
        """The authorization-code grant of a valid authorization request; raises
        OAuth2Error otherwise."""
        return self.get_consent_grant(http)  # type: ignore[no-untyped-call]

    def error_response(self, http: HttpRequest, error: OAuth2Error) -> OAuthResponse:
        return cast(OAuthResponse, self.handle_error_response(http, error))

    def authorization_response(
        self, http: HttpRequest, grantee: Grantee, grant: Any
    ) -> OAuthResponse:
        response = self.create_authorization_response(http, grant_user=grantee, grant=grant)
        return cast(OAuthResponse, response)
