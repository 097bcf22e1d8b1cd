"""The simulated acquirer's card rules, without I/O: card checks, brands, the test
cards that decide outcomes, and the settlement fee.

Test cards follow Stripe's: ``4242424242424242`` (and any other valid number)
approves; the numbers in :data:`TEST_DECLINES` decline with their code. A card past
its expiry month declines ``expired_card`` whatever its number.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Final

from lastro.core.errors import DomainError

TEST_DECLINES: Final[Mapping[str, str]] = {
    "4000000000000002": "card_declined",
    "4000000000009995": "insufficient_funds",
    "4000000000000069": "expired_card",
    "4000000000000119": "processing_error",
    "4000000000000127": "incorrect_cvc",
    "4000000000009987": "lost_card",
    "4000000000009979": "stolen_card",
    "4100000000000019": "fraudulent",
}
FEE_BASIS_POINTS: Final = 120
"""The acquirer's fee on captured amounts (1.2 %, rounded down to the minor unit)."""
MAX_YEARS_AHEAD: Final = 20


class InvalidCard(DomainError):
    """The card details cannot be tokenised (number, expiry or CVC)."""

    slug = "invalid-card"
    title = "Invalid card details"
    status = 422


@dataclass(frozen=True)
class Card:
    """A card as the acquirer holds it (the number never leaves the acquirer)."""

    number: str
    exp_month: int
    exp_year: int
    brand: str

    @property
    def last4(self) -> str:
        return self.number[-4:]


def luhn_valid(number: str) -> bool:
    """Whether ``number`` (digits only) passes the Luhn check."""
    if not number.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(number)):
        digit = int(char)
        if position % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def brand_of(number: str) -> str:
    """The card network from the number's leading digits."""
    if number.startswith("4"):
        return "visa"
    if number[:2] in ("34", "37"):
        return "amex"
    if 51 <= int(number[:2]) <= 55 or 2221 <= int(number[:4]) <= 2720:
        return "mastercard"
    if number.startswith(("6011", "65")):
        return "discover"
    return "unknown"


def expired(exp_month: int, exp_year: int, today: date) -> bool:
    """A card is good through the last day of its expiry month."""
    return (exp_year, exp_month) < (today.year, today.month)


def checked_card(number: str, exp_month: int, exp_year: int, cvc: str, today: date) -> Card:
    """The card, if the details could be real; raises InvalidCard naming the field."""
    digits = number.replace(" ", "")
    if not (12 <= len(digits) <= 19 and luhn_valid(digits)):
        raise InvalidCard("The card number is not valid.", field="number")
    if not 1 <= exp_month <= 12:
        raise InvalidCard("The expiry month must be 1-12.", field="exp_month")
    if expired(exp_month, exp_year, today) or exp_year > today.year + MAX_YEARS_AHEAD:
        raise InvalidCard("The expiry date is in the past or too far ahead.", field="exp_year")
    brand = brand_of(digits)
    if not (cvc.isdigit() and len(cvc) == (4 if brand == "amex" else 3)):
        raise InvalidCard("The CVC has the wrong length for this card.", field="cvc")
    return Card(digits, exp_month, exp_year, brand)


def decline_code(card: Card, today: date) -> str | None:
    """Why the issuer declines an authorization on ``card``, or None if it approves."""
    if card.number in TEST_DECLINES:
        return TEST_DECLINES[card.number]
    if expired(card.exp_month, card.exp_year, today):
        return "expired_card"
    return None


def settlement_fee(amount: int) -> int:
    """The acquirer's fee on a captured ``amount`` (minor units, rounded down)."""
    return amount * FEE_BASIS_POINTS // 10_000
