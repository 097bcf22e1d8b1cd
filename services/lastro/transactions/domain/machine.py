"""The state machine as pure functions: what to do next, and what an answer changes.

The worker (``processor.py``) loops over::

    step = plan(txn, refunds, policy, now)   # Change | Act | Rest
    Act   → perform the effect (fraud, ledger, acquirer), then
            change = after(txn, effect, outcome, policy, now)
    Change → persist it over txn.version (guarded), publish its events, loop
    Rest  → stop: final, or waiting for a person, an operator or a rail

Every effect is idempotent at its receiver (screening on the transaction id, the
ledger on ``external_id``, the acquirer on its ``Idempotency-Key``), and each
:class:`Change` is persisted before the next effect, so a worker that dies
anywhere repeats at most the one effect whose answer it had not stored yet, and
the receiver answers the repeat with its first answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from lastro.transactions.domain.model import (
    TRANSITIONS,
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

# ---------------------------------------------------------------- policy


@dataclass(frozen=True)
class Policy:
    """The configured rules the machine applies (from ``TransactionSettings``)."""

    fraud_fallback_limits: Mapping[str, int] = field(default_factory=dict)
    fraud_fallback_limits_sca: Mapping[str, int] = field(default_factory=dict)
    review_timeout: timedelta = timedelta(hours=72)
    review_expiry_post: bool = False
    challenge_timeout: timedelta = timedelta(minutes=15)

    @property
    def review_hold(self) -> timedelta:
        """How long the ledger keeps a review hold: a day past the review timeout,
        so the configured expiry policy, not the ledger's expiry, decides."""
        return self.review_timeout + timedelta(days=1)


def fallback_screening(
    amount: int, currency: str, policy: Policy, strong_auth: bool = False
) -> Screening | None:
    """The documented fallback when the fraud service cannot answer in time:
    approve (marked ``fallback``) up to the currency's configured limit (a higher
    one for a request made with a recent second factor); above it, or in a currency
    without a limit, no decision (the transaction fails with
    ``screening_unavailable`` and moves no money)."""
    limits = policy.fraud_fallback_limits_sca if strong_auth else policy.fraud_fallback_limits
    limit = limits.get(currency)
    if limit is None or amount > limit:
        return None
    return Screening(Decision.APPROVE, fallback=True)


# ---------------------------------------------------------------- effects


class Purpose(StrEnum):
    """Which ledger posting a :class:`PostLedger` writes (its ``external_id`` suffix)."""

    MAIN = "main"
    CAPTURE = "capture"
    REFUND = "refund"
    DEPOSIT = "deposit"


@dataclass(frozen=True)
class Screen:
    """Ask the fraud service (idempotent on the transaction id)."""


@dataclass(frozen=True)
class PlaceHold:
    """Reserve the amount on the source while a fraud alert is reviewed."""


@dataclass(frozen=True)
class ResolveHold:
    """Post (``post``) or void the review hold."""

    post: bool


@dataclass(frozen=True)
class PostLedger:
    purpose: Purpose
    refund_id: str | None = None


@dataclass(frozen=True)
class ReversePosting:
    """Undo a posting with its mirror (compensation, or an operator's reversal)."""

    posting_id: str
    refund_id: str | None = None


@dataclass(frozen=True)
class Authorize:
    pass


@dataclass(frozen=True)
class Capture:
    amount: int


@dataclass(frozen=True)
class VoidAuthorization:
    pass


@dataclass(frozen=True)
class RefundCard:
    """Refund at the acquirer: a customer's refund (``refund_id``) or, without
    one, the compensation for a capture the ledger refused."""

    amount: int
    refund_id: str | None = None


@dataclass(frozen=True)
class SendPayout:
    pass


@dataclass(frozen=True)
class SettlePayments:
    """A deposit from the acquirer's settlement marks its payments settled."""


Effect = (
    Screen
    | PlaceHold
    | ResolveHold
    | PostLedger
    | ReversePosting
    | Authorize
    | Capture
    | VoidAuthorization
    | RefundCard
    | SendPayout
    | SettlePayments
)


# ---------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class Done:
    """The effect happened (now or, for a repeat, the first time): ``reference`` is
    what the receiver created (posting, hold, authorization, capture, refund);
    ``details`` what it told about it (an authorisation: the card's brand, last
    four digits and fingerprint)."""

    reference: str | None = None
    details: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Refused:
    """The receiver answered no, for good: ``reason`` is a stable slug."""

    reason: str


@dataclass(frozen=True)
class Unavailable:
    """No answer: timeout, breaker open, 5xx. ``uncertain`` when an attempt may
    have reached the receiver (a timeout), so a compensation may be owed."""

    detail: str
    uncertain: bool = False


Outcome = Screening | Done | Refused | Unavailable


