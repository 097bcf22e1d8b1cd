"""Identity rules with no I/O: credentials, TOTP, scopes, audiences, token claims, key schedule.

Everything here is deterministic given its inputs (the clock and randomness are
passed in or confined to the ``new_*`` generators), so it is unit-tested directly.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from authlib.oidc.core import UserInfo

from lastro.core import registry
from lastro.core.errors import DomainError
from lastro.core.ids import has_prefix
from lastro.core.problems import Problem

ACCESS_TOKEN_TTL: Final = timedelta(minutes=10)
ID_TOKEN_TTL: Final = timedelta(minutes=10)
REFRESH_TOKEN_TTL: Final = timedelta(days=30)
AUTHORIZATION_CODE_TTL: Final = timedelta(minutes=5)
LOGIN_TICKET_TTL: Final = timedelta(minutes=5)
# How long a login page may stay open before its form is refused as stale (CSRF token).
LOGIN_FORM_TTL: Final = timedelta(minutes=15)
# How long a replica may keep signing with a key it cached before it re-reads the schedule.
SIGNER_CACHE_TTL: Final = timedelta(seconds=60)

TOTP_DIGITS: Final = 6
TOTP_PERIOD: Final = 30
TOTP_WINDOW: Final = 1  # ±1 step of clock drift, as pyotp's valid_window=1
TOTP_ISSUER: Final = "Lastro"
RECOVERY_CODE_COUNT: Final = 10

ACR_PASSWORD: Final = "urn:lastro:acr:pwd"  # noqa: S105 - a URN, not a secret
ACR_MFA: Final = "urn:lastro:acr:mfa"

OPENID_SCOPE: Final = "openid"
# OpenID Connect scopes are granted only when asked for: an ID token is issued only
# to a client that made an OpenID request.
OIDC_SCOPES: Final = frozenset({OPENID_SCOPE, "profile"})
ADMIN_SCOPE: Final = "identity:admin"
SELF_SCOPE: Final = "identity:self"
# What a client may be granted: the scopes and audiences of the registered services.
SCOPES: Final = registry.scopes()
AUDIENCES: Final = registry.audiences()
GRANT_TYPES: Final = frozenset({"client_credentials", "authorization_code", "refresh_token"})

_USERNAME: Final = re.compile(r"[a-z0-9][a-z0-9._-]{2,63}")
MIN_PASSWORD_LENGTH: Final = 12
MAX_PASSWORD_LENGTH: Final = 256


# ---------------------------------------------------------------- errors


class InvalidInput(DomainError, ValueError):
    """Input that breaks an identity rule; ``field`` names the offending member."""

    slug = "validation-error"
    title = "Validation failed"
    status = 422

    def __init__(self, field_name: str, detail: str) -> None:
        super().__init__(f"{field_name} {detail}", field=field_name)
        self.rule = detail

    def problem(self) -> Problem:
        return Problem(
            self.status,
            self.slug,
            self.title,
            self.detail,
            errors=[{"field": self.field, "detail": self.rule}],
        )


class UsernameTaken(DomainError):
    """Sign-up with a username that already exists."""

    slug = "username-taken"
    title = "Username taken"
    status = 409

    def __init__(self) -> None:
        super().__init__("Choose another username.")


class LoginFailed(DomainError):
    """Wrong credentials, unknown user, or an unusable login ticket (never says which)."""

    slug = "login-failed"
    title = "Login failed"
    status = 401

    def __init__(self) -> None:
        super().__init__("Wrong credentials or an expired sign-in.")


class ReauthenticationFailed(DomainError):
    """The password given to confirm a sensitive change is wrong."""

    slug = "reauthentication-failed"
    title = "Re-authentication failed"
    status = 403

    def __init__(self) -> None:
        super().__init__("The password is wrong.")


class InvalidCode(DomainError):
    """A TOTP or recovery code that is wrong, expired or already used."""

    slug = "invalid-code"
    title = "Invalid code"
    status = 422

    def __init__(self, user_id: str | None = None) -> None:
        super().__init__("The code is wrong or expired.")
        self.user_id = user_id


class SecondFactorLocked(DomainError):
    """The user's second factor is locked out: the ticket was spent, no code was checked."""

    slug = "second-factor-locked"
    title = "Too many failed attempts"
    status = 429

    def __init__(self, user_id: str) -> None:
        super().__init__("Too many failed attempts; try again later.")
        self.user_id = user_id


