"""Settlement callback signatures: what verifies, and every way a forgery or a
replay is refused."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from lastro.external.acquirer_signing import (
    InvalidSettlementSignature,
    sign_settlement,
    verify_settlement_signature,
)

SECRET = "whsec_test_secret"
BODY = b'{"id":"stl_1","type":"settlement.batch","currency":"EUR","net":989}'
T = 1_767_225_600


def test_a_signed_body_verifies_and_answers_its_timestamp() -> None:
    header = sign_settlement(SECRET, BODY, T)
    assert verify_settlement_signature(SECRET, header, BODY, 300, now=T + 10) == T


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign_settlement(SECRET, BODY, T) == f"t={T},v1={expected}"


@pytest.mark.parametrize(
    "tampered",
    [
        BODY.replace(b"989", b"999"),
        BODY + b" ",
        b"",
    ],
)
def test_a_tampered_body_fails(tampered: bytes) -> None:
    header = sign_settlement(SECRET, BODY, T)
    with pytest.raises(InvalidSettlementSignature, match="does not match"):
        verify_settlement_signature(SECRET, header, tampered, 300, now=T)


def test_another_secret_fails() -> None:
    header = sign_settlement("whsec_other", BODY, T)
    with pytest.raises(InvalidSettlementSignature, match="does not match"):
        verify_settlement_signature(SECRET, header, BODY, 300, now=T)


def test_a_changed_timestamp_fails_even_within_tolerance() -> None:
    signature = sign_settlement(SECRET, BODY, T).split(",")[1]
    with pytest.raises(InvalidSettlementSignature, match="does not match"):
        verify_settlement_signature(SECRET, f"t={T + 1},{signature}", BODY, 300, now=T)


@pytest.mark.parametrize("now", [T + 301, T - 301])
def test_a_timestamp_outside_the_tolerance_fails(now: int) -> None:
    header = sign_settlement(SECRET, BODY, T)
    with pytest.raises(InvalidSettlementSignature, match="tolerance"):
        verify_settlement_signature(SECRET, header, BODY, 300, now=now)


def test_the_tolerance_boundary_is_inclusive() -> None:
    header = sign_settlement(SECRET, BODY, T)
    assert verify_settlement_signature(SECRET, header, BODY, 300, now=T + 300) == T


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("v1=abc", "no timestamp"),
        (f"t={T}", "no v1"),
        (f"t=soon,v1={'0' * 64}", "malformed signature timestamp"),
        (f"t={T},t={T},v1={'0' * 64}", "malformed signature timestamp"),
        ("garbage", "malformed signature header"),
        (f"t={T},v0={'0' * 64}", "no v1"),
    ],
)
def test_a_missing_or_malformed_header_fails(header: str | None, reason: str) -> None:
    with pytest.raises(InvalidSettlementSignature, match=reason):
        verify_settlement_signature(SECRET, header, BODY, 300, now=T)


def test_one_matching_signature_among_several_suffices_during_rotation() -> None:
    old = sign_settlement("whsec_old", BODY, T).split(",")[1]
    new = sign_settlement(SECRET, BODY, T).split(",")[1]
    assert verify_settlement_signature(SECRET, f"t={T},{old},{new}", BODY, 300, now=T) == T
    with pytest.raises(InvalidSettlementSignature):
        verify_settlement_signature(SECRET, f"t={T},{old}", BODY, 300, now=T)


def test_a_non_ascii_signature_is_refused_not_crashed_on() -> None:
    with pytest.raises(InvalidSettlementSignature, match="does not match"):
        verify_settlement_signature(SECRET, f"t={T},v1=é{'0' * 63}", BODY, 300, now=T)


def test_an_empty_secret_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="secret"):
        sign_settlement("", BODY, T)
    with pytest.raises(ValueError, match="secret"):
        verify_settlement_signature("", sign_settlement(SECRET, BODY, T), BODY, now=T)
