"""Identity rules without I/O: TOTP (RFC 6238), replay, scopes, audiences, key schedule."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta

import pyotp
import pytest

from lastro.identity import domain

RFC6238_SHA1_SEED = base64.b32encode(b"12345678901234567890").decode()


@pytest.mark.parametrize(
    ("unix_time", "expected"),
    [
        (59, "94287082"),
        (1111111109, "07081804"),
        (1111111111, "14050471"),
        (1234567890, "89005924"),
        (2000000000, "69279037"),
        (20000000000, "65353130"),
    ],
)
def test_rfc6238_appendix_b_sha1_vectors(unix_time: int, expected: str) -> None:
    generator = domain.totp(RFC6238_SHA1_SEED, digits=8, digest=hashlib.sha1)
    assert generator.at(unix_time) == expected
    assert generator.verify(expected, for_time=unix_time)


SECRET = pyotp.random_base32()
NOW = 1_700_000_015.0  # inside step 56_666_667


def _code(offset_steps: int) -> str:
    return pyotp.TOTP(SECRET).at(NOW + 30 * offset_steps)


def test_totp_accepts_the_current_step_and_one_either_side() -> None:
    current = int(NOW) // 30
    for offset in (-1, 0, 1):
        assert domain.accepted_totp_step(SECRET, _code(offset), NOW, None) == current + offset


def test_totp_outside_the_window_or_malformed_is_refused() -> None:
    for code in (_code(-2), _code(2), "12345", "abcdef", ""):
        assert domain.accepted_totp_step(SECRET, code, NOW, None) is None


def test_totp_code_is_accepted_once_and_never_an_older_one_after() -> None:
    step = domain.accepted_totp_step(SECRET, _code(0), NOW, None)
    assert step is not None
    assert domain.accepted_totp_step(SECRET, _code(0), NOW, step) is None  # replay
    assert domain.accepted_totp_step(SECRET, _code(-1), NOW, step) is None  # older
    assert domain.accepted_totp_step(SECRET, _code(1), NOW, step) == step + 1


def test_provisioning_uri_names_issuer_and_user() -> None:
    uri = domain.provisioning_uri(SECRET, "ana")
    assert uri.startswith("otpauth://totp/Lastro:ana?")
    assert f"secret={SECRET}" in uri


def test_recovery_codes_are_distinct_and_normalised() -> None:
    codes = domain.new_recovery_codes()
    assert len(set(codes)) == domain.RECOVERY_CODE_COUNT
    assert domain.normalize_recovery_code(" " + codes[0].upper() + " ") == codes[0]


def test_password_hash_is_argon2id_and_verifies_only_the_password() -> None:
    hashed = domain.hash_secret("correct horse battery")
    assert hashed.startswith("$argon2id$")
    assert domain.verify_secret(hashed, "correct horse battery")
    assert not domain.verify_secret(hashed, "wrong horse battery")
    assert not domain.verify_secret("not-a-hash", "anything")


@pytest.mark.parametrize(
    ("username", "password", "field"),
    [
        ("ab", "long enough password", "username"),
        ("Ana Maria", "long enough password", "username"),
        ("ana", "short", "password"),
        ("anabela", "my-anabela-password", "password"),
    ],
)
def test_sign_up_rules_name_the_offending_field(username: str, password: str, field: str) -> None:
    with pytest.raises(domain.InvalidInput) as caught:
        name = domain.normalize_username(username)
        domain.check_password_policy(password, name)
    assert caught.value.field == field


def test_scope_is_granted_only_within_the_clients_scopes() -> None:
    allowed = {"accounts:read", "transfers:write"}
    assert domain.allowed_scope("accounts:read", allowed) == "accounts:read"
    assert domain.allowed_scope(None, allowed) == "accounts:read transfers:write"
    assert domain.allowed_scope("accounts:read identity:admin", allowed) is None


def test_audience_defaults_to_all_allowed_and_refuses_others() -> None:
    assert domain.resolve_audience([], {"fraud", "accounts"}) == ["accounts", "fraud"]
    assert domain.resolve_audience(["accounts"], {"fraud", "accounts"}) == ["accounts"]
    assert domain.resolve_audience(["identity"], {"accounts"}) is None


def test_client_policy_requires_redirect_uris_for_the_code_flow() -> None:
    with pytest.raises(domain.InvalidInput) as caught:
        domain.check_client_policy(
            domain.ClientPolicy(
                frozenset({"authorization_code"}),
                frozenset({"accounts:read"}),
                frozenset({"accounts"}),
            )
        )
    assert caught.value.field == "redirect_uris"
    with pytest.raises(domain.InvalidInput):
        domain.check_client_policy(
            domain.ClientPolicy(
                frozenset({"client_credentials"}), frozenset({"root"}), frozenset({"accounts"})
            )
        )


def test_user_token_claims_carry_the_authentication() -> None:
    auth = domain.Authentication("usr_1", ("pwd", "otp"), 1_700_000_000)
    claims = domain.access_token_claims(
        issuer="https://id",
        subject="usr_1",
        client_id="cli_1",
        audience=["accounts"],
        scope="accounts:read",
        issued_at=1_700_000_100,
        authentication=auth,
    )
    assert claims["aud"] == "accounts"
    assert claims["exp"] - claims["iat"] == 600
    assert (claims["amr"], claims["acr"], claims["auth_time"]) == (
        ["pwd", "otp"],
        domain.ACR_MFA,
        1_700_000_000,
    )
    service = domain.access_token_claims(
        issuer="https://id",
        subject="cli_1",
        client_id="cli_1",
        audience=["accounts", "fraud"],
        scope="",
        issued_at=0,
    )
    assert "amr" not in service and service["aud"] == ["accounts", "fraud"]


def test_key_schedule_signs_with_newest_active_and_publishes_until_expiry() -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    switch = t0 + timedelta(hours=1)
    old = domain.KeyWindow("old", t0, domain.retirement_time(switch))
    new = domain.KeyWindow("new", switch)
    before, after = switch - timedelta(seconds=1), switch + timedelta(seconds=1)
    assert domain.signing_kid([old, new], before) == "old"  # pre-published, not yet signing
    assert domain.published_kids([old, new], before) == ["new", "old"]
    assert domain.signing_kid([old, new], after) == "new"
    last_old_token_expiry = switch + domain.SIGNER_CACHE_TTL + domain.ACCESS_TOKEN_TTL
    assert domain.published_kids([old, new], last_old_token_expiry) == ["new", "old"]
    assert domain.published_kids([old, new], last_old_token_expiry + timedelta(minutes=2)) == [
        "new"
    ]
