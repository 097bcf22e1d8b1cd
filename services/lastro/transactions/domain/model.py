"""What a transaction is: its kinds, its states and the transitions between them.

Lifecycle (every transition is persisted before the next side effect)::

    received ─► screening ─┬─► approved ─► posted ─► settled
                           ├─► challenged ─(step-up)─► approved
                           ├─► in_review ─(alert resolved)─► posted | declined
                           └─► declined | failed
    card payments:  approved ─► authorized ─(capture)─► posted ─► settled
                    authorized ─(void)─► reversed;   posted|settled ─(refunds)─► refunded

``posted`` is final for book transfers (internal and cross-currency: the ledger
posting is the settlement); card payments and payouts go on to ``settled`` when
the external rail confirms. ``declined`` is a refusal (fraud, the ledger's rules,
the card issuer), ``failed`` a technical impossibility (a dependency that could not
answer within the policy), ``reversed`` undoes money that had moved or been
reserved, ``refunded`` is a card payment refunded in full.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final


class Kind(StrEnum):
    TRANSFER = "transfer"
    FX_TRANSFER = "fx_transfer"
    CARD_PAYMENT = "card_payment"
    PAYOUT = "payout"
    DEPOSIT = "deposit"


class Status(StrEnum):
    RECEIVED = "received"
    SCREENING = "screening"
    CHALLENGED = "challenged"
    IN_REVIEW = "in_review"
    APPROVED = "approved"
    AUTHORIZED = "authorized"
    POSTED = "posted"
    SETTLED = "settled"
    DECLINED = "declined"
    FAILED = "failed"
    REVERSED = "reversed"
    REFUNDED = "refunded"


class Decision(StrEnum):
    APPROVE = "approve"
    CHALLENGE = "challenge"
    REVIEW = "review"
    DECLINE = "decline"


class ReviewOutcome(StrEnum):
    LEGITIMATE = "legitimate"
    FRAUD = "fraud"
    EXPIRED = "expired"


class CaptureMethod(StrEnum):
    AUTOMATIC = "automatic"
    MANUAL = "manual"


S = Status
TRANSITIONS: Final[Mapping[Status, frozenset[Status]]] = {
    S.RECEIVED: frozenset({S.SCREENING, S.APPROVED}),
    S.SCREENING: frozenset({S.APPROVED, S.CHALLENGED, S.IN_REVIEW, S.DECLINED, S.FAILED}),
    S.CHALLENGED: frozenset({S.APPROVED, S.DECLINED}),
    S.IN_REVIEW: frozenset({S.APPROVED, S.POSTED, S.AUTHORIZED, S.DECLINED}),
    S.APPROVED: frozenset({S.AUTHORIZED, S.IN_REVIEW, S.POSTED, S.DECLINED, S.FAILED}),
    S.AUTHORIZED: frozenset({S.POSTED, S.IN_REVIEW, S.REVERSED, S.FAILED, S.DECLINED}),
    S.POSTED: frozenset({S.SETTLED, S.REVERSED, S.REFUNDED}),
    S.SETTLED: frozenset({S.REFUNDED}),
    S.DECLINED: frozenset(),
    S.FAILED: frozenset(),
    S.REVERSED: frozenset(),
    S.REFUNDED: frozenset(),
}
"""Every allowed change of status; a status with no way out is final."""

FINAL: Final = frozenset(s for s, targets in TRANSITIONS.items() if not targets)


def is_final(kind: Kind, status: Status) -> bool:
    """No further change can happen: a final status, ``posted`` for book transfers
    (an operator's reversal is a new decision) and ``settled`` for payouts and
    deposits. A settled card payment may still be refunded, so it only rests."""
    if status in FINAL:
        return True
    if status is S.POSTED:
        return kind in (Kind.TRANSFER, Kind.FX_TRANSFER)
    return status is S.SETTLED and kind in (Kind.PAYOUT, Kind.DEPOSIT)


def is_resting(txn: Transaction, refunds_pending: bool = False) -> bool:
    """Nothing more happens to ``txn`` until something outside the worker does
    (a person, an operator, a partner, a rail), and nothing asked of it is still
    being done: what ``Prefer: wait`` waits for."""
    if txn.compensation is not None and not txn.final:
        return False
    if txn.status is S.CHALLENGED:
        return txn.confirmed_at is None
    if txn.status is S.IN_REVIEW:
        return txn.review_outcome is None
    if txn.status is S.POSTED and txn.reverse_requested:
        return False
    if txn.final:
        return True
    if txn.kind is Kind.CARD_PAYMENT:
        if txn.status is S.AUTHORIZED:
            return txn.capture_requested is None and not txn.void_requested
        return txn.status in (S.POSTED, S.SETTLED) and not refunds_pending
    return False


@dataclass(frozen=True)
class Screening:
    """The fraud service's answer (or the fallback applied when it had none)."""

    decision: Decision
    fallback: bool
    screening_id: str | None = None
    ruleset_version: int | None = None
    score: int | None = None
    rule_ids: tuple[str, ...] = ()

    def summary(self) -> dict[str, Any]:
        """As events and API resources show it."""
        return {
            "decision": self.decision.value,
            "ruleset_version": self.ruleset_version,
            "fallback": self.fallback,
        }


@dataclass(frozen=True)
class RequestContext:
    """Where the request came from, for screening (never personal data beyond this)."""

    ip: str | None = None
    device_id: str | None = None
    country: str | None = None
    location: Mapping[str, float] | None = None
    strong_auth: bool = False
    """The request was made with a recent second factor (strong customer
    authentication): the screening fallback allows more."""


@dataclass(frozen=True)
class FxLeg:
    """The buy side of a cross-currency transfer, fixed by its quote."""

    quote_id: str
    rate: str
    amount: int
    currency: str


@dataclass(frozen=True)
class Card:
    """A card tokenised at the acquirer: Lastro never sees its number."""

    token: str
    fingerprint: str | None = None
    brand: str | None = None
    last4: str | None = None


@dataclass(frozen=True)
class Transaction:
    """One money movement and how far it got.

    ``amount``/``currency`` is what leaves the source (for payments: what the
    card is charged). ``version`` increases with every stored change; a change is
    written only over the version it was computed from.
    """

    id: str
    kind: Kind
    status: Status
    client_id: str
    owner: str
    amount: int
    currency: str
    created_at: datetime
    updated_at: datetime
    version: int = 1
    customer_id: str | None = None
    source_account_id: str | None = None
    destination_account_id: str | None = None
    counterparty_customer_id: str | None = None
    counterparty: str | None = None
    description: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    context: RequestContext = field(default_factory=RequestContext)
    batch_id: str | None = None
    fx: FxLeg | None = None
    card: Card | None = None
    capture_method: CaptureMethod | None = None
    screening: Screening | None = None
    reason: str | None = None
    posting_id: str | None = None
    hold_id: str | None = None
    hold_expires_at: datetime | None = None
    authorization_id: str | None = None
    capture_id: str | None = None
    captured_amount: int = 0
    refunded_amount: int = 0
    capture_requested: int | None = None
    void_requested: bool = False
    confirmed_at: datetime | None = None
    review_outcome: ReviewOutcome | None = None
    reverse_requested: bool = False
    compensation: str | None = None
    settlement_id: str | None = None
    last_error: str | None = None

    @property
    def final(self) -> bool:
        return is_final(self.kind, self.status)

    @property
    def refundable(self) -> int:
        """What may still be refunded (card payments)."""
        return self.captured_amount - self.refunded_amount


class RefundStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class Refund:
    """A full or partial refund of a captured card payment.

    ``posting_id`` is set once the ledger took the money back from the merchant
    (the recovery point before the acquirer is asked to refund the card)."""

    id: str
    payment_id: str
    amount: int
    currency: str
    status: RefundStatus
    created_at: datetime
    reason: str | None = None
    posting_id: str | None = None
    acquirer_refund_id: str | None = None
    failure: str | None = None
    version: int = 1


class BatchStatus(StrEnum):
    RECEIVED = "received"
    PROCESSING = "processing"
    COMPLETED = "completed"


@dataclass(frozen=True)
class TransferBatch:
    """Up to 1,000 transfers from one account, submitted together.

    ``atomic``: all are posted or none is (the source is debited once, into the
    batch clearing account, then the destinations are credited from it);
    otherwise each transfer has its own outcome. ``step`` records how far an
    atomic batch got (``funded`` → ``distributed`` | ``unwinding`` → ``done``)."""

    id: str
    client_id: str
    owner: str
    source_account_id: str
    currency: str
    atomic: bool
    count: int
    total: int
    status: BatchStatus
    created_at: datetime
    updated_at: datetime
    customer_id: str | None = None
    step: str | None = None
    funding_posting_id: str | None = None
    distributed_chunks: int = 0
    reason: str | None = None
    version: int = 1
