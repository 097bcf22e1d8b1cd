"""RFC 9470 step-up: who gets challenged, and the exact challenge they get."""

from __future__ import annotations

import pytest

from lastro.core.problems import Problem
from lastro.core.security.tokens import Principal
from lastro.core.stepup import require_recent_otp, requires_step_up

NOW = 1_760_000_000
THRESHOLDS = {"BRL": 500_000, "EUR": 100_000}


def principal(amr: tuple[str, ...], auth_time: int | None) -> Principal:
    return Principal(
        subject="usr_1",
        client_id="cli_app",
        scopes=frozenset({"transfers:write"}),
        audience=("transactions",),
        amr=amr,
        acr="urn:lastro:acr:pwd",
        auth_time=auth_time,
    )


def challenge_of(user: Principal, max_age: int = 300) -> Problem:
    with pytest.raises(Problem) as caught:
        require_recent_otp(user, max_age=max_age, now=NOW)
    return caught.value


def test_password_only_token_gets_the_rfc9470_challenge() -> None:
    problem = challenge_of(principal(("pwd",), NOW - 10))
    assert problem.status == 401
    assert problem.type == "https://lastro.dev/problems/insufficient-user-authentication"
    assert problem.headers["WWW-Authenticate"] == (
        'Bearer error="insufficient_user_authentication", '
        'error_description="A one-time password is required for this operation", '
        'acr_values="urn:lastro:acr:mfa", max_age="300"'
    )
    assert problem.document()["acr_values"] == "urn:lastro:acr:mfa"


def test_fresh_otp_passes() -> None:
    require_recent_otp(principal(("pwd", "otp"), NOW - 299), now=NOW)


def test_stale_otp_is_challenged_with_the_configured_max_age() -> None:
    problem = challenge_of(principal(("pwd", "otp"), NOW - 61), max_age=60)
    assert problem.status == 401
    assert problem.headers["WWW-Authenticate"] == (
        'Bearer error="insufficient_user_authentication", '
        'error_description="A more recent authentication is required", '
        'acr_values="urn:lastro:acr:mfa", max_age="60"'
    )


def test_otp_without_auth_time_is_challenged() -> None:
    assert challenge_of(principal(("otp",), None)).status == 401


def test_auth_time_far_in_the_future_is_challenged() -> None:
    assert challenge_of(principal(("otp",), NOW + 3600)).status == 401


def test_amount_at_or_below_threshold_needs_no_step_up() -> None:
    assert not requires_step_up(100_000, "EUR", THRESHOLDS)
    assert not requires_step_up(1, "BRL", THRESHOLDS)


def test_amount_above_threshold_needs_step_up() -> None:
    assert requires_step_up(100_001, "EUR", THRESHOLDS)


def test_unconfigured_currency_always_needs_step_up() -> None:
    assert requires_step_up(1, "USD", THRESHOLDS)


def test_negative_amount_is_rejected() -> None:
    with pytest.raises(ValueError):
        requires_step_up(-1, "EUR", THRESHOLDS)
