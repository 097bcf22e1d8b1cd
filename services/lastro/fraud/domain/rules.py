"""Fraud rules as data: validation, compilation and the versioned rule set.

A rule (docs/interfaces.md) is an id, a description, a boolean CEL expression
over ``txn``, ``features`` and ``now``, an action, a weight, a severity, a mode
(``shadow`` | ``enforce``), an enabled flag, the transaction types it applies to
and the publisher's revision. :func:`compile_rule` is the one validator: the
admin API, the rules topic consumer and the Kubernetes operator all call it, and
an invalid rule comes back as :class:`InvalidRule` naming the field and carrying
the CEL parse or type error text.

A :class:`RuleSet` is immutable. :meth:`RuleSet.upsert` and :meth:`RuleSet.delete`
return a new set with the next version, compiling first, so an invalid rule
raises and the working set is untouched. :meth:`RuleSet.screen` evaluates every
enabled rule that applies to the transaction type; a rule whose expression fails
on the values at hand (division by zero, overflow, the iteration budget) is
reported in ``Decision.failed`` and does not fire.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

from lastro.fraud.domain.decision import (
    Action,
    Decision,
    FeatureValue,
    Mode,
    Outcome,
    Reason,
    ScoreBands,
    Severity,
    decide,
)
from lastro.fraud.domain.expressions import (
    Bindings,
    CompiledExpression,
    EvaluationError,
    ExpressionError,
)
from lastro.fraud.domain.features import Features
from lastro.fraud.domain.transactions import Transaction, TransactionType

RULE_ID: Final = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
"""A DNS label (RFC 1123), as Kubernetes requires of ``metadata.name``."""
RESERVED_IDS: Final = frozenset({"stats"})
"""Ids the rules admin API uses as paths of its own (``GET /v1/rules/stats``)."""
MAX_DESCRIPTION: Final = 500
MAX_REVISION: Final = 200


class InvalidRule(ValueError):
    """A rule that cannot be used; ``field`` is the offending field, ``message`` why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Rule:
    """A fraud rule as published (API, topic, FraudRule resource)."""

    id: str
    expression: str
    action: Action
    description: str = ""
    weight: int = 0
    severity: Severity = Severity.MEDIUM
    mode: Mode = Mode.SHADOW
    enabled: bool = True
    transaction_types: tuple[TransactionType, ...] = ()
    revision: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "description": self.description,
            "expression": self.expression,
            "action": self.action.value,
            "weight": self.weight,
            "severity": self.severity.value,
            "mode": self.mode.value,
            "enabled": self.enabled,
            "transaction_types": [t.value for t in self.transaction_types],
            "revision": self.revision,
        }


def _choice(data: Mapping[str, object], name: str, kind: type[Any], default: Any = None) -> Any:
    value = data.get(name, default)
    if value is None:
        raise InvalidRule(name, "is required")
    try:
        return kind(value)
    except ValueError:
        allowed = "|".join(member.value for member in kind)
        raise InvalidRule(name, f"must be one of {allowed}") from None


def _string(data: Mapping[str, object], name: str, limit: int, default: str | None = None) -> str:
    value = data.get(name, default)
    if not isinstance(value, str):
        raise InvalidRule(name, "must be a string")
    if len(value) > limit:
        raise InvalidRule(name, f"must be at most {limit} characters")
    return value


