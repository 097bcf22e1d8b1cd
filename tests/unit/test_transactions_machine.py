"""The transaction state machine, driven without I/O: plan a step, answer its
effect, apply the change, until the transaction rests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lastro.transactions.domain import machine
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
    FINAL,
    TRANSITIONS,
    CaptureMethod,
    Card,
    Decision,
    FxLeg,
    Kind,
    Refund,
    RefundStatus,
    ReviewOutcome,
    Screening,
    Status,
    Transaction,
    is_resting,
)
from lastro.transactions.domain.steps import (
    Act,
    Change,
    IllegalTransition,
    Policy,
    Rest,
    Retry,
    screening_retry_in,
    transition,
)

NOW = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
POLICY = Policy(fraud_fallback_limits={"EUR": 50_000})
Answer = Callable[[Effect, Transaction], Outcome]


def txn(kind: Kind = Kind.TRANSFER, amount: int = 10_000, **fields: object) -> Transaction:
    base = Transaction(
        id="txn_1",
        kind=kind,
        status=Status.RECEIVED,
        client_id="cli",
        owner="usr",
        amount=amount,
        currency="EUR",
        created_at=NOW,
        updated_at=NOW,
        source_account_id=None if kind in (Kind.CARD_PAYMENT, Kind.DEPOSIT) else "acc_src",
        destination_account_id=None if kind in (Kind.PAYOUT, Kind.DEPOSIT) else "acc_dst",
    )
    if kind is Kind.CARD_PAYMENT:
        base = replace(base, card=Card("tok_x"), capture_method=CaptureMethod.AUTOMATIC)
    if kind is Kind.FX_TRANSFER:
        base = replace(base, fx=FxLeg("quo_1", "1.08", 10_800, "USD"))
    return replace(base, **fields)  # type: ignore[arg-type]


def approve(effect: Effect, t: Transaction) -> Outcome:
    if isinstance(effect, Screen):
        return Screening(Decision.APPROVE, fallback=False, ruleset_version=3)
    return Done(f"ref_{type(effect).__name__.lower()}")


def run(
    t: Transaction,
    answer: Answer = approve,
    refunds: list[Refund] | None = None,
    policy: Policy = POLICY,
    now: datetime = NOW,
    waits: list[float] | None = None,
) -> tuple[Transaction, list[type], list[str], list[Refund]]:
    """Drive ``t`` until it rests; returns it, the effects performed, the facts
    published and the refunds. A :class:`Retry` moves the clock on by its seconds
    (noted in ``waits``)."""
    refunds = list(refunds or [])
    effects: list[type] = []
    facts: list[str] = []
    for _ in range(40):
        step = machine.plan(t, refunds, policy, now)
        if isinstance(step, Rest):
            return t, effects, facts, refunds
        if isinstance(step, Act):
            effects.append(type(step.effect))
            result = machine.after(t, step.effect, answer(step.effect, t), refunds, policy, now)
            if isinstance(result, Retry):
                now += timedelta(seconds=result.seconds)
                if waits is not None:
                    waits.append(result.seconds)
                continue
            if isinstance(result, Rest):
                return t, effects, facts, refunds
            step = result
        assert isinstance(step, Change)
        assert step.txn.version == t.version + 1
        facts.extend(step.facts)
        t = step.txn
        if step.refund is not None:
            refunds = [step.refund if r.id == step.refund.id else r for r in refunds]
    raise AssertionError("the machine did not rest")


def test_a_transfer_is_screened_approved_and_posted_once() -> None:
    final, effects, facts, _ = run(txn())
    assert final.status is Status.POSTED and final.final
    assert final.posting_id == "ref_postledger"
    assert effects == [Screen, PostLedger]
    assert facts == ["screened", "approved", "posted"]


def test_every_status_change_follows_the_transition_table() -> None:
    for source, targets in TRANSITIONS.items():
        assert (source in FINAL) == (not targets)
    t = replace(txn(), status=Status.POSTED)
    with pytest.raises(IllegalTransition):
        transition(t, NOW, Status.SCREENING)


def test_fraud_decline_ends_the_transfer_with_a_reason() -> None:
    def decline(effect: Effect, t: Transaction) -> Outcome:
        return Screening(Decision.DECLINE, fallback=False, rule_ids=("velocity",))

    final, effects, facts, _ = run(txn(), decline)
    assert (final.status, final.reason) == (Status.DECLINED, "fraud_declined")
    assert effects == [Screen]
    assert facts == ["declined"]


def test_an_unavailable_fraud_service_approves_small_amounts_marked_fallback() -> None:
    def down(effect: Effect, t: Transaction) -> Outcome:
        return Unavailable("fraud: TimeoutError") if isinstance(effect, Screen) else Done("p")

    small, _, _, _ = run(txn(amount=50_000), down)
    assert small.status is Status.POSTED
    assert small.screening is not None and small.screening.fallback
    large, effects, _, _ = run(txn(amount=50_001), down)
    assert (large.status, large.reason) == (Status.FAILED, "screening_unavailable")
    assert effects == [Screen]  # no money moved
    other_currency, _, _, _ = run(replace(txn(amount=100), currency="JPY"), down)
    assert other_currency.status is Status.FAILED


PATIENT = replace(POLICY, fraud_fallback_after=timedelta(seconds=5))


def test_an_unanswered_screening_is_asked_again_until_the_patience_is_spent() -> None:
    def down(effect: Effect, t: Transaction) -> Outcome:
        return Unavailable("fraud: TimeoutError") if isinstance(effect, Screen) else Done("p")

    waits: list[float] = []
    final, effects, facts, _ = run(txn(amount=50_000), down, policy=PATIENT, waits=waits)
    # asked at 0, 0.25, 0.5, 1, 2, 4 and at the deadline, 5 s after screening began
    assert waits == [0.25, 0.25, 0.5, 1.0, 2.0, 1.0]
    assert effects == [Screen] * 7 + [PostLedger]
    assert final.screening is not None and final.screening.fallback
    assert facts == ["screened", "approved", "posted"]  # the retries publish nothing


def test_a_screening_answered_within_the_patience_takes_no_fallback() -> None:
    asked: list[Transaction] = []

    def busy_then_answers(effect: Effect, t: Transaction) -> Outcome:
        if isinstance(effect, Screen):
            asked.append(t)
            if len(asked) < 3:
                return Unavailable("fraud: breaker open")
        return approve(effect, t)

    final, effects, _, _ = run(txn(amount=50_001), busy_then_answers, policy=PATIENT)
    assert final.status is Status.POSTED  # above the fallback limit, yet posted: screened
    assert final.screening == Screening(Decision.APPROVE, fallback=False, ruleset_version=3)
    assert effects == [Screen, Screen, Screen, PostLedger]
    # every question asked from the one stored screening state: retries store nothing
    assert {(t.status, t.version) for t in asked} == {(Status.SCREENING, 2)}


def test_a_screening_that_began_before_the_patience_falls_back_at_the_first_miss() -> None:
    def down(effect: Effect, t: Transaction) -> Outcome:
        return Unavailable("fraud: TimeoutError")

    screening = replace(txn(amount=50_001), status=Status.SCREENING, version=2)
    waits: list[float] = []
    later = NOW + timedelta(seconds=6)  # e.g. resumed by the sweeper after a crash
    final, effects, _, _ = run(screening, down, policy=PATIENT, now=later, waits=waits)
    assert (final.status, final.reason) == (Status.FAILED, "screening_unavailable")
    assert (effects, waits) == ([Screen], [])
    assert screening_retry_in(NOW, NOW + timedelta(seconds=4.9), PATIENT) == pytest.approx(0.1)
    assert screening_retry_in(NOW, NOW, POLICY) is None  # no patience: the fallback at once


def test_a_challenge_waits_for_the_step_up_then_posts() -> None:
    def challenge(effect: Effect, t: Transaction) -> Outcome:
        return Screening(Decision.CHALLENGE, False) if isinstance(effect, Screen) else Done("p")

    waiting, _, facts, _ = run(txn(), challenge)
    assert waiting.status is Status.CHALLENGED and is_resting(waiting)
    assert facts == ["screened", "challenged"]
    confirmed, effects, _, _ = run(replace(waiting, confirmed_at=NOW), challenge)
    assert confirmed.status is Status.POSTED and effects == [PostLedger]
    late = NOW + POLICY.challenge_timeout
    expired, _, _, _ = run(waiting, challenge, now=late)
    assert (expired.status, expired.reason) == (Status.DECLINED, "challenge_expired")


def review(effect: Effect, t: Transaction) -> Outcome:
    if isinstance(effect, Screen):
        return Screening(Decision.REVIEW, fallback=False)
    return Done("hold_1" if isinstance(effect, PlaceHold) else "p")


def test_review_holds_the_money_until_the_alert_is_resolved() -> None:
    held, effects, _, _ = run(txn(), review)
    assert held.status is Status.IN_REVIEW and held.hold_id == "hold_1"
    assert effects == [Screen, PlaceHold]
    # The hold's expiry is stored before the hold is asked for, so a retry sends
    # the same request (the ledger replays holds by external_id and content).
    assert held.hold_expires_at == NOW + POLICY.review_hold
    legitimate, effects, _, _ = run(replace(held, review_outcome=ReviewOutcome.LEGITIMATE), review)
    assert legitimate.status is Status.POSTED and effects == [ResolveHold]
    fraud, effects, _, _ = run(replace(held, review_outcome=ReviewOutcome.FRAUD), review)
    assert (fraud.status, fraud.reason) == (Status.DECLINED, "fraud_confirmed")
    expired = replace(held, review_outcome=ReviewOutcome.EXPIRED)
    voided, _, _, _ = run(expired, review)
    assert (voided.status, voided.reason) == (Status.DECLINED, "review_expired")
    posted, _, _, _ = run(expired, review, policy=replace(POLICY, review_expiry_post=True))
    assert posted.status is Status.POSTED


def test_a_reviewed_cross_currency_transfer_posts_its_bought_leg_after_the_hold() -> None:
    held, _, _, _ = run(txn(Kind.FX_TRANSFER), review)
    final, effects, _, _ = run(replace(held, review_outcome=ReviewOutcome.LEGITIMATE), review)
    assert final.status is Status.POSTED
    assert effects == [ResolveHold, PostLedger]


def test_a_refused_hold_declines_with_the_ledger_reason() -> None:
    def poor(effect: Effect, t: Transaction) -> Outcome:
        if isinstance(effect, Screen):
            return Screening(Decision.REVIEW, False)
        return Refused("insufficient_funds")

    final, _, _, _ = run(txn(), poor)
    assert (final.status, final.reason) == (Status.DECLINED, "insufficient_funds")


def test_ledger_refusal_declines_and_an_outage_keeps_the_state_for_a_retry() -> None:
    def refuse(effect: Effect, t: Transaction) -> Outcome:
        return approve(effect, t) if isinstance(effect, Screen) else Refused("account_frozen")

    final, _, _, _ = run(txn(), refuse)
    assert (final.status, final.reason) == (Status.DECLINED, "account_frozen")

    def outage(effect: Effect, t: Transaction) -> Outcome:
        return approve(effect, t) if isinstance(effect, Screen) else Unavailable("accounts: 503")

    stalled, _, _, _ = run(txn(), outage)
    assert stalled.status is Status.APPROVED and not is_resting(stalled)


def test_card_payment_with_automatic_capture_is_authorised_captured_and_posted() -> None:
    final, effects, facts, _ = run(txn(Kind.CARD_PAYMENT))
    assert final.status is Status.POSTED
    assert effects == [Screen, Authorize, Capture, PostLedger]
    assert (final.authorization_id, final.capture_id) == ("ref_authorize", "ref_capture")
    assert final.captured_amount == final.amount
    assert facts == ["screened", "approved", "authorized", "posted"]
    settled = machine.settle_payment(final, "stl_1", NOW)
    assert settled is not None and settled.txn.status is Status.SETTLED


def test_manual_capture_waits_then_captures_part_and_refunds_within_limits() -> None:
    authorized, _, _, _ = run(txn(Kind.CARD_PAYMENT, capture_method=CaptureMethod.MANUAL))
    assert authorized.status is Status.AUTHORIZED and is_resting(authorized)
    captured, effects, _, _ = run(replace(authorized, capture_requested=6_000))
    assert effects == [Capture, PostLedger]
    assert (captured.status, captured.captured_amount) == (Status.POSTED, 6_000)

    first = Refund("re_1", captured.id, 2_000, "EUR", RefundStatus.PENDING, NOW)
    partly, effects, facts, refunds = run(captured, refunds=[first])
    assert effects == [PostLedger, RefundCard]  # the ledger first, then the card
    assert (partly.status, partly.refunded_amount) == (Status.POSTED, 2_000)
    assert refunds[0].status is RefundStatus.SUCCEEDED and facts == ["refunded"]
    rest = Refund("re_2", captured.id, 4_000, "EUR", RefundStatus.PENDING, NOW)
    full, _, _, _ = run(partly, refunds=[refunds[0], rest])
    assert (full.status, full.refunded_amount) == (Status.REFUNDED, 6_000)


def test_a_refund_the_acquirer_refuses_is_unwound_in_the_ledger() -> None:
    def acquirer_says_no(effect: Effect, t: Transaction) -> Outcome:
        return Refused("refund_failed") if isinstance(effect, RefundCard) else Done("x")

    payment = txn(Kind.CARD_PAYMENT, status=Status.POSTED, capture_id="cap", captured_amount=10_000)
    refund = Refund("re_1", payment.id, 1_000, "EUR", RefundStatus.PENDING, NOW)
    final, effects, facts, refunds = run(payment, acquirer_says_no, [refund])
    assert effects == [PostLedger, RefundCard, ReversePosting]
    assert refunds[0].status is RefundStatus.FAILED and refunds[0].failure == "refund_failed"
    assert final.refunded_amount == 0 and facts == ["refund_failed"]


def test_a_capture_the_ledger_refuses_is_refunded_to_the_card() -> None:
    def ledger_says_no(effect: Effect, t: Transaction) -> Outcome:
        if isinstance(effect, PostLedger):
            return Refused("account_closed")
        return approve(effect, t)

    final, effects, _, _ = run(txn(Kind.CARD_PAYMENT), ledger_says_no)
    assert effects == [Screen, Authorize, Capture, PostLedger, RefundCard]
    assert (final.status, final.reason, final.compensation) == (
        Status.FAILED,
        "account_closed",
        None,
    )


def test_an_acquirer_timeout_fails_fast_and_voids_what_may_have_been_authorised() -> None:
    calls: list[type] = []

    def timeout_then_heal(effect: Effect, t: Transaction) -> Outcome:
        calls.append(type(effect))
        if isinstance(effect, Screen):
            return approve(effect, t)
        if isinstance(effect, Authorize):
            return Unavailable("acquirer: TimeoutError", uncertain=True)
        return Done("void")

    final, effects, _, _ = run(txn(Kind.CARD_PAYMENT), timeout_then_heal)
    assert (final.status, final.reason) == (Status.FAILED, "acquirer_unavailable")
    assert effects == [Screen, Authorize, VoidAuthorization]
    assert final.compensation is None
    never_sent = run(
        txn(Kind.CARD_PAYMENT),
        lambda e, t: approve(e, t) if isinstance(e, Screen) else Unavailable("open"),
    )[0]
    assert never_sent.status is Status.FAILED and never_sent.compensation is None


def test_void_of_an_authorised_payment_reverses_it() -> None:
    authorized, _, _, _ = run(txn(Kind.CARD_PAYMENT, capture_method=CaptureMethod.MANUAL))
    voided, effects, _, _ = run(replace(authorized, void_requested=True))
    assert voided.status is Status.REVERSED and effects == [VoidAuthorization]


def test_reviewed_card_payment_is_authorised_then_held_until_resolved() -> None:
    def review_card(effect: Effect, t: Transaction) -> Outcome:
        if isinstance(effect, Screen):
            return Screening(Decision.CHALLENGE, False)  # a card holder is not our user
        return approve(effect, t)

    held, effects, _, _ = run(txn(Kind.CARD_PAYMENT), review_card)
    assert held.status is Status.IN_REVIEW and effects == [Screen, Authorize]
    released, effects, _, _ = run(replace(held, review_outcome=ReviewOutcome.FRAUD), review_card)
    assert released.status is Status.DECLINED and effects == [VoidAuthorization]
    paid, effects, _, _ = run(replace(held, review_outcome=ReviewOutcome.LEGITIMATE), review_card)
    assert paid.status is Status.POSTED and effects == [Capture, PostLedger]


def test_payout_is_posted_then_sent_and_settled() -> None:
    final, effects, facts, _ = run(txn(Kind.PAYOUT))
    assert final.status is Status.SETTLED
    assert effects == [Screen, PostLedger, SendPayout]
    assert facts[-2:] == ["payout_sent", "settled"]


def test_a_deposit_skips_screening_and_settles_its_payments() -> None:
    final, effects, facts, _ = run(txn(Kind.DEPOSIT, settlement_id="stl_1"))
    assert final.status is Status.SETTLED
    assert effects == [PostLedger, SettlePayments]
    assert facts == ["approved", "posted", "settled"]


def test_an_operator_reversal_of_a_posted_transfer() -> None:
    posted, _, _, _ = run(txn())
    reversed_, effects, _, _ = run(replace(posted, reverse_requested=True))
    assert reversed_.status is Status.REVERSED and effects == [ReversePosting]


OUTCOMES = st.sampled_from(
    [
        Screening(Decision.APPROVE, False),
        Screening(Decision.DECLINE, False),
        Screening(Decision.REVIEW, False),
        Screening(Decision.CHALLENGE, False),
        Done("ref"),
        Refused("insufficient_funds"),
        Unavailable("down", uncertain=True),
        Unavailable("open", uncertain=False),
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(list(Kind)),
    amount=st.integers(1, 200_000),
    answers=st.lists(OUTCOMES, min_size=1, max_size=20),
)
def test_any_sequence_of_answers_rests_without_an_illegal_transition(
    kind: Kind, amount: int, answers: list[Outcome]
) -> None:
    queue = list(answers)

    def scripted(effect: Effect, t: Transaction) -> Outcome:
        outcome = queue.pop(0) if queue else Done("ref")
        if isinstance(effect, Screen):
            return (
                outcome
                if isinstance(outcome, Screening | Unavailable)
                else Screening(Decision.APPROVE, False)
            )
        if isinstance(outcome, Screening):
            return Done("ref")
        return outcome

    final, effects, _, _ = run(txn(kind, amount=amount, settlement_id="stl"), scripted)
    later = machine.plan(final, [], POLICY, NOW + timedelta(days=9))
    if final.compensation is not None:  # owed even in a final state, until done
        assert isinstance(later, Act)
        assert isinstance(later.effect, VoidAuthorization | RefundCard)
    elif final.final:
        assert later == Rest("final")
    if PostLedger in effects and kind is Kind.TRANSFER:
        assert effects.count(PostLedger) == 1 or final.status is not Status.POSTED
    assert final.status is not Status.SCREENING or final.screening is not None


def test_purpose_names_every_posting_external_id_suffix() -> None:
    assert {p.value for p in Purpose} == {"main", "capture", "refund", "deposit"}
