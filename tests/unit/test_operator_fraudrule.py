"""FraudRule reconciliation logic, without a cluster or a fraud service."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lastro_operator.conditions import merge_conditions
from lastro_operator.expressions import default_validator
from lastro_operator.fraudrule import (
    applied_status,
    invalid_status,
    is_current,
    owned_by,
    pending_status,
    revision_of,
    rule_document,
)

NOW = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
UID = "0b6d4c7e-1f2a-4b3c-9d8e-5f6a7b8c9d0e"


def test_the_rule_document_is_the_admin_api_shape_with_crd_defaults() -> None:
    spec = {
        "description": "many transfers in a minute",
        "expression": "features.count_1m >= 5",
        "action": "review",
        "transactionTypes": ["transfer", "payout"],
    }
    document = rule_document("velocity-burst", spec, revision_of(UID, 3))
    assert document == {
        "id": "velocity-burst",
        "description": "many transfers in a minute",
        "expression": "features.count_1m >= 5",
        "action": "review",
        "severity": "medium",
        "mode": "shadow",
        "enabled": True,
        "transaction_types": ["transfer", "payout"],
        "revision": f"{UID}:3",
    }


def test_weight_travels_only_when_the_rule_scores() -> None:
    spec = {"description": "d", "expression": "true", "action": "score", "weight": 40}
    assert rule_document("r", spec, "u:1")["weight"] == 40
    assert "weight" not in rule_document("r", {**spec, "action": "decline", "weight": None}, "u:1")


def test_a_revision_belongs_only_to_the_resource_with_that_uid() -> None:
    assert owned_by(UID, f"{UID}:7")
    assert not owned_by(UID, "another-uid:7")
    assert not owned_by(UID, f"{UID}x:7")
    assert not owned_by(UID, None)
    assert not owned_by(UID, "")


def test_applied_status_reports_the_rule_set_version_of_this_generation() -> None:
    status = applied_status({}, 4, f"{UID}:4", 17, "enforce", NOW)
    assert status["observedGeneration"] == 4
    assert status["appliedVersion"] == 17
    assert status["appliedRevision"] == f"{UID}:4"
    ready = {c["type"]: c for c in status["conditions"]}
    assert ready["Ready"]["status"] == "True"
    assert ready["Ready"]["reason"] == "Applied"
    assert "rule set 17 in enforce mode" in ready["Ready"]["message"]
    assert ready["Invalid"]["status"] == "False"


def test_an_invalid_generation_keeps_the_applied_version_of_the_last_good_one() -> None:
    good = applied_status({}, 1, f"{UID}:1", 5, "shadow", NOW)
    bad = invalid_status(good, 2, "InvalidExpression", "CEL syntax error", NOW)
    assert "appliedVersion" not in bad  # a status patch: the stored appliedVersion stays 5
    conditions = {c["type"]: c for c in bad["conditions"]}
    assert conditions["Invalid"]["status"] == "True"
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Ready"]["reason"] == "InvalidExpression"
    assert bad["observedGeneration"] == 2


def test_current_means_this_generation_is_live_or_already_judged_invalid() -> None:
    live = applied_status({}, 2, f"{UID}:2", 9, "shadow", NOW)
    assert is_current(live, 2, f"{UID}:2")
    assert not is_current(live, 3, f"{UID}:3")  # a new generation
    assert not is_current(live, 2, "other:2")  # re-created under the same name
    invalid = invalid_status({}, 3, "InvalidExpression", "x", NOW)
    assert is_current(invalid, 3, f"{UID}:3")
    waiting = pending_status(live, 3, "AwaitingAcknowledgement", "x", NOW)
    assert not is_current({**live, **waiting}, 3, f"{UID}:3")


def test_a_pending_status_does_not_claim_the_generation_was_observed() -> None:
    assert "observedGeneration" not in pending_status({}, 3, "FraudServiceUnavailable", "x", NOW)


def test_conditions_keep_their_transition_time_while_their_status_holds() -> None:
    first = merge_conditions([], [{"type": "Ready", "status": "True", "reason": "A"}], NOW)
    later = NOW + timedelta(minutes=5)
    same = merge_conditions(first, [{"type": "Ready", "status": "True", "reason": "B"}], later)
    flipped = merge_conditions(first, [{"type": "Ready", "status": "False", "reason": "C"}], later)
    assert same[0]["lastTransitionTime"] == "2026-11-30T10:00:00Z"
    assert same[0]["reason"] == "B"
    assert flipped[0]["lastTransitionTime"] == "2026-11-30T10:05:00Z"


def _document(expression: str) -> dict[str, object]:
    spec = {"description": "d", "expression": expression, "action": "review", "weight": 10}
    return rule_document("a-rule", spec, revision_of(UID, 1))


@pytest.mark.parametrize(
    "expression",
    [
        "txn.amount > 100000 && txn.currency == 'EUR'",
        "features.count_1m >= 5",
        "txn.type in ['payout', 'card_payment'] && features.near_threshold",
        "[txn.country, 'PT'].exists(c, c == 'BR') && features.new_country",
    ],
)
def test_expressions_over_the_rule_variables_are_accepted(expression: str) -> None:
    assert default_validator()(_document(expression)) is None


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("txn.amount >", "expression:"),
        ("account.balance < 0", "account"),
        ("txn.amount + 'x' > 1", "expression:"),
        ("txn.amount > " + "1" * 5000, "expression:"),
    ],
)
def test_broken_expressions_are_refused_with_a_reason(expression: str, message: str) -> None:
    problem = default_validator()(_document(expression))
    assert problem is not None
    assert message in problem
