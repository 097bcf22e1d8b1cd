"""Money as an integer number of minor units plus an ISO 4217 currency code.

Guarantees: no float ever enters or leaves this module (float input is rejected,
not rounded); arithmetic and comparison only combine amounts of the same
currency; amounts stay within PostgreSQL ``BIGINT`` so a valid ``Money`` always
fits the ledger columns; :meth:`Money.allocate` splits an amount without creating
or losing a single minor unit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final


class MoneyError(ValueError):
    """Base class of every money error; a ``ValueError`` so validation layers catch it."""


class UnknownCurrency(MoneyError):
    """The code is not an ISO 4217 currency this platform supports."""


class CurrencyMismatch(MoneyError):
    """Two amounts of different currencies were combined or compared."""


class InvalidAmount(MoneyError):
    """The amount is not an exact number of minor units within range."""


MAX_MINOR_UNITS: Final = 2**63 - 1
"""Largest magnitude of an amount: it must fit a PostgreSQL ``BIGINT``."""


@dataclass(frozen=True, slots=True)
class Currency:
    """An ISO 4217 currency: its alphabetic code and minor-unit exponent."""

    code: str
    exponent: int

    @classmethod
    def of(cls, code: str) -> Currency:
        """The currency for ``code`` (exact upper-case ISO 4217); raises UnknownCurrency."""
        try:
            return CURRENCIES[code]
        except (KeyError, TypeError):
            raise UnknownCurrency(f"unknown currency code {code!r}") from None


_EXPONENTS: Final[dict[str, int]] = {
    # zero-decimal currencies
    "CLP": 0, "ISK": 0, "JPY": 0, "KRW": 0, "PYG": 0, "UGX": 0, "VND": 0, "XAF": 0, "XOF": 0,
    # three-decimal currencies
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
    # two-decimal currencies
    "AED": 2, "ARS": 2, "AUD": 2, "BRL": 2, "CAD": 2, "CHF": 2, "CNY": 2, "COP": 2, "CZK": 2,
    "DKK": 2, "EUR": 2, "GBP": 2, "HKD": 2, "HUF": 2, "ILS": 2, "INR": 2, "MXN": 2, "NOK": 2,
    "NZD": 2, "PEN": 2, "PLN": 2, "SAR": 2, "SEK": 2, "SGD": 2, "TRY": 2, "USD": 2, "UYU": 2,
    "ZAR": 2,
}  # fmt: skip

CURRENCIES: Final[dict[str, Currency]] = {
    code: Currency(code, exponent) for code, exponent in _EXPONENTS.items()
}

_DECIMAL = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?")


@dataclass(frozen=True, slots=True)
class Money:
    """An exact amount: ``amount`` minor units (cents, yen, fils...) of ``currency``.

    Equality is exact (``Money(100, "USD") != Money(100, "EUR")``); ordering and
    arithmetic raise CurrencyMismatch across currencies.
    """

    amount: int
    currency: str

    def __post_init__(self) -> None:
        if type(self.amount) is not int:
            raise InvalidAmount(
                f"amount must be an int of minor units, got {type(self.amount).__name__}"
            )
        if abs(self.amount) > MAX_MINOR_UNITS:
            raise InvalidAmount(f"amount {self.amount} is out of range")
        Currency.of(self.currency)

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(0, currency)

    @classmethod
    def parse(cls, amount: object, currency: str) -> Money:
        """Parse a major-unit amount: an ``int`` (whole units) or a decimal string.

        ``Money.parse("12.34", "USD") == Money(1234, "USD")``; ``Money.parse(5, "JPY")
        == Money(5, "JPY")``. Rejects with InvalidAmount: floats and bools (never
        rounded), more decimals than the currency has, exponents, signs other than
        a leading ``-``, whitespace, and anything else that is not a plain number.
        """
        exponent = Currency.of(currency).exponent
        if type(amount) is int:
            return cls(amount * 10**exponent, currency)
        if not isinstance(amount, str):
            raise InvalidAmount(
                f"amount must be an int or a decimal string, got {type(amount).__name__}"
            )
        match = _DECIMAL.fullmatch(amount)
        if match is None:
            raise InvalidAmount(f"{amount!r} is not a decimal amount")
        sign, whole, fraction = match.groups()
        fraction = fraction or ""
        if len(fraction) > exponent:
            raise InvalidAmount(
                f"{amount!r} has {len(fraction)} decimals; {currency} allows {exponent}"
            )
        if len(whole) > 20:
            raise InvalidAmount(f"{amount!r} is out of range")
        minor = int(whole) * 10**exponent + int(fraction.ljust(exponent, "0") or "0")
        return cls(-minor if sign else minor, currency)

    def to_decimal_string(self) -> str:
        """The amount in major units with exactly the currency's decimals: ``"-0.05"``."""
        exponent = Currency.of(self.currency).exponent
        sign = "-" if self.amount < 0 else ""
        whole, fraction = divmod(abs(self.amount), 10**exponent)
        if exponent == 0:
            return f"{sign}{whole}"
        return f"{sign}{whole}.{fraction:0{exponent}d}"

    def _same_currency(self, other: Money) -> None:
        if self.currency != other.currency:
            raise CurrencyMismatch(f"cannot combine {self.currency} with {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.amount - other.amount, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same_currency(other)
        return self.amount < other.amount

    def __le__(self, other: Money) -> bool:
        self._same_currency(other)
        return self.amount <= other.amount

    def __gt__(self, other: Money) -> bool:
        self._same_currency(other)
        return self.amount > other.amount

    def __ge__(self, other: Money) -> bool:
        self._same_currency(other)
        return self.amount >= other.amount

    def allocate(self, ratios: Sequence[int]) -> list[Money]:
        """Split into parts proportional to ``ratios`` (non-negative ints, positive sum).

        Guarantee: the parts sum exactly to this amount. Each part is the floor of
        its exact share; the leftover minor units go one each to the parts with
        the largest remainders (earlier parts first on ties), so no part differs
        from its exact share by a whole minor unit or more.
        """
        if not ratios or any(type(r) is not int or r < 0 for r in ratios):
            raise InvalidAmount("ratios must be a non-empty list of non-negative ints")
        total = sum(ratios)
        if total == 0:
            raise InvalidAmount("ratios must not all be zero")
        magnitude = abs(self.amount)
        shares = [divmod(magnitude * r, total) for r in ratios]
        parts = [quotient for quotient, _ in shares]
        leftover = magnitude - sum(parts)
        by_remainder = sorted(range(len(ratios)), key=lambda i: -shares[i][1])
        for index in by_remainder[:leftover]:
            parts[index] += 1
        sign = -1 if self.amount < 0 else 1
        return [Money(sign * part, self.currency) for part in parts]

    def __str__(self) -> str:
        return f"{self.to_decimal_string()} {self.currency}"
