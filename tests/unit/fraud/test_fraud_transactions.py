"""The screening request / transaction event shape is parsed strictly."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from lastro.fraud.domain.transactions import (
    InvalidTransaction,
    Location,
    Status,
    TransactionType,
    parse_event,
    parse_transaction,
)

REQUEST: dict[str, Any] = {
    "transaction_id": "txn_1",
    "type": "transfer",
    "amount": 125000,
    "currency": "EUR",
    "customer_id": "cus_1",
    "source_account_id": "acc_1",
    "destination_account_id": "acc_2",
    "counterparty": "acc_2",
    "device_id": "dev_1",
    "ip": "203.0.113.7",
    "country": "PT",
    "location": {"lat": 38.72, "lon": -9.14},
    "occurred_at": "2026-11-30T10:00:00Z",
}


def test_a_contract_request_parses_into_a_transaction() -> None:
    txn = parse_transaction(REQUEST)
    assert txn.type is TransactionType.TRANSFER
    assert txn.amount == 125000
    assert txn.occurred_at == datetime(2026, 11, 30, 10, tzinfo=UTC)
    assert txn.location == Location(38.72, -9.14)
    assert txn.other_party == "acc_2"
    assert not txn.is_incoming


def test_optional_fields_may_be_absent() -> None:
    required = ("transaction_id", "type", "amount", "currency", "customer_id")
    minimal = {k: REQUEST[k] for k in (*required, "source_account_id", "occurred_at")}
    txn = parse_transaction(minimal)
    assert txn.location is None and txn.device_id is None and txn.other_party is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount", 12.5),
        ("amount", "125000"),
        ("amount", True),
        ("amount", 0),
        ("amount", -5),
        ("type", "wire"),
        ("currency", "eur"),
        ("country", "Portugal"),
        ("occurred_at", "2026-11-30T10:00:00"),
        ("occurred_at", "yesterday"),
        ("location", {"lat": 91, "lon": 0}),
        ("location", {"lat": float("nan"), "lon": 0}),
        ("location", {"lat": True, "lon": 0}),
        ("customer_id", ""),
        ("device_id", "x" * 201),
    ],
)
def test_malformed_fields_are_rejected_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidTransaction) as caught:
        parse_transaction({**REQUEST, field: value})
    assert caught.value.field.split(".")[0] == field


def test_a_card_payment_into_a_merchant_account_is_incoming_money() -> None:
    """The transaction service's card payments: the merchant is the customer, the
    paying card the counterparty, and there is no source account."""
    merchant = {k: v for k, v in REQUEST.items() if k != "source_account_id"}
    txn = parse_transaction({**merchant, "type": "card_payment", "counterparty": "fp_card"})
    assert txn.source_account_id is None
    assert txn.is_incoming
    assert txn.own_account == "acc_2"
    assert txn.other_party == "fp_card"


def test_a_payment_from_a_source_account_is_outgoing_whatever_its_type() -> None:
    txn = parse_transaction({**REQUEST, "type": "card_payment"})
    assert not txn.is_incoming
    assert txn.own_account == "acc_1"


def test_a_deposit_is_incoming_money() -> None:
    assert parse_transaction({**REQUEST, "type": "deposit"}).is_incoming


def test_events_carry_their_status_in_the_type() -> None:
    event = parse_event("lastro.transaction.posted", REQUEST)
    assert event.status is Status.POSTED
    with pytest.raises(InvalidTransaction):
        parse_event("lastro.account.frozen", REQUEST)
    with pytest.raises(InvalidTransaction):
        parse_event("lastro.transaction.teleported", REQUEST)
