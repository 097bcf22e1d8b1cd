"""Use cases of the fraud API: screening on the money path, and the alerts people work.

Screening (:meth:`Screening.screen`) is on the transaction service's 300 ms budget,
so it does the least I/O that keeps its guarantees: one Redis ``MGET`` for the
payer's and the receiving side's profiles, the rule set from memory, and one
statement that records the decision (idempotent on the transaction id), shared by
the screenings that arrive meanwhile (group commit, ``core/batching.py``). Only a
``review`` decision does more: it opens an alert in the same transaction, with its
``lastro.fraud.alert_raised`` event and audit record, because a person must resolve it
before the held money moves; concurrent reviews share that transaction too. A
decision not recorded within :data:`RECORD_BUDGET_SECONDS` of the request
(``LASTRO_FRAUD_RECORD_BUDGET_MS``) answers 503 rather than late.

Decision records are written on a pool of their own, through the driver
(:func:`lastro.core.db.open_statement_pool`: SQLAlchemy's work per statement cost
more than the insert), with asynchronous commit (``synchronous_commit = off``):
the commit returns before the WAL reaches the disk, so a PostgreSQL crash could lose
the last fraction of a second of decision records (never corrupt them). The caller
holds the answer and records it with its transaction (``screening`` in every
transaction event), and alerts, resolutions, rule changes and audit records are
committed synchronously. Measured in docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from lastro.core.batching import GroupCommitter
from lastro.core.changes import Caller, Change, ChangeRecorder
from lastro.core.db import Engine, StatementPool, Tx, in_transaction, read
from lastro.core.errors import DependencyUnavailable
from lastro.core.ids import new_id
from lastro.core.observability import current_traceparent
from lastro.fraud.domain import alerts as cases
from lastro.fraud.domain.alerts import AlertCase, Effect, NewAlert, Resolution
from lastro.fraud.domain.errors import (
    InvalidScreeningRequest,
    ScreeningConflict,
    UnknownAlert,
    UnknownScreening,
)
from lastro.fraud.domain.features import compute_features
from lastro.fraud.domain.screening import ScreeningRecord
from lastro.fraud.domain.transactions import InvalidTransaction, parse_transaction
from lastro.fraud.events import (
    ALERT_RAISED,
    ALERT_RESOLVED,
    FRAUD_TOPIC,
    alert_raised,
    alert_resolved,
)
from lastro.fraud.metrics import ALERTS, DECISIONS, RULE_FAILURES, RULE_HITS, SCREENING_SECONDS
from lastro.fraud.rulebook import RuleBook
from lastro.fraud.store import queries
from lastro.fraud.store.profiles import ProfileStore, ProfilesUnavailable

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
MAX_PAGE: Final = 100
RECORD_BUDGET_SECONDS: Final = 0.25
"""A screening not recorded this long after it started answers 503 (the caller gives
up at 300 ms and applies its fallback; a retry later gets the decision if it was
recorded after all)."""


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Screened:
    """A screening's recorded decision; ``replayed`` when an earlier call recorded it."""

    record: ScreeningRecord
    replayed: bool


class AlertRecorder:
    """Records alerts: the row, its ``alert_raised`` event (with the evidence) and an
    audit record ``alert.raised`` (without it: audit details hold no floats, and the
    event and the row carry the numbers)."""

    def __init__(self, recorder: ChangeRecorder) -> None:
        self._recorder = recorder

    async def record(
        self, tx: Tx, caller: Caller, alert: NewAlert, at: datetime
    ) -> AlertCase | None:
        """Record ``alert`` in ``tx``; None (nothing written) if the same detection
        was recorded before."""
        (case,) = await self.record_many(tx, [Raised(caller, alert, at)])
        return case

    async def record_many(self, tx: Tx, raised: Sequence[Raised]) -> list[AlertCase | None]:
        """Record each alert in ``tx``, their events with one outbox statement and their
        audit records with one append to the chain; per alert, its case, or None if
        the same detection was recorded before."""
        cases: list[AlertCase | None] = []
        changes: list[Change] = []
        for item in raised:
            case = await queries.insert_alert(tx, new_id("alrt"), item.alert, item.at)
            cases.append(case)
            if case is None:
                continue
            alert = item.alert
            changes.append(
                Change(
                    caller=item.caller,
                    action="alert.raised",
                    target=case.id,
                    data=alert_raised(case),
                    details={
                        "typology": alert.typology,
                        "severity": alert.severity.value,
                        "customer_id": alert.customer_id,
                        "transaction_id": alert.transaction_id,
                        "freeze": alert.freeze.value,
                    },
                    event_type=ALERT_RAISED,
                    topic=FRAUD_TOPIC,
                    key=alert.customer_id,
                    traceparent=item.traceparent,
                    at=item.at,
                )
            )
            ALERTS.labels(alert.typology, alert.severity.value).inc()
        await self._recorder.record_many(tx, changes)
        return cases


