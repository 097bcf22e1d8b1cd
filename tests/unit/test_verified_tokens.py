"""Verified tokens are remembered by exact string, never past their expiry or max age."""

from __future__ import annotations

import time

import pytest
from joserfc.jwk import Key

from issuerkit import TestIssuer
from lastro.core.security.tokens import (
    VERIFIED_CACHE_SECONDS,
    InvalidToken,
    Principal,
    StaticKeySet,
    TokenVerifier,
    VerifiedTokens,
)


class CountingKeys:
    """A key source that counts how often a full check asked for a key."""

    def __init__(self, issuer: TestIssuer) -> None:
        self._keys = StaticKeySet(issuer.jwks())
        self.lookups = 0

    async def key_for(self, kid: str | None) -> Key:
        self.lookups += 1
        return await self._keys.key_for(kid)


@pytest.fixture
def issuer() -> TestIssuer:
    return TestIssuer(issuer="https://identity.test", audience="accounts")


def _verifier(issuer: TestIssuer, keys: CountingKeys) -> TokenVerifier:
    return TokenVerifier.from_key_source(keys, issuer=issuer.issuer, audience="accounts")


def _advance_clock(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    later = time.time() + seconds
    monkeypatch.setattr(time, "time", lambda: later)


async def test_verified_token_is_answered_from_memory(issuer: TestIssuer) -> None:
    keys = CountingKeys(issuer)
    verifier = _verifier(issuer, keys)
    token = issuer.mint(scope="ledger:write", subject="svc_transactions")
    first = await verifier.verify(token)
    again = [await verifier.verify(token) for _ in range(3)]
    assert all(p == first for p in again)
    assert first.scopes == frozenset({"ledger:write"})
    assert keys.lookups == 1


async def test_remembered_token_still_expires_on_time(
    issuer: TestIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = CountingKeys(issuer)
    verifier = _verifier(issuer, keys)
    # exp 20 s ago: accepted only thanks to the 30 s leeway, for 10 more seconds.
    token = issuer.mint(issued_at=int(time.time()) - 100, expires_in=80)
    await verifier.verify(token)
    _advance_clock(monkeypatch, 15)
    with pytest.raises(InvalidToken, match="token expired"):
        await verifier.verify(token)
    assert keys.lookups == 2


async def test_remembered_token_is_rechecked_after_max_age(
    issuer: TestIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = CountingKeys(issuer)
    verifier = _verifier(issuer, keys)
    token = issuer.mint(expires_in=3600)
    await verifier.verify(token)
    _advance_clock(monkeypatch, VERIFIED_CACHE_SECONDS + 1)
    await verifier.verify(token)
    assert keys.lookups == 2


async def test_refused_tokens_are_checked_in_full_every_time(issuer: TestIssuer) -> None:
    keys = CountingKeys(issuer)
    verifier = _verifier(issuer, keys)
    token = issuer.mint(audience="transactions")
    for _ in range(2):
        with pytest.raises(InvalidToken, match="aud"):
            await verifier.verify(token)
    assert keys.lookups == 2


async def test_tampered_copy_of_a_remembered_token_is_refused(issuer: TestIssuer) -> None:
    verifier = issuer.verifier("accounts")
    token = issuer.mint()
    await verifier.verify(token)
    header, payload, signature = token.split(".")
    forged = ".".join(
        [header, payload, signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")]
    )
    with pytest.raises(InvalidToken):
        await verifier.verify(forged)


async def test_remembered_principal_cannot_be_altered(issuer: TestIssuer) -> None:
    verifier = issuer.verifier("accounts")
    principal = await verifier.verify(issuer.mint())
    with pytest.raises(TypeError):
        principal.claims["scope"] = "accounts:admin"  # type: ignore[index]


def test_memory_is_bounded_and_drops_expired_entries_first() -> None:
    memory = VerifiedTokens(max_entries=8)
    now = 1000.0
    principal = Principal("usr", "cli", frozenset(), ("accounts",))
    memory.put("stale", principal, deadline=now + 1, now=now)
    for i in range(20):
        memory.put(f"t{i}", principal, deadline=now + 60, now=now + 2)
    assert len(memory) <= 8
    assert memory.get("stale", now + 2) is None
    assert memory.get("t19", now + 2) is principal
    assert memory.get("t19", now + 60) is None
    memory.put("past", principal, deadline=now, now=now)
    assert memory.get("past", now - 1) is None
