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
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from authlib.oauth2.rfc6749 import InvalidGrantError, OAuth2Error
from authlib.oauth2.rfc6749.errors import InvalidRequestError

from lastro.core import audit
from lastro.core.changes import Caller, ChangeRecorder
from lastro.core.db import Engine, Tx, in_transaction
from lastro.core.ids import new_id
from lastro.identity import domain, store
from lastro.identity.exchange import (
    TOKEN_AUTH_METHODS,
    Exchange,
    Grantee,
    HttpRequest,
    Issued,
    OAuthClient,
    OAuthResponse,
    presented_client_id,
)
from lastro.identity.grants import Server
from lastro.identity.keys import ALGORITHMS, SigningKeys

_T = TypeVar("_T")

REUSED: Final = "refresh_token.reused"
REVOKED: Final = "refresh_token.revoked"

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
        engine: Engine,
        keys: SigningKeys,
        issuer: str,
        changes: ChangeRecorder,
        resources: Mapping[str, str],
    ) -> None:
        self._engine = engine
        self._keys = keys
        self._issuer = issuer
        self._changes = changes
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
            nonce = http.payload.data.get("nonce")
            nonce_in_use = (
                await store.nonce_in_use(conn, client_id, nonce)
                if client_id and nonce and http.method == "GET"
                else False
            )
            presented = form.get("refresh_token") or form.get("token")
            refresh = (
                await store.refresh_by_hash(conn, domain.fingerprint(presented))
                if presented
                else None
            )
        id_alg = client_row.id_token_signed_response_alg if client_row else None
        return Exchange(
            now=datetime.now(UTC),
            client=OAuthClient(client_row) if client_row else None,
            signing_key=await self._keys.signing_key() if sign else None,
            id_token_key=await self._keys.signing_key(id_alg) if sign and id_alg else None,
            code=code,
            refresh=refresh,
            nonce_in_use=nonce_in_use,
            # an unknown resource URI is not allowed for any client
            requested_audiences=requested if requested is not None else ("\x00unknown",),
        )

    async def _run(self, exchange: Exchange, step: Callable[[Server], _T]) -> _T:
        server = Server(self._issuer, exchange)
        return await asyncio.to_thread(step, server)

    # ------------------------------------------------------------ token endpoint

    async def token(self, http: HttpRequest, source_ip: str | None) -> OAuthResponse:
        """POST /oauth/token for every grant."""
        refused = _non_ascii_parameters(http)
        if refused is not None:
            return refused
        exchange = await self._load(http, sign=True)
        response = await self._run(exchange, lambda s: s.token_response(http))
        return await self._commit(exchange, response, source_ip)

    async def revoke(self, http: HttpRequest, source_ip: str | None) -> OAuthResponse:
        """POST /oauth/revoke (RFC 7009)."""
        refused = _non_ascii_parameters(http)
        if refused is not None:
            return refused
        exchange = await self._load(http, sign=False)
        response = await self._run(exchange, lambda s: s.revocation_response(http))
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

        def validate(server: Server) -> AuthorizationRequest | OAuthResponse:
            try:
                grant = server.consent_grant(http)
            except OAuth2Error as error:
                return server.error_response(http, error)
            params = dict(http.payload.data)
            return AuthorizationRequest(grant.client.row.name, grant.request.scope or "", params)

        return await self._run(exchange, validate)

    async def authorize(
        self, http: HttpRequest, authentication: domain.Authentication, source_ip: str | None
    ) -> OAuthResponse:
        """Issue an authorization code to the authenticated user and redirect back."""
        exchange = await self._load(http, sign=False)

        def respond(server: Server) -> OAuthResponse:
            try:
                grant = server.consent_grant(http)
            except OAuth2Error as error:
                return server.error_response(http, error)
            grantee = Grantee(authentication, exchange.audiences)
            return server.authorization_response(http, grantee, grant)

        response = await self._run(exchange, respond)
        return await self._commit(exchange, response, source_ip)

    # ------------------------------------------------------------ commit

    async def _commit(
        self, exchange: Exchange, response: OAuthResponse, source_ip: str | None
    ) -> OAuthResponse:
        if not (exchange.issued or exchange.new_code or exchange.reused or exchange.revoked):
            return response

        async def work(conn: Tx) -> OAuthResponse:
            if exchange.reused is not None:
                await self._revoke_family(conn, exchange.reused, REUSED, source_ip)
                return response
            if exchange.revoked is not None:
                await self._revoke_family(conn, exchange.revoked, REVOKED, source_ip)
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
                await self._revoke_family(conn, rotated, REUSED, source_ip)
                return _error_response(InvalidGrantError("The refresh token was already used."))
            if exchange.new_code is not None:
                await store.insert_code(conn, exchange.new_code)
            for issued in exchange.issued:
                await self._record_issued(conn, exchange, issued, source_ip)
            return response

        return await in_transaction(self._engine, work)

    async def _revoke_family(
        self, conn: Tx, row: store.RefreshRow, action: str, source_ip: str | None
    ) -> None:
        revoked = await store.revoke_family(conn, row.family_id, action)
        await self._changes.audit(
            conn,
            Caller(row.client_id, source_ip),
            action=action,
            target=row.family_id,
            # A reused token is refused; a revocation request is carried out.
            outcome=audit.DENIED if action == REUSED else audit.SUCCESS,
            details={"user_id": row.user_id, "family_revoked": revoked},
        )

    async def _record_issued(
        self, conn: Tx, exchange: Exchange, issued: Issued, source_ip: str | None
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
        actor = grantee.authentication.user_id if grantee else issued.client_id
        await self._changes.audit(
            conn,
            Caller(actor, source_ip),
            action="token.issued",
            target=issued.client_id,
            details={
                "grant_type": issued.grant_type,
                "scope": issued.scope,
                "audiences": list(issued.audiences),
                "jti": issued.jti,
                "family_id": family_id,
            },
        )


def metadata_document(issuer: str, scopes: list[str]) -> dict[str, Any]:
    """RFC 8414 / OpenID Connect Discovery 1.0 metadata: what this server implements,
    nothing more (no request objects, no claims parameter, no signed userinfo)."""
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/oauth/authorize",
        "token_endpoint": f"{issuer}/oauth/token",
        "userinfo_endpoint": f"{issuer}/oauth/userinfo",
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
        "id_token_signing_alg_values_supported": list(ALGORITHMS),
        "acr_values_supported": [domain.ACR_PASSWORD, domain.ACR_MFA],
        "claim_types_supported": ["normal"],
        "claims_supported": [
            "iss",
            "sub",
            "aud",
            "exp",
            "iat",
            "auth_time",
            "nonce",
            "acr",
            "amr",
            "at_hash",
            "preferred_username",
        ],
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "authorization_response_iss_parameter_supported": False,
    }