@dataclass(frozen=True)
class Raised:
    """An alert to record: who raised it, when, and the trace it belongs to."""

    caller: Caller
    alert: NewAlert
    at: datetime
    traceparent: str | None = field(default_factory=current_traceparent)


class Screening:
    """The screening endpoint's use case (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        decisions: StatementPool,
        schema: str,
        alerts: AlertRecorder,
        profiles: ProfileStore,
        book: RuleBook,
        *,
        clock: Clock = utc_now,
        record_budget: float = RECORD_BUDGET_SECONDS,
    ) -> None:
        self._engine = engine
        self._decisions = decisions
        self._schema = schema
        self._record_budget = record_budget
        self._alerts = alerts
        self._profiles = profiles
        self._book = book
        self._clock = clock
        self._log = GroupCommitter(self._record_decisions, max_batch=256, max_concurrent=2)
        self._alerting = GroupCommitter(self._record_alerting, max_batch=64)

    async def aclose(self) -> None:
        """Wait for the decisions queued to be recorded."""
        await self._log.close()
        await self._alerting.close()

    async def screen(self, request: Mapping[str, Any], caller: Caller) -> Screened:
        """Decide on one transaction and record why, once per transaction id.

        A retry with the same content gets the first decision (``replayed``); other
        content under a screened id raises ScreeningConflict. Raises
        InvalidScreeningRequest, and DependencyUnavailable (503) while the rule set
        is loading or Redis or PostgreSQL is unreachable: the caller then applies
        its documented fallback.
        """
        started = time.perf_counter()
        try:
            txn = parse_transaction(request)
        except InvalidTransaction as exc:
            raise InvalidScreeningRequest(exc.detail, field=exc.field) from None
        if not self._book.ready.is_set():
            raise DependencyUnavailable("the rule set is still loading", retry_after=1)
        rules = self._book.current
        try:
            customer, counterparty = await self._profiles.for_screening(txn)
        except ProfilesUnavailable as exc:
            raise DependencyUnavailable("customer profiles are unavailable") from exc
        now = self._clock()
        decision = rules.screen(txn, compute_features(customer, txn, counterparty), now)
        record = ScreeningRecord.of(new_id("scr"), request, txn.customer_id, decision, now)
        alert = cases.screening_alert(txn, decision)
        try:
            async with asyncio.timeout(
                max(self._record_budget - (time.perf_counter() - started), 0)
            ):
                if alert is None:
                    stored = await self._log.submit(record)
                else:
                    stored = await self._alerting.submit(
                        (record, Raised(caller, alert, record.screened_at))
                    )
        except TimeoutError:
            raise DependencyUnavailable(
                "the decision could not be recorded in time", retry_after=1
            ) from None
        if stored.fingerprint != record.fingerprint:
            raise ScreeningConflict(
                f"transaction {txn.transaction_id} was screened with other content",
                field="transaction_id",
            )
        replayed = stored.id != record.id
        if not replayed:
            DECISIONS.labels(decision.outcome.value).inc()
            for reason in (*decision.reasons, *decision.shadow):
                RULE_HITS.labels(reason.rule_id, reason.mode.value).inc()
            for rule_id in decision.failed:
                RULE_FAILURES.labels(rule_id).inc()
            SCREENING_SECONDS.observe(time.perf_counter() - started)
        return Screened(stored, replayed)

    async def _record_decisions(self, records: Sequence[ScreeningRecord]) -> list[ScreeningRecord]:
        """Record concurrent decisions with one statement on the decision log (group
        commit); for each, the decision stored for its transaction (an earlier one,
        for a retry)."""
        inserted = await queries.log_screenings(self._decisions, self._schema, records)

        async def earlier(transaction_ids: list[str]) -> dict[str, ScreeningRecord]:
            return await read(self._engine, lambda c: queries.get_screenings(c, transaction_ids))

        return await _kept(records, inserted, earlier)

    async def _record_alerting(
        self, requests: Sequence[tuple[ScreeningRecord, Raised]]
    ) -> list[ScreeningRecord]:
        """Record concurrent decisions that open an alert in one synchronous transaction
        with their alerts, events and audit records (one append to the chain): a burst
        of suspicious transactions shares a commit instead of queueing for the chain's
        head one commit after another. A retry's alert is not raised again."""

        async def work(tx: Tx) -> list[ScreeningRecord]:
            records = [record for record, _ in requests]
            inserted = await queries.insert_screenings(tx, self._schema, records)

            async def earlier(transaction_ids: list[str]) -> dict[str, ScreeningRecord]:
                return await queries.get_screenings(tx, transaction_ids)

            stored = await _kept(records, inserted, earlier)
            fresh = [
                raised
                for (record, raised), kept in zip(requests, stored, strict=True)
                if kept is record
            ]
            await self._alerts.record_many(tx, fresh)
            return stored

        return await in_transaction(self._engine, work)

    async def get(self, transaction_id: str) -> ScreeningRecord:
        async def read(tx: Tx) -> ScreeningRecord | None:
            return await queries.get_screening(tx, transaction_id)

        record = await in_transaction(self._engine, read)
        if record is None:
            raise UnknownScreening(f"no screening of transaction {transaction_id}")
        return record


