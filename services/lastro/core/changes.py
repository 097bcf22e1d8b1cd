"""Recording a state change: its event and its audit record, in the caller's
transaction.

Every use case that changes state calls :meth:`ChangeRecorder.record` inside the
same database transaction as the change: the signed CloudEvent goes into the
service's outbox (``core/events.py``) and the audit record is appended to its
hash chain (``core/audit.py``), which also streams it to ``lastro.audit`` through
the same outbox. They commit or roll back together: no event without the change, no
change without its audit record. :meth:`ChangeRecorder.record_many`
writes several changes (a group commit's batch) with one audit-chain append, whose
statement also carries their events into the outbox.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection

from lastro.core import audit
from lastro.core.audit_retention import purge_before
from lastro.core.events import CloudEvent, EventSigner, OutboxMessage, enqueue_many, new_event
from lastro.core.observability import current_traceparent


@dataclass(frozen=True)
class Caller:
    """Who asks and from where: the authenticated principal (``client/subject``,
    or ``service:<name>/<task>`` for the service's own jobs), the address the
    request came from, its request id and, for admin and support actions, the
    reason they gave. All of it goes into the audit record."""

    actor: str
    source_ip: str | None = None
    request_id: str | None = None
    reason: str | None = None

    def audit_details(self, details: Mapping[str, Any]) -> dict[str, Any]:
        """``details`` plus the request id and reason, when known."""
        extra = {"request_id": self.request_id, "reason": self.reason}
        return {**details, **{k: v for k, v in extra.items() if v is not None}}


@dataclass(frozen=True)
class Change:
    """One state change to record: ``caller`` did ``action`` on ``target``; the event
    ``event_type`` carries ``data`` to ``topic``, partitioned by ``key``. The audit
    record's details are ``details`` (default: ``data``) and its outcome ``outcome``;
    ``traceparent`` is the trace the change belongs to (default: the one current
    where the change is made, so a change recorded later by a group commit's task
    keeps its request's trace); ``at`` is when it happened
    (default: now). Either half may be left out: ``event_type=None`` records the
    audit record only, ``action=None`` the event only (a work-queue command)."""

    caller: Caller
    action: str | None
    target: str
    data: Mapping[str, Any]
    event_type: str | None
    topic: str | None
    key: str | None
    details: Mapping[str, Any] | None = None
    traceparent: str | None = field(default_factory=current_traceparent)
    at: datetime | None = None
    outcome: str = audit.SUCCESS


class ChangeRecorder:
    """Writes the outbox event and the audit record of one service's changes; every
    audit record is streamed to ``lastro.audit`` as ``chain`` (default: the audit
    log's schema, else the source without its slash, e.g. ``identity``)."""

    def __init__(
        self,
        *,
        source: str,
        outbox: Table,
        audit_tables: audit.AuditTables,
        signer: EventSigner,
        audit_key: bytes,
        chain: str | None = None,
    ) -> None:
        self.source = source
        self.outbox = outbox
        self.audit_tables = audit_tables
        self._signer = signer
        self._audit_key = audit_key
        self.stream = audit.AuditStream(
            outbox, signer, source, chain or audit_tables.log.schema or source.strip("/")
        )

    async def record(
        self,
        conn: AsyncConnection,
        caller: Caller,
        *,
        action: str,
        target: str,
        data: Mapping[str, Any],
        event_type: str,
        topic: str,
        key: str,
        now: datetime | None = None,
    ) -> None:
        """Enqueue the signed event ``event_type`` (``data`` as payload, ``target``
        as subject, partitioned by ``key``) and audit that ``caller`` did ``action``
        on ``target`` successfully, both in ``conn``'s transaction."""
        change = Change(caller, action, target, data, event_type, topic, key, at=now)
        await self.record_many(conn, [change])

    async def record_many(self, conn: AsyncConnection, changes: Sequence[Change]) -> None:
        """Every change's event (in order) and audit record (in order, one append to
        the chain), in ``conn``'s transaction: the head's lock, then one statement
        writing the records, the new head and the events (the append carries them)."""
        if not changes:
            return
        now = datetime.now(UTC)
        messages = [
            OutboxMessage(self._event(c, c.event_type), c.topic, c.key or c.target)
            for c in changes
            if c.event_type is not None and c.topic is not None
        ]
        records = [
            audit.AuditRecord(
                actor=c.caller.actor,
                action=c.action,
                target=c.target,
                outcome=c.outcome,
                source_ip=c.caller.source_ip,
                details=c.caller.audit_details(c.data if c.details is None else c.details),
                occurred_at=c.at or now,
            )
            for c in changes
            if c.action is not None
        ]
        if not records:
            await enqueue_many(conn, self.outbox, self._signer, messages)
            return
        await audit.append_many(
            conn, self.audit_tables, records, self._audit_key, stream=self.stream, events=messages
        )

    async def publish(
        self,
        conn: AsyncConnection,
        *,
        event_type: str,
        target: str,
        data: Mapping[str, Any],
        topic: str,
        key: str,
    ) -> None:
        """Enqueue an event only, in ``conn``'s transaction: for a fact whose audit
        record the same transaction already holds (a sign-in from a new device)."""
        event = new_event(event_type, self.source, dict(data), subject=target)
        await enqueue_many(conn, self.outbox, self._signer, [OutboxMessage(event, topic, key)])

    def _event(self, change: Change, event_type: str) -> CloudEvent:
        data = dict(change.data)
        if change.traceparent is None:
            return new_event(event_type, self.source, data, subject=change.target)
        return CloudEvent(
            type=event_type,
            source=self.source,
            data=data,
            subject=change.target,
            traceparent=change.traceparent,
        )

    async def verify_audit(self, conn: AsyncConnection) -> audit.VerifyResult:
        """Verify the whole audit chain (:func:`lastro.core.audit.verify`) in ``conn``
        (a REPEATABLE READ snapshot, ``core.db.snapshot``, takes no lock)."""
        return await audit.verify(conn, self.audit_tables, self._audit_key)

    async def purge_audit(
        self,
        conn: AsyncConnection,
        cutoff: datetime,
        *,
        dry_run: bool = False,
        verified: audit.ChainPosition = audit.GENESIS,
    ) -> int:
        """Delete the audit records before ``cutoff`` from the start of the chain and
        anchor it there (:func:`lastro.core.audit_retention.purge_before`; ``verified`` from
        :meth:`verify_audit`), in ``conn``'s transaction; returns how many (a dry run
        counts only)."""
        return await purge_before(
            conn, self.audit_tables, cutoff, self._audit_key, dry_run=dry_run, verified=verified
        )

    async def audit(
        self,
        conn: AsyncConnection,
        caller: Caller,
        *,
        action: str,
        target: str,
        details: Mapping[str, Any],
        outcome: str = audit.SUCCESS,
        now: datetime | None = None,
    ) -> None:
        """Append an audit record only (a refusal, a read of personal data, …)."""
        record = audit.AuditRecord(
            actor=caller.actor,
            action=action,
            target=target,
            outcome=outcome,
            source_ip=caller.source_ip,
            details=caller.audit_details(details),
            occurred_at=now or datetime.now(UTC),
        )
        await audit.append(conn, self.audit_tables, record, self._audit_key, stream=self.stream)
