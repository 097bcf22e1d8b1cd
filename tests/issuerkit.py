"""A throwaway token issuer for tests: real keys, real signatures, real JWKS.

Tests mint access tokens with :class:`TestIssuer` and verify them with the same
:class:`~lastro.core.security.tokens.TokenVerifier` production uses, so what passes
here passes against the identity service. Test support: it lives under tests/, not in
the shipped package.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from joserfc import jwt
from joserfc.jwk import ECKey, Key, KeySetSerialization, OKPKey

from lastro.core.security.tokens import StaticKeySet, TokenVerifier

Algorithm = Literal["ES256", "Ed25519"]


def _generate(algorithm: Algorithm) -> Key:
    if algorithm == "ES256":
        return ECKey.generate_key("P-256", parameters={"alg": "ES256", "use": "sig"}, auto_kid=True)
    return OKPKey.generate_key(
        "Ed25519", parameters={"alg": "Ed25519", "use": "sig"}, auto_kid=True
    )


class TestIssuer:
    """Holds a signing key pair (rotatable) and mints RFC 9068 access tokens."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        issuer: str = "https://identity.test",
        audience: str = "lastro-test",
        algorithm: Algorithm = "ES256",
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.algorithm: Algorithm = algorithm
        self.keys: list[Key] = [_generate(algorithm)]

    @property
    def signing_key(self) -> Key:
        return self.keys[-1]

    def rotate(self) -> Key:
        """Start signing with a fresh key; the old one stays published in the JWKS."""
        self.keys.append(_generate(self.algorithm))
        return self.signing_key

    def jwks(self) -> KeySetSerialization:
        """The public JWKS, as the identity service publishes it."""
        return {"keys": [key.as_dict(private=False) for key in self.keys]}

    def verifier(self, audience: str | None = None) -> TokenVerifier:
        """A verifier that trusts this issuer's current keys."""
        return TokenVerifier.from_key_source(
            StaticKeySet(self.jwks()), issuer=self.issuer, audience=audience or self.audience
        )

    def mint(
        self,
        *,
        scope: str = "",
        subject: str = "usr_test",
        client_id: str = "cli_test",
        audience: str | list[str] | None = None,
        expires_in: int = 300,
        issued_at: int | None = None,
        key: Key | None = None,
        typ: str = "at+jwt",
        **claims: Any,
    ) -> str:
        """A signed access token; ``claims`` override or add any claim."""
        now = int(time.time()) if issued_at is None else issued_at
        signing_key = key or self.signing_key
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.audience if audience is None else audience,
            "client_id": client_id,
            "scope": scope,
            "iat": now,
            "exp": now + expires_in,
            "jti": uuid.uuid4().hex,
            **claims,
        }
        header = {"alg": self.algorithm, "kid": signing_key.kid, "typ": typ}
        return jwt.encode(header, payload, signing_key, algorithms=[self.algorithm])
