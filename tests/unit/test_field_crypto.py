"""Field encryption and blind indexes without a KMS: binding, tampering, normalisation."""

from __future__ import annotations

import base64
import secrets

import pytest

from lastro.core.security.fields import (
    BlindIndex,
    FieldCipher,
    FieldDecryptionError,
    UnwrappedKeyCache,
    field_binding,
    normalise,
    wrapped_key_version,
)

KEY = bytes(range(32))
WHERE = {"table": "customers", "column": "email", "row_id": "cus_1"}


@pytest.fixture
def cipher() -> FieldCipher:
    return FieldCipher(KEY)


def test_sealed_field_round_trips_as_text_and_bytes(cipher: FieldCipher) -> None:
    token = cipher.seal("maria@example.com", **WHERE)
    assert token.startswith("lf1:")
    assert cipher.open_text(token, **WHERE) == "maria@example.com"
    raw = bytes([0, 255, 10, 13])
    assert cipher.open(cipher.seal(raw, **WHERE), **WHERE) == raw


def test_same_value_seals_to_different_tokens(cipher: FieldCipher) -> None:
    assert cipher.seal("12345678909", **WHERE) != cipher.seal("12345678909", **WHERE)


def test_token_contains_no_plaintext(cipher: FieldCipher) -> None:
    secret = "Maria da Silva Sauro"
    token = cipher.seal(secret, **WHERE)
    decoded = base64.b64decode(token.removeprefix("lf1:"))
    for fragment in (secret, "Maria", "Silva", "Sauro"):
        assert fragment not in token
        assert fragment.encode() not in decoded
        assert base64.b64encode(fragment.encode()).decode()[:6] not in token


@pytest.mark.parametrize(
    "moved",
    [
        {"table": "customers", "column": "email", "row_id": "cus_2"},
        {"table": "customers", "column": "phone", "row_id": "cus_1"},
        {"table": "merchants", "column": "email", "row_id": "cus_1"},
    ],
    ids=["another-row", "another-column", "another-table"],
)
def test_token_moved_elsewhere_does_not_open(cipher: FieldCipher, moved: dict[str, str]) -> None:
    token = cipher.seal("maria@example.com", **WHERE)
    with pytest.raises(FieldDecryptionError, match="moved from another row or column"):
        cipher.open(token, **moved)


def test_binding_is_unambiguous_across_field_boundaries() -> None:
    assert field_binding("ab", "c", "d") != field_binding("a", "bc", "d")
    assert field_binding("a", "b:c", "d") != field_binding("a:b", "c", "d")


def test_every_flipped_bit_is_detected(cipher: FieldCipher) -> None:
    token = cipher.seal("maria@example.com", **WHERE)
    raw = base64.b64decode(token.removeprefix("lf1:"))
    for position in range(len(raw)):
        tampered = bytearray(raw)
        tampered[position] ^= 0x01
        forged = "lf1:" + base64.b64encode(bytes(tampered)).decode()
        with pytest.raises(FieldDecryptionError):
            cipher.open(forged, **WHERE)


def test_another_subjects_key_does_not_open(cipher: FieldCipher) -> None:
    token = cipher.seal("maria@example.com", **WHERE)
    with pytest.raises(FieldDecryptionError):
        FieldCipher(secrets.token_bytes(32)).open(token, **WHERE)


@pytest.mark.parametrize(
    "token",
    ["", "maria@example.com", "lf2:AAAA", "lf1:not base64!", "lf1:" + "A" * 36],
    ids=["empty", "plaintext", "unknown-version", "bad-base64", "truncated"],
)
def test_malformed_tokens_are_refused(cipher: FieldCipher, token: str) -> None:
    with pytest.raises(FieldDecryptionError):
        cipher.open(token, **WHERE)


def test_field_key_must_be_256_bits() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        FieldCipher(b"\x00" * 16)


def test_key_is_not_in_repr(cipher: FieldCipher) -> None:
    assert KEY.hex() not in repr(cipher)
    assert "key hidden" in repr(cipher)


