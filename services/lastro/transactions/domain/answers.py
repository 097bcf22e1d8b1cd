"""What an answer changes: :func:`after` turns the outcome of an effect into the
change to store (or a rest, to be retried), one rule per effect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from lastro.transactions.domain.effects import (
    Authorize,
    Capture,
    Done,
    Effect,
    Outcome,
    PlaceHold,
    PostLedger,
    Purpose,
    RefundCard,
    Refused,
    ResolveHold,
    ReversePosting,
    Screen,
    SendPayout,
    SettlePayments,
    Unavailable,
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
    Change,
    IllegalTransition,
    Policy,
    Rest,
    Retry,
    end,
    fallback_screening,
    screening_retry_in,
    transition,
)

# ---------------------------------------------------------------- after


def after(
    txn: Transaction,
    effect: Effect,
    outcome: Outcome,
    refunds: Sequence[Refund],
    policy: Policy,
    now: datetime,
) -> Change | Rest | Retry:
    """What ``outcome`` of ``effect`` changes. ``Unavailable`` keeps the state
    (recording the error) unless a policy says how to end; the sweeper retries. An
    unanswered screening is asked again (:class:`Retry`) until the policy's
    patience is spent, then the documented fallback applies."""
    if txn.compensation is not None:
        return _after_compensation(txn, outcome, now)
    if isinstance(effect, Screen):
        assert isinstance(outcome, Screening | Unavailable)
        return _after_screen(txn, outcome, policy, now)
    if isinstance(outcome, Unavailable):
        return _unavailable(txn, effect, outcome, now)
    assert isinstance(outcome, Done | Refused)
    match effect:
        case PlaceHold():
            if isinstance(outcome, Refused):
                return end(txn, now, Status.DECLINED, outcome.reason)
            return transition(txn, now, Status.IN_REVIEW, hold_id=outcome.reference)
        case ResolveHold(post=post):
            if post and isinstance(outcome, Done):
                if txn.kind is Kind.FX_TRANSFER:  # the bought leg is still to post
                    return transition(txn, now, Status.APPROVED, facts=("approved",))
                return transition(
                    txn, now, Status.POSTED, facts=("posted",), audit="transaction.posted"
                )
            reason = outcome.reason if isinstance(outcome, Refused) else _review_reason(txn)
            return end(txn, now, Status.DECLINED, reason)
        case PostLedger(purpose=purpose, refund_id=refund_id):
            return _after_posting(txn, purpose, refund_id, outcome, refunds, now)
        case ReversePosting(refund_id=refund_id):
            if refund_id is not None:
                refund = _refund(refunds, refund_id)
                done = replace(refund, status=RefundStatus.FAILED, version=refund.version + 1)
                return transition(txn, now, facts=("refund_failed",), refund=done)
            if isinstance(outcome, Refused):
                return transition(
                    txn,
                    now,
                    facts=("reversal_failed",),
                    reverse_requested=False,
                    reason=outcome.reason,
                )
            return transition(
                txn, now, Status.REVERSED, facts=("reversed",), audit="transaction.reversed"
            )
        case Authorize():
            return _after_authorize(txn, outcome, now)
        case Capture(amount=amount):
            if isinstance(outcome, Refused):
                return transition(
                    txn,
                    now,
                    capture_requested=None,
                    reason=outcome.reason,
                    facts=("capture_failed",),
                )
            return transition(txn, now, capture_id=outcome.reference, captured_amount=amount)
        case VoidAuthorization():
            if txn.status is Status.IN_REVIEW:
                return end(txn, now, Status.DECLINED, _review_reason(txn))
            return transition(
                txn, now, Status.REVERSED, facts=("reversed",), audit="transaction.reversed"
            )
        case RefundCard(amount=amount, refund_id=refund_id):
            assert refund_id is not None
            return _after_card_refund(txn, _refund(refunds, refund_id), amount, outcome, now)
        case SendPayout():
            return transition(
                txn, now, Status.SETTLED, facts=("payout_sent", "settled"), audit="payout.sent"
            )
        case SettlePayments():
            return transition(
                txn, now, Status.SETTLED, facts=("settled",), audit="transaction.settled"
            )
    raise IllegalTransition(f"{txn.id}: no rule for {effect!r}")


def _after_screen(
    txn: Transaction, outcome: Screening | Unavailable, policy: Policy, now: datetime
) -> Change | Retry:
    screening = outcome if isinstance(outcome, Screening) else None
    if screening is None:
        assert isinstance(outcome, Unavailable)
        wait = screening_retry_in(txn.updated_at, now, policy)
        if wait is not None:
            return Retry(wait, outcome.detail)
        screening = fallback_screening(txn.amount, txn.currency, policy, txn.context.strong_auth)
        if screening is None:
            return end(txn, now, Status.FAILED, "screening_unavailable")
    decision = screening.decision
    if txn.kind is Kind.CARD_PAYMENT and decision is Decision.CHALLENGE:
        decision = Decision.REVIEW  # the card holder is not our user: an analyst decides
    facts = ("screened",)
    if decision is Decision.APPROVE or (
        decision is Decision.REVIEW and txn.kind is Kind.CARD_PAYMENT
    ):
        # A reviewed card payment is authorised first: the authorisation is its hold.
        return transition(
            txn, now, Status.APPROVED, facts=(*facts, "approved"), screening=screening
        )
    if decision is Decision.DECLINE:
        return end(txn, now, Status.DECLINED, "fraud_declined", screening=screening)
    if decision is Decision.CHALLENGE:
        return transition(
            txn, now, Status.CHALLENGED, facts=(*facts, "challenged"), screening=screening
        )
    return transition(
        txn, now, facts=facts, screening=screening, hold_expires_at=now + policy.review_hold
    )


def _after_posting(
    txn: Transaction,
    purpose: Purpose,
    refund_id: str | None,
    outcome: Done | Refused,
    refunds: Sequence[Refund],
    now: datetime,
) -> Change:
    if purpose is Purpose.REFUND:
        assert refund_id is not None
        refund = _refund(refunds, refund_id)
        if isinstance(outcome, Refused):
            failed = replace(
                refund,
                status=RefundStatus.FAILED,
                failure=outcome.reason,
                version=refund.version + 1,
            )
            return transition(txn, now, facts=("refund_failed",), refund=failed)
        posted = replace(refund, posting_id=outcome.reference, version=refund.version + 1)
        return transition(txn, now, refund=posted)
    if purpose is Purpose.CAPTURE:
        if isinstance(outcome, Refused):
            # The card was charged but the ledger will not take it: give it back.
            return transition(txn, now, compensation="refund_capture", reason=outcome.reason)
        return transition(
            txn,
            now,
            Status.POSTED,
            facts=("posted",),
            audit="transaction.posted",
            posting_id=outcome.reference,
        )
    if isinstance(outcome, Refused):
        return end(txn, now, Status.DECLINED, outcome.reason)
    return transition(
        txn,
        now,
        Status.POSTED,
        facts=("posted",),
        audit="transaction.posted",
        posting_id=outcome.reference,
    )


def _after_authorize(txn: Transaction, outcome: Done | Refused, now: datetime) -> Change:
    if isinstance(outcome, Refused):
        return end(txn, now, Status.DECLINED, outcome.reason)
    if txn.card is not None and outcome.details:
        card = replace(
            txn.card,
            brand=outcome.details.get("brand", txn.card.brand),
            last4=outcome.details.get("last4", txn.card.last4),
            fingerprint=outcome.details.get("fingerprint", txn.card.fingerprint),
        )
        txn = replace(txn, card=card)  # as the acquirer knows the card, not as told
    reviewed = txn.screening is not None and txn.screening.decision in (
        Decision.REVIEW,
        Decision.CHALLENGE,
    )
    if reviewed and txn.review_outcome is None:
        return transition(txn, now, Status.IN_REVIEW, authorization_id=outcome.reference)
    capture = txn.amount if txn.capture_method is CaptureMethod.AUTOMATIC else None
    return transition(
        txn,
        now,
        Status.AUTHORIZED,
        facts=("authorized",),
        audit="payment.authorized",
        authorization_id=outcome.reference,
        capture_requested=capture,
    )


def _after_card_refund(
    txn: Transaction, refund: Refund, amount: int, outcome: Done | Refused, now: datetime
) -> Change:
    if isinstance(outcome, Refused):
        # The ledger already took the money back from the merchant: undo that next.
        unwind = replace(refund, failure=outcome.reason, version=refund.version + 1)
        return transition(txn, now, refund=unwind)
    done = replace(
        refund,
        status=RefundStatus.SUCCEEDED,
        acquirer_refund_id=outcome.reference,
        version=refund.version + 1,
    )
    refunded = txn.refunded_amount + amount
    full = refunded == txn.captured_amount
    return transition(
        txn,
        now,
        Status.REFUNDED if full else None,
        facts=("refunded",),
        audit="payment.refunded",
        refund=done,
        refunded_amount=refunded,
    )


def _unavailable(
    txn: Transaction, effect: Effect, outcome: Unavailable, now: datetime
) -> Change | Rest:
    if isinstance(effect, Authorize):
        # Fail fast with a clear status; a charge that may have happened is voided.
        return end(
            txn,
            now,
            Status.FAILED,
            "acquirer_unavailable",
            compensation="void_authorization" if outcome.uncertain else None,
        )
    return Rest(f"retry later: {outcome.detail}")


def _after_compensation(txn: Transaction, outcome: Outcome, now: datetime) -> Change | Rest:
    if isinstance(outcome, Unavailable):
        return Rest(f"compensation retried later: {outcome.detail}")
    if txn.compensation == "refund_capture" and txn.status is Status.AUTHORIZED:
        return end(txn, now, Status.FAILED, txn.reason or "ledger_rejected", compensation=None)
    return transition(txn, now, compensation=None)


def _review_reason(txn: Transaction) -> str:
    return "fraud_confirmed" if txn.review_outcome is ReviewOutcome.FRAUD else "review_expired"


def _refund(refunds: Sequence[Refund], refund_id: str) -> Refund:
    for refund in refunds:
        if refund.id == refund_id:
            return refund
    raise IllegalTransition(f"refund {refund_id} is not among the payment's refunds")
