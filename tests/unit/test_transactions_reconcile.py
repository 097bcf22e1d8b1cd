"""Reconciliation's comparison, without I/O: what the transactions say against the
ledger's postings and the acquirer's records."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from lastro.transactions.domain.model import (
    CaptureMethod,
    Kind,
    Refund,
    RefundStatus,
    Status,
    Transaction,
)
from lastro.transactions.domain.reconcile import (
    AcquirerRecord,
    LedgerPosting,
    Leg,
    reconcile,
)

NOW = datetime(2026, 11, 30, tzinfo=UTC)
TRANSFER = Transaction(
    "txn_t", Kind.TRANSFER, Status.POSTED, "c", "o", 500, "EUR", NOW, NOW,
    source_account_id="acc_a", destination_account_id="acc_b",
)  # fmt: skip
PAYMENT = Transaction(
    "txn_p", Kind.CARD_PAYMENT, Status.POSTED, "c", "o", 900, "EUR", NOW, NOW,
    destination_account_id="acc_m", capture_method=CaptureMethod.AUTOMATIC,
    captured_amount=900, refunded_amount=100,
)  # fmt: skip
REFUND = Refund("re_1", "txn_p", 100, "EUR", RefundStatus.SUCCEEDED, NOW)


def posting(pid: str, txn: str, debit: str, credit: str, amount: int, **meta: str) -> LedgerPosting:
    legs = (Leg(debit, "debit", amount, "EUR"), Leg(credit, "credit", amount, "EUR"))
    return LedgerPosting(pid, pid, {"transaction_id": txn, **meta}, None, legs)


POSTINGS = [
    posting("pst_1", "txn_t", "acc_a", "acc_b", 500),
    posting("pst_2", "txn_p", "acc_acq", "acc_m", 900),
    posting("pst_3", "txn_p", "acc_m", "acc_acq", 100, refund_id="re_1"),
]
RECORDS = [
    AcquirerRecord("auth_1", "authorization", "txn_p", 900, "approved", None),
    AcquirerRecord("cap_1", "capture", "txn_p", 900, None, "auth_1"),
    AcquirerRecord("rfd_1", "refund", "txn_p", 100, None, "auth_1"),
]
KNOWN = {"txn_t", "txn_p"}


def kinds(*args: object, **kwargs: object) -> list[tuple[str, str]]:
    return [(m.kind, m.subject) for m in reconcile(*args, **kwargs)]  # type: ignore[arg-type]


def test_three_sides_that_agree_have_no_mismatch() -> None:
    assert kinds([TRANSFER, PAYMENT], {"txn_p": [REFUND]}, POSTINGS, RECORDS, known_ids=KNOWN) == []


def test_money_moved_for_a_declined_transfer_is_found_unless_reversed() -> None:
    declined = replace(TRANSFER, status=Status.DECLINED)
    assert kinds([declined], {}, POSTINGS[:1], [], known_ids=KNOWN) == [
        ("unexpected-posting", "txn_t")
    ]
    mirror = LedgerPosting("pst_9", "pst_9", {}, "pst_1", tuple(reversed(POSTINGS[0].legs)))
    assert kinds([declined], {}, [POSTINGS[0], mirror], [], known_ids=KNOWN) == []


def test_a_posted_transfer_without_a_posting_or_with_another_amount_is_found() -> None:
    assert kinds([TRANSFER], {}, [], [], known_ids=KNOWN) == [("no-posting", "txn_t")]
    other = posting("pst_1", "txn_t", "acc_a", "acc_b", 499)
    assert kinds([TRANSFER], {}, [other], [], known_ids=KNOWN) == [("amount-differs", "txn_t")]


def test_the_acquirer_charging_twice_or_an_unreleased_authorisation_is_found() -> None:
    twice = [*RECORDS, AcquirerRecord("cap_2", "capture", "txn_p", 900, None, "auth_1")]
    found = kinds([PAYMENT], {"txn_p": [REFUND]}, POSTINGS[1:], twice, known_ids=KNOWN)
    assert found == [("acquirer-differs", "txn_p")]
    failed = replace(PAYMENT, status=Status.FAILED, captured_amount=0, refunded_amount=0)
    held = kinds([failed], {}, [], RECORDS[:1], known_ids=KNOWN)
    assert held == [("acquirer-differs", "txn_p")]
    void = AcquirerRecord("auth_1", "void", "txn_p", 0, None, "auth_1")
    assert kinds([failed], {}, [], [RECORDS[0], void], known_ids=KNOWN) == []


def test_postings_and_records_naming_unknown_transactions_are_found() -> None:
    stray = posting("pst_x", "txn_nobody", "acc_a", "acc_b", 1)
    lost = AcquirerRecord("auth_x", "authorization", "txn_ghost", 5, "approved", None)
    found = kinds([], {}, [stray], [lost], known_ids=KNOWN)
    assert found == [
        ("posting-without-transaction", "pst_x"),
        ("record-without-transaction", "auth_x"),
    ]
