from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lastro.core.money import (
    CURRENCIES,
    MAX_MINOR_UNITS,
    Currency,
    CurrencyMismatch,
    InvalidAmount,
    Money,
    UnknownCurrency,
)

currency_codes = st.sampled_from(sorted(CURRENCIES))
amounts = st.integers(min_value=-(10**15), max_value=10**15)


@st.composite
def money(draw: st.DrawFn, currency: str | None = None) -> Money:
    return Money(draw(amounts), currency or draw(currency_codes))


def test_currency_table_knows_minor_unit_exponents() -> None:
    assert Currency.of("JPY").exponent == 0
    assert Currency.of("BHD").exponent == 3
    assert Currency.of("KWD").exponent == 3
    for code in ("EUR", "USD", "GBP", "BRL"):
        assert Currency.of(code).exponent == 2


@pytest.mark.parametrize("code", ["XYZ", "usd", "", "US", "USDD"])
def test_unknown_currency_is_rejected(code: str) -> None:
    with pytest.raises(UnknownCurrency):
        Currency.of(code)
    with pytest.raises(UnknownCurrency):
        Money(1, code)


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("12.34", "USD", 1234),
        ("12.3", "EUR", 1230),
        ("12", "BRL", 1200),
        ("-0.05", "GBP", -5),
        ("1234", "JPY", 1234),
        ("1.234", "BHD", 1234),
        ("0.001", "KWD", 1),
        ("007.50", "USD", 750),
    ],
)
def test_decimal_strings_parse_to_exact_minor_units(text: str, currency: str, minor: int) -> None:
    assert Money.parse(text, currency) == Money(minor, currency)


def test_ints_parse_as_whole_major_units() -> None:
    assert Money.parse(12, "USD") == Money(1200, "USD")
    assert Money.parse(12, "JPY") == Money(12, "JPY")
    assert Money.parse(-3, "KWD") == Money(-3000, "KWD")


@pytest.mark.parametrize(
    "bad",
    [
        12.34,
        0.1,
        True,
        False,
        Decimal("1.00"),
        None,
        "12.345",
        "1e3",
        "NaN",
        "inf",
        "",
        "-",
        ".5",
        "5.",
        "+5",
        " 5",
        "5 ",
        "1,00",
        "١٢",  # Arabic-Indic digits
        "twelve",
    ],
)
def test_parse_rejects_anything_but_exact_amounts(bad: object) -> None:
    with pytest.raises(InvalidAmount):
        Money.parse(bad, "USD")


def test_zero_decimal_currency_rejects_decimals() -> None:
    with pytest.raises(InvalidAmount):
        Money.parse("1.0", "JPY")


def test_constructor_rejects_float_bool_and_overflow() -> None:
    with pytest.raises(InvalidAmount):
        Money(1.0, "USD")  # type: ignore[arg-type]
    with pytest.raises(InvalidAmount):
        Money(True, "USD")
    with pytest.raises(InvalidAmount):
        Money(MAX_MINOR_UNITS + 1, "USD")
    with pytest.raises(InvalidAmount):
        Money.parse("1" * 25, "USD")


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (1234, "USD", "12.34"),
        (-5, "USD", "-0.05"),
        (0, "EUR", "0.00"),
        (1234, "JPY", "1234"),
        (1, "BHD", "0.001"),
        (-1000, "KWD", "-1.000"),
    ],
)
def test_decimal_string_has_exactly_the_currency_decimals(
    minor: int, currency: str, text: str
) -> None:
    assert Money(minor, currency).to_decimal_string() == text


@given(money())
def test_parse_and_format_round_trip(m: Money) -> None:
    assert Money.parse(m.to_decimal_string(), m.currency) == m


@given(st.data())
def test_addition_is_commutative_and_associative(data: st.DataObject) -> None:
    code = data.draw(currency_codes)
    a, b, c = (data.draw(money(code)) for _ in range(3))
    assert a + b == b + a
    assert (a + b) + c == a + (b + c)
    assert (a + b) - b == a
    assert (-a).amount == -a.amount
    assert -a + a == Money.zero(code)


def test_different_currencies_never_combine_or_compare() -> None:
    usd, eur = Money(100, "USD"), Money(100, "EUR")
    with pytest.raises(CurrencyMismatch):
        _ = usd + eur
    with pytest.raises(CurrencyMismatch):
        _ = usd - eur
    with pytest.raises(CurrencyMismatch):
        _ = usd < eur
    with pytest.raises(CurrencyMismatch):
        _ = usd >= eur
    assert usd != eur


def test_same_currency_compares_by_amount() -> None:
    assert Money(1, "USD") < Money(2, "USD") <= Money(2, "USD")
    assert Money(3, "USD") > Money(-3, "USD") >= Money(-3, "USD")


def test_allocate_gives_leftover_cents_to_largest_remainders() -> None:
    assert Money(100, "USD").allocate([1, 1, 1]) == [
        Money(34, "USD"),
        Money(33, "USD"),
        Money(33, "USD"),
    ]
    assert Money(10, "USD").allocate([1, 2]) == [Money(3, "USD"), Money(7, "USD")]
    assert Money(5, "USD").allocate([1, 1]) == [Money(3, "USD"), Money(2, "USD")]
    assert Money(-100, "USD").allocate([1, 1, 1]) == [
        Money(-34, "USD"),
        Money(-33, "USD"),
        Money(-33, "USD"),
    ]


@pytest.mark.parametrize("ratios", [[], [0, 0], [-1, 2], [1.5, 1]])
def test_allocate_rejects_meaningless_ratios(ratios: list[int]) -> None:
    with pytest.raises(InvalidAmount):
        Money(100, "USD").allocate(ratios)


@given(money(), st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=20))
def test_allocate_never_creates_or_loses_a_minor_unit(m: Money, ratios: list[int]) -> None:
    if sum(ratios) == 0:
        ratios[0] = 1
    parts = m.allocate(ratios)
    assert len(parts) == len(ratios)
    assert sum(p.amount for p in parts) == m.amount
    total = sum(ratios)
    for part, ratio in zip(parts, ratios, strict=True):
        assert part.currency == m.currency
        # each part is within one minor unit of its exact share
        assert abs(part.amount * total - m.amount * ratio) < total
