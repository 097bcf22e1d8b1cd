"""Step-up authentication (RFC 9470) for operations that move large amounts.

A transfer or payout above a configured amount needs more than a valid token: the
user must have proven a second factor (``amr`` contains ``otp``) recently
(``auth_time`` no older than ``max_age`` seconds). Otherwise the resource server
answers 401 with the RFC 9470 challenge::

    WWW-Authenticate: Bearer error="insufficient_user_authentication",
      error_description="...", acr_values="urn:lastro:acr:mfa", max_age="300"

and the client sends the user back to the authorization server with those
``acr_values``/``max_age``, then retries with the new token. Parameter values are
quoted strings, as in the RFC's own examples.

Typical use in a handler (thresholds come from the service's configuration)::

    if requires_step_up(amount, currency, thresholds):
        require_recent_otp(request[PRINCIPAL_KEY])
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Final

from lastro.core.problems import Problem
from lastro.core.security.tokens import Principal

DEFAULT_MAX_AGE: Final = 300
MFA_ACR: Final = "urn:lastro:acr:mfa"
OTP_AMR: Final = "otp"
# Tolerated clock skew for an ``auth_time`` slightly in the future.
CLOCK_SKEW_SECONDS: Final = 30


def requires_step_up(amount_minor: int, currency: str, thresholds: Mapping[str, int]) -> bool:
    """Whether moving ``amount_minor`` of ``currency`` needs a recent second factor.

    ``thresholds`` maps ISO 4217 codes to the largest amount (minor units) allowed
    without step-up; amounts strictly above it need step-up. A currency with no
    configured threshold always needs step-up: a missing entry never lowers security.
    Raises ValueError for a negative amount.
    """
    if amount_minor < 0:
        raise ValueError("amount_minor must not be negative")
    threshold = thresholds.get(currency)
    return threshold is None or amount_minor > threshold


def _challenge(description: str, acr: str, max_age: int) -> Problem:
    header = (
        'Bearer error="insufficient_user_authentication", '
        f'error_description="{description}", acr_values="{acr}", max_age="{max_age}"'
    )
    return Problem(
        401,
        "insufficient-user-authentication",
        "Step-up authentication required",
        description,
        headers={"WWW-Authenticate": header},
        acr_values=acr,
        max_age=max_age,
    )


def require_recent_otp(
    principal: Principal,
    *,
    max_age: int = DEFAULT_MAX_AGE,
    acr: str = MFA_ACR,
    now: float | None = None,
) -> None:
    """Pass only if ``principal`` authenticated with a one-time password at most
    ``max_age`` seconds ago.

    Guarantee: returns normally only when the token's ``amr`` contains ``otp`` and its
    ``auth_time`` is within ``[now - max_age, now + CLOCK_SKEW_SECONDS]``; otherwise
    raises a 401 :class:`Problem` carrying the RFC 9470 ``WWW-Authenticate``
    challenge with ``acr_values=acr`` and ``max_age``. A token without
    ``auth_time`` never passes.
    """
    if OTP_AMR not in principal.amr:
        raise _challenge("A one-time password is required for this operation", acr, max_age)
    current = time.time() if now is None else now
    auth_time = principal.auth_time
    if auth_time is None or not (current - max_age <= auth_time <= current + CLOCK_SKEW_SECONDS):
        raise _challenge("A more recent authentication is required", acr, max_age)