def parse_rule(data: Mapping[str, object]) -> Rule:
    """A :class:`Rule` from its JSON form (``transaction_types`` in snake case).

    Checks the shape only; :func:`compile_rule` also compiles the expression.
    Raises InvalidRule.
    """
    rule_id = data.get("id")
    if not isinstance(rule_id, str) or not RULE_ID.match(rule_id):
        raise InvalidRule("id", "must be a DNS label: a-z, 0-9 and '-', at most 63 characters")
    if rule_id in RESERVED_IDS:
        raise InvalidRule("id", f"{rule_id!r} is reserved")
    expression = data.get("expression")
    if not isinstance(expression, str):
        raise InvalidRule("expression", "must be a string holding a CEL expression")
    action = _choice(data, "action", Action)
    weight = data.get("weight", 0)
    if action is Action.SCORE and "weight" not in data:
        raise InvalidRule("weight", "is required for action score")
    if type(weight) is not int or not 0 <= weight <= 100:
        raise InvalidRule("weight", "must be an integer from 0 to 100")
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise InvalidRule("enabled", "must be true or false")
    types = data.get("transaction_types", [])
    if not isinstance(types, list | tuple):
        raise InvalidRule("transaction_types", "must be a list")
    try:
        parsed_types = tuple(dict.fromkeys(TransactionType(t) for t in types))
    except ValueError:
        allowed = "|".join(t.value for t in TransactionType)
        raise InvalidRule("transaction_types", f"items must be one of {allowed}") from None
    return Rule(
        id=rule_id,
        expression=expression,
        action=action,
        description=_string(data, "description", MAX_DESCRIPTION, ""),
        weight=weight,
        severity=_choice(data, "severity", Severity, Severity.MEDIUM.value),
        mode=_choice(data, "mode", Mode, Mode.SHADOW.value),
        enabled=enabled,
        transaction_types=parsed_types,
        revision=_string(data, "revision", MAX_REVISION, ""),
    )


API_VERSION: Final = "lastro.io/v1alpha1"
KIND: Final = "FraudRule"
_SPEC_FIELDS: Final = {
    "description": "description",
    "expression": "expression",
    "action": "action",
    "weight": "weight",
    "severity": "severity",
    "mode": "mode",
    "enabled": "enabled",
    "transactionTypes": "transaction_types",
}


def rule_from_resource(resource: Mapping[str, object]) -> Rule:
    """The :class:`Rule` a FraudRule custom resource describes (id = ``metadata.name``).

    The revision is ``<uid>:<generation>`` when the resource carries them (the
    operator's convention), else empty: the caller sets it (the file loader uses a
    digest of the spec).
    Raises InvalidRule, naming fields as they appear in the resource.
    """
    if resource.get("apiVersion") != API_VERSION or resource.get("kind") != KIND:
        raise InvalidRule("kind", f"must be apiVersion {API_VERSION}, kind {KIND}")
    metadata, spec = resource.get("metadata"), resource.get("spec")
    if not isinstance(metadata, Mapping) or not isinstance(spec, Mapping):
        raise InvalidRule("spec", "metadata and spec must be objects")
    unknown = sorted(str(key) for key in spec if key not in _SPEC_FIELDS)
    if unknown:
        raise InvalidRule(f"spec.{unknown[0]}", "is not a FraudRule field")
    data: dict[str, object] = {_SPEC_FIELDS[key]: value for key, value in spec.items()}
    data["id"] = metadata.get("name")
    uid, generation = metadata.get("uid"), metadata.get("generation")
    if uid is not None and generation is not None:
        data["revision"] = f"{uid}:{generation}"
    try:
        return parse_rule(data)
    except InvalidRule as exc:
        name = "metadata.name" if exc.field == "id" else f"spec.{_resource_field(exc.field)}"
        raise InvalidRule(name, exc.message) from None


