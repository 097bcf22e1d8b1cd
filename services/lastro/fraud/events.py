"""What the fraud service publishes and consumes (docs/interfaces.md).

Publishes (through the outbox)
    ``lastro.fraud``        ``lastro.fraud.alert_raised``, ``lastro.fraud.alert_resolved``
                            (key: the customer id)
    ``lastro.fraud.rules``  ``lastro.fraud.rule_upserted`` (data: the rule),
                            ``lastro.fraud.rule_deleted`` (data: ``{"id", "revision"}``);
                            compacted, key = rule id

Consumes
    ``lastro.transactions`` every ``lastro.transaction.<status>`` event (the analyser,
                            consumer group ``fraud-analyser``, through the inbox)
    ``lastro.fraud.rules``  from the beginning, in every API replica (:mod:`.rulelog`)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from lastro.fraud.domain.alerts import AlertCase
from lastro.fraud.domain.rules import InvalidRule, Rule, parse_rule

SOURCE: Final = "/fraud"
FRAUD_TOPIC: Final = "lastro.fraud"
RULES_TOPIC: Final = "lastro.fraud.rules"
TRANSACTIONS_TOPIC: Final = "lastro.transactions"

ALERT_RAISED: Final = "lastro.fraud.alert_raised"
ALERT_RESOLVED: Final = "lastro.fraud.alert_resolved"
RULE_UPSERTED: Final = "lastro.fraud.rule_upserted"
RULE_DELETED: Final = "lastro.fraud.rule_deleted"

ANALYSER_GROUP: Final = "lastro-fraud-analyser"
"""The consumer group name the Helm chart scales the analyser by (consumer lag)."""


def alert_raised(case: AlertCase) -> dict[str, Any]:
    """``lastro.fraud.alert_raised`` data: what was seen and the numbers behind it."""
    alert = case.alert
    return {
        "alert_id": case.id,
        "typology": alert.typology,
        "severity": alert.severity.value,
        "source": alert.source.value,
        "customer_id": alert.customer_id,
        "account_id": alert.account_id,
        "transaction_id": alert.transaction_id,
        "evidence": alert.evidence,
        "rule_ids": list(alert.rule_ids),
        "freeze_requested": alert.freeze.value == "pending",
        "raised_at": case.created_at.isoformat(),
    }


def alert_resolved(case: AlertCase) -> dict[str, Any]:
    """``lastro.fraud.alert_resolved`` data (the note stays in the service)."""
    return {
        "alert_id": case.id,
        "typology": case.alert.typology,
        "customer_id": case.alert.customer_id,
        "account_id": case.alert.account_id,
        "transaction_id": case.alert.transaction_id,
        "resolution": None if case.resolution is None else case.resolution.value,
        "resolved_by": case.resolved_by,
        "resolved_at": None if case.resolved_at is None else case.resolved_at.isoformat(),
    }


@dataclass(frozen=True, slots=True)
class RuleUpserted:
    rule: Rule


@dataclass(frozen=True, slots=True)
class RuleDeleted:
    rule_id: str
    revision: str


RuleChange = RuleUpserted | RuleDeleted


class UnknownRuleEvent(ValueError):
    """A record on the rules topic that is not a rule change this code knows."""


def rule_change(event_type: str, data: Mapping[str, Any]) -> RuleChange:
    """The change a rules-topic event describes (shape only; the caller compiles).
    Raises InvalidRule or UnknownRuleEvent."""
    if event_type == RULE_UPSERTED:
        return RuleUpserted(parse_rule(data))
    if event_type == RULE_DELETED:
        rule_id, revision = data.get("id"), data.get("revision", "")
        if not isinstance(rule_id, str) or not isinstance(revision, str):
            raise InvalidRule("id", "a deletion names the rule id and revision as strings")
        return RuleDeleted(rule_id, revision)
    raise UnknownRuleEvent(f"{event_type!r} is not a rule change")