# ---------------------------------------------------------------- steps


@dataclass(frozen=True)
class Change:
    """A new state to persist over ``txn.version - 1``; ``facts`` are the events it
    publishes (``posted`` → ``lastro.transaction.posted``), ``audit`` the audited
    action, if any; ``refund`` a refund row changed with it."""

    txn: Transaction
    facts: tuple[str, ...] = ()
    audit: str | None = None
    refund: Refund | None = None


@dataclass(frozen=True)
class Act:
    effect: Effect


@dataclass(frozen=True)
class Rest:
    """Nothing to do until something outside the worker happens."""

    why: str


Step = Change | Act | Rest


class IllegalTransition(RuntimeError):
    """A bug: the machine computed a status change TRANSITIONS does not allow."""


def _to(
    txn: Transaction,
    now: datetime,
    status: Status | None = None,
    *,
    facts: tuple[str, ...] = (),
    audit: str | None = None,
    refund: Refund | None = None,
    **changes: Any,
) -> Change:
    target = status or txn.status
    if target is not txn.status and target not in TRANSITIONS[txn.status]:
        raise IllegalTransition(f"{txn.id}: {txn.status} → {target} is not allowed")
    updated = replace(txn, status=target, version=txn.version + 1, updated_at=now, **changes)
    return Change(updated, facts, audit, refund)


