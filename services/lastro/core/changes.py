"""Recording a state change: its event and its audit record, in the caller's
transaction.

Every use case that changes state calls :meth:`ChangeRecorder.record` inside the
same database transaction as the change: the signed CloudEvent goes into the
service's outbox (``core/events.py``) and the audit record is appended to its
hash chain (``core/audit.py``), which also streams it to ``lastro.audit`` through
the same outbox. They commit or roll back together: no event without the change, no
change without its audit record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection

from lastro.core import audit
from lastro.core.events import EventSigner, enqueue, new_event


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


class ChangeRecorder:
    """Writes the outbox event and the audit record of one service's changes; every
    audit record is streamed to ``lastro.audit`` as ``chain`` (default: the audit
    log's schema, else the source without its slash, e.g. ``notifications``)."""

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
        await audit.append(conn, self.audit_tables, record, self._audit_key, stream=self.stream)
