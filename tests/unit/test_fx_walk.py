"""The FX provider's rates: a seeded, mean-reverting random walk per currency."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lastro.external.fx import (
    MID_RATES,
    TICK_SECONDS,
    RateBook,
    RateWalk,
    rate_text,
    significant,
)


def _prices(walk: RateWalk) -> dict[str, Decimal]:
    return {code: walk.price(code) for code in walk.currencies}


def test_the_same_seed_walks_the_same_path() -> None:
    one, two = RateWalk(42), RateWalk(42)
    for _ in range(50):
        one.step()
        two.step()
        assert _prices(one) == _prices(two)


def test_another_seed_walks_another_path() -> None:
    one, two = RateWalk(1), RateWalk(2)
    one.advance(5)
    two.advance(5)
    assert _prices(one) != _prices(two)


def test_every_step_moves_every_currency_but_the_euro() -> None:
    walk = RateWalk(7)
    before = _prices(walk)
    walk.step()
    after = _prices(walk)
    assert after["EUR"] == before["EUR"] == 1
    assert all(after[c] != before[c] for c in walk.currencies if c != "EUR")


@settings(deadline=None, max_examples=30)  # 2,000 steps an example: no timing goal here
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_prices_stay_near_their_mid_rates(seed: int) -> None:
    walk = RateWalk(seed)
    for _ in range(2_000):
        walk.step()
        for code, mid in MID_RATES.items():
            assert abs(walk.price(code) / mid - 1) < Decimal("0.02"), code


def test_a_pair_is_the_ratio_of_its_prices_to_six_significant_digits() -> None:
    walk = RateWalk(3)
    walk.advance(10)
    eur_usd = walk.rate("EUR", "USD")
    assert eur_usd == significant(walk.price("USD"))
    assert len(eur_usd.as_tuple().digits) == 6
    assert walk.rate("JPY", "JPY") == 1


def test_rates_are_consistent_across_pairs() -> None:
    walk = RateWalk(11)
    walk.advance(100)
    direct = walk.rate("GBP", "BRL")
    crossed = walk.rate("GBP", "USD") * walk.rate("USD", "BRL")
    assert abs(crossed / direct - 1) < Decimal("0.00002")


def test_a_walk_needs_euro_as_its_anchor() -> None:
    with pytest.raises(ValueError, match="EUR must be 1"):
        RateWalk(1, {"USD": Decimal("1.1")})


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("1.165"), "1.16500"),
        (Decimal("0.0058004321"), "0.00580043"),
        (Decimal("172.4049"), "172.405"),
        (Decimal("1234567"), "1234570"),
    ],
)
def test_rates_are_written_as_plain_decimals(value: Decimal, text: str) -> None:
    assert rate_text(significant(value)) == text


def test_the_book_moves_the_walk_once_per_tick_and_stamps_the_tick() -> None:
    now = [1_000.2]
    book = RateBook(RateWalk(5), clock=lambda: now[0])
    walk, as_of = book.now()
    first = walk.rate("EUR", "USD")
    assert (walk.steps, as_of) == (0, "1970-01-01T00:16:40Z")
    now[0] += TICK_SECONDS * 0.5
    walk, _ = book.now()
    assert (walk.steps, walk.rate("EUR", "USD")) == (0, first)
    now[0] += TICK_SECONDS * 3
    walk, as_of = book.now()
    assert (walk.steps, as_of) == (3, "1970-01-01T00:16:43Z")
    reference = RateWalk(5)
    reference.advance(3)
    assert walk.rate("EUR", "USD") == reference.rate("EUR", "USD") != first