async def _kept(
    records: Sequence[ScreeningRecord],
    inserted: set[str],
    earlier: Callable[[list[str]], Awaitable[dict[str, ScreeningRecord]]],
) -> list[ScreeningRecord]:
    """For each of ``records`` (``inserted``: the transaction ids just written), the
    decision stored for its transaction: itself, the first of the batch with its
    transaction id, or an earlier one (read with ``earlier``)."""
    first: dict[str, ScreeningRecord] = {}
    for record in records:
        if record.transaction_id in inserted:
            first.setdefault(record.transaction_id, record)
    missing = [r.transaction_id for r in records if r.transaction_id not in first]
    if missing:
        first.update(await earlier(missing))
    return [first[record.transaction_id] for record in records]


class Alerts:
    """The alerts people work: list, read, assign, resolve (audited)."""

    def __init__(
        self,
        engine: Engine,
        recorder: ChangeRecorder,
        *,
        on_review_pending: Callable[[], None] = lambda: None,
        clock: Clock = utc_now,
    ) -> None:
        self._engine = engine
        self._recorder = recorder
        self._on_review_pending = on_review_pending
        self._clock = clock

    async def list(
        self, which: queries.AlertFilter, limit: int, starting_after: str | None
    ) -> list[AlertCase]:
        async def read(tx: Tx) -> list[AlertCase]:
            return await queries.list_alerts(tx, which, min(limit, MAX_PAGE), starting_after)

        return await in_transaction(self._engine, read)

    async def get(self, alert_id: str) -> AlertCase:
        async def read(tx: Tx) -> AlertCase | None:
            return await queries.get_alert(tx, alert_id)

        return _found(alert_id, await in_transaction(self._engine, read))

    async def assign(self, alert_id: str, assignee: str, caller: Caller) -> AlertCase:
        """Hand the alert to ``assignee`` (audited ``alert.assigned``)."""

        async def work(tx: Tx) -> AlertCase:
            case = _found(alert_id, await queries.get_alert(tx, alert_id, for_update=True))
            assigned = cases.assign(case, assignee, self._clock())
            await queries.save_alert(tx, assigned)
            await self._recorder.audit(
                tx,
                caller,
                action="alert.assigned",
                target=alert_id,
                details={"assignee": assignee, "previous": case.assignee},
            )
            return assigned

        return await in_transaction(self._engine, work)

    async def resolve(
        self, alert_id: str, resolution: Resolution, note: str | None, caller: Caller
    ) -> AlertCase:
        """Resolve as true or false positive (audited ``alert.resolved``, event
        ``lastro.fraud.alert_resolved``). If the alert's transaction is held in
        ``review``, reporting the outcome to the transaction service becomes a
        pending effect of the same commit. The same resolution again changes nothing;
        the other one raises AlertAlreadyResolved."""

        async def work(tx: Tx) -> AlertCase:
            case = _found(alert_id, await queries.get_alert(tx, alert_id, for_update=True))
            held = await queries.held_for_review(tx, case.alert.transaction_id)
            resolved, changed = cases.resolve(
                case, resolution, caller.actor, note, self._clock(), held_for_review=held
            )
            if changed:
                await queries.save_alert(tx, resolved)
                await self._recorder.record(
                    tx,
                    caller,
                    action="alert.resolved",
                    target=alert_id,
                    data=alert_resolved(resolved),
                    event_type=ALERT_RESOLVED,
                    topic=FRAUD_TOPIC,
                    key=resolved.alert.customer_id,
                )
            return resolved

        resolved = await in_transaction(self._engine, work)
        if resolved.review is Effect.PENDING:
            self._on_review_pending()
        return resolved


def _found(alert_id: str, case: AlertCase | None) -> AlertCase:
    if case is None:
        raise UnknownAlert(f"no alert {alert_id}", field="id")
    return case