def _resource_field(name: str) -> str:
    return {v: k for k, v in _SPEC_FIELDS.items()}.get(name, name)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A valid rule with its type-checked expression."""

    rule: Rule
    expression: CompiledExpression = field(compare=False)

    def applies_to(self, txn: Transaction) -> bool:
        types = self.rule.transaction_types
        return self.rule.enabled and (not types or txn.type in types)

    def reason(self, features: Features) -> Reason:
        rule = self.rule
        values: dict[str, FeatureValue] = {
            name: getattr(features, name) for name in self.expression.features
        }
        return Reason(
            rule.id, rule.mode, rule.action, rule.severity, rule.description, rule.weight, values
        )


def compile_rule(rule: Rule | Mapping[str, object]) -> CompiledRule:
    """Validate and compile ``rule``; raises InvalidRule with the CEL error text.

    Pure and side-effect free: the admin API, the rules topic consumer and the
    Kubernetes operator's validation call it on untrusted input. The expression is
    parsed and type-checked, never run.
    """
    parsed = rule if isinstance(rule, Rule) else parse_rule(rule)
    try:
        expression = CompiledExpression(parsed.expression)
    except ExpressionError as exc:
        raise InvalidRule("expression", str(exc)) from None
    return CompiledRule(parsed, expression)


def validate_rule(rule: Rule | Mapping[str, object]) -> str | None:
    """None if ``rule`` is valid, else the error text ("expression: <CEL error>")."""
    try:
        compile_rule(rule)
    except InvalidRule as exc:
        return str(exc)
    return None


@dataclass(frozen=True, slots=True)
class RuleSet:
    """An immutable, versioned set of compiled rules; changes make a new version."""

    version: int
    rules: Mapping[str, CompiledRule]
    bands: ScoreBands = field(default_factory=ScoreBands)

    @classmethod
    def of(cls, rules: Iterable[Rule | CompiledRule], version: int = 1) -> RuleSet:
        """A set holding ``rules`` (compiled here if needed; an invalid one raises)."""
        compiled = [r if isinstance(r, CompiledRule) else compile_rule(r) for r in rules]
        by_id: dict[str, CompiledRule] = {}
        for rule in compiled:
            if rule.rule.id in by_id:
                raise InvalidRule("id", f"{rule.rule.id!r} appears twice")
            by_id[rule.rule.id] = rule
        return cls(version, MappingProxyType(dict(sorted(by_id.items()))))

    def get(self, rule_id: str) -> Rule | None:
        compiled = self.rules.get(rule_id)
        return compiled.rule if compiled else None

    def upsert(self, rule: Rule | Mapping[str, object]) -> RuleSet:
        """A new version with ``rule`` created or replaced; raises InvalidRule (self unchanged).

        Publishing a rule identical to the one in the set returns this set, so a
        redelivered message does not bump the version.
        """
        compiled = compile_rule(rule)
        current = self.rules.get(compiled.rule.id)
        if current is not None and current.rule == compiled.rule:
            return self
        rules = {**self.rules, compiled.rule.id: compiled}
        return replace(
            self, version=self.version + 1, rules=MappingProxyType(dict(sorted(rules.items())))
        )

    def delete(self, rule_id: str) -> RuleSet:
        """A new version without ``rule_id``; this set if it holds no such rule."""
        if rule_id not in self.rules:
            return self
        rules = {k: v for k, v in self.rules.items() if k != rule_id}
        return replace(self, version=self.version + 1, rules=MappingProxyType(rules))

    def screen(self, txn: Transaction, features: Features, now: datetime) -> Decision:
        """Evaluate the enabled rules for ``txn``; never raises for a failing rule."""
        bindings = Bindings(txn, features, now)
        enforced: list[Reason] = []
        shadow: list[Reason] = []
        failed: list[str] = []
        for compiled in self.rules.values():
            if not compiled.applies_to(txn):
                continue
            try:
                fired = compiled.expression.matches(bindings)
            except EvaluationError:
                failed.append(compiled.rule.id)
                continue
            if fired:
                hits = enforced if compiled.rule.mode is Mode.ENFORCE else shadow
                hits.append(compiled.reason(features))
        outcome, score = decide(enforced, self.bands)
        shadow_outcome, _ = decide([*enforced, *shadow], self.bands)
        return Decision(
            outcome=outcome,
            score=score,
            ruleset_version=self.version,
            reasons=tuple(enforced),
            shadow=tuple(shadow),
            shadow_outcome=shadow_outcome if shadow else outcome,
            failed=tuple(failed),
        )


EMPTY: Final = RuleSet(0, MappingProxyType({}))
"""The set a service starts from before any rule is loaded; every screening approves."""

__all__ = [
    "EMPTY",
    "Action",
    "CompiledRule",
    "InvalidRule",
    "Mode",
    "Outcome",
    "Rule",
    "RuleSet",
    "Severity",
    "compile_rule",
    "parse_rule",
    "rule_from_resource",
    "validate_rule",
]
