"""Consumed events: what each type means here, and malformed data refused whole."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from lastro.core.events import CloudEvent
from lastro.notifications.domain.kinds import Kind, Occurrence
from lastro.notifications.events import KINDS, MalformedEvent, OwnerLearned, handles, parse

TRANSFER: dict[str, Any] = {
    "transaction_id": "txn_1",
    "type": "transfer",
    "status": "posted",
    "amount": 125000,
    "currency": "EUR",
    "customer_id": "cus_1",
    "source_account_id": "acc_1",
    "destination_account_id": "acc_2",
    "counterparty_customer_id": "cus_2",
    "device_id": "dev_1",
    "ip": "203.0.113.7",
    "country": "PT",
    "location": {"lat": 38.72, "lon": -9.14},
    "occurred_at": "2026-11-30T10:00:00Z",
    "screening": {"decision": "approve", "ruleset_version": 7, "fallback": False},
}


def event(type_: str, data: dict[str, Any]) -> CloudEvent:
    return CloudEvent(type=type_, source="/tests", data=data, time="2026-11-30T09:00:00+00:00")


def test_a_posted_transaction_is_told_as_succeeded_without_place_or_device() -> None:
    parsed = parse(event("lastro.transaction.posted", TRANSFER))
    assert isinstance(parsed, Occurrence)
    assert parsed.kind is Kind.TRANSACTION_SUCCEEDED
    assert parsed.customer_ids == ("cus_1",) and parsed.user_id is None
    assert parsed.occurred_at == datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    assert parsed.facts["amount"] == 125000 and parsed.facts["currency"] == "EUR"
    assert not {"ip", "device_id", "location", "country", "screening"} & set(parsed.facts)


@pytest.mark.parametrize(
    ("type_", "kind"),
    [
        ("lastro.transaction.declined", Kind.TRANSACTION_DECLINED),
        ("lastro.transaction.failed", Kind.TRANSACTION_FAILED),
        ("lastro.transaction.refunded", Kind.TRANSACTION_REFUNDED),
        ("lastro.payout.sent", Kind.PAYOUT_SENT),
    ],
)
def test_every_transaction_kind(type_: str, kind: Kind) -> None:
    parsed = parse(event(type_, TRANSFER))
    assert isinstance(parsed, Occurrence) and parsed.kind is kind


@pytest.mark.parametrize(
    "change",
    [
        {"amount": 12.5},
        {"amount": True},
        {"amount": -1},
        {"currency": "XXX"},
        {"customer_id": ""},
        {"customer_id": 7},
        {"transaction_id": ""},
        {"reason": 42},
    ],
)
def test_malformed_transaction_data_is_refused_whole(change: dict[str, Any]) -> None:
    with pytest.raises(MalformedEvent):
        parse(event("lastro.transaction.declined", {**TRANSFER, **change}))


def test_a_missing_customer_is_malformed() -> None:
    data = {k: v for k, v in TRANSFER.items() if k != "customer_id"}
    with pytest.raises(MalformedEvent):
        parse(event("lastro.transaction.posted", data))
    with pytest.raises(MalformedEvent):
        parse(event("lastro.account.frozen", {"account_id": "acc_1"}))


def test_the_banks_own_money_concerns_no_customer() -> None:
    """A deposit (an acquirer settlement between system accounts) and a frozen system
    account carry ``customer_id: null`` (docs/interfaces.md): nobody to tell, not
    malformed."""
    deposit = {
        **TRANSFER,
        "type": "deposit",
        "status": "settled",
        "customer_id": None,
        "source_account_id": None,
        "counterparty_customer_id": None,
        "counterparty": "acquirer",
    }
    assert parse(event("lastro.transaction.posted", deposit)) is None
    system = {"account_id": "acc_sys", "customer_id": None, "kind": "system"}
    assert parse(event("lastro.account.frozen", system)) is None


def test_fraud_frozen_and_identity_events() -> None:
    alert = parse(
        event(
            "lastro.fraud.alert_raised",
            {
                "alert_id": "alr_1",
                "customer_id": "cus_1",
                "typology": "velocity",
                "rule_ids": ["r1"],
            },
        )
    )
    assert isinstance(alert, Occurrence) and alert.kind is Kind.FRAUD_ALERT_RAISED
    frozen = parse(event("lastro.account.frozen", {"account_id": "acc_1", "customer_id": "cus_1"}))
    assert isinstance(frozen, Occurrence) and frozen.customer_ids == ("cus_1",)
    login = parse(
        event(
            "lastro.identity.login_new_device",
            {
                "user_id": "usr_1",
                "device": {"id": "dev_9", "user_agent": "Firefox"},
                "ip": "203.0.113.7",
                "at": "2026-11-30T11:00:00Z",
            },
        )
    )
    assert isinstance(login, Occurrence)
    assert login.user_id == "usr_1" and login.customer_ids == ()
    assert login.facts == {
        "user_id": "usr_1",
        "device_id": "dev_9",
        "user_agent": "Firefox",
        "ip": "203.0.113.7",
    }
    assert login.occurred_at == datetime(2026, 11, 30, 11, 0, tzinfo=UTC)


def test_the_event_time_is_used_when_the_data_names_none() -> None:
    parsed = parse(event("lastro.identity.totp_enabled", {"user_id": "usr_1"}))
    assert isinstance(parsed, Occurrence)
    assert parsed.occurred_at == datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def test_customer_created_names_the_owner_and_other_types_are_ignored() -> None:
    created = parse(event("lastro.customer.created", {"customer_id": "cus_1", "owner": "usr_1"}))
    assert created == OwnerLearned("cus_1", "usr_1")
    assert parse(event("lastro.customer.created", {"customer_id": "cus_1"})) is None
    assert parse(event("lastro.transaction.screened", TRANSFER)) is None
    assert parse(event("lastro.account.opened", {"account_id": "acc_1"})) is None


def test_a_published_offer_is_a_marketing_occurrence_for_its_customer() -> None:
    data = {"customer_id": "cus_1", "offer_id": "off_1", "offer_title": "0% FX fees in May"}
    parsed = parse(event("lastro.marketing.offer_published", data))
    assert isinstance(parsed, Occurrence)
    assert parsed.kind is Kind.MARKETING_OFFER and parsed.customer_ids == ("cus_1",)
    assert parsed.facts == data
    with pytest.raises(MalformedEvent):
        parse(event("lastro.marketing.offer_published", {**data, "offer_title": ""}))


@pytest.mark.parametrize(
    "event_type",
    [
        "lastro.transaction.received",
        "lastro.transaction.screened",
        "lastro.transaction.approved",
        "lastro.notification.dead_lettered",
    ],
)
def test_types_parse_ignores_are_not_wanted_by_the_consumer(event_type: str) -> None:
    assert parse(CloudEvent(type=event_type, source="/tests", data={})) is None
    assert not handles(event_type)


def test_every_type_parse_understands_is_wanted() -> None:
    assert handles("lastro.customer.created")
    assert all(handles(event_type) for event_type in KINDS)