class TotpAlreadyEnabled(DomainError):
    slug = "totp-already-enabled"
    title = "Two-factor already enabled"
    status = 409

    def __init__(self) -> None:
        super().__init__("two-factor authentication is already enabled")


class NoPendingEnrolment(DomainError):
    slug = "no-pending-enrolment"
    title = "No pending enrolment"
    status = 409

    def __init__(self) -> None:
        super().__init__("no pending two-factor enrolment")


class TotpNotEnabled(DomainError):
    slug = "totp-not-enabled"
    title = "Two-factor not enabled"
    status = 409

    def __init__(self) -> None:
        super().__init__("two-factor authentication is not enabled")


class UnknownUser(DomainError):
    """A valid user token whose user is gone: the token names no one (OIDC Core §5.3.3)."""

    slug = "invalid-token"
    title = "Unknown user"
    status = 401

    def __init__(self) -> None:
        super().__init__("The token's user does not exist.")


def userinfo_claims(user_id: str, username: str, scope: str) -> dict[str, Any]:
    """The OpenID Connect UserInfo claims the token's scope allows (authlib's standard
    scope-to-claims mapping): ``sub`` for ``openid``, ``preferred_username`` for
    ``profile``."""
    return dict(UserInfo(sub=user_id, preferred_username=username).filter(scope))


class UserTokenRequired(DomainError):
    """A user route called with a token that names no end user (client_credentials)."""

    slug = "user-token-required"
    title = "User token required"
    status = 403

    def __init__(self) -> None:
        super().__init__("This operation needs a token issued to an end user.")


def require_user(subject: str) -> str:
    """The end user a token names; UserTokenRequired for a client's own token."""
    if not has_prefix(subject, "usr"):
        raise UserTokenRequired()
    return subject


def normalize_username(username: str) -> str:
    """The canonical (lower-case) username; raises InvalidInput if it is not allowed."""
    name = username.strip().lower()
    if not _USERNAME.fullmatch(name):
        raise InvalidInput(
            "username", "must be 3-64 characters of a-z, 0-9, '.', '_' or '-', starting with one"
        )
    return name


def check_password_policy(password: str, username: str) -> None:
    """NIST SP 800-63B style: length 12-256, not the username; raises InvalidInput."""
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise InvalidInput(
            "password", f"must be {MIN_PASSWORD_LENGTH}-{MAX_PASSWORD_LENGTH} characters long"
        )
    if username and username in password.lower():
        raise InvalidInput("password", "must not contain the username")


# ---------------------------------------------------------------- argon2id

# argon2-cffi's defaults are the RFC 9106 "low memory" argon2id profile.
_HASHER: Final = PasswordHasher()
# Verified against when the user does not exist, so timing does not reveal usernames.
DUMMY_HASH: Final = _HASHER.hash("lastro-timing-equaliser")


def hash_secret(secret: str) -> str:
    """argon2id hash of a password or client secret (CPU-heavy: run in a thread)."""
    return _HASHER.hash(secret)


def verify_secret(hashed: str, secret: str) -> bool:
    """True only if ``secret`` matches ``hashed``; never raises on a bad hash."""
    try:
        return _HASHER.verify(hashed, secret)
    except (VerificationError, InvalidHashError):
        return False


# ---------------------------------------------------------------- opaque secrets


def new_secret(nbytes: int = 32) -> str:
    """A URL-safe random secret (codes, refresh tokens, login tickets, client secrets)."""
    return secrets.token_urlsafe(nbytes)


