"""Exponential backoff with full jitter (the AWS Architecture Blog's "full jitter"):
the delay before retry ``n`` is uniform in ``[0, min(cap, base * 2**n))``, so retries
from many clients spread out instead of arriving together. Database retries, the
outbox relay, the event consumers and every external call use this one function.
A caller whose schedule is set elsewhere (the transaction worker's screening
deadline) spreads its waits with :func:`equal_jitter`."""

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


def equal_jitter(delay: float, *, rng: random.Random | None = None) -> float:
    """Between half and all of ``delay`` (the same blog's "equal jitter"): waits that
    would end together spread out, and none is shorter than half its schedule."""
    if delay < 0:
        raise ValueError("delay must be >= 0")
    return (rng or random).uniform(delay / 2, delay)
