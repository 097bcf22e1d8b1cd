"""HTTP handlers of the identity service: parse, call one use case, render.

JSON routes answer problem+json on errors (the use cases raise
:class:`~lastro.core.errors.DomainError` subclasses, rendered by ``core/http.py``);
the OAuth routes answer in the OAuth error format; the login pages are plain HTML
forms.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from string import Template
from typing import Any, Final

from aiohttp import web
from multidict import MultiDict, MultiMapping

from lastro.core.http import PRINCIPAL_KEY, caller_of, json_body, json_response
from lastro.core.privacy import add_privacy_routes
from lastro.identity import domain
from lastro.identity.clients import Clients
from lastro.identity.events import DeviceSeen
from lastro.identity.exchange import HttpRequest
from lastro.identity.keys import ID_TOKEN_DEFAULT, SigningKeys
from lastro.identity.login import (
    CSRF_FIELD,
    LOGIN_COOKIE,
    Authorized,
    Forged,
    LoginForm,
    SignIn,
    TotpForm,
)
from lastro.identity.oauth import AuthorizationRequest, OAuthServer, metadata_document
from lastro.identity.service import IdentityService

SERVICE_KEY: Final = web.AppKey("identity_service", IdentityService)
CLIENTS_KEY: Final = web.AppKey("identity_clients", Clients)
OAUTH_KEY: Final = web.AppKey("identity_oauth", OAuthServer)
KEYS_KEY: Final = web.AppKey("identity_keys", SigningKeys)
SIGN_IN_KEY: Final = web.AppKey("identity_sign_in", SignIn)
ISSUER_KEY: Final = web.AppKey("identity_issuer", str)

_TEMPLATES: Final = Path(__file__).parent / "templates"
_LOGIN: Final = Template((_TEMPLATES / "login.html").read_text())
_TOTP: Final = Template((_TEMPLATES / "totp.html").read_text())
_FORGED: Final = Template((_TEMPLATES / "forged.html").read_text())
# Form fields of our own login steps; everything else on the form is the OAuth request.
_LOGIN_FIELDS: Final = frozenset({"step", "username", "password", "ticket", "otp", CSRF_FIELD})
# The sign-in pages run no script at all: a stricter policy than the page default of
# core/security/headers.py, which adds the other security headers (no-store, no
# framing, no referrer).
_PAGE_CSP: Final = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)

# A long-lived random cookie names the browser a user signs in from, so that a
# sign-in from a device the user never used can be told to them.
DEVICE_COOKIE: Final = "lastro_device"
DEVICE_COOKIE_MAX_AGE: Final = 400 * 24 * 3600
_DEVICE_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{43}")

routes = web.RouteTableDef()


def _device(request: web.Request) -> DeviceSeen:
    """The browser's device cookie (a new one if it has none or a malformed one)."""
    cookie = request.cookies.get(DEVICE_COOKIE, "")
    if not _DEVICE_TOKEN.fullmatch(cookie):
        cookie = domain.new_secret()
    return DeviceSeen(cookie, request.headers.get("User-Agent", ""))


def _remember_device(response: web.Response, device: DeviceSeen) -> web.Response:
    response.set_cookie(
        DEVICE_COOKIE,
        device.cookie,
        max_age=DEVICE_COOKIE_MAX_AGE,
        path="/oauth/authorize",
        secure=True,
        httponly=True,
        samesite="Lax",
    )
    return response


def _source_ip(request: web.Request) -> str | None:
    return request.remote


def _oauth_request(request: web.Request, form: MultiMapping[str]) -> HttpRequest:
    return HttpRequest(request.method, str(request.url), request.headers, request.query, form)


def _oauth_response(status: int, body: Any, headers: list[tuple[str, str]]) -> web.Response:
    response = web.Response(status=status)
    for name, value in headers:
        response.headers[name] = value
    if isinstance(body, dict):
        response.body = json.dumps(body).encode()
        response.content_type = "application/json"
    elif body:
        response.text = str(body)
    return response


