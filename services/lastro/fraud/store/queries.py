"""Every query of the fraud schema, returning domain values.

Each function runs on the caller's connection (:data:`lastro.core.db.Tx`), so use
cases decide the transaction boundaries; :func:`log_screenings` alone runs on the
decision log's pool, a statement committed by itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, Final

from sqlalchemy import Column, Row, and_, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert

from lastro.core.db import StatementPool, Tx, fetch_statement
from lastro.fraud.domain.alerts import (
    AlertCase,
    AlertStatus,
    Effect,
    NewAlert,
    Resolution,
    Source,
)
from lastro.fraud.domain.decision import Outcome, Severity
from lastro.fraud.domain.screening import ScreeningRecord
from lastro.fraud.store.tables import alerts, outbox, screenings

# ---------------------------------------------------------------- screenings


_SCREENING_COLUMNS: Final = (
    "transaction_id",
    "id",
    "customer_id",
    "fingerprint",
    "request",
    "decision",
    "score",
    "ruleset_version",
    "reasons",
    "shadow",
    "enforced_rules",
    "shadow_rules",
    "failed_rules",
    "shadow_decision",
    "screened_at",
)
_JSON_COLUMNS: Final = frozenset({"request", "reasons", "shadow"})


def _screening_params(record: ScreeningRecord) -> tuple[Any, ...]:
    """One row of :func:`_insert_screenings_sql`, in column order (JSON as text)."""
    return (
        record.transaction_id,
        record.id,
        record.customer_id,
        record.fingerprint,
        json.dumps(record.request, separators=(",", ":")),
        record.outcome.value,
        record.score,
        record.ruleset_version,
        json.dumps(record.reasons, separators=(",", ":")),
        json.dumps(record.shadow, separators=(",", ":")),
        record.enforced_rules,
        record.shadow_rules,
        list(record.failed),
        record.shadow_outcome.value,
        record.screened_at,
    )


@cache
def _insert_screenings_sql(schema: str, rows: int) -> str:
    """A multi-row INSERT of ``rows`` decisions into ``schema``; a transaction that has
    a decision already keeps it; returns the transaction ids written. Plain SQL with
    numbered parameters, so the decision log runs it on the driver
    (:func:`log_screenings`) and a transaction through SQLAlchemy
    (:func:`insert_screenings`)."""
    width = len(_SCREENING_COLUMNS)
    casts = ["::jsonb" if c in _JSON_COLUMNS else "" for c in _SCREENING_COLUMNS]
    values = ", ".join(
        "(" + ", ".join(f"${row * width + i + 1}{casts[i]}" for i in range(width)) + ")"
        for row in range(rows)
    )
    table = f'"{schema}".{screenings.name}'  # a checked identifier (core/config.py)
    return (
        f"INSERT INTO {table} ({', '.join(_SCREENING_COLUMNS)}) VALUES {values}"  # noqa: S608
        " ON CONFLICT (transaction_id) DO NOTHING RETURNING transaction_id"
    )


def insert_screenings_statement(
    schema: str, records: Sequence[ScreeningRecord]
) -> tuple[str, list[Any]]:
    """The SQL text and parameters that record ``records`` (both paths below run it)."""
    params: list[Any] = []
    for record in records:
        params += _screening_params(record)
    return _insert_screenings_sql(schema, len(records)), params


async def insert_screenings(tx: Tx, schema: str, records: Sequence[ScreeningRecord]) -> set[str]:
    """Record many decisions in ``tx`` with one statement; the transaction ids written
    (a transaction that has a decision already keeps it)."""
    sql, params = insert_screenings_statement(schema, records)
    inserted = await tx.exec_driver_sql(sql, tuple(params))
    return {row[0] for row in inserted}


async def log_screenings(
    pool: StatementPool, schema: str, records: Sequence[ScreeningRecord]
) -> set[str]:
    """:func:`insert_screenings` as a statement of its own on the decision log's pool
    (committed by itself; safe to run again: a written decision is kept)."""
    sql, params = insert_screenings_statement(schema, records)
    return {row[0] for row in await fetch_statement(pool, sql, *params)}


def _screening(row: Row[Any]) -> ScreeningRecord:
    return ScreeningRecord(
        id=row.id,
        transaction_id=row.transaction_id,
        customer_id=row.customer_id,
        fingerprint=row.fingerprint,
        request=row.request,
        outcome=Outcome(row.decision),
        score=row.score,
        ruleset_version=row.ruleset_version,
        reasons=list(row.reasons),
        shadow=list(row.shadow),
        failed=tuple(row.failed_rules),
        shadow_outcome=Outcome(row.shadow_decision),
        screened_at=row.screened_at,
    )


async def get_screenings(tx: Tx, transaction_ids: list[str]) -> dict[str, ScreeningRecord]:
    rows = await tx.execute(
        select(screenings).where(screenings.c.transaction_id.in_(transaction_ids))
    )
    return {row.transaction_id: _screening(row) for row in rows}


async def get_screening(tx: Tx, transaction_id: str) -> ScreeningRecord | None:
    row = (
        await tx.execute(select(screenings).where(screenings.c.transaction_id == transaction_id))
    ).first()
    return None if row is None else _screening(row)


async def screenings_of_customer(tx: Tx, customer_id: str) -> list[ScreeningRecord]:
    rows = await tx.execute(
        select(screenings)
        .where(screenings.c.customer_id == customer_id)
        .order_by(screenings.c.screened_at)
    )
    return [_screening(row) for row in rows]


async def anonymize_screenings(tx: Tx, customer_id: str, at: datetime) -> int:
    """Clear the request (device, IP, place) of the customer's screenings; decisions stay."""
    result = await tx.execute(
        update(screenings)
        .where(screenings.c.customer_id == customer_id, screenings.c.request.is_not(None))
        .values(request=None, anonymized_at=at)
    )
    return int(result.rowcount)


