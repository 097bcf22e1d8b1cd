"""The sign-in use case behind the authorization endpoint's form.

One submission of the login form is one call of :meth:`SignIn.submit`: the OAuth
authorization request is validated again (the form carries it), then the password
step or the TOTP step runs (:class:`~lastro.identity.service.IdentityService`, with
its lockouts), and a user who passed every factor gets an authorization code
redirect (:class:`~lastro.identity.oauth.OAuthServer`). What the user sees next is
returned as a value for the handler to render.

Cross-site request forgery (:class:`LoginForms`): showing the login page opens a
login form session, a random value in a ``SameSite=Strict`` cookie, and a
synchroniser token the form carries; Redis keeps the token's fingerprint under the
session's fingerprint. A submission whose token does not match its browser's session
is refused (403) before any credential is looked at, so a page on another site cannot
sign a browser in (login CSRF) or drive the TOTP step. The login ticket the password
step opens is bound to the same session: the TOTP step is accepted only from the
browser that passed the password step, with its token.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from redis.asyncio import Redis

from lastro.identity import domain
from lastro.identity.domain import Authentication, InvalidCode, LoginFailed, SecondFactorLocked
from lastro.identity.events import DeviceSeen
from lastro.identity.grants import HttpRequest, OAuthResponse
from lastro.identity.oauth import AuthorizationRequest, OAuthServer
from lastro.identity.service import IdentityService

LOGIN_COOKIE: Final = "__Host-lastro_login"
"""The login form session's cookie (``__Host-``: Secure, Path=/, no Domain)."""
CSRF_FIELD: Final = "csrf_token"


@dataclass(frozen=True)
class FormSession:
    """A login form session: ``cookie`` for the browser, ``token`` for the form."""

    cookie: str
    token: str


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class LoginForms:
    """Synchroniser tokens of the sign-in forms, in Redis (see the module docstring)."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    def _key(self, cookie: str) -> str:
        return f"{self._prefix}:{domain.fingerprint(cookie)}"

    async def open(self) -> FormSession:
        """A new form session, kept for :data:`~lastro.identity.domain.LOGIN_FORM_TTL`."""
        opened = FormSession(domain.new_secret(), domain.new_secret())
        await self._redis.hset(self._key(opened.cookie), "token", domain.fingerprint(opened.token))
        await self._redis.expire(self._key(opened.cookie), domain.LOGIN_FORM_TTL)
        return opened

    async def check(self, cookie: str, token: str, ticket: str | None = None) -> bool:
        """Whether ``token`` is the synchroniser token of the browser's form session
        (and, for the TOTP step, ``ticket`` the login ticket bound to it)."""
        if not cookie or not token:
            return False
        stored = {
            _text(name): _text(value)
            for name, value in (await self._redis.hgetall(self._key(cookie))).items()
        }
        expected = stored.get("token", "")
        if not expected or not hmac.compare_digest(expected, domain.fingerprint(token)):
            return False
        if ticket is None:
            return True
        bound = stored.get("ticket", "")
        return bool(bound) and hmac.compare_digest(bound, domain.fingerprint(ticket))

    async def bind_ticket(self, cookie: str, ticket: str) -> None:
        """Bind the login ticket of the password step to the form session."""
        await self._redis.hset(self._key(cookie), "ticket", domain.fingerprint(ticket))

    async def close(self, cookie: str) -> None:
        """The sign-in completed: the session's token is spent."""
        await self._redis.delete(self._key(cookie))


@dataclass(frozen=True)
class LoginForm:
    """Show the login form again, with ``error`` and HTTP ``status``."""

    request: AuthorizationRequest
    error: str = ""
    status: int = 200


@dataclass(frozen=True)
class TotpForm:
    """Ask for the second factor; ``ticket`` continues this login."""

    request: AuthorizationRequest
    ticket: str


@dataclass(frozen=True)
class Forged:
    """A submission without its browser's synchroniser token: refused with 403,
    nothing checked and nothing opened."""


@dataclass(frozen=True)
class Authorized:
    """Every factor passed: the authorization response (the redirect with a code)."""

    response: OAuthResponse


SignInStep = LoginForm | TotpForm | Authorized | Forged | OAuthResponse


class SignIn:
    def __init__(self, oauth: OAuthServer, users: IdentityService, forms: LoginForms) -> None:
        self._oauth = oauth
        self._users = users
        self.forms = forms

    async def submit(
        self,
        http: HttpRequest,
        form: Mapping[str, str],
        source_ip: str | None,
        device: DeviceSeen | None = None,
        form_session: str = "",
    ) -> SignInStep:
        """Password step, then (when enrolled) the TOTP step, then the code redirect.

        Guarantee: a submission whose ``csrf_token`` is not the synchroniser token of
        ``form_session`` (the browser's login cookie), or a TOTP step whose ticket was
        not opened in that session, is Forged: no credential is checked, nothing is
        counted or issued. An invalid authorization request answers its OAuth error;
        lockouts answer 429. ``device`` (the browser's device cookie) is remembered on
        success."""
        otp_step = form.get("step") == "otp"
        ticket = form.get("ticket", "") if otp_step else None
        if not await self.forms.check(form_session, form.get(CSRF_FIELD, ""), ticket):
            return Forged()
        checked = await self._oauth.check_authorization(http)
        if not isinstance(checked, AuthorizationRequest):
            return checked
        authentication: Authentication
        if otp_step:
            try:
                authentication = await self._users.verify_second_factor(
                    form.get("ticket", ""), form.get("otp", ""), source_ip, device
                )
            except SecondFactorLocked:
                return LoginForm(checked, "Too many failed attempts; try again later.", 429)
            except LoginFailed:
                return LoginForm(checked, "Your sign-in expired; start again.", 401)
            except InvalidCode:
                return LoginForm(checked, "Wrong or already used code; sign in again.", 401)
        else:
            try:
                verified = await self._users.verify_password(
                    form.get("username", ""), form.get("password", ""), source_ip, device
                )
            except LoginFailed:
                return LoginForm(checked, "Wrong username or password.", 401)
            if verified.ticket is not None:
                await self.forms.bind_ticket(form_session, verified.ticket)
                return TotpForm(checked, verified.ticket)
            assert verified.authentication is not None
            authentication = verified.authentication
        authorized = Authorized(await self._oauth.authorize(http, authentication, source_ip))
        await self.forms.close(form_session)
        return authorized