# ---------------------------------------------------------------- OAuth endpoints


@routes.post("/oauth/token")
async def token(request: web.Request) -> web.Response:
    form = await request.post()
    http = _oauth_request(request, _text_fields(form))
    return _oauth_response(*await request.app[OAUTH_KEY].token(http, _source_ip(request)))


@routes.post("/oauth/revoke")
async def revoke(request: web.Request) -> web.Response:
    form = await request.post()
    http = _oauth_request(request, _text_fields(form))
    return _oauth_response(*await request.app[OAUTH_KEY].revoke(http, _source_ip(request)))


def _text_fields(form: MultiMapping[Any]) -> MultiDict[str]:
    return MultiDict((k, v) for k, v in form.items() if isinstance(v, str))


def _page(template: Template, status: int = 200, **values: str) -> web.Response:
    return web.Response(
        status=status,
        text=template.substitute(values),
        content_type="text/html",
        headers={"Content-Security-Policy": _PAGE_CSP},
    )


def _hidden(params: dict[str, str]) -> str:
    return "\n".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in params.items()
    )


def _login_page(
    checked: AuthorizationRequest, csrf_token: str, error: str = "", status: int = 200
) -> web.Response:
    return _page(
        _LOGIN,
        status,
        client_name=html.escape(checked.client_name),
        scope=html.escape(checked.scope),
        error=html.escape(error),
        hidden=_hidden({**checked.params, CSRF_FIELD: csrf_token}),
    )


@routes.get("/oauth/authorize")
async def authorize_page(request: web.Request) -> web.StreamResponse:
    """Validate the authorization request, then show the login form with a new form
    session (its cookie, its synchroniser token)."""
    http = _oauth_request(request, MultiDict())
    checked = await request.app[OAUTH_KEY].check_authorization(http)
    if not isinstance(checked, AuthorizationRequest):
        return _oauth_response(*checked)
    opened = await request.app[SIGN_IN_KEY].forms.open()
    response = _login_page(checked, opened.token)
    response.set_cookie(
        LOGIN_COOKIE,
        opened.cookie,
        max_age=int(domain.LOGIN_FORM_TTL.total_seconds()),
        path="/",
        secure=True,
        httponly=True,
        samesite="Strict",
    )
    return response


@routes.post("/oauth/authorize")
async def authorize_submit(request: web.Request) -> web.StreamResponse:
    """Password step, then (when enrolled) the TOTP step, then the code redirect."""
    form = _text_fields(await request.post())
    oauth_params: MultiDict[str] = MultiDict(
        (k, v) for k, v in form.items() if k not in _LOGIN_FIELDS
    )
    http = HttpRequest("GET", str(request.url), request.headers, oauth_params, MultiDict())
    device = _device(request)
    form_session = request.cookies.get(LOGIN_COOKIE, "")
    step = await request.app[SIGN_IN_KEY].submit(
        http, form, _source_ip(request), device, form_session
    )
    if isinstance(step, Forged):
        return _page(_FORGED, 403)
    csrf_token = form[CSRF_FIELD]  # checked by submit
    if isinstance(step, LoginForm):
        return _login_page(step.request, csrf_token, step.error, step.status)
    if isinstance(step, TotpForm):
        hidden = _hidden({**step.request.params, CSRF_FIELD: csrf_token})
        return _page(_TOTP, hidden=hidden, ticket=step.ticket)
    if isinstance(step, Authorized):
        return _remember_device(_oauth_response(*step.response), device)
    return _oauth_response(*step)


def _metadata(request: web.Request) -> web.Response:
    document = metadata_document(request.app[ISSUER_KEY], sorted(domain.SCOPES))
    return json_response(document, headers={"Cache-Control": "public, max-age=300"})


@routes.get("/.well-known/openid-configuration")
async def discovery(request: web.Request) -> web.Response:
    return _metadata(request)


