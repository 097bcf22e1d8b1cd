"""Which transaction events the analyser's consumer takes (the rest skip its inbox)."""

from __future__ import annotations

import pytest

from lastro.fraud.analysis import LEARNS_FROM, learns_from
from lastro.fraud.domain.transactions import parse_event

REQUEST = {
    "transaction_id": "txn_1",
    "type": "transfer",
    "amount": 1_000,
    "currency": "EUR",
    "customer_id": "cus_1",
    "source_account_id": "acc_1",
    "destination_account_id": "acc_2",
    "occurred_at": "2026-11-30T12:00:00+00:00",
}


def test_the_types_learned_from_are_those_whose_status_changes_a_profile() -> None:
    assert learns_from("lastro.transaction.posted")
    assert learns_from("lastro.transaction.declined")


@pytest.mark.parametrize(
    "event_type",
    [
        "lastro.transaction.received",
        "lastro.transaction.screened",
        "lastro.transaction.approved",
        "lastro.transaction.settled",
        "lastro.payout.sent",
        "lastro.fraud.alert_raised",
    ],
)
def test_other_types_are_skipped(event_type: str) -> None:
    assert not learns_from(event_type)


def test_a_wanted_type_parses_to_a_status_the_analyser_learns_from() -> None:
    for event_type in ("lastro.transaction.posted", "lastro.transaction.declined"):
        assert parse_event(event_type, REQUEST).status in LEARNS_FROM
