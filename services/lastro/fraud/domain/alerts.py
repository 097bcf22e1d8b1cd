"""Alerts as cases people work on: raised, assigned, resolved as true or false positive.

An alert comes from one of two places:

- the streaming detectors (:mod:`.detectors`), for patterns across transactions;
- the screening itself, when its decision is ``review``: the money is held until a
  person resolves the alert, and the resolution is reported to the transaction
  service (``fraud`` releases the money and declines, ``legitimate`` posts it).

Lifecycle: ``open`` → ``assigned`` (any number of times, to change hands) →
``resolved``. Resolving again with the same resolution changes nothing; with the
other one it is refused (:class:`AlertAlreadyResolved`). Side effects that leave
the service (freezing the account, reporting a review outcome) are tracked on the
alert as :class:`Effect` states and retried until they are ``done`` or ``failed``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Final

from lastro.fraud.domain.decision import Decision, Outcome, Severity
from lastro.fraud.domain.detectors import Alert, EvidenceValue
from lastro.fraud.domain.errors import AlertAlreadyResolved
from lastro.fraud.domain.transactions import Transaction

SCREENING_TYPOLOGY: Final = "screening_review"
"""The typology of an alert raised because screening decided ``review``."""
MAX_NOTE: Final = 2000


class AlertStatus(StrEnum):
    OPEN = "open"
    ASSIGNED = "assigned"
    RESOLVED = "resolved"


class Resolution(StrEnum):
    TRUE_POSITIVE = "true_positive"
    FALSE_POSITIVE = "false_positive"

    @property
    def review_outcome(self) -> str:
        """What the transaction service is told for a held transaction."""
        return "fraud" if self is Resolution.TRUE_POSITIVE else "legitimate"


class Source(StrEnum):
    SCREENING = "screening"
    ANALYSER = "analyser"


class Effect(StrEnum):
    """A side effect outside this service: not needed, waiting, done, or given up."""

    NONE = "none"
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class NewAlert:
    """An alert about to be recorded; ``origin`` makes recording it idempotent (the
    same detection from a redelivered event or a retried screening is one alert)."""

    origin: str
    typology: str
    severity: Severity
    source: Source
    customer_id: str
    account_id: str | None
    transaction_id: str | None
    detector_id: str
    evidence: dict[str, EvidenceValue]
    rule_ids: tuple[str, ...] = ()
    related: tuple[str, ...] = ()
    freeze: Effect = Effect.NONE


@dataclass(frozen=True, slots=True)
class AlertCase:
    """A recorded alert and how far people (and the side effects) got with it."""

    id: str
    alert: NewAlert
    status: AlertStatus
    created_at: datetime
    updated_at: datetime
    assignee: str | None = None
    assigned_at: datetime | None = None
    resolution: Resolution | None = None
    resolved_by: str | None = None
    resolved_at: datetime | None = None
    note: str | None = None
    freeze: Effect = Effect.NONE
    freeze_detail: str | None = None
    review: Effect = Effect.NONE
    review_detail: str | None = None


def detected(alert: Alert, event_id: str) -> NewAlert:
    """A detector's alert as a case; high and critical ones ask for a freeze."""
    return NewAlert(
        origin=f"evt:{event_id}:{alert.typology.value}:{alert.customer_id}",
        typology=alert.typology.value,
        severity=alert.severity,
        source=Source.ANALYSER,
        customer_id=alert.customer_id,
        account_id=alert.account_id,
        transaction_id=alert.transaction_id,
        detector_id=alert.detector_id,
        evidence=dict(alert.evidence),
        rule_ids=alert.rule_ids,
        related=alert.related,
        freeze=Effect.PENDING if alert.freezes_account and alert.account_id else Effect.NONE,
    )


def screening_alert(txn: Transaction, decision: Decision) -> NewAlert | None:
    """The alert a ``review`` decision opens (None for any other decision): its
    severity is the highest of the enforced rules that fired, its evidence the
    score and each rule's feature values, its rules every rule that fired."""
    if decision.outcome is not Outcome.REVIEW:
        return None
    severity = max(
        (r.severity for r in decision.reasons), key=lambda s: s.rank, default=Severity.MEDIUM
    )
    evidence: dict[str, EvidenceValue] = {"score": decision.score, "decision": "review"}
    for reason in decision.reasons:
        for name, value in reason.features.items():
            evidence[f"{reason.rule_id}.{name}"] = value
    return NewAlert(
        origin=f"scr:{txn.transaction_id}",
        typology=SCREENING_TYPOLOGY,
        severity=severity,
        source=Source.SCREENING,
        customer_id=txn.customer_id,
        account_id=txn.own_account,
        transaction_id=txn.transaction_id,
        detector_id=f"ruleset:{decision.ruleset_version}",
        evidence=evidence,
        rule_ids=tuple(r.rule_id for r in (*decision.reasons, *decision.shadow)),
    )


def assign(case: AlertCase, assignee: str, at: datetime) -> AlertCase:
    """The case assigned to ``assignee``; a resolved alert is not reassigned."""
    if case.status is AlertStatus.RESOLVED:
        raise AlertAlreadyResolved(f"alert {case.id} is resolved", field="assignee")
    return replace(
        case, status=AlertStatus.ASSIGNED, assignee=assignee, assigned_at=at, updated_at=at
    )


def resolve(
    case: AlertCase,
    resolution: Resolution,
    by: str,
    note: str | None,
    at: datetime,
    *,
    held_for_review: bool,
) -> tuple[AlertCase, bool]:
    """The case resolved, and whether that changed it.

    The same resolution again returns the case unchanged (False); the other one
    raises AlertAlreadyResolved. ``held_for_review``: the alert's transaction waits
    in ``review`` for this answer, so reporting it becomes a pending effect.
    """
    if case.status is AlertStatus.RESOLVED:
        if case.resolution is resolution:
            return case, False
        raise AlertAlreadyResolved(
            f"alert {case.id} was resolved as {case.resolution}", field="resolution"
        )
    resolved = replace(
        case,
        status=AlertStatus.RESOLVED,
        resolution=resolution,
        resolved_by=by,
        resolved_at=at,
        note=note,
        updated_at=at,
        review=Effect.PENDING if held_for_review else Effect.NONE,
    )
    return resolved, True


def precision(true_positives: int, false_positives: int) -> float | None:
    """Share of resolved alerts that were fraud; None before any was resolved."""
    resolved = true_positives + false_positives
    return round(true_positives / resolved, 4) if resolved else None
