"""Alert cases: what a review decision or a detection opens, assignment, resolution."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fraudkit import T0, make_txn

from lastro.fraud.domain.alerts import (
    SCREENING_TYPOLOGY,
    AlertCase,
    AlertStatus,
    Effect,
    NewAlert,
    Resolution,
    Source,
    assign,
    detected,
    precision,
    resolve,
    screening_alert,
)
from lastro.fraud.domain.decision import Action, Decision, Mode, Outcome, Reason, Severity
from lastro.fraud.domain.detectors import Alert, Typology
from lastro.fraud.domain.errors import AlertAlreadyResolved


def reason(
    rule_id: str, severity: Severity, mode: Mode = Mode.ENFORCE, **features: float
) -> Reason:
    return Reason(rule_id, mode, Action.REVIEW, severity, "", 30, dict(features))


def decision(outcome: Outcome, *reasons: Reason, shadow: tuple[Reason, ...] = ()) -> Decision:
    return Decision(outcome, 40, 7, tuple(reasons), shadow, outcome, ())


def case(**changes: object) -> AlertCase:
    alert = NewAlert(
        "evt:1", "velocity_burst", Severity.MEDIUM, Source.ANALYSER, "cus_a", "acc_a", "txn_1",
        "detector:velocity_burst", {"count_1m": 5},
    )  # fmt: skip
    values: dict[str, object] = {
        "id": "alrt_1",
        "alert": alert,
        "status": AlertStatus.OPEN,
        "created_at": T0,
        "updated_at": T0,
    }
    values.update(changes)
    return AlertCase(**values)  # type: ignore[arg-type]


def test_only_a_review_decision_opens_an_alert() -> None:
    txn = make_txn()
    for outcome in (Outcome.APPROVE, Outcome.CHALLENGE, Outcome.DECLINE):
        assert screening_alert(txn, decision(outcome, reason("r", Severity.HIGH))) is None


def test_a_review_alert_carries_the_rules_their_features_and_the_highest_severity() -> None:
    txn = make_txn()
    opened = screening_alert(
        txn,
        decision(
            Outcome.REVIEW,
            reason("velocity", Severity.MEDIUM, count_1m=4),
            reason("new-payees", Severity.HIGH, new_counterparties_1h=5),
            shadow=(reason("trial", Severity.LOW, Mode.SHADOW),),
        ),
    )
    assert opened is not None
    assert opened.typology == SCREENING_TYPOLOGY and opened.source is Source.SCREENING
    assert opened.severity is Severity.HIGH
    assert opened.origin == f"scr:{txn.transaction_id}"
    assert opened.account_id == txn.source_account_id
    assert opened.rule_ids == ("velocity", "new-payees", "trial")
    assert opened.evidence == {
        "score": 40,
        "decision": "review",
        "velocity.count_1m": 4,
        "new-payees.new_counterparties_1h": 5,
    }
    assert opened.freeze is Effect.NONE  # a held transaction is enough; no freeze


def detection(severity: Severity, account: str | None = "acc_a") -> Alert:
    return Alert(
        Typology.IMPOSSIBLE_TRAVEL, severity, "cus_a", account, "txn_9", "detector:x", {"k": 1}
    )


def test_a_high_detection_with_an_account_asks_for_a_freeze() -> None:
    high = detected(detection(Severity.HIGH), "evt_1")
    assert high.freeze is Effect.PENDING
    assert high.origin == "evt:evt_1:impossible_travel:cus_a"
    assert detected(detection(Severity.MEDIUM), "evt_1").freeze is Effect.NONE
    assert detected(detection(Severity.CRITICAL, account=None), "evt_1").freeze is Effect.NONE


def test_assigning_hands_the_alert_over_until_it_is_resolved() -> None:
    at = T0 + timedelta(minutes=5)
    assigned = assign(case(), "ana", at)
    assert (assigned.status, assigned.assignee, assigned.assigned_at) == (
        AlertStatus.ASSIGNED,
        "ana",
        at,
    )
    assert assign(assigned, "bruno", at).assignee == "bruno"
    resolved, _ = resolve(
        assigned, Resolution.TRUE_POSITIVE, "ana", None, at, held_for_review=False
    )
    with pytest.raises(AlertAlreadyResolved):
        assign(resolved, "bruno", at)


def test_resolving_again_the_same_way_changes_nothing_and_the_other_way_is_refused() -> None:
    at = T0 + timedelta(hours=1)
    resolved, changed = resolve(
        case(), Resolution.FALSE_POSITIVE, "ana", "known payee", at, held_for_review=False
    )
    assert changed and resolved.status is AlertStatus.RESOLVED
    assert (resolved.resolved_by, resolved.resolved_at, resolved.note) == ("ana", at, "known payee")
    again, changed = resolve(
        resolved, Resolution.FALSE_POSITIVE, "bruno", None, at + timedelta(hours=1),
        held_for_review=False,
    )  # fmt: skip
    assert not changed and again == resolved
    with pytest.raises(AlertAlreadyResolved):
        resolve(resolved, Resolution.TRUE_POSITIVE, "bruno", None, at, held_for_review=False)


@pytest.mark.parametrize(
    ("resolution", "outcome"),
    [(Resolution.TRUE_POSITIVE, "fraud"), (Resolution.FALSE_POSITIVE, "legitimate")],
)
def test_resolving_a_held_transactions_alert_makes_its_outcome_a_pending_effect(
    resolution: Resolution, outcome: str
) -> None:
    held, _ = resolve(case(), resolution, "ana", None, T0, held_for_review=True)
    assert held.review is Effect.PENDING
    assert held.resolution is not None and held.resolution.review_outcome == outcome
    free, _ = resolve(case(), resolution, "ana", None, T0, held_for_review=False)
    assert free.review is Effect.NONE


def test_precision_is_the_share_of_resolved_alerts_that_were_fraud() -> None:
    assert precision(0, 0) is None
    assert precision(3, 1) == 0.75
    assert precision(0, 2) == 0.0