def fingerprint(secret: str) -> str:
    """SHA-256 hex of a high-entropy secret: how codes, tickets and refresh tokens are stored.

    These are at least 128 random bits, so a fast hash is enough (no guessing
    attack), unlike passwords and client secrets, which are hashed with argon2id.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


def new_recovery_codes(count: int = RECOVERY_CODE_COUNT) -> list[str]:
    """One-time recovery codes, ``xxxxx-xxxxx`` in lower-case base32 (50 random bits each)."""
    alphabet = "abcdefghijkmnpqrstuvwxyz23456789"
    codes = []
    for _ in range(count):
        raw = "".join(secrets.choice(alphabet) for _ in range(10))
        codes.append(f"{raw[:5]}-{raw[5:]}")
    return codes


def normalize_recovery_code(code: str) -> str:
    return code.strip().lower().replace(" ", "")


# ---------------------------------------------------------------- Transit associated data


def totp_seed_binding(user_id: str) -> bytes:
    """Transit associated data of a user's TOTP seed ciphertexts (pending or
    confirmed): a seed copied into another user's row does not decrypt."""
    return f"lastro:identity:totp-seed:{user_id}".encode()


def signing_key_binding(kid: str) -> bytes:
    """Transit associated data of a signing key's private half: a ciphertext moved
    to another key's row does not decrypt."""
    return f"lastro:identity:signing-key:{kid}".encode()


# ---------------------------------------------------------------- TOTP (RFC 6238)


def new_totp_secret() -> str:
    """A 160-bit base32 TOTP seed (RFC 4226 recommends 160 bits)."""
    return pyotp.random_base32(32)


def totp(secret: str, digits: int = TOTP_DIGITS, digest: Any = None) -> pyotp.TOTP:
    return pyotp.TOTP(secret, digits=digits, interval=TOTP_PERIOD, digest=digest)


def provisioning_uri(secret: str, username: str) -> str:
    """The ``otpauth://`` URI authenticator apps scan."""
    return totp(secret).provisioning_uri(name=username, issuer_name=TOTP_ISSUER)


def accepted_totp_step(
    secret: str, code: str, now: float, last_used_step: int | None
) -> int | None:
    """The time step ``code`` belongs to, if it is valid now and not a replay.

    Valid means it equals the code of the current step or one step either side
    (pyotp ``valid_window=1``); not a replay means its step is later than the last
    step this user already spent (RFC 6238 §5.2), so each code is accepted once and
    an older code is never accepted after a newer one. Constant-time comparison.
    """
    candidate = code.strip()
    if not (candidate.isdigit() and len(candidate) == TOTP_DIGITS):
        return None
    generator = totp(secret)
    current = generator.timecode(now)
    matched = None
    for step in range(current - TOTP_WINDOW, current + TOTP_WINDOW + 1):
        if hmac.compare_digest(candidate, generator.generate_otp(step)):
            matched = step
    if matched is None or (last_used_step is not None and matched <= last_used_step):
        return None
    return matched


# ---------------------------------------------------------------- clients, scopes, audiences


@dataclass(frozen=True)
class ClientPolicy:
    """What a client may ask for."""

    grant_types: frozenset[str]
    scopes: frozenset[str]
    audiences: frozenset[str]
    redirect_uris: tuple[str, ...] = ()


def check_client_policy(policy: ClientPolicy) -> None:
    """Reject a client registration that names unknown things or lacks redirect URIs."""
    unknown = policy.grant_types - GRANT_TYPES
    if not policy.grant_types or unknown:
        raise InvalidInput("grant_types", f"must be a non-empty subset of {sorted(GRANT_TYPES)}")
    if policy.scopes - SCOPES:
        raise InvalidInput("scopes", f"unknown scope(s): {sorted(policy.scopes - SCOPES)}")
    if policy.audiences - AUDIENCES:
        unknown_aud = sorted(policy.audiences - AUDIENCES)
        raise InvalidInput("audiences", f"unknown audience(s): {unknown_aud}")
    if not policy.audiences:
        raise InvalidInput("audiences", "must name at least one service")
    if "authorization_code" in policy.grant_types:
        if not policy.redirect_uris:
            raise InvalidInput("redirect_uris", "are required for authorization_code clients")
        for uri in policy.redirect_uris:
            if not (uri.startswith("https://") or uri.startswith("http://127.0.0.1")):
                raise InvalidInput(
                    "redirect_uris", "must be https (or http://127.0.0.1 for native apps)"
                )
            if "#" in uri:
                raise InvalidInput("redirect_uris", "must not contain a fragment")
    if "refresh_token" in policy.grant_types and "authorization_code" not in policy.grant_types:
        raise InvalidInput("grant_types", "refresh_token is only issued with authorization_code")