@routes.get("/.well-known/oauth-authorization-server")
async def oauth_metadata(request: web.Request) -> web.Response:
    return _metadata(request)


@routes.get("/.well-known/jwks.json")
async def jwks(request: web.Request) -> web.Response:
    document = await request.app[KEYS_KEY].jwks()
    return json_response(document, headers={"Cache-Control": "public, max-age=60"})


@routes.get("/oauth/userinfo")
@routes.post("/oauth/userinfo")
async def userinfo(request: web.Request) -> web.Response:
    """OpenID Connect UserInfo: the claims of the token's user its scope allows (the
    contract asks for the ``openid`` scope)."""
    principal = request[PRINCIPAL_KEY]
    claims = await request.app[SERVICE_KEY].userinfo(
        domain.require_user(principal.subject), " ".join(sorted(principal.scopes))
    )
    return json_response(claims)  # authenticated: core/http.py makes it no-store


# ---------------------------------------------------------------- users


def _user_id(request: web.Request) -> str:
    """The end user behind the token (client_credentials tokens have no user)."""
    return domain.require_user(request[PRINCIPAL_KEY].subject)


@routes.post("/v1/users")
async def sign_up(request: web.Request) -> web.Response:
    body = await json_body(request)
    user_id = await request.app[SERVICE_KEY].sign_up(
        body["username"], body["password"], _source_ip(request)
    )
    return json_response(
        {
            "id": user_id,
            "object": "user",
            "username": body["username"].strip().lower(),
            "totp_enabled": False,
        },
        status=201,
        headers={"Location": f"/v1/users/{user_id}"},
    )


@routes.post("/v1/users/me/totp")
async def start_totp(request: web.Request) -> web.Response:
    enrolment = await request.app[SERVICE_KEY].start_totp_enrolment(
        _user_id(request), _source_ip(request)
    )
    return json_response(
        {
            "secret": enrolment.secret,
            "provisioning_uri": enrolment.provisioning_uri,
            "qr_png": enrolment.qr_png_data_uri,
            "status": "pending_confirmation",
        },
        status=201,
    )


@routes.post("/v1/users/me/totp/confirm")
async def confirm_totp(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    body = await json_body(request)
    codes = await request.app[SERVICE_KEY].confirm_totp(user_id, body["code"], _source_ip(request))
    return json_response({"status": "enabled", "recovery_codes": codes})


@routes.delete("/v1/users/me/totp")
async def disable_totp(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    body = await json_body(request)
    await request.app[SERVICE_KEY].disable_totp(user_id, body["password"], _source_ip(request))
    return json_response({"status": "disabled"})


# ---------------------------------------------------------------- clients


@routes.post("/v1/clients")
async def create_client(request: web.Request) -> web.Response:
    body = await json_body(request)
    id_token_alg = body.get("id_token_signed_response_alg", ID_TOKEN_DEFAULT)
    policy = domain.ClientPolicy(
        grant_types=frozenset(body["grant_types"]),
        scopes=frozenset(body.get("scopes", [])),
        audiences=frozenset(body.get("audiences", [])),
        redirect_uris=tuple(body.get("redirect_uris", [])),
    )
    created = await request.app[CLIENTS_KEY].create_client(
        name=body["name"],
        policy=policy,
        confidential=body.get("confidential", True),
        caller=caller_of(request),
        id_token_alg=id_token_alg,
    )
    document: dict[str, Any] = {
        "client_id": created.client_id,
        "object": "client",
        "name": body["name"],
        "grant_types": sorted(policy.grant_types),
        "scopes": sorted(policy.scopes),
        "audiences": sorted(policy.audiences),
        "redirect_uris": list(policy.redirect_uris),
        "id_token_signed_response_alg": id_token_alg,
    }
    if created.client_secret is not None:
        document["client_secret"] = created.client_secret
    return json_response(document, status=201)


# ---------------------------------------------------------------- privacy

add_privacy_routes(routes)
