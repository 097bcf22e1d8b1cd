"""Rules: validation, compilation (hostile expressions included), versioned sets, screening."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fraudkit import T0, make_txn

from lastro.fraud.domain.decision import Action, Mode, Outcome, Severity
from lastro.fraud.domain.expressions import MAX_EXPRESSION_LENGTH
from lastro.fraud.domain.features import Features, compute_features
from lastro.fraud.domain.profiles import CustomerProfile
from lastro.fraud.domain.rules import (
    EMPTY,
    InvalidRule,
    Rule,
    RuleSet,
    compile_rule,
    parse_rule,
    rule_from_resource,
    validate_rule,
)
from lastro.fraud.domain.transactions import Transaction, TransactionType


def rule(expression: str = "txn.amount > 100", **fields: Any) -> Rule:
    values: dict[str, Any] = {"id": "r1", "expression": expression, "action": Action.REVIEW}
    values.update(fields)
    return Rule(**values)


def features_for(txn: Transaction) -> Features:
    return compute_features(CustomerProfile(txn.customer_id), txn)


def screen(rules: RuleSet, txn: Transaction | None = None) -> Any:
    txn = txn or make_txn()
    return rules.screen(txn, features_for(txn), now=T0)


# --- validation -----------------------------------------------------------------------


def test_a_rule_in_its_json_form_parses_with_the_contract_defaults() -> None:
    parsed = parse_rule({"id": "big", "expression": "txn.amount > 1", "action": "decline"})
    assert parsed.mode is Mode.SHADOW and parsed.severity is Severity.MEDIUM
    assert parsed.enabled and parsed.transaction_types == () and parsed.weight == 0
    assert parse_rule(parsed.to_json()) == parsed


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"id": "Not_A_Label"}, "id"),
        ({"id": "x" * 64}, "id"),
        ({"action": "freeze"}, "action"),
        ({"action": "score"}, "weight"),  # weight is required for score
        ({"weight": 101}, "weight"),
        ({"weight": 2.5}, "weight"),
        ({"mode": "observe"}, "mode"),
        ({"severity": "urgent"}, "severity"),
        ({"enabled": "yes"}, "enabled"),
        ({"transaction_types": ["wire"]}, "transaction_types"),
        ({"transaction_types": "transfer"}, "transaction_types"),
        ({"expression": 42}, "expression"),
        ({"description": "x" * 501}, "description"),
    ],
)
def test_malformed_rules_are_rejected_naming_the_field(data: dict[str, Any], field: str) -> None:
    base = {"id": "r1", "expression": "true", "action": "review"}
    with pytest.raises(InvalidRule) as caught:
        compile_rule({**base, **data})
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("txn.amount >", "Syntax error"),
        ("txn.amount > 'big'", "no matching overload"),
        ("txn.amount > 1.5", "no matching overload"),
        ("features.count_1mm > 3", "undefined field 'count_1mm'"),
        ("customer.blocked", "undeclared reference to 'customer.blocked'"),
        ("txn.amount", "must be a bool; it is int"),
        ("", "empty"),
    ],
)
def test_an_invalid_expression_comes_back_with_the_cel_error(expression: str, message: str) -> None:
    error = validate_rule(rule(expression))
    assert error is not None and error.startswith("expression: ")
    assert message in error


def test_a_valid_rule_validates_to_none() -> None:
    assert validate_rule(rule("features.count_1m >= 4 && txn.type == 'transfer'")) is None


# --- hostile expressions --------------------------------------------------------------

SENTINEL = Path("/tmp/lastro-fraud-cel-sentinel")


@pytest.mark.parametrize(
    "expression",
    [
        "txn.__class__.__bases__ != null",
        "__import__('os').system('touch /tmp/lastro-fraud-cel-sentinel') == 0",
        "eval('1') == 1",
        "exec('import os') == null",
        "txn.amount.__add__(1) > 0",
        "getattr(txn, 'amount') > 0",
        "open('/etc/passwd') != null",
    ],
)
def test_attribute_and_code_access_is_rejected_at_compile_time(expression: str) -> None:
    with pytest.raises(InvalidRule) as caught:
        compile_rule(rule(expression))
    assert caught.value.field == "expression"
    assert not SENTINEL.exists()


def test_strings_that_look_like_code_are_only_data() -> None:
    compiled = RuleSet.of(
        [rule('\'__import__("os").system("touch ' + str(SENTINEL) + "\")' != txn.ip")]
    )
    decision = screen(compiled)
    assert decision.failed == () and len(decision.reasons) == 0  # shadow by default
    assert not SENTINEL.exists()


def test_deep_nesting_is_rejected_at_compile_time() -> None:
    error = validate_rule(rule("(" * 100 + "txn.amount > 1" + ")" * 100))
    assert error is not None and "recursion" in error


def test_huge_expressions_are_rejected_at_compile_time() -> None:
    huge = "txn.ip == '" + "a" * MAX_EXPRESSION_LENGTH + "'"
    error = validate_rule(rule(huge))
    assert error is not None and f"at most {MAX_EXPRESSION_LENGTH}" in error


def test_more_than_two_comprehensions_are_rejected() -> None:
    expression = "[1].all(a, [2].all(b, [3].exists(c, a + b + c > 0)))"
    error = validate_rule(rule(expression))
    assert error is not None and "comprehensions" in error


def test_a_huge_comprehension_fails_safely_within_the_iteration_budget() -> None:
    items = "[" + ",".join(str(n) for n in range(150)) + "]"  # 22 500 iterations
    loop = rule(f"{items}.all(a, {items}.all(b, a + b >= 0))", mode=Mode.ENFORCE)
    cheap = rule("txn.amount > 1", id="r2", mode=Mode.ENFORCE)
    decision = screen(RuleSet.of([loop, cheap]))
    assert decision.failed == ("r1",)
    assert [r.rule_id for r in decision.reasons] == ["r2"]


@pytest.mark.parametrize(
    "expression",
    [
        "txn.amount / features.count_1m > 1",  # division by zero
        "txn.amount * 9223372036854775807 > 0",  # overflow
        "int(txn.ip) > 0",  # a failed conversion
        "[1, 2][features.count_24h + 5] > 0",  # index out of range
        "dyn(txn.ip) > 3",  # a type error only visible at run time
    ],
)
def test_rules_that_fail_at_run_time_do_not_fire_and_are_reported(expression: str) -> None:
    failing = rule(expression, mode=Mode.ENFORCE, action=Action.DECLINE)
    decision = screen(RuleSet.of([failing]))
    assert decision.failed == ("r1",)
    assert decision.outcome is Outcome.APPROVE and decision.reasons == ()


def test_missing_optional_fields_read_as_empty_and_has_tells_them_apart() -> None:
    rules = RuleSet.of(
        [
            rule("has(txn.location) && txn.location.lat > 0.0", id="located", mode=Mode.ENFORCE),
            rule("txn.device_id == ''", id="no-device", mode=Mode.ENFORCE),
        ]
    )
    bare = make_txn(location=None, device_id=None)
    assert [r.rule_id for r in screen(rules, bare).reasons] == ["no-device"]
    assert [r.rule_id for r in screen(rules, make_txn()).reasons] == ["located"]


# --- rule sets ------------------------------------------------------------------------


def test_upsert_and_delete_make_new_versions_and_leave_the_old_set_alone() -> None:
    v1 = RuleSet.of([rule(id="a")])
    v2 = v1.upsert(rule(id="b"))
    v3 = v2.delete("a")
    assert (v1.version, v2.version, v3.version) == (1, 2, 3)
    assert list(v1.rules) == ["a"] and list(v2.rules) == ["a", "b"] and list(v3.rules) == ["b"]
    with pytest.raises(TypeError):
        v3.rules["x"] = v3.rules["b"]  # type: ignore[index]


def test_an_invalid_rule_never_replaces_a_working_one() -> None:
    working = RuleSet.of([rule(id="a")])
    with pytest.raises(InvalidRule):
        working.upsert(rule("txn.amount >", id="a"))
    assert working.version == 1 and working.get("a") == rule(id="a")


def test_republishing_an_identical_rule_keeps_the_version() -> None:
    rules = RuleSet.of([rule(id="a")])
    assert rules.upsert(rule(id="a")) is rules
    assert rules.delete("missing") is rules
    assert rules.upsert(rule(id="a", revision="uid:2")).version == 2


def test_duplicate_ids_are_rejected() -> None:
    with pytest.raises(InvalidRule):
        RuleSet.of([rule(id="a"), rule(id="a")])


def test_an_empty_set_approves_everything() -> None:
    decision = screen(EMPTY)
    assert decision.outcome is Outcome.APPROVE and decision.ruleset_version == 0


# --- screening ------------------------------------------------------------------------


def test_the_strongest_enforced_action_decides() -> None:
    rules = RuleSet.of(
        [
            rule(id="challenge", action=Action.CHALLENGE, mode=Mode.ENFORCE),
            rule(id="review", action=Action.REVIEW, mode=Mode.ENFORCE),
            rule(id="never", action=Action.DECLINE, mode=Mode.ENFORCE, expression="false"),
        ]
    )
    decision = screen(rules)
    assert decision.outcome is Outcome.REVIEW
    assert [r.rule_id for r in decision.reasons] == ["challenge", "review"]


def test_scores_add_up_capped_and_reach_their_bands() -> None:
    def scored(*weights: int) -> Any:
        rules = [
            rule(id=f"s{n}", action=Action.SCORE, weight=w, mode=Mode.ENFORCE)
            for n, w in enumerate(weights)
        ]
        return screen(RuleSet.of(rules))

    assert (scored(20, 20).outcome, scored(20, 20).score) == (Outcome.APPROVE, 40)
    assert scored(30, 20).outcome is Outcome.CHALLENGE
    assert scored(50, 25).outcome is Outcome.REVIEW
    assert scored(90, 90).score == 100


def test_shadow_rules_are_recorded_without_effect() -> None:
    rules = RuleSet.of([rule(id="s", action=Action.DECLINE, mode=Mode.SHADOW)])
    decision = screen(rules)
    assert decision.outcome is Outcome.APPROVE and decision.reasons == ()
    assert [r.rule_id for r in decision.shadow] == ["s"]
    assert decision.shadow_outcome is Outcome.DECLINE
    assert decision.to_json()["shadow"][0]["action"] == "decline"


def test_switching_a_rule_to_enforce_changes_the_next_decision_and_version() -> None:
    shadow = rule(id="big", action=Action.DECLINE, mode=Mode.SHADOW)
    before = RuleSet.of([shadow])
    after = before.upsert(replace(shadow, mode=Mode.ENFORCE))
    assert screen(before).outcome is Outcome.APPROVE
    decision = screen(after)
    assert decision.outcome is Outcome.DECLINE and decision.ruleset_version == 2


def test_disabled_rules_and_other_transaction_types_are_skipped() -> None:
    rules = RuleSet.of(
        [
            rule(id="off", mode=Mode.ENFORCE, enabled=False),
            rule(id="cards", mode=Mode.ENFORCE, transaction_types=(TransactionType.CARD_PAYMENT,)),
        ]
    )
    assert screen(rules).reasons == ()
    card = make_txn(type=TransactionType.CARD_PAYMENT)
    assert [r.rule_id for r in screen(rules, card).reasons] == ["cards"]


def test_reasons_carry_the_feature_values_the_expression_read() -> None:
    rules = RuleSet.of(
        [
            rule(
                "features.count_1m >= 0 && !features.new_device && txn.amount > 1",
                mode=Mode.ENFORCE,
                description="why",
                severity=Severity.HIGH,
            )
        ]
    )
    reason = screen(rules).reasons[0]
    assert reason.features == {"count_1m": 0, "new_device": False}
    assert reason.to_json() == {
        "rule_id": "r1",
        "mode": "enforce",
        "action": "review",
        "severity": "high",
        "description": "why",
        "weight": 0,
        "features": {"count_1m": 0, "new_device": False},
    }


def test_the_decision_renders_the_screening_response_fields() -> None:
    body = screen(RuleSet.of([rule(mode=Mode.ENFORCE)], version=7)).to_json()
    assert body["decision"] == "review" and body["ruleset_version"] == 7
    assert set(body) == {"decision", "score", "ruleset_version", "reasons", "shadow"}


# --- FraudRule resources -----------------------------------------------------------------


def resource(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "lastro.io/v1alpha1",
        "kind": "FraudRule",
        "metadata": {"name": "velocity", "uid": "u-1", "generation": 3},
        "spec": {"expression": "features.count_1m >= 4", "action": "review", **spec},
    }


def test_a_fraudrule_resource_becomes_a_rule() -> None:
    parsed = rule_from_resource(resource(transactionTypes=["payout"], mode="enforce"))
    assert parsed.id == "velocity" and parsed.revision == "u-1:3"
    assert parsed.transaction_types == (TransactionType.PAYOUT,)
    assert parsed.mode is Mode.ENFORCE


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({**resource(), "kind": "RetentionPolicy"}, "kind"),
        (resource(threshold=3), "spec.threshold"),
        (resource(transactionTypes=["wire"]), "spec.transactionTypes"),
        ({**resource(), "metadata": {"name": "Bad Name"}}, "metadata.name"),
    ],
)
def test_malformed_resources_name_the_resource_field(document: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRule) as caught:
        rule_from_resource(document)
    assert caught.value.field == field
