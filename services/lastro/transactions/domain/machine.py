"""The state machine as pure functions: what to do next, and what an answer changes.

The worker (``processor.py``) loops over::

    step = plan(txn, refunds, policy, now)   # Change | Act | Rest
    Act   → perform the effect (fraud, ledger, acquirer), then
            change = after(txn, effect, outcome, policy, now)   # or Retry, Rest
    Change → persist it over txn.version (guarded), publish its events, loop
    Retry → wait its seconds, loop (an unanswered screening, within the patience)
    Rest  → stop: final, or waiting for a person, an operator or a rail

Every effect is idempotent at its receiver (screening on the transaction id, the
ledger on ``external_id``, the acquirer on its ``Idempotency-Key``), and each
:class:`Change` is persisted before the next effect, so a worker that dies
anywhere repeats at most the one effect whose answer it had not stored yet, and
the receiver answers the repeat with its first answer.

Here: :func:`plan`, and the changes of an acquirer settlement and of an atomic
batch's items. Around it: :mod:`.effects` (the effects and the receivers' outcomes),
:mod:`.steps` (the policy, the steps, :func:`~.steps.transition` along
``TRANSITIONS``) and :mod:`.answers` (:func:`after`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from lastro.transactions.domain.answers import after
from lastro.transactions.domain.effects import (
    Authorize,
    Capture,
    PlaceHold,
    PostLedger,
    Purpose,
    RefundCard,
    ResolveHold,
    ReversePosting,
    Screen,
    SendPayout,
    SettlePayments,
    VoidAuthorization,
)
from lastro.transactions.domain.model import (
    CaptureMethod,
    Decision,
    Kind,
    Refund,
    RefundStatus,
    ReviewOutcome,
    Screening,
    Status,
    Transaction,
)
from lastro.transactions.domain.steps import (
    Act,
    Change,
    IllegalTransition,
    Policy,
    Rest,
    Step,
    end,
    transition,
)

# ``Policy`` is the worker's to configure, ``after`` the loop's second half:
# both are named here, with ``plan``, for whoever drives the machine.
__all__ = [
    "Policy",
    "after",
    "item_approved",
    "item_declined",
    "item_posted",
    "item_reversed",
    "item_screened",
    "plan",
    "settle_payment",
]


def _pending_refund(refunds: Sequence[Refund]) -> Refund | None:
    pending = [r for r in refunds if r.status is RefundStatus.PENDING]
    return min(pending, key=lambda r: (r.created_at, r.id)) if pending else None


# ---------------------------------------------------------------- plan


def plan(txn: Transaction, refunds: Sequence[Refund], policy: Policy, now: datetime) -> Step:
    """The next step for ``txn`` (pure: same inputs, same step)."""
    if txn.compensation is not None:
        return _compensate(txn)
    match txn.status:
        case Status.RECEIVED:
            if txn.kind is Kind.DEPOSIT:  # our own rail's money: nothing to screen
                return transition(txn, now, Status.APPROVED, facts=("approved",))
            return transition(txn, now, Status.SCREENING)
        case Status.SCREENING:
            return _plan_screening(txn)
        case Status.CHALLENGED:
            if txn.confirmed_at is not None:
                return transition(txn, now, Status.APPROVED, facts=("approved",))
            if now >= txn.updated_at + policy.challenge_timeout:
                return end(txn, now, Status.DECLINED, "challenge_expired")
            return Rest("awaiting the customer's step-up")
        case Status.IN_REVIEW:
            return _plan_review(txn, policy, now)
        case Status.APPROVED:
            if txn.kind is Kind.CARD_PAYMENT:
                return Act(Authorize())
            purpose = Purpose.DEPOSIT if txn.kind is Kind.DEPOSIT else Purpose.MAIN
            return Act(PostLedger(purpose))
        case Status.AUTHORIZED:
            return _plan_authorized(txn)
        case Status.POSTED | Status.SETTLED:
            return _plan_posted(txn, refunds, now)
    return Rest("final")


def _plan_screening(txn: Transaction) -> Step:
    if txn.screening is None:
        return Act(Screen())
    if txn.screening.decision is Decision.REVIEW and txn.hold_id is None:
        return Act(PlaceHold())
    raise IllegalTransition(f"{txn.id}: screened {txn.screening.decision} but still screening")


def _plan_review(txn: Transaction, policy: Policy, now: datetime) -> Step:
    outcome = txn.review_outcome
    if outcome is None:
        return Rest("awaiting the fraud review")
    release = outcome is ReviewOutcome.FRAUD or (
        outcome is ReviewOutcome.EXPIRED and not policy.review_expiry_post
    )
    if txn.kind is Kind.CARD_PAYMENT:
        if release:
            return Act(VoidAuthorization())
        capture = txn.amount if txn.capture_method is CaptureMethod.AUTOMATIC else None
        return transition(
            txn,
            now,
            Status.AUTHORIZED,
            facts=("authorized",),
            audit="payment.authorized",
            capture_requested=capture,
        )
    return Act(ResolveHold(post=not release))


def _plan_authorized(txn: Transaction) -> Step:
    if txn.void_requested and txn.capture_id is None:
        return Act(VoidAuthorization())
    if txn.capture_id is None and txn.capture_requested is not None:
        return Act(Capture(txn.capture_requested))
    if txn.capture_id is not None:
        return Act(PostLedger(Purpose.CAPTURE))
    return Rest("awaiting capture")


def _plan_posted(txn: Transaction, refunds: Sequence[Refund], now: datetime) -> Step:
    if txn.kind is Kind.PAYOUT and txn.status is Status.POSTED:
        return Act(SendPayout())
    if txn.kind is Kind.DEPOSIT and txn.status is Status.POSTED:
        return Act(SettlePayments())
    if txn.kind is Kind.TRANSFER and txn.reverse_requested and txn.status is Status.POSTED:
        assert txn.posting_id is not None
        return Act(ReversePosting(txn.posting_id))
    refund = _pending_refund(refunds)
    if txn.kind is Kind.CARD_PAYMENT and refund is not None:
        if refund.failure is not None:
            assert refund.posting_id is not None
            return Act(ReversePosting(refund.posting_id, refund_id=refund.id))
        if refund.posting_id is None:
            return Act(PostLedger(Purpose.REFUND, refund_id=refund.id))
        return Act(RefundCard(refund.amount, refund_id=refund.id))
    return Rest("final" if txn.final else "awaiting settlement")


def _compensate(txn: Transaction) -> Step:
    if txn.compensation == "void_authorization":
        return Act(VoidAuthorization())
    if txn.compensation == "refund_capture":
        return Act(RefundCard(txn.captured_amount))
    raise IllegalTransition(f"{txn.id}: unknown compensation {txn.compensation!r}")


def settle_payment(payment: Transaction, settlement_id: str, now: datetime) -> Change | None:
    """A captured payment named in an acquirer settlement becomes ``settled``
    (refunded or already settled payments keep their state)."""
    if payment.status is not Status.POSTED:
        return None
    return transition(
        payment,
        now,
        Status.SETTLED,
        facts=("settled",),
        audit="transaction.settled",
        settlement_id=settlement_id,
    )


# ---------------------------------------------------------------- atomic batches
# An atomic batch is moved as one: its items are screened, then approved or
# declined together, posted together (funding + distribution postings) or, if a
# distribution posting is refused, reversed together.


def item_screened(item: Transaction, screening: Screening, now: datetime) -> Change:
    return transition(item, now, Status.SCREENING, facts=("screened",), screening=screening)


def item_approved(item: Transaction, now: datetime) -> Change:
    return transition(item, now, Status.APPROVED, facts=("approved",))


def item_declined(item: Transaction, reason: str, now: datetime) -> Change:
    return end(item, now, Status.DECLINED, reason)


def item_posted(item: Transaction, posting_id: str | None, now: datetime) -> Change:
    return transition(
        item,
        now,
        Status.POSTED,
        facts=("posted",),
        audit="transaction.posted",
        posting_id=posting_id,
    )


def item_reversed(item: Transaction, reason: str, now: datetime) -> Change:
    return transition(
        item,
        now,
        Status.REVERSED,
        facts=("reversed",),
        audit="transaction.reversed",
        reason=reason,
    )
