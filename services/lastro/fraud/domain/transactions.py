"""The transaction as fraud sees it: the screening request and the transaction event.

One shape for both (docs/interfaces.md): the screening request carries what the
transaction service knows before money moves; transaction events carry the same
fields plus a status. Parsing is strict (amounts are integer minor units, never
floats; times are aware) and raises :class:`InvalidTransaction` with the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final


class InvalidTransaction(ValueError):
    """A screening request or transaction event that does not have the contract's shape."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


class TransactionType(StrEnum):
    TRANSFER = "transfer"
    FX_TRANSFER = "fx_transfer"
    CARD_PAYMENT = "card_payment"
    PAYOUT = "payout"
    DEPOSIT = "deposit"


INCOMING_TYPES: Final = frozenset({TransactionType.DEPOSIT})
"""Types where ``customer_id`` receives the money (from ``counterparty``); so does any
transaction without a source account (a card payment into a merchant's account)."""


class Status(StrEnum):
    """Transaction lifecycle states that change what the profiles know."""

    RECEIVED = "received"
    SCREENED = "screened"
    APPROVED = "approved"
    POSTED = "posted"
    SETTLED = "settled"
    DECLINED = "declined"
    FAILED = "failed"
    REVERSED = "reversed"
    REFUNDED = "refunded"


@dataclass(frozen=True, slots=True)
class Location:
    """Where the transaction was made (degrees, WGS 84)."""

    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class Transaction:
    """A transaction as screened and as seen in events; ``amount`` in minor units.

    ``counterparty`` is the stable id of the other side (an account id, a card
    fingerprint, an IBAN hash); ``counterparty_customer_id`` is set when the other
    side is a customer of the platform (internal transfers), so the receiver's
    profile learns about its incoming money.

    Direction: money leaves ``customer_id`` through ``source_account_id``. Without a
    source account it comes from outside into ``destination_account_id``: a deposit,
    or a card payment accepted by a merchant (``customer_id`` the merchant,
    ``counterparty`` the paying card's fingerprint), as the transaction service
    sends them.
    """

    transaction_id: str
    type: TransactionType
    amount: int
    currency: str
    customer_id: str
    source_account_id: str | None
    occurred_at: datetime
    destination_account_id: str | None = None
    counterparty: str | None = None
    counterparty_customer_id: str | None = None
    device_id: str | None = None
    ip: str | None = None
    country: str | None = None
    location: Location | None = None

    @property
    def is_incoming(self) -> bool:
        """True when ``customer_id`` receives the money (a deposit, a card payment
        into a merchant's account): the type says so, or there is no source account."""
        return self.type in INCOMING_TYPES or self.source_account_id is None

    @property
    def own_account(self) -> str | None:
        """The customer's account the money moves through: the source when paying,
        the destination when receiving."""
        return self.destination_account_id if self.is_incoming else self.source_account_id

    @property
    def other_party(self) -> str | None:
        """The stable id of the other side: ``counterparty``, else the destination account."""
        return self.counterparty or self.destination_account_id

    @property
    def epoch_seconds(self) -> int:
        return int(self.occurred_at.timestamp())


@dataclass(frozen=True, slots=True)
class TransactionEvent:
    """A fact from the ``lastro.transactions`` topic: a transaction reached ``status``."""

    status: Status
    transaction: Transaction


_MAX_ID: Final = 200


def _text(data: Mapping[str, object], name: str, *, required: bool = True) -> str | None:
    value = data.get(name)
    if value is None:
        if required:
            raise InvalidTransaction(name, "is required")
        return None
    if not isinstance(value, str) or not value or len(value) > _MAX_ID:
        raise InvalidTransaction(name, f"must be a non-empty string of at most {_MAX_ID} chars")
    return value


def _required(data: Mapping[str, object], name: str) -> str:
    value = _text(data, name)
    assert value is not None
    return value


def _amount(data: Mapping[str, object]) -> int:
    value = data.get("amount")
    if type(value) is not int or value <= 0 or value > 2**63 - 1:
        raise InvalidTransaction("amount", "must be a positive integer of minor units")
    return value


def _time(data: Mapping[str, object]) -> datetime:
    value = data.get("occurred_at")
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidTransaction("occurred_at", "must be an RFC 3339 timestamp") from None
    else:
        raise InvalidTransaction("occurred_at", "must be an RFC 3339 timestamp")
    if parsed.tzinfo is None:
        raise InvalidTransaction("occurred_at", "must carry a time zone offset")
    return parsed.astimezone(UTC)


def _location(data: Mapping[str, object]) -> Location | None:
    value = data.get("location")
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidTransaction("location", "must be an object with lat and lon")
    lat, lon = value.get("lat"), value.get("lon")
    for name, coordinate, bound in (("lat", lat, 90.0), ("lon", lon, 180.0)):
        if isinstance(coordinate, bool) or not isinstance(coordinate, int | float):
            raise InvalidTransaction(f"location.{name}", "must be a number")
        if not math.isfinite(coordinate) or abs(coordinate) > bound:
            raise InvalidTransaction(f"location.{name}", f"must be within ±{bound}")
    assert isinstance(lat, int | float) and isinstance(lon, int | float)
    return Location(float(lat), float(lon))


def _country(data: Mapping[str, object]) -> str | None:
    value = _text(data, "country", required=False)
    if value is not None and (len(value) != 2 or not value.isascii() or not value.isupper()):
        raise InvalidTransaction("country", "must be an ISO 3166-1 alpha-2 code")
    return value


def parse_transaction(data: Mapping[str, object]) -> Transaction:
    """The :class:`Transaction` in a screening request or event ``data``; strict."""
    kind = data.get("type")
    try:
        txn_type = TransactionType(kind) if isinstance(kind, str) else None
    except ValueError:
        txn_type = None
    if txn_type is None:
        allowed = "|".join(t.value for t in TransactionType)
        raise InvalidTransaction("type", f"must be one of {allowed}")
    currency = _required(data, "currency")
    if len(currency) != 3 or not currency.isascii() or not currency.isupper():
        raise InvalidTransaction("currency", "must be an ISO 4217 code")
    return Transaction(
        transaction_id=_required(data, "transaction_id"),
        type=txn_type,
        amount=_amount(data),
        currency=currency,
        customer_id=_required(data, "customer_id"),
        source_account_id=_text(data, "source_account_id", required=False),
        occurred_at=_time(data),
        destination_account_id=_text(data, "destination_account_id", required=False),
        counterparty=_text(data, "counterparty", required=False),
        counterparty_customer_id=_text(data, "counterparty_customer_id", required=False),
        device_id=_text(data, "device_id", required=False),
        ip=_text(data, "ip", required=False),
        country=_country(data),
        location=_location(data),
    )


def parse_event(event_type: str, data: Mapping[str, object]) -> TransactionEvent:
    """A ``lastro.transaction.<status>`` CloudEvent's type and data as a TransactionEvent."""
    prefix = "lastro.transaction."
    try:
        status = Status(event_type.removeprefix(prefix)) if event_type.startswith(prefix) else None
    except ValueError:
        status = None
    if status is None:
        raise InvalidTransaction("type", f"{event_type!r} is not a transaction event")
    return TransactionEvent(status, parse_transaction(data))
