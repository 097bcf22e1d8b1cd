"""Exponential backoff with full jitter (the AWS Architecture Blog's "full jitter"):
the delay before retry ``n`` is uniform in ``[0, min(cap, base * 2**n))``, so retries
from many clients spread out instead of arriving together. Database retries, the
outbox relay, the event consumers and every external call use this one function."""

from __future__ import annotations

import random


def full_jitter(
    attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based)."""
    if attempt < 0 or base < 0 or cap < 0:
        raise ValueError("attempt, base and cap must be >= 0")
    ceiling = min(cap, base * 2 ** min(attempt, 62))
    return (rng or random).uniform(0, ceiling)