def _end(txn: Transaction, now: datetime, status: Status, reason: str, **changes: Any) -> Change:
    """A final refusal or failure, published and audited."""
    return _to(
        txn,
        now,
        status,
        facts=(status.value,),
        audit=f"transaction.{status.value}",
        reason=reason,
        **changes,
    )


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
                return _to(txn, now, Status.APPROVED, facts=("approved",))
            return _to(txn, now, Status.SCREENING)
        case Status.SCREENING:
            return _plan_screening(txn)
        case Status.CHALLENGED:
            if txn.confirmed_at is not None:
                return _to(txn, now, Status.APPROVED, facts=("approved",))
            if now >= txn.updated_at + policy.challenge_timeout:
                return _end(txn, now, Status.DECLINED, "challenge_expired")
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
        return _to(
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


# ---------------------------------------------------------------- after


def after(
    txn: Transaction,
    effect: Effect,
    outcome: Outcome,
    refunds: Sequence[Refund],
    policy: Policy,
    now: datetime,
) -> Change | Rest:
    """What ``outcome`` of ``effect`` changes. ``Unavailable`` keeps the state
    (recording the error) unless a policy says how to end; the sweeper retries."""
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
                return _end(txn, now, Status.DECLINED, outcome.reason)
            return _to(txn, now, Status.IN_REVIEW, hold_id=outcome.reference)
        case ResolveHold(post=post):
            if post and isinstance(outcome, Done):
                if txn.kind is Kind.FX_TRANSFER:  # the bought leg is still to post
                    return _to(txn, now, Status.APPROVED, facts=("approved",))
                return _to(txn, now, Status.POSTED, facts=("posted",), audit="transaction.posted")
            reason = outcome.reason if isinstance(outcome, Refused) else _review_reason(txn)
            return _end(txn, now, Status.DECLINED, reason)
        case PostLedger(purpose=purpose, refund_id=refund_id):
            return _after_posting(txn, purpose, refund_id, outcome, refunds, now)
        case ReversePosting(refund_id=refund_id):
            if refund_id is not None:
                refund = _refund(refunds, refund_id)
                done = replace(refund, status=RefundStatus.FAILED, version=refund.version + 1)
                return _to(txn, now, facts=("refund_failed",), refund=done)
            if isinstance(outcome, Refused):
                return _to(
                    txn,
                    now,
                    facts=("reversal_failed",),
                    reverse_requested=False,
                    reason=outcome.reason,
                )
            return _to(txn, now, Status.REVERSED, facts=("reversed",), audit="transaction.reversed")
        case Authorize():
            return _after_authorize(txn, outcome, now)
        case Capture(amount=amount):
            if isinstance(outcome, Refused):
                return _to(
                    txn,
                    now,
                    capture_requested=None,
                    reason=outcome.reason,
                    facts=("capture_failed",),
                )
            return _to(txn, now, capture_id=outcome.reference, captured_amount=amount)
        case VoidAuthorization():
            if txn.status is Status.IN_REVIEW:
                return _end(txn, now, Status.DECLINED, _review_reason(txn))
            return _to(txn, now, Status.REVERSED, facts=("reversed",), audit="transaction.reversed")
        case RefundCard(amount=amount, refund_id=refund_id):
            assert refund_id is not None
            return _after_card_refund(txn, _refund(refunds, refund_id), amount, outcome, now)
        case SendPayout():
            return _to(
                txn, now, Status.SETTLED, facts=("payout_sent", "settled"), audit="payout.sent"
            )
        case SettlePayments():
            return _to(txn, now, Status.SETTLED, facts=("settled",), audit="transaction.settled")
    raise IllegalTransition(f"{txn.id}: no rule for {effect!r}")


def _after_screen(
    txn: Transaction, outcome: Screening | Unavailable, policy: Policy, now: datetime
) -> Change:
    screening = outcome if isinstance(outcome, Screening) else None
    if screening is None:
        screening = fallback_screening(txn.amount, txn.currency, policy, txn.context.strong_auth)
        if screening is None:
            return _end(txn, now, Status.FAILED, "screening_unavailable")
    decision = screening.decision
    if txn.kind is Kind.CARD_PAYMENT and decision is Decision.CHALLENGE:
        decision = Decision.REVIEW  # the card holder is not our user: an analyst decides
    facts = ("screened",)
    if decision is Decision.APPROVE or (
        decision is Decision.REVIEW and txn.kind is Kind.CARD_PAYMENT
    ):
        # A reviewed card payment is authorised first: the authorisation is its hold.
        return _to(txn, now, Status.APPROVED, facts=(*facts, "approved"), screening=screening)
    if decision is Decision.DECLINE:
        return _end(txn, now, Status.DECLINED, "fraud_declined", screening=screening)
    if decision is Decision.CHALLENGE:
        return _to(txn, now, Status.CHALLENGED, facts=(*facts, "challenged"), screening=screening)
    return _to(txn, now, facts=facts, screening=screening, hold_expires_at=now + policy.review_hold)


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
            return _to(txn, now, facts=("refund_failed",), refund=failed)
        posted = replace(refund, posting_id=outcome.reference, version=refund.version + 1)
        return _to(txn, now, refund=posted)
    if purpose is Purpose.CAPTURE:
        if isinstance(outcome, Refused):
            # The card was charged but the ledger will not take it: give it back.
            return _to(txn, now, compensation="refund_capture", reason=outcome.reason)
        return _to(
            txn,
            now,
            Status.POSTED,
            facts=("posted",),
            audit="transaction.posted",
            posting_id=outcome.reference,
        )
    if isinstance(outcome, Refused):
        return _end(txn, now, Status.DECLINED, outcome.reason)
    return _to(
        txn,
        now,
        Status.POSTED,
        facts=("posted",),
        audit="transaction.posted",
        posting_id=outcome.reference,
    )


def _after_authorize(txn: Transaction, outcome: Done | Refused, now: datetime) -> Change:
    if isinstance(outcome, Refused):
        return _end(txn, now, Status.DECLINED, outcome.reason)
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
        return _to(txn, now, Status.IN_REVIEW, authorization_id=outcome.reference)
    capture = txn.amount if txn.capture_method is CaptureMethod.AUTOMATIC else None
    return _to(
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
        return _to(txn, now, refund=unwind)
    done = replace(
        refund,
        status=RefundStatus.SUCCEEDED,
        acquirer_refund_id=outcome.reference,
        version=refund.version + 1,
    )
    refunded = txn.refunded_amount + amount
    full = refunded == txn.captured_amount
    return _to(
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
        return _end(
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
        return _end(txn, now, Status.FAILED, txn.reason or "ledger_rejected", compensation=None)
    return _to(txn, now, compensation=None)


def _review_reason(txn: Transaction) -> str:
    return "fraud_confirmed" if txn.review_outcome is ReviewOutcome.FRAUD else "review_expired"


def _refund(refunds: Sequence[Refund], refund_id: str) -> Refund:
    for refund in refunds:
        if refund.id == refund_id:
            return refund
    raise IllegalTransition(f"refund {refund_id} is not among the payment's refunds")


def settle_payment(payment: Transaction, settlement_id: str, now: datetime) -> Change | None:
    """A captured payment named in an acquirer settlement becomes ``settled``
    (refunded or already settled payments keep their state)."""
    if payment.status is not Status.POSTED:
        return None
    return _to(
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
    return _to(item, now, Status.SCREENING, facts=("screened",), screening=screening)


def item_approved(item: Transaction, now: datetime) -> Change:
    return _to(item, now, Status.APPROVED, facts=("approved",))


def item_declined(item: Transaction, reason: str, now: datetime) -> Change:
    return _end(item, now, Status.DECLINED, reason)


def item_posted(item: Transaction, posting_id: str | None, now: datetime) -> Change:
    return _to(
        item,
        now,
        Status.POSTED,
        facts=("posted",),
        audit="transaction.posted",
        posting_id=posting_id,
    )


def item_reversed(item: Transaction, reason: str, now: datetime) -> Change:
    return _to(
        item,
        now,
        Status.REVERSED,
        facts=("reversed",),
        audit="transaction.reversed",
        reason=reason,
    )
