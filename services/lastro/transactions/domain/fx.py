"""Currency conversion for cross-currency transfers: quotes, spread and rounding.

Rates are :class:`~decimal.Decimal` values parsed from the provider's decimal
strings (never floats). A quote fixes both sides in integer minor units: the
customer sells ``sell_amount`` and the destination receives ``buy_amount``,
converted at the provider's rate less the spread and rounded *down* to the buy
currency's minor unit, so the platform never pays out a fraction it did not
receive. Exponents differ per currency (EUR 2, JPY 0, KWD 3), so conversion
works in major units and scales each side by its own exponent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, ROUND_UP, Decimal, InvalidOperation, localcontext
from typing import Final

from lastro.core.money import Currency, MoneyError
from lastro.transactions.domain.errors import (
    InvalidTransaction,
    QuoteExpired,
    QuoteMismatch,
    UnknownQuote,
    UnsupportedCurrencyPair,
)

BPS: Final = Decimal(10_000)
RATE_PLACES: Final = Decimal("0.00000001")


def parse_rate(text: str) -> Decimal:
    """A positive decimal rate from its string form; ValueError otherwise."""
    try:
        rate = Decimal(text)
    except (InvalidOperation, TypeError):
        raise ValueError(f"rate {text!r} is not a decimal number") from None
    if not rate.is_finite() or rate <= 0:
        raise ValueError(f"rate {text!r} must be a positive number")
    return rate


def customer_rate(provider_rate: Decimal, spread_bps: int) -> Decimal:
    """The rate the customer gets: the provider's, less the spread (8 places, down)."""
    with localcontext() as ctx:
        ctx.prec = 40
        rate = provider_rate * (BPS - spread_bps) / BPS
        return rate.quantize(RATE_PLACES, rounding=ROUND_DOWN)


def _exponent(code: str) -> int:
    try:
        return Currency.of(code).exponent
    except MoneyError as error:
        raise InvalidTransaction(str(error), field="currency") from None


def convert(sell_amount: int, sell_currency: str, rate: Decimal, buy_currency: str) -> int:
    """``sell_amount`` minor units converted at ``rate``, rounded down to whole minor
    units of ``buy_currency``."""
    with localcontext() as ctx:
        ctx.prec = 60
        major = Decimal(sell_amount).scaleb(-_exponent(sell_currency)) * rate
        minor = major.scaleb(_exponent(buy_currency))
        return int(minor.to_integral_value(rounding=ROUND_DOWN))


def sell_for(buy_amount: int, buy_currency: str, rate: Decimal, sell_currency: str) -> int:
    """The smallest ``sell_amount`` whose conversion yields at least ``buy_amount``."""
    with localcontext() as ctx:
        ctx.prec = 60
        major = Decimal(buy_amount).scaleb(-_exponent(buy_currency)) / rate
        sell = int(major.scaleb(_exponent(sell_currency)).to_integral_value(rounding=ROUND_UP))
    while convert(sell, sell_currency, rate, buy_currency) < buy_amount:
        sell += 1
    return sell


@dataclass(frozen=True)
class Quote:
    """A firm offer to convert, valid until ``expires_at``, for one caller only."""

    id: str
    scope: str
    sell_currency: str
    buy_currency: str
    sell_amount: int
    buy_amount: int
    provider_rate: str
    rate: str
    spread_bps: int
    created_at: datetime
    expires_at: datetime
    rate_as_of: datetime
    used_by: str | None = None


def make_quote(
    *,
    quote_id: str,
    scope: str,
    sell_currency: str,
    buy_currency: str,
    sell_amount: int | None,
    buy_amount: int | None,
    provider_rate: Decimal,
    rate_as_of: datetime,
    spread_bps: int,
    now: datetime,
    ttl: timedelta,
) -> Quote:
    """Fix both amounts at the spread-adjusted rate. Exactly one of ``sell_amount``
    and ``buy_amount`` is given; both sides must come out at least one minor unit."""
    if sell_currency == buy_currency:
        raise UnsupportedCurrencyPair(
            "a quote converts between two different currencies", field="buy_currency"
        )
    if (sell_amount is None) == (buy_amount is None):
        raise InvalidTransaction("give exactly one of sell_amount and buy_amount")
    rate = customer_rate(provider_rate, spread_bps)
    if sell_amount is not None:
        buy = convert(sell_amount, sell_currency, rate, buy_currency)
        sell = sell_amount
    else:
        assert buy_amount is not None
        buy, sell = buy_amount, sell_for(buy_amount, buy_currency, rate, sell_currency)
    if buy < 1 or sell < 1:
        raise InvalidTransaction(
            "the amount is too small to convert into one minor unit", field="sell_amount"
        )
    return Quote(
        id=quote_id,
        scope=scope,
        sell_currency=sell_currency,
        buy_currency=buy_currency,
        sell_amount=sell,
        buy_amount=buy,
        provider_rate=str(provider_rate),
        rate=str(rate),
        spread_bps=spread_bps,
        created_at=now,
        expires_at=now + ttl,
        rate_as_of=rate_as_of,
    )


def check_quote_for_transfer(
    quote: Quote | None,
    *,
    scope: str,
    amount: int,
    currency: str,
    destination_currency: str,
    now: datetime,
) -> Quote:
    """The quote a transfer may use: the caller's own, unexpired, for exactly this
    pair and amount. A quote of somebody else is reported as unknown."""
    if quote is None or quote.scope != scope:
        raise UnknownQuote("no such quote for this caller", field="quote_id")
    if now >= quote.expires_at:
        raise QuoteExpired(
            f"quote {quote.id} expired at {quote.expires_at.isoformat()}", field="quote_id"
        )
    if (quote.sell_currency, quote.buy_currency) != (currency, destination_currency):
        raise QuoteMismatch(
            f"quote {quote.id} converts {quote.sell_currency} to {quote.buy_currency}",
            field="quote_id",
        )
    if quote.sell_amount != amount:
        raise QuoteMismatch(
            f"quote {quote.id} is for {quote.sell_amount} {quote.sell_currency}", field="amount"
        )
    return quote
