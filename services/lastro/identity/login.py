"""The sign-in use case behind the authorization endpoint's form.

One submission of the login form is one call of :meth:`SignIn.submit`: the OAuth
authorization request is validated again (the form carries it), then the password
step or the TOTP step runs (:class:`~lastro.identity.service.IdentityService`, with
its lockouts), and a user who passed every factor gets an authorization code
redirect (:class:`~lastro.identity.oauth.OAuthServer`). What the user sees next is
returned as a value for the handler to render.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lastro.identity.domain import Authentication, InvalidCode, LoginFailed, SecondFactorLocked
from lastro.identity.events import DeviceSeen
from lastro.identity.grants import HttpRequest, OAuthResponse
from lastro.identity.oauth import AuthorizationRequest, OAuthServer
from lastro.identity.service import IdentityService


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
class Authorized:
    """Every factor passed: the authorization response (the redirect with a code)."""

    response: OAuthResponse


SignInStep = LoginForm | TotpForm | Authorized | OAuthResponse


class SignIn:
    def __init__(self, oauth: OAuthServer, users: IdentityService) -> None:
        self._oauth = oauth
        self._users = users

    async def submit(
        self,
        http: HttpRequest,
        form: Mapping[str, str],
        source_ip: str | None,
        device: DeviceSeen | None = None,
    ) -> SignInStep:
        """Password step, then (when enrolled) the TOTP step, then the code redirect.
        An invalid authorization request answers its OAuth error; lockouts answer 429.
        ``device`` (the browser's device cookie) is remembered on success."""
        checked = await self._oauth.check_authorization(http)
        if not isinstance(checked, AuthorizationRequest):
            return checked
        authentication: Authentication
        if form.get("step") == "otp":
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
                return TotpForm(checked, verified.ticket)
            assert verified.authentication is not None
            authentication = verified.authentication
        return Authorized(await self._oauth.authorize(http, authentication, source_ip))
