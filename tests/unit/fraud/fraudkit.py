"""Builders for the fraud unit tests: transactions at chosen times, posted events."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from lastro.fraud.domain.transactions import (
    Location,
    Status,
    Transaction,
    TransactionEvent,
    TransactionType,
)

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
LISBON = Location(38.72, -9.14)
MADRID = Location(40.42, -3.70)
NEW_YORK = Location(40.71, -74.01)

_ids = itertools.count(1)


def make_txn(offset: float = 0.0, **fields: Any) -> Transaction:
    """A transfer by cus_a of 50.00 EUR, ``offset`` seconds after T0; fields override."""
    values: dict[str, Any] = {
        "transaction_id": f"txn_{next(_ids):06d}",
        "type": TransactionType.TRANSFER,
        "amount": 5_000,
        "currency": "EUR",
        "customer_id": "cus_a",
        "source_account_id": "acc_a",
        "occurred_at": T0 + timedelta(seconds=offset),
        "counterparty": "iban_usual",
        "device_id": "dev_phone",
        "ip": "10.0.0.1",
        "country": "PT",
        "location": LISBON,
    }
    values.update(fields)
    return Transaction(**values)


def posted(txn: Transaction) -> TransactionEvent:
    return TransactionEvent(Status.POSTED, txn)
