"""HTTP handlers of the identity service: parse, call one use case, render.

JSON routes answer problem+json on errors (``core/http.py``); the OAuth routes
answer in the OAuth error format; the login pages are plain HTML forms.
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

from lastro.core.http import PRINCIPAL_KEY, json_body, json_response
from lastro.core.ids import has_prefix
from lastro.core.problems import Problem
from lastro.core.ratelimit import FailureLockout
from lastro.identity import domain
from lastro.identity.events import DeviceSeen
from lastro.identity.keys import SigningKeys
from lastro.identity.oauth import AuthorizationRequest, HttpRequest, OAuthServer, metadata_document
from lastro.identity.service import (
    EnrolmentConflict,
    IdentityService,
    InvalidCode,
    LoginFailed,
    SecondFactorLocked,
    UsernameTaken,
)

SERVICE_KEY: Final = web.AppKey("identity_service", IdentityService)
OAUTH_KEY: Final = web.AppKey("identity_oauth", OAuthServer)
KEYS_KEY: Final = web.AppKey("identity_keys", SigningKeys)
ISSUER_KEY: Final = web.AppKey("identity_issuer", str)
LOCKOUT_KEY: Final = web.AppKey("identity_lockout", FailureLockout)

_TEMPLATES: Final = Path(__file__).parent / "templates"
_LOGIN: Final = Template((_TEMPLATES / "login.html").read_text())
_TOTP: Final = Template((_TEMPLATES / "totp.html").read_text())
# Form fields of our own login steps; everything else on the form is the OAuth request.
_LOGIN_FIELDS: Final = frozenset({"step", "username", "password", "ticket", "otp"})
_PAGE_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

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


def _invalid(error: domain.InvalidInput) -> Problem:
    return Problem(
        422,
        "validation-error",
        "Validation failed",
        str(error),
        errors=[{"field": error.field, "detail": error.detail}],
    )


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
        headers=_PAGE_HEADERS,
    )


def _hidden(params: dict[str, str]) -> str:
    return "\n".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in params.items()
    )


def _login_page(checked: AuthorizationRequest, error: str = "", status: int = 200) -> web.Response:
    return _page(
        _LOGIN,
        status,
        client_name=html.escape(checked.client_name),
        scope=html.escape(checked.scope),
        error=html.escape(error),
        hidden=_hidden(checked.params),
    )


@routes.get("/oauth/authorize")
async def authorize_page(request: web.Request) -> web.StreamResponse:
    """Validate the authorization request, then show the login form."""
    http = _oauth_request(request, MultiDict())
    checked = await request.app[OAUTH_KEY].check_authorization(http)
    if not isinstance(checked, AuthorizationRequest):
        return _oauth_response(*checked)
    return _login_page(checked)


@routes.post("/oauth/authorize")
async def authorize_submit(request: web.Request) -> web.StreamResponse:
    """Password step, then (when enrolled) the TOTP step, then the code redirect."""
    form = _text_fields(await request.post())
    oauth_params: MultiDict[str] = MultiDict(
        (k, v) for k, v in form.items() if k not in _LOGIN_FIELDS
    )
    http = HttpRequest("GET", str(request.url), request.headers, oauth_params, MultiDict())
    oauth = request.app[OAUTH_KEY]
    checked = await oauth.check_authorization(http)
    if not isinstance(checked, AuthorizationRequest):
        return _oauth_response(*checked)
    service = request.app[SERVICE_KEY]
    lockout = request.app[LOCKOUT_KEY]
    ip = _source_ip(request)
    device = _device(request)
    if form.get("step") == "otp":
        try:
            authentication = await service.verify_second_factor(
                form.get("ticket", ""),
                form.get("otp", ""),
                ip,
                lambda user_id: _otp_locked(lockout, user_id),
                device,
            )
        except SecondFactorLocked as error:
            await lockout.ensure_unlocked(f"otp:{error.user_id}")
            return _login_page(checked, "Too many failed attempts; try again later.", 429)
        except LoginFailed:
            return _login_page(checked, "Your sign-in expired; start again.", 401)
        except InvalidCode as error:
            if error.user_id is not None:
                await lockout.record_failure(f"otp:{error.user_id}")
            return _login_page(checked, "Wrong or already used code; sign in again.", 401)
        await lockout.record_success(f"otp:{authentication.user_id}")
    else:
        password_subject = f"pwd:{form.get('username', '').strip().lower()}"
        await lockout.ensure_unlocked(password_subject)
        try:
            verified = await service.verify_password(
                form.get("username", ""), form.get("password", ""), ip, device
            )
        except LoginFailed:
            await lockout.record_failure(password_subject)
            return _login_page(checked, "Wrong username or password.", 401)
        await lockout.record_success(password_subject)
        if verified.ticket is not None:
            # TOTP failures count per user across tickets: a known password does not
            # buy unlimited guesses at the second factor.
            await lockout.ensure_unlocked(f"otp:{verified.user_id}")
            return _page(_TOTP, hidden=_hidden(checked.params), ticket=verified.ticket)
        assert verified.authentication is not None
        authentication = verified.authentication
    response = _oauth_response(*await oauth.authorize(http, authentication, ip))
    return _remember_device(response, device)


async def _otp_locked(lockout: FailureLockout, user_id: str) -> bool:
    return await lockout.is_locked(f"otp:{user_id}") > 0


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


# ---------------------------------------------------------------- users


def _user_id(request: web.Request) -> str:
    """The end user behind the token (client_credentials tokens have no user)."""
    subject = request[PRINCIPAL_KEY].subject
    if not has_prefix(subject, "usr"):
        raise Problem(
            403,
            "user-token-required",
            "User token required",
            "This operation needs a token issued to an end user.",
        )
    return subject


@routes.post("/v1/users")
async def sign_up(request: web.Request) -> web.Response:
    body = await json_body(request)
    try:
        user_id = await request.app[SERVICE_KEY].sign_up(
            body["username"], body["password"], _source_ip(request)
        )
    except domain.InvalidInput as error:
        raise _invalid(error) from None
    except UsernameTaken:
        raise Problem(409, "username-taken", "Username taken", "Choose another username.") from None
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
    user_id = _user_id(request)
    try:
        enrolment = await request.app[SERVICE_KEY].start_totp_enrolment(
            user_id, _source_ip(request)
        )
    except EnrolmentConflict as error:
        raise Problem(
            409, "totp-already-enabled", "Two-factor already enabled", str(error)
        ) from None
    return json_response(
        {
            "secret": enrolment.secret,
            "provisioning_uri": enrolment.provisioning_uri,
            "qr_png": enrolment.qr_png_data_uri,
            "status": "pending_confirmation",
        },
        status=201,
        headers={"Cache-Control": "no-store"},
    )


@routes.post("/v1/users/me/totp/confirm")
async def confirm_totp(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    body = await json_body(request)
    try:
        codes = await request.app[SERVICE_KEY].confirm_totp(
            user_id, body["code"], _source_ip(request)
        )
    except EnrolmentConflict as error:
        raise Problem(409, "no-pending-enrolment", "No pending enrolment", str(error)) from None
    except InvalidCode:
        raise Problem(
            422, "invalid-code", "Invalid code", "The code is wrong or expired."
        ) from None
    return json_response(
        {"status": "enabled", "recovery_codes": codes}, headers={"Cache-Control": "no-store"}
    )


@routes.delete("/v1/users/me/totp")
async def disable_totp(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    body = await json_body(request)
    # Re-authentication is a password check like login: a stolen access token must
    # not buy unlimited password guesses, so failures lock out the same way.
    lockout = request.app[LOCKOUT_KEY]
    subject = f"reauth:{user_id}"
    await lockout.ensure_unlocked(subject)
    try:
        await request.app[SERVICE_KEY].disable_totp(user_id, body["password"], _source_ip(request))
    except LoginFailed:
        await lockout.record_failure(subject)
        raise Problem(
            403, "reauthentication-failed", "Re-authentication failed", "The password is wrong."
        ) from None
    except EnrolmentConflict as error:
        raise Problem(409, "totp-not-enabled", "Two-factor not enabled", str(error)) from None
    await lockout.record_success(subject)
    return json_response({"status": "disabled"})


# ---------------------------------------------------------------- clients


@routes.post("/v1/clients")
async def create_client(request: web.Request) -> web.Response:
    body = await json_body(request)
    policy = domain.ClientPolicy(
        grant_types=frozenset(body["grant_types"]),
        scopes=frozenset(body.get("scopes", [])),
        audiences=frozenset(body.get("audiences", [])),
        redirect_uris=tuple(body.get("redirect_uris", [])),
    )
    try:
        created = await request.app[SERVICE_KEY].create_client(
            name=body["name"],
            policy=policy,
            confidential=body.get("confidential", True),
            actor=request[PRINCIPAL_KEY].subject,
            source_ip=_source_ip(request),
        )
    except domain.InvalidInput as error:
        raise _invalid(error) from None
    document: dict[str, Any] = {
        "client_id": created.client_id,
        "object": "client",
        "name": body["name"],
        "grant_types": sorted(policy.grant_types),
        "scopes": sorted(policy.scopes),
        "audiences": sorted(policy.audiences),
        "redirect_uris": list(policy.redirect_uris),
    }
    if created.client_secret is not None:
        document["client_secret"] = created.client_secret
    return json_response(document, status=201, headers={"Cache-Control": "no-store"})