async def age_out_screenings(tx: Tx, cutoff: datetime, *, remove: bool, dry_run: bool) -> int:
    """Screenings older than ``cutoff``: deleted (``remove``) or their request cleared."""
    old = screenings.c.screened_at < cutoff
    if not remove:
        old = and_(old, screenings.c.request.is_not(None))
    if dry_run:
        return int((await tx.execute(select(func.count()).where(old))).scalar_one())
    if remove:
        result = await tx.execute(delete(screenings).where(old))
    else:
        result = await tx.execute(
            update(screenings).where(old).values(request=None, anonymized_at=func.now())
        )
    return int(result.rowcount)


# ---------------------------------------------------------------- alerts


def _case(row: Row[Any]) -> AlertCase:
    alert = NewAlert(
        origin=row.origin,
        typology=row.typology,
        severity=Severity(row.severity),
        source=Source(row.source),
        customer_id=row.customer_id,
        account_id=row.account_id,
        transaction_id=row.transaction_id,
        detector_id=row.detector_id,
        evidence=dict(row.evidence),
        rule_ids=tuple(row.rule_ids),
        related=tuple(row.related),
        freeze=Effect(row.freeze_state),
    )
    return AlertCase(
        id=row.id,
        alert=alert,
        status=AlertStatus(row.status),
        created_at=row.created_at,
        updated_at=row.updated_at,
        assignee=row.assignee,
        assigned_at=row.assigned_at,
        resolution=None if row.resolution is None else Resolution(row.resolution),
        resolved_by=row.resolved_by,
        resolved_at=row.resolved_at,
        note=row.note,
        freeze=Effect(row.freeze_state),
        freeze_detail=row.freeze_detail,
        review=Effect(row.review_state),
        review_detail=row.review_detail,
    )


async def insert_alert(tx: Tx, alert_id: str, alert: NewAlert, at: datetime) -> AlertCase | None:
    """Record a new alert; None if one with the same origin exists (a repeat)."""
    row = (
        await tx.execute(
            insert(alerts)
            .values(
                id=alert_id,
                origin=alert.origin,
                typology=alert.typology,
                severity=alert.severity.value,
                source=alert.source.value,
                customer_id=alert.customer_id,
                account_id=alert.account_id,
                transaction_id=alert.transaction_id,
                detector_id=alert.detector_id,
                evidence=alert.evidence,
                rule_ids=list(alert.rule_ids),
                related=list(alert.related),
                status=AlertStatus.OPEN.value,
                freeze_state=alert.freeze.value,
                freeze_next_at=at if alert.freeze is Effect.PENDING else None,
                review_state=Effect.NONE.value,
                created_at=at,
                updated_at=at,
            )
            .on_conflict_do_nothing(index_elements=["origin"])
            .returning(alerts)
        )
    ).first()
    return None if row is None else _case(row)


