"""Full-jitter backoff: uniform below an exponentially growing, capped ceiling."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lastro.core.backoff import equal_jitter, full_jitter


@given(st.integers(0, 200), st.floats(0, 10), st.floats(0, 60), st.integers())
def test_delay_stays_below_the_capped_exponential_ceiling(
    attempt: int, base: float, cap: float, seed: int
) -> None:
    delay = full_jitter(attempt, base=base, cap=cap, rng=random.Random(seed))
    assert 0 <= delay <= min(cap, base * 2 ** min(attempt, 62))


def test_delays_spread_over_the_whole_window() -> None:
    rng = random.Random(7)
    delays = [full_jitter(3, base=0.1, cap=10, rng=rng) for _ in range(2000)]
    assert max(delays) > 0.75 and min(delays) < 0.05  # ceiling 0.8: not clustered at one end


def test_negative_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        full_jitter(-1, base=0.1, cap=1)


@given(st.floats(0, 60), st.integers())
def test_equal_jitter_keeps_between_half_and_all_of_the_delay(delay: float, seed: int) -> None:
    assert delay / 2 <= equal_jitter(delay, rng=random.Random(seed)) <= delay


def test_equal_jitter_refuses_a_negative_delay() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        equal_jitter(-0.1)
