"""The simulated acquirer's card rules."""

from __future__ import annotations

from datetime import date

import pytest

from lastro.external.cards import (
    TEST_DECLINES,
    Card,
    InvalidCard,
    brand_of,
    checked_card,
    decline_code,
    luhn_valid,
    settlement_fee,
)

TODAY = date(2026, 6, 15)


@pytest.mark.parametrize(
    ("number", "valid"),
    [
        ("4242424242424242", True),
        ("4242424242424241", False),
        ("5555555555554444", True),
        ("378282246310005", True),
        ("0", True),
        ("42a2", False),
        ("", False),
    ],
)
def test_luhn(number: str, valid: bool) -> None:
    assert luhn_valid(number) is valid


@pytest.mark.parametrize(
    ("number", "brand"),
    [
        ("4242424242424242", "visa"),
        ("5555555555554444", "mastercard"),
        ("2223003122003222", "mastercard"),
        ("378282246310005", "amex"),
        ("6011111111111117", "discover"),
        ("3056930009020004", "unknown"),
    ],
)
def test_brand_from_the_leading_digits(number: str, brand: str) -> None:
    assert brand_of(number) == brand


def test_a_good_card_is_kept_without_spaces() -> None:
    card = checked_card("4242 4242 4242 4242", 6, 2026, "123", TODAY)
    assert card == Card("4242424242424242", 6, 2026, "visa")
    assert card.last4 == "4242"


@pytest.mark.parametrize(
    ("number", "month", "year", "cvc", "field"),
    [
        ("4242424242424241", 12, 2030, "123", "number"),
        ("42424242", 12, 2030, "123", "number"),
        ("4242424242424242", 13, 2030, "123", "exp_month"),
        ("4242424242424242", 5, 2026, "123", "exp_year"),
        ("4242424242424242", 12, 2060, "123", "exp_year"),
        ("4242424242424242", 12, 2030, "1234", "cvc"),
        ("378282246310005", 12, 2030, "123", "cvc"),
    ],
)
def test_bad_details_are_refused_naming_the_field(
    number: str, month: int, year: int, cvc: str, field: str
) -> None:
    with pytest.raises(InvalidCard) as refused:
        checked_card(number, month, year, cvc, TODAY)
    assert refused.value.field == field


@pytest.mark.parametrize(("number", "code"), sorted(TEST_DECLINES.items()))
def test_test_cards_decline_with_their_code(number: str, code: str) -> None:
    assert decline_code(Card(number, 12, 2030, "visa"), TODAY) == code


def test_other_cards_approve_until_they_expire() -> None:
    card = Card("4242424242424242", 6, 2026, "visa")
    assert decline_code(card, TODAY) is None
    assert decline_code(card, date(2026, 7, 1)) == "expired_card"


@pytest.mark.parametrize(("amount", "fee"), [(1000, 12), (999, 11), (83, 0), (100_000, 1200)])
def test_the_fee_is_1_2_percent_rounded_down(amount: int, fee: int) -> None:
    assert settlement_fee(amount) == fee
