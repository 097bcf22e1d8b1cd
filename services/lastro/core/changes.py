"""Recording a state change: its event and its audit record, in the caller's
transaction.

Every use case that changes state calls :meth:`ChangeRecorder.record` inside the
same database transaction as the change: the signed CloudEvent goes into the
service's outbox (``core/events.py``) and the audit record is appended to its
hash chain (``core/audit.py``). The three commit or roll back together: no event
without the change, no change without its audit record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection

from lastro.core import audit
from lastro.core.events import EventSigner, OutboxMessage, enqueue, enqueue_many, new_event


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
class Recording:
    """One item of :meth:`ChangeRecorder.record_many`: the event ``event_type`` on
    ``topic`` (partitioned by ``key``) and/or the audit record of ``action``, both
    about ``target`` with ``data`` as payload and details. Either may be left out
    (``event_type=None``: audit only; ``action=None``: event only)."""

    caller: Caller
    target: str
    data: Mapping[str, Any]
    event_type: str | None = None
    topic: str | None = None
    key: str | None = None
    action: str | None = None
    outcome: str = audit.SUCCESS


class ChangeRecorder:
    """Writes the outbox event and the audit record of one service's changes."""

    def __init__(
        self,
        *,
        source: str,
        outbox: Table,
        audit_tables: audit.AuditTables,
        signer: EventSigner,
        audit_key: bytes,
    ) -> None:
        self.source = source
        self.outbox = outbox
        self.audit_tables = audit_tables
        self._signer = signer
        self._audit_key = audit_key

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
        await enqueue(
            conn,
            self.outbox,
            self._signer,
            new_event(event_type, self.source, dict(data), subject=target),
            topic=topic,
            key=key,
        )
        await self.audit(conn, caller, action=action, target=target, details=data, now=now)

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
        await audit.append(conn, self.audit_tables, record, self._audit_key)

    async def record_many(
        self, conn: AsyncConnection, recordings: Sequence[Recording], now: datetime | None = None
    ) -> None:
        """Enqueue every event and append every audit record of ``recordings``, in
        order, in ``conn``'s transaction: one outbox statement, one audit head lock
        (``core.events.enqueue_many``, ``core.audit.append_many``)."""
        messages = [
            OutboxMessage(
                new_event(r.event_type, self.source, dict(r.data), subject=r.target),
                r.topic,
                r.key or r.target,
            )
            for r in recordings
            if r.event_type is not None and r.topic is not None
        ]
        await enqueue_many(conn, self.outbox, self._signer, messages)
        at = now or datetime.now(UTC)
        records = [
            audit.AuditRecord(
                actor=r.caller.actor,
                action=r.action,
                target=r.target,
                outcome=r.outcome,
                source_ip=r.caller.source_ip,
                details=r.caller.audit_details(r.data),
                occurred_at=at,
            )
            for r in recordings
            if r.action is not None
        ]
        await audit.append_many(conn, self.audit_tables, records, self._audit_key)
