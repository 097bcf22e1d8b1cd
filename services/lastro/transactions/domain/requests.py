"""Rules a request must meet before anything is written (pure, no I/O).

The contract (``openapi.yaml``) already checks shapes and types; these are the
rules a schema cannot say: amounts in range for their currency, accounts that
differ and hold the right currency, an IBAN whose check digits are right, a
capture within what was authorised, a refund within what is left, and which
operations each state allows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from lastro.core.money import Money, MoneyError
from lastro.transactions.domain.errors import (
    AmountExceeded,
    CurrencyMismatch,
    InvalidState,
    InvalidTransaction,
    StepUpNotRequested,
)
from lastro.transactions.domain.model import (
    Kind,
    ReviewOutcome,
    Status,
    Transaction,
)

MAX_BATCH: Final = 1000
# ISO 13616: country code, two check digits, up to 30 alphanumerics.
_IBAN: Final = re.compile(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}")


def check_amount(amount: int, currency: str, field: str = "amount") -> Money:
    """A positive amount of a known currency that fits the ledger."""
    try:
        money = Money(amount, currency)
    except MoneyError as error:
        raise InvalidTransaction(str(error), field=field) from None
    if money.amount <= 0:
        raise InvalidTransaction("the amount must be positive", field=field)
    return money


def check_accounts(source: str, destination: str) -> None:
    if source == destination:
        raise InvalidTransaction(
            "source and destination must be different accounts", field="destination_account_id"
        )


def check_currency(account_currency: str, currency: str, field: str) -> None:
    if account_currency != currency:
        raise CurrencyMismatch(
            f"the account holds {account_currency}, the request moves {currency}", field=field
        )


def normalise_iban(text: str) -> str:
    """The IBAN in its electronic form (no spaces, upper case) if its check digits
    are right (ISO 7064 mod 97-10); InvalidTransaction otherwise."""
    iban = text.replace(" ", "").upper()
    if not _IBAN.fullmatch(iban):
        raise InvalidTransaction("not an IBAN", field="destination.iban")
    rearranged = iban[4:] + iban[:4]
    digits = "".join(str(int(c, 36)) for c in rearranged)
    if int(digits) % 97 != 1:
        raise InvalidTransaction("the IBAN's check digits are wrong", field="destination.iban")
    return iban


@dataclass(frozen=True)
class BatchItem:
    destination_account_id: str
    amount: int
    currency: str
    description: str
    reference: str | None


def check_batch(source: str, currency: str, items: Sequence[BatchItem]) -> int:
    """The batch total; every item moves the source's currency to another account."""
    if not 1 <= len(items) <= MAX_BATCH:
        raise InvalidTransaction(f"a batch holds 1 to {MAX_BATCH} transfers", field="transfers")
    total = 0
    references: set[str] = set()
    for index, item in enumerate(items):
        check_amount(item.amount, item.currency, f"transfers[{index}].amount")
        if item.currency != currency:
            raise CurrencyMismatch(
                f"the source holds {currency}, transfer {index} moves {item.currency}",
                field=f"transfers[{index}].currency",
            )
        if item.destination_account_id == source:
            raise InvalidTransaction(
                "a transfer cannot go back to the source account",
                field=f"transfers[{index}].destination_account_id",
            )
        if item.reference is not None:
            if item.reference in references:
                raise InvalidTransaction(
                    "references must be unique within a batch",
                    field=f"transfers[{index}].reference",
                )
            references.add(item.reference)
        total += item.amount
    check_amount(total, currency, "transfers")
    return total


# ---------------------------------------------------------------- follow-up operations


def _require(txn: Transaction, kind: Kind, *statuses: Status, operation: str) -> None:
    if txn.kind is not kind:
        raise InvalidState(f"{operation} applies to {kind.value} transactions only")
    if txn.status not in statuses:
        allowed = ", ".join(s.value for s in statuses)
        raise InvalidState(f"cannot {operation} a transaction that is {txn.status} ({allowed})")


def check_capture(txn: Transaction, amount: int | None) -> int:
    """The amount to capture: all of the authorisation by default, never more."""
    _require(txn, Kind.CARD_PAYMENT, Status.AUTHORIZED, operation="capture")
    if txn.capture_requested is not None or txn.capture_id is not None:
        raise InvalidState("the payment is already being captured")
    if txn.void_requested:
        raise InvalidState("the payment is being voided")
    wanted = txn.amount if amount is None else amount
    check_amount(wanted, txn.currency)
    if wanted > txn.amount:
        raise AmountExceeded(
            f"{wanted} exceeds the authorised {txn.amount} {txn.currency}", field="amount"
        )
    return wanted


def check_void(txn: Transaction) -> None:
    _require(txn, Kind.CARD_PAYMENT, Status.AUTHORIZED, operation="void")
    if txn.capture_requested is not None or txn.capture_id is not None:
        raise InvalidState("a payment being captured cannot be voided; refund it instead")


def check_refund(txn: Transaction, amount: int | None, pending: int) -> int:
    """The amount to refund: what is left by default, never more than the capture
    minus refunds already made or pending."""
    _require(txn, Kind.CARD_PAYMENT, Status.POSTED, Status.SETTLED, operation="refund")
    left = txn.captured_amount - txn.refunded_amount - pending
    wanted = left if amount is None else amount
    if left <= 0:
        raise AmountExceeded("nothing is left to refund", field="amount")
    check_amount(wanted, txn.currency)
    if wanted > left:
        raise AmountExceeded(
            f"{wanted} exceeds the {left} {txn.currency} left to refund", field="amount"
        )
    return wanted


def check_confirm(txn: Transaction) -> None:
    if txn.status is not Status.CHALLENGED:
        raise StepUpNotRequested(f"the transaction is {txn.status}, not awaiting a step-up")


def check_reverse(txn: Transaction) -> None:
    _require(txn, Kind.TRANSFER, Status.POSTED, operation="reverse")
    if txn.reverse_requested:
        raise InvalidState("the transfer is already being reversed")


def check_review_outcome(txn: Transaction, outcome: ReviewOutcome) -> bool:
    """True when the outcome is new; False when the same outcome was already
    recorded (a retry); InvalidState for another outcome or a transaction not in
    review."""
    if txn.review_outcome is not None:
        if txn.review_outcome is outcome:
            return False
        raise InvalidState(f"the review was already resolved as {txn.review_outcome}")
    if txn.status is not Status.IN_REVIEW:
        raise InvalidState(f"the transaction is {txn.status}, not in review")
    return True