async def get_alert(tx: Tx, alert_id: str, *, for_update: bool = False) -> AlertCase | None:
    query = select(alerts).where(alerts.c.id == alert_id)
    if for_update:
        query = query.with_for_update()
    row = (await tx.execute(query)).first()
    return None if row is None else _case(row)


@dataclass(frozen=True)
class AlertFilter:
    status: AlertStatus | None = None
    typology: str | None = None
    customer_id: str | None = None
    assignee: str | None = None


async def list_alerts(
    tx: Tx, which: AlertFilter, limit: int, before: str | None
) -> list[AlertCase]:
    """Newest first (ids sort by creation time); ``before`` continues after that id."""
    conditions = []
    if which.status is not None:
        conditions.append(alerts.c.status == which.status.value)
    if which.typology is not None:
        conditions.append(alerts.c.typology == which.typology)
    if which.customer_id is not None:
        conditions.append(alerts.c.customer_id == which.customer_id)
    if which.assignee is not None:
        conditions.append(alerts.c.assignee == which.assignee)
    if before is not None:
        conditions.append(alerts.c.id < before)
    rows = await tx.execute(
        select(alerts).where(*conditions).order_by(alerts.c.id.desc()).limit(limit)
    )
    return [_case(row) for row in rows]


async def save_alert(tx: Tx, case: AlertCase) -> None:
    """Write the case's assignment, resolution and review state."""
    await tx.execute(
        update(alerts)
        .where(alerts.c.id == case.id)
        .values(
            status=case.status.value,
            assignee=case.assignee,
            assigned_at=case.assigned_at,
            resolution=None if case.resolution is None else case.resolution.value,
            resolved_by=case.resolved_by,
            resolved_at=case.resolved_at,
            note=case.note,
            review_state=case.review.value,
            review_next_at=case.resolved_at if case.review is Effect.PENDING else None,
            updated_at=case.updated_at,
        )
    )


async def alerts_of_customer(tx: Tx, customer_id: str) -> list[AlertCase]:
    rows = await tx.execute(
        select(alerts).where(alerts.c.customer_id == customer_id).order_by(alerts.c.id)
    )
    return [_case(row) for row in rows]


async def age_out_alerts(tx: Tx, cutoff: datetime, *, dry_run: bool) -> int:
    """Delete resolved alerts resolved before ``cutoff`` (open ones are never purged)."""
    old = and_(alerts.c.status == AlertStatus.RESOLVED.value, alerts.c.resolved_at < cutoff)
    if dry_run:
        return int((await tx.execute(select(func.count()).where(old))).scalar_one())
    result = await tx.execute(delete(alerts).where(old))
    return int(result.rowcount)


# ---------------------------------------------------------------- side effects

EFFECT_COLUMNS: Final = ("freeze", "review")
"""Alert columns ``<effect>_state``, ``_attempts``, ``_next_at``, ``_detail``."""


@dataclass(frozen=True)
class DueEffect:
    """A side effect to attempt: the alert, how often it was tried already."""

    case: AlertCase
    attempts: int


