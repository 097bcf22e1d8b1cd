"""Signatures on the acquirer's settlement callbacks, for both sides of the wire.

The acquirer signs every delivery attempt afresh with the secret it shares with the
merchant (``.dev/secrets/acquirer_webhook_secret`` in dev)::

    Acquirer-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">

The receiving side (the transaction service's
``POST /internal/v1/acquirer/settlements``) calls
:func:`verify_settlement_signature` on the raw body *before* parsing it. Guarantees:
a body whose signature does not verify under the secret, a header that is missing
or malformed, and a timestamp further than ``tolerance`` seconds from now (a
replayed old delivery) are all refused with :class:`InvalidSettlementSignature`;
comparisons are constant-time. Several ``v1=`` entries may be present (the sender
signing with an old and a new secret while they rotate); one match suffices.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Final

SIGNATURE_HEADER: Final = "Acquirer-Signature"
SCHEME: Final = "v1"
DEFAULT_TOLERANCE_SECONDS: Final = 300


class InvalidSettlementSignature(Exception):
    """The callback is not provably from the acquirer, or is too old; refuse it (400).
    The message says which check failed and is safe to log."""


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign_settlement(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``Acquirer-Signature`` header value for ``body`` at ``timestamp`` (now)."""
    if not secret:
        raise ValueError("a settlement signature needs a secret")
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},{SCHEME}={_mac(secret, t, body)}"


def _parse(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            raise InvalidSettlementSignature("malformed signature header")
        if name == "t":
            if timestamp is not None or not value.isdigit():
                raise InvalidSettlementSignature("malformed signature timestamp")
            timestamp = int(value)
        elif name == SCHEME:
            signatures.append(value)
    if timestamp is None:
        raise InvalidSettlementSignature("signature header has no timestamp")
    if not signatures:
        raise InvalidSettlementSignature(f"signature header has no {SCHEME} signature")
    return timestamp, signatures


def verify_settlement_signature(
    secret: str,
    header: str | None,
    body: bytes,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    *,
    now: float | None = None,
) -> int:
    """Check ``header`` (the ``Acquirer-Signature`` value) over the raw ``body``.

    Returns the signed timestamp; raises :class:`InvalidSettlementSignature` when the
    header is missing or malformed, the timestamp is more than ``tolerance`` seconds
    from ``now`` (either way), or no ``v1`` signature matches (module docstring).
    """
    if not secret:
        raise ValueError("verifying a settlement signature needs the shared secret")
    if not header:
        raise InvalidSettlementSignature(f"missing {SIGNATURE_HEADER} header")
    timestamp, signatures = _parse(header)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise InvalidSettlementSignature("signature timestamp outside the tolerance")
    expected = _mac(secret, timestamp, body).encode()
    if not any(hmac.compare_digest(expected, c.encode(errors="replace")) for c in signatures):
        raise InvalidSettlementSignature("signature does not match the body")
    return timestamp
