"""Writing state: every change of the service, with its events and audit records,
group-committed (``core/batching.py``).

A :class:`Write` is what one use case or one worker step needs to store
atomically: new rows, guarded changes (each over the version it was computed
from), a quote to claim, its events (outbox) and audit records. Concurrent writes
share one database transaction and one commit, so the audit chain's head lock
and the fsync are paid once per batch instead of once per request.

Guarantees: a :meth:`Journal.write` returns only after its rows, events and audit
records committed together; if any guard of one write fails (the row moved on,
the quote was used meanwhile) that write alone raises and stores nothing, while
the others of its batch commit; an unexpected database error fails the batch's
writes one by one, each in its own transaction, so one bad write never fails the
others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core import changes
from lastro.core.batching import GroupCommitter
from lastro.core.changes import Caller, ChangeRecorder
from lastro.core.db import Tx, in_transaction
from lastro.core.errors import DependencyUnavailable, DomainError
from lastro.transactions.domain.errors import InvalidState, QuoteAlreadyUsed
from lastro.transactions.domain.fx import Quote
from lastro.transactions.domain.machine import Change
from lastro.transactions.domain.model import Refund, Transaction, TransferBatch
from lastro.transactions.events import (
    TOPIC,
    fact_type,
    partition_key,
    transaction_data,
)
from lastro.transactions.store import queries
from lastro.transactions.store.tables import Tables

MAX_BATCH: Final = 256

Recording = changes.Change
"""What a write records: an event, an audit record, or both (``core/changes.py``)."""


def recording(
    caller: Caller,
    target: str,
    data: Mapping[str, Any],
    event_type: str | None = None,
    topic: str | None = None,
    key: str | None = None,
    *,
    action: str | None = None,
) -> Recording:
    """The event ``event_type`` about ``target`` on ``topic`` (partitioned by ``key``)
    and/or the audit record of ``action``, with ``data`` as payload and details."""
    return Recording(caller, action, target, data, event_type, topic, key)


@dataclass(frozen=True)
class Write:
    """Everything one step stores atomically."""

    inserts: Sequence[Transaction] = ()
    changes: Sequence[Transaction] = ()
    new_refund: Refund | None = None
    refund_change: Refund | None = None
    new_batch: TransferBatch | None = None
    batch_change: TransferBatch | None = None
    new_quote: Quote | None = None
    claim_quote: tuple[str, str] | None = None
    payout_destination: Mapping[str, Any] | None = None
    settlement: Mapping[str, Any] | None = None
    recordings: Sequence[Recording] = field(default_factory=tuple)


def change_recordings(change: Change, caller: Caller) -> list[Recording]:
    """The events a state change publishes and the audit record it appends."""
    txn = change.txn
    data = transaction_data(txn, change.refund)
    recordings = [
        recording(caller, txn.id, data, fact_type(fact), TOPIC, partition_key(txn))
        for fact in change.facts
    ]
    if change.audit is not None:
        recordings.append(recording(caller, txn.id, data, action=change.audit))
    return recordings


def write_of(change: Change, caller: Caller) -> Write:
    return Write(
        changes=(change.txn,),
        refund_change=change.refund,
        recordings=change_recordings(change, caller),
    )


class _GuardFailed(Exception):
    def __init__(self, failures: Mapping[int, DomainError]) -> None:
        super().__init__("guards failed")
        self.failures = failures


class Journal:
    def __init__(self, engine: AsyncEngine, tables: Tables, recorder: ChangeRecorder) -> None:
        self._engine = engine
        self._tables = tables
        self._recorder = recorder
        self._committer: GroupCommitter[Write, None] = GroupCommitter(
            self._settle, max_batch=MAX_BATCH, max_concurrent=2
        )

    async def write(self, write: Write) -> None:
        """Store ``write`` (see the module's guarantees); raises its guard's DomainError,
        or DependencyUnavailable when PostgreSQL dropped the connection: usually before
        anything was sent (a connection gone stale; the pool is invalidated, so a retry
        gets a fresh one); if it broke during the commit itself, nobody can tell
        whether it committed (``lastro reconcile`` then shows the outcome)."""
        try:
            await self._committer.submit(write)
        except DBAPIError as error:
            if not error.connection_invalidated:
                raise
            raise DependencyUnavailable("the database connection was lost; retry") from None

    async def close(self) -> None:
        await self._committer.close()

    async def _settle(self, writes: Sequence[Write]) -> list[BaseException | None]:
        outcomes: dict[int, BaseException | None] = {}
        pending = list(range(len(writes)))
        while pending:
            chosen = [writes[i] for i in pending]

            async def apply(conn: Tx, chosen: list[Write] = chosen) -> None:
                await self._apply(conn, chosen)

            try:
                await in_transaction(self._engine, apply)
            except _GuardFailed as guard:
                for position, error in guard.failures.items():
                    outcomes[pending[position]] = error
                pending = [i for n, i in enumerate(pending) if n not in guard.failures]
                continue
            except Exception:
                if len(pending) == 1:
                    raise
                for i in pending:  # isolate the write that broke the batch
                    try:
                        await self._settle_alone(writes[i])
                        outcomes[i] = None
                    except Exception as error:
                        outcomes[i] = error
                break
            for i in pending:
                outcomes[i] = None
            break
        return [outcomes[i] for i in range(len(writes))]

    async def _settle_alone(self, write: Write) -> None:
        try:
            await in_transaction(self._engine, lambda conn: self._apply(conn, [write]))
        except _GuardFailed as guard:
            raise guard.failures[0] from None

    async def _apply(self, conn: Tx, writes: Sequence[Write]) -> None:
        """Every write in ``conn``; raises _GuardFailed (rolling all back) if a guard fails."""
        t = self._tables
        now = datetime.now(UTC)
        failures: dict[int, DomainError] = {}
        for n, write in enumerate(writes):
            if write.new_quote is not None:
                await queries.insert_quote(conn, t, write.new_quote)
            if write.claim_quote is not None and not await queries.claim_quote(
                conn, t, *write.claim_quote
            ):
                failures[n] = QuoteAlreadyUsed("the quote was used by another transfer")
            if write.batch_change is not None and not await queries.update_batch(
                conn, t, write.batch_change
            ):
                failures[n] = InvalidState("the batch changed meanwhile; retry")
            if write.refund_change is not None and not await queries.update_refund(
                conn, t, write.refund_change, now
            ):
                failures[n] = InvalidState("the refund changed meanwhile; retry")
        changes = [txn for write in writes for txn in write.changes]
        written = await queries.apply_changes(conn, t, changes)
        for n, write in enumerate(writes):
            if any(txn.id not in written for txn in write.changes):
                failures[n] = InvalidState("the transaction changed meanwhile; retry")
        if failures:
            raise _GuardFailed(failures)
        for write in writes:
            if write.new_batch is not None:
                await queries.insert_batch(conn, t, write.new_batch)
        await queries.insert_transactions(conn, t, [x for w in writes for x in w.inserts])
        for write in writes:
            if write.new_refund is not None:
                await queries.insert_refund(conn, t, write.new_refund)
            if write.payout_destination is not None:
                await queries.insert_payout_destination(conn, t, dict(write.payout_destination))
            if write.settlement is not None:
                await queries.insert_settlement(conn, t, **write.settlement, now=now)
        await self._recorder.record_many(
            conn, [replace(r, at=now) for write in writes for r in write.recordings]
        )