async def claim_due_effects(
    tx: Tx, effect: str, now: datetime, lease_until: datetime, limit: int
) -> list[DueEffect]:
    """Pending ``effect``s that are due, leased until ``lease_until`` (a worker that
    dies mid-call leaves them to be tried again then); other workers skip them."""
    state, attempts, next_at = _effect_columns(effect)
    rows = (
        await tx.execute(
            select(alerts)
            .where(state == Effect.PENDING.value, next_at <= now)
            .order_by(next_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()
    if rows:
        await tx.execute(
            update(alerts)
            .where(alerts.c.id.in_([row.id for row in rows]))
            .values({next_at.name: lease_until})
        )
    return [DueEffect(_case(row), getattr(row, attempts.name)) for row in rows]


async def record_effect(
    tx: Tx,
    effect: str,
    alert_id: str,
    outcome: Effect,
    detail: str,
    attempts: int,
    next_at: datetime | None,
) -> None:
    state, tried, due = _effect_columns(effect)
    await tx.execute(
        update(alerts)
        .where(alerts.c.id == alert_id)
        .values(
            {
                state.name: outcome.value,
                f"{effect}_detail": detail,
                tried.name: attempts,
                due.name: next_at,
            }
        )
    )


def _effect_columns(effect: str) -> tuple[Column[Any], Column[Any], Column[Any]]:
    if effect not in EFFECT_COLUMNS:
        raise ValueError(f"unknown effect {effect!r}")
    c = alerts.c
    return c[f"{effect}_state"], c[f"{effect}_attempts"], c[f"{effect}_next_at"]


# ---------------------------------------------------------------- rule statistics


@dataclass(frozen=True)
class RuleHits:
    screenings: int
    enforced: dict[str, int]
    shadow: dict[str, int]


async def rule_hits(tx: Tx, since: datetime) -> RuleHits:
    """How many screenings since ``since``, and how often each rule fired in each mode."""
    recent = screenings.c.screened_at >= since
    total = (await tx.execute(select(func.count()).where(recent))).scalar_one()
    counts: dict[str, dict[str, int]] = {"enforced": {}, "shadow": {}}
    for mode, column in (
        ("enforced", screenings.c.enforced_rules),
        ("shadow", screenings.c.shadow_rules),
    ):
        rule = func.unnest(column).label("rule_id")
        inner = select(rule).where(recent).subquery()
        rows = await tx.execute(select(inner.c.rule_id, func.count()).group_by(inner.c.rule_id))
        counts[mode] = {row[0]: int(row[1]) for row in rows}
    return RuleHits(int(total), counts["enforced"], counts["shadow"])


async def rule_outcomes(tx: Tx, since: datetime) -> dict[str, tuple[int, int]]:
    """Per rule, the resolved alerts (since ``since``) whose transaction's screening
    fired it, in either mode: (true positives, false positives)."""
    fired = func.unnest(
        func.array_cat(screenings.c.enforced_rules, screenings.c.shadow_rules)
    ).label("rule_id")
    joined = (
        select(fired, alerts.c.resolution, alerts.c.id.label("alert_id"))
        .select_from(
            alerts.join(screenings, screenings.c.transaction_id == alerts.c.transaction_id)
        )
        .where(alerts.c.status == AlertStatus.RESOLVED.value, alerts.c.resolved_at >= since)
        .subquery()
    )
    true_positive = joined.c.resolution == Resolution.TRUE_POSITIVE.value
    rows = await tx.execute(
        select(
            joined.c.rule_id,
            func.count(func.distinct(joined.c.alert_id)).filter(true_positive),
            func.count(func.distinct(joined.c.alert_id)).filter(~true_positive),
        ).group_by(joined.c.rule_id)
    )
    return {row[0]: (int(row[1]), int(row[2])) for row in rows}


async def held_for_review(tx: Tx, transaction_id: str | None) -> bool:
    """True if the transaction's screening decided ``review`` (its money is held)."""
    if transaction_id is None:
        return False
    decision = (
        await tx.execute(
            select(screenings.c.decision).where(screenings.c.transaction_id == transaction_id)
        )
    ).scalar_one_or_none()
    return decision == Outcome.REVIEW.value


# ---------------------------------------------------------------- rules log


async def advisory_lock(tx: Tx, name: str) -> None:
    """A transaction-scoped advisory lock on ``name`` (replicas starting together)."""
    await tx.execute(text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": name})


async def has_published(tx: Tx, topic: str) -> bool:
    """True if this schema's outbox ever held an event for ``topic``."""
    found = await tx.execute(select(outbox.c.id).where(outbox.c.topic == topic).limit(1))
    return found.first() is not None
