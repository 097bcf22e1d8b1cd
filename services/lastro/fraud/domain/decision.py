"""What screening answers: the outcome, the score and why (docs/interfaces.md)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Action(StrEnum):
    """What a fired rule asks for, weakest first (``score`` only adds its weight)."""

    SCORE = "score"
    CHALLENGE = "challenge"
    REVIEW = "review"
    DECLINE = "decline"


class Outcome(StrEnum):
    """The screening decision, weakest first.

    ``challenge`` asks the customer for a TOTP step-up; ``review`` holds the funds
    until a person resolves the alert; ``decline`` refuses the transaction.
    """

    APPROVE = "approve"
    CHALLENGE = "challenge"
    REVIEW = "review"
    DECLINE = "decline"

    @property
    def rank(self) -> int:
        return _OUTCOME_RANK[self]

    @classmethod
    def of(cls, action: Action) -> Outcome:
        return cls.APPROVE if action is Action.SCORE else cls(action.value)


_OUTCOME_RANK = {outcome: rank for rank, outcome in enumerate(Outcome)}


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {severity: rank for rank, severity in enumerate(Severity)}


class Mode(StrEnum):
    """``shadow`` rules are evaluated and recorded without effect; ``enforce`` rules decide."""

    SHADOW = "shadow"
    ENFORCE = "enforce"


FeatureValue = int | float | bool


@dataclass(frozen=True, slots=True)
class Reason:
    """A rule that fired: which, how it is configured, and the feature values it read."""

    rule_id: str
    mode: Mode
    action: Action
    severity: Severity
    description: str
    weight: int
    features: dict[str, FeatureValue]

    def to_json(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "mode": self.mode.value,
            "action": self.action.value,
            "severity": self.severity.value,
            "description": self.description,
            "weight": self.weight,
            "features": dict(self.features),
        }


@dataclass(frozen=True, slots=True)
class ScoreBands:
    """The outcome a total score reaches without any rule asking for more."""

    challenge: int = 50
    review: int = 75

    def outcome(self, score: int) -> Outcome:
        if score >= self.review:
            return Outcome.REVIEW
        if score >= self.challenge:
            return Outcome.CHALLENGE
        return Outcome.APPROVE


MAX_SCORE = 100


@dataclass(frozen=True, slots=True)
class Decision:
    """The screening answer.

    ``outcome`` is the strongest of: the actions of the enforced rules that fired,
    and the band the ``score`` (their weights summed, capped at 100) reaches.
    ``shadow`` lists shadow rules that fired and ``shadow_outcome`` what the
    outcome would have been had they been enforced; ``failed`` lists rules whose
    expression could not be evaluated on this transaction (they do not fire).
    """

    outcome: Outcome
    score: int
    ruleset_version: int
    reasons: tuple[Reason, ...]
    shadow: tuple[Reason, ...]
    shadow_outcome: Outcome
    failed: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The body fields of the screening response (without ``screening_id``)."""
        return {
            "decision": self.outcome.value,
            "score": self.score,
            "ruleset_version": self.ruleset_version,
            "reasons": [reason.to_json() for reason in self.reasons],
            "shadow": [reason.to_json() for reason in self.shadow],
        }


def decide(fired: list[Reason], bands: ScoreBands) -> tuple[Outcome, int]:
    """The outcome and capped score of ``fired`` rules (all treated as enforced)."""
    score = min(MAX_SCORE, sum(reason.weight for reason in fired))
    outcome = bands.outcome(score)
    for reason in fired:
        candidate = Outcome.of(reason.action)
        if candidate.rank > outcome.rank:
            outcome = candidate
    return outcome, score