def allowed_scope(requested: str | None, allowed: Collection[str]) -> str | None:
    """The granted scope string: the request's scopes if all allowed (all allowed scopes
    but the OpenID Connect ones when none are requested); None when something not
    allowed is asked for."""
    if not requested:
        return " ".join(sorted(set(allowed) - OIDC_SCOPES))
    wanted = requested.split()
    if not set(wanted) <= set(allowed):
        return None
    return " ".join(dict.fromkeys(wanted))


def resolve_audience(requested: Iterable[str], allowed: Collection[str]) -> list[str] | None:
    """The token audience: the requested services (``audience`` names or RFC 8707
    ``resource`` values, already mapped to names), or every allowed one if none were
    asked for; None if any requested service is not allowed for the client."""
    wanted = list(dict.fromkeys(requested))
    if not wanted:
        return sorted(allowed)
    if not set(wanted) <= set(allowed):
        return None
    return wanted


# ---------------------------------------------------------------- authentication context


@dataclass(frozen=True)
class Authentication:
    """How and when the end user proved who they are (carried into every token of a grant)."""

    user_id: str
    amr: tuple[str, ...]
    auth_time: int

    @property
    def acr(self) -> str:
        return ACR_MFA if "otp" in self.amr else ACR_PASSWORD


def access_token_claims(
    *,
    issuer: str,
    subject: str,
    client_id: str,
    audience: Sequence[str],
    scope: str,
    issued_at: int,
    authentication: Authentication | None = None,
) -> dict[str, Any]:
    """The RFC 9068 claim set. For client_credentials the subject is the client itself
    and there is no end-user authentication (no amr/acr/auth_time)."""
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "aud": audience[0] if len(audience) == 1 else list(audience),
        "client_id": client_id,
        "scope": scope,
        "iat": issued_at,
        "exp": issued_at + int(ACCESS_TOKEN_TTL.total_seconds()),
        "jti": uuid.uuid4().hex,
    }
    if authentication is not None:
        claims["amr"] = list(authentication.amr)
        claims["acr"] = authentication.acr
        claims["auth_time"] = authentication.auth_time
    return claims


# ---------------------------------------------------------------- signing-key schedule


@dataclass(frozen=True)
class KeyWindow:
    """When a signing key signs and when it stops being published."""

    kid: str
    activates_at: datetime
    expires_at: datetime | None = None


def signing_kid(keys: Iterable[KeyWindow], now: datetime) -> str | None:
    """The key that signs now: the most recently activated one that is active."""
    active = [k for k in keys if k.activates_at <= now]
    if not active:
        return None
    return max(active, key=lambda k: k.activates_at).kid


def published_kids(keys: Iterable[KeyWindow], now: datetime) -> list[str]:
    """Keys in the JWKS: every key not yet expired (including a pre-published next key),
    newest first."""
    live = [k for k in keys if k.expires_at is None or k.expires_at > now]
    return [k.kid for k in sorted(live, key=lambda k: k.activates_at, reverse=True)]


def retirement_time(next_activates_at: datetime) -> datetime:
    """When a superseded key may leave the JWKS: after the last token it could still have
    signed has expired (replicas may sign with it for up to SIGNER_CACHE_TTL after the
    switch, and verifiers allow clock skew)."""
    return next_activates_at + SIGNER_CACHE_TTL + ACCESS_TOKEN_TTL + timedelta(seconds=60)
