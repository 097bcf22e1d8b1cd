"""Public identifiers, Stripe-style: a type prefix and a time-sortable random part.

``new_id("acc")`` → ``acc_01JD5Q8Z6M4V3W2X1Y0ZABCDEF``: 48 bits of milliseconds and
80 random bits in Crockford base32 (the ULID layout), so ids sort by creation
time and never collide in practice.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _base32(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        out.append(_ALPHABET[rem])
    return "".join(reversed(out))


def encode(millis: int, randomness: int) -> str:
    """The 26-character body: 48 bits of Unix milliseconds, then 80 random bits."""
    if not 0 <= millis < 1 << 48:
        raise ValueError(f"timestamp {millis} ms is outside the 48-bit range")
    return _base32(millis, 10) + _base32(randomness & ((1 << 80) - 1), 16)


def new_id(
    prefix: str,
    *,
    now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> str:
    """A new ``<prefix>_<26 chars>`` identifier; sortable by creation time."""
    return f"{prefix}_{encode(now_ms(), int.from_bytes(random_bytes(10), 'big'))}"


def has_prefix(value: str, prefix: str) -> bool:
    """True if value looks like an id of this type (prefix and 26 base32 characters)."""
    head, sep, body = value.partition("_")
    return sep == "_" and head == prefix and len(body) == 26 and all(c in _ALPHABET for c in body)