@pytest.mark.parametrize(
    ("purpose", "variants", "canonical"),
    [
        ("email", ["  Maria@Example.COM ", "maria@example.com"], "maria@example.com"),
        ("document", ["123.456.789-09", "123 456 789 09", "12345678909"], "12345678909"),
        ("document", ["ab-123.456/c", "AB123456C"], "AB123456C"),
        ("phone", ["+55 (11) 91234-5678", "55 11 912345678", "+5511912345678"], "5511912345678"),
    ],
)
def test_spellings_of_one_value_share_a_blind_index(
    purpose: str, variants: list[str], canonical: str
) -> None:
    index = BlindIndex({1: KEY})
    assert {normalise(v, purpose=purpose) for v in variants} == {canonical}
    assert len({index.compute(v, purpose=purpose) for v in variants}) == 1


def test_fullwidth_characters_are_normalised() -> None:
    assert (
        normalise("\uff2d\uff21\uff32\uff29\uff21@example.com", purpose="email")
        == "maria@example.com"
    )


def test_different_values_get_different_indexes() -> None:
    index = BlindIndex({1: KEY})
    assert index.compute("a@example.com", purpose="email") != index.compute(
        "b@example.com", purpose="email"
    )


def test_purposes_are_domain_separated() -> None:
    index = BlindIndex({1: KEY})
    assert index.compute("12345", purpose="document") != index.compute("12345", purpose="phone")
    assert index.compute("ab12", purpose="email") != index.compute("AB12", purpose="document")


def test_blind_index_carries_newest_version_and_no_plaintext() -> None:
    index = BlindIndex({1: KEY, 2: secrets.token_bytes(32)})
    value = index.compute("maria@example.com", purpose="email")
    version, digest = value.split(":")
    assert version == "bi2"
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert "maria" not in value


def test_blind_index_depends_on_the_key() -> None:
    one = BlindIndex({1: KEY}).compute("maria@example.com", purpose="email")
    other = BlindIndex({1: secrets.token_bytes(32)}).compute("maria@example.com", purpose="email")
    assert one != other


def test_candidates_match_indexes_stored_under_older_versions() -> None:
    old = BlindIndex({1: KEY})
    rotated = BlindIndex({1: KEY, 2: secrets.token_bytes(32)})
    stored = old.compute("Maria@Example.com", purpose="email")
    candidates = rotated.candidates("maria@example.com ", purpose="email")
    assert stored in candidates
    assert candidates[0] == rotated.compute("maria@example.com", purpose="email")


@pytest.mark.parametrize(("value", "purpose"), [("   ", "email"), (" .-/ ", "document")])
def test_values_empty_once_normalised_are_refused(value: str, purpose: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        BlindIndex({1: KEY}).compute(value, purpose=purpose)


def test_unknown_purpose_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown blind index purpose"):
        BlindIndex({1: KEY}).compute("x", purpose="name")


def test_wrapped_key_version_is_read_from_the_prefix() -> None:
    assert wrapped_key_version("vault:v1:abc=") == 1
    assert wrapped_key_version("vault:v12:abc=") == 12
    with pytest.raises(ValueError):
        wrapped_key_version("lf1:abc")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_key_cache_expires_entries_after_ttl() -> None:
    clock = FakeClock()
    cache = UnwrappedKeyCache(max_entries=4, ttl_s=10, clock=clock)
    cache.put("vault:v1:a", KEY)
    clock.now = 9.9
    assert cache.get("vault:v1:a") == KEY
    clock.now = 10.0
    assert cache.get("vault:v1:a") is None
    assert len(cache) == 0


def test_key_cache_evicts_least_recently_used() -> None:
    cache = UnwrappedKeyCache(max_entries=2, ttl_s=60, clock=FakeClock())
    cache.put("a", b"1")
    cache.put("b", b"2")
    assert cache.get("a") == b"1"
    cache.put("c", b"3")
    assert cache.get("b") is None
    assert (cache.get("a"), cache.get("c")) == (b"1", b"3")


def test_forgotten_key_is_gone_and_repr_shows_no_keys() -> None:
    cache = UnwrappedKeyCache()
    cache.put("vault:v1:a", KEY)
    cache.forget("vault:v1:a")
    cache.forget("vault:v1:never-there")
    assert cache.get("vault:v1:a") is None
    cache.put("vault:v1:b", KEY)
    assert KEY.hex() not in repr(cache) and str(KEY) not in repr(cache)
