"""Builders for the fraud unit tests: transactions at chosen times, a detector stream."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from lastro.fraud.domain.detectors import Alert, observe
from lastro.fraud.domain.profiles import CounterpartyProfile, CustomerProfile
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


class Stream:
    """Feeds posted transactions through the detectors with per-party profiles, as the
    analyser does, and keeps every alert."""

    def __init__(self) -> None:
        self.customers: dict[str, CustomerProfile] = {}
        self.counterparties: dict[str, CounterpartyProfile] = {}
        self.alerts: list[Alert] = []

    def profile(self, customer_id: str) -> CustomerProfile:
        return self.customers.setdefault(customer_id, CustomerProfile(customer_id))

    def post(self, txn: Transaction, status: Status = Status.POSTED) -> list[Alert]:
        receiver = txn.counterparty_customer_id
        party = None if txn.is_incoming else txn.other_party
        alerts = observe(
            TransactionEvent(status, txn),
            self.profile(txn.customer_id),
            self.profile(receiver) if receiver else None,
            self.counterparties.setdefault(party, CounterpartyProfile(party)) if party else None,
        )
        self.alerts += alerts
        return alerts

    def typologies(self) -> list[str]:
        return [alert.typology.value for alert in self.alerts]
