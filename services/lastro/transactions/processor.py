"""The worker's use cases: move a transaction (or a batch) on from wherever it is.

:meth:`Processor.advance` runs the state machine of ``domain/machine.py``: plan a
step; perform its effect through the clients (fraud, ledger, acquirer); store the
change the outcome implies (``journal.Write``, guarded by version) before the next
effect; repeat until the transaction rests. It is safe to run again at any time,
in any process: a redelivered command, a sweeper's resume or a second worker after
a rebalance finds the stored state and continues from there, and every effect it
repeats is answered by its receiver with the first answer (idempotency keys all
the way down: transaction id → ledger ``external_id`` → acquirer
``Idempotency-Key``). Two workers racing on one row: the second change fails its
version guard, and that worker re-reads and continues or stops.

Observers (``on_step``) see every stored change and every finished effect; the
service uses them for metrics and the ``Prefer: wait`` notifications, tests to
stop a worker at an exact step.

Each effect is performed by :class:`~.receivers.Receivers` (which receiver, with
what), and counted in :mod:`.metrics`. This module moves transactions and atomic
batches on, and sweeps the ones that wait too long.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Final, TypeVar

from lastro.core.backoff import equal_jitter
from lastro.core.changes import Caller
from lastro.core.db import Engine, Tx, read
from lastro.core.errors import DomainError
from lastro.transactions.clients import Dependencies
from lastro.transactions.domain import ledger as postings
from lastro.transactions.domain import machine
from lastro.transactions.domain.effects import Refused, Screen, Unavailable
from lastro.transactions.domain.ledger import SystemPurpose
from lastro.transactions.domain.model import (
    BatchStatus,
    Decision,
    Kind,
    Refund,
    ReviewOutcome,
    Screening,
    Status,
    Transaction,
    TransferBatch,
    is_resting,
)
from lastro.transactions.domain.steps import (
    Act,
    Change,
    Policy,
    Rest,
    Retry,
    fallback_screening,
    screening_retry_in,
)
from lastro.transactions.events import COMMAND, COMMANDS_TOPIC, command_data, partition_key
from lastro.transactions.journal import Journal, Write, change_recordings, recording, write_of
from lastro.transactions.metrics import EFFECTS, fell_back, measure
from lastro.transactions.receivers import Receivers
from lastro.transactions.store import queries
from lastro.transactions.store.tables import Tables

log = logging.getLogger(__name__)
T = TypeVar("T")

WORKER: Final = Caller("service:transactions-worker")
MAX_STEPS: Final = 32
BATCH_CONCURRENCY: Final = 64

Observer = Callable[[str, Transaction | TransferBatch], None]
"""``("changed", txn)`` after a change is stored; ``("effect:<Name>", txn)`` after an
effect answered, before its change is stored; ``("batch:<step>", batch)`` after an
atomic batch's step is stored."""


class Processor:
    def __init__(
        self,
        engine: Engine,
        tables: Tables,
        journal: Journal,
        deps: Dependencies,
        policy: Policy,
        *,
        notify: Callable[[Sequence[str]], None] = lambda ids: None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._t = tables
        self._journal = journal
        self._deps = deps
        self._policy = policy
        self._notify = notify
        self._now = clock
        self._receivers = Receivers(engine, tables, deps, clock=clock)
        self._locks: dict[str, asyncio.Lock] = {}
        self.observers: list[Observer] = [measure]
        self.instance = tables.schema

    # ------------------------------------------------------------ plumbing

    async def _read(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        return await read(self._engine, work)

    def _observe(self, stage: str, subject: Transaction | TransferBatch) -> None:
        for observer in self.observers:
            observer(stage, subject)

    async def _store(self, writes: Sequence[Write], changed: Sequence[Transaction]) -> bool:
        """Store one or more writes together; False if a guard failed (reload)."""
        merged = Write(
            changes=tuple(x for w in writes for x in w.changes),
            refund_change=next((w.refund_change for w in writes if w.refund_change), None),
            batch_change=next((w.batch_change for w in writes if w.batch_change), None),
            recordings=tuple(r for w in writes for r in w.recordings),
        )
        try:
            await self._journal.write(merged)
        except DomainError as conflict:
            log.info("change not stored (%s); re-reading", conflict.detail)
            return False
        for txn in changed:
            self._observe("changed", txn)
        self._notify([txn.id for txn in changed])
        return True

    async def _load(self, txn_id: str) -> tuple[Transaction | None, list[Refund]]:
        async def load(conn: Tx) -> tuple[Transaction | None, list[Refund]]:
            txn = await queries.get_transaction(conn, self._t, txn_id)
            if txn is None or txn.kind is not Kind.CARD_PAYMENT:
                return txn, []
            return txn, await queries.refunds_of(conn, self._t, txn_id)

        return await self._read(load)

    # ------------------------------------------------------------ one transaction

    async def advance(self, txn_id: str) -> Transaction | None:
        """Move the transaction on until it rests; returns its last stored state
        (None if this instance has no such transaction)."""
        lock = self._locks.setdefault(txn_id, asyncio.Lock())
        try:
            async with lock:
                return await self._advance(txn_id)
        finally:
            if not lock.locked():
                self._locks.pop(txn_id, None)

    async def _advance(self, txn_id: str) -> Transaction | None:
        txn, refunds = await self._load(txn_id)
        for _ in range(MAX_STEPS):
            if txn is None:
                return None
            if await self._moved_by_batch(txn):
                return txn
            step = machine.plan(txn, refunds, self._policy, self._now())
            if isinstance(step, Rest):
                return txn
            if isinstance(step, Act):
                outcome, extra = await self._receivers.perform(txn, step.effect, refunds)
                self._observe(f"effect:{type(step.effect).__name__}", txn)
                EFFECTS.labels(type(step.effect).__name__, type(outcome).__name__).inc()
                result = machine.after(
                    txn, step.effect, outcome, refunds, self._policy, self._now()
                )
                if isinstance(result, Retry):
                    log.debug("%s: %s; again in %.2f s", txn_id, result.why, result.seconds)
                    await asyncio.sleep(equal_jitter(result.seconds))
                    continue
                unanswered = isinstance(outcome, Unavailable) and isinstance(step.effect, Screen)
                if unanswered and isinstance(result, Change):  # the patience is spent
                    fell_back(result.txn.screening)
                if isinstance(result, Rest):
                    if isinstance(outcome, Unavailable):
                        await self._journal_error(txn, outcome.detail)
                    return txn
                step = result
            else:
                extra = []
            stored = await self._store(
                [write_of(step, WORKER), *(write_of(c, WORKER) for c in extra)],
                [step.txn, *(c.txn for c in extra)],
            )
            if stored:
                txn = step.txn
                if step.refund is not None:
                    refunds = [step.refund if r.id == step.refund.id else r for r in refunds]
            else:
                txn, refunds = await self._load(txn_id)
        log.error("transaction %s did not rest after %d steps", txn_id, MAX_STEPS)
        return txn

    async def _moved_by_batch(self, txn: Transaction) -> bool:
        """An item of an atomic batch moves only with its batch, never alone."""
        if txn.batch_id is None or txn.status is not Status.RECEIVED:
            return False
        batch_id = txn.batch_id
        batch = await self._read(lambda c: queries.get_batch(c, self._t, batch_id))
        return batch is not None and batch.atomic

    async def _journal_error(self, txn: Transaction, detail: str) -> None:
        await self._read(lambda conn: queries.set_last_error(conn, self._t, txn.id, detail))

    # ------------------------------------------------------------ batches

    async def advance_batch(self, batch_id: str) -> TransferBatch | None:
        """Move a batch on: its items one by one (independent) or all as one (atomic)."""
        lock = self._locks.setdefault(batch_id, asyncio.Lock())
        try:
            async with lock:
                batch = await self._read(lambda c: queries.get_batch(c, self._t, batch_id))
                if batch is None:
                    return None
                if batch.atomic:
                    return await self._advance_atomic(batch)
                return await self._advance_independent(batch)
        finally:
            if not lock.locked():
                self._locks.pop(batch_id, None)

    async def _items(self, batch: TransferBatch) -> list[Transaction]:
        return await self._read(lambda c: queries.batch_items(c, self._t, batch.id))

    async def _advance_independent(self, batch: TransferBatch) -> TransferBatch:
        items = await self._items(batch)
        limit = asyncio.Semaphore(BATCH_CONCURRENCY)

        async def one(item: Transaction) -> Transaction | None:
            async with limit:
                return await self.advance(item.id)

        done = await asyncio.gather(*(one(item) for item in items if not is_resting(item)))
        resting = all(is_resting(i) for i in items if i.status is not Status.RECEIVED) and all(
            x is None or is_resting(x) for x in done
        )
        if resting and batch.status is not BatchStatus.COMPLETED:
            return await self._batch_step(batch, [], status=BatchStatus.COMPLETED) or batch
        return batch

    async def _batch_step(
        self, batch: TransferBatch, changes: Sequence[Change], **fields: object
    ) -> TransferBatch | None:
        """Store item changes with a batch change, together; None if a guard failed."""
        updated = replace(batch, version=batch.version + 1, updated_at=self._now(), **fields)  # type: ignore[arg-type]
        recordings = [r for c in changes for r in change_recordings(c, WORKER)]
        if updated.status is BatchStatus.COMPLETED:
            summary = {"batch_id": batch.id, "reason": updated.reason, "step": updated.step}
            recordings.append(
                recording(WORKER, batch.id, summary, action="transfer_batch.completed")
            )
        write = Write(
            changes=tuple(c.txn for c in changes), batch_change=updated, recordings=recordings
        )
        if not await self._store([write], [c.txn for c in changes]):
            return None
        self._observe(f"batch:{updated.step}", updated)
        return updated

    async def _advance_atomic(self, batch: TransferBatch) -> TransferBatch | None:
        for _ in range(MAX_STEPS):
            items = await self._items(batch)
            step = await self._atomic_step(batch, items)
            if step is None or step.status is BatchStatus.COMPLETED:
                return step or batch
            batch = step
        return batch

    async def _atomic_step(
        self, batch: TransferBatch, items: list[Transaction]
    ) -> TransferBatch | None:
        """One recovery point of an atomic batch; None when it must wait (a dependency
        is down: the sweeper resumes it) or a guard failed."""
        if batch.step is None:
            return await self._screen_batch(batch, items)
        clearing_key = (SystemPurpose.CLEARING, batch.currency)
        clearing = (await self._receivers.system_accounts([clearing_key]))[clearing_key]
        if batch.step == "approved":
            return await self._fund_batch(batch, items, clearing)
        if batch.step == "funded":
            return await self._distribute(batch, items, clearing)
        if batch.step == "unwinding":
            return await self._unwind(batch, items)
        return batch

    async def _screen_batch(
        self, batch: TransferBatch, items: list[Transaction]
    ) -> TransferBatch | None:
        """Screen every item; all approved → the batch is approved, otherwise every
        item is declined (the refused ones with their reason, the rest
        ``batch_declined``)."""
        unscreened = [i for i in items if i.screening is None]
        answers = await self._screen_patiently(batch.updated_at, unscreened)
        now = self._now()
        screened: list[Change] = []
        for item, answer in zip(unscreened, answers, strict=True):
            screening: Screening | None = answer if isinstance(answer, Screening) else None
            if screening is None:
                screening = fallback_screening(
                    item.amount, item.currency, self._policy, item.context.strong_auth
                )
                fell_back(screening)
            if screening is None:  # no fallback for this amount: the batch cannot go
                screening = Screening(Decision.DECLINE, fallback=True)
            screened.append(machine.item_screened(item, screening, now))
        by_id = {c.txn.id: c.txn for c in screened}
        current = [by_id.get(i.id, i) for i in items]
        refused = [
            i for i in current if i.screening and i.screening.decision is not Decision.APPROVE
        ]
        if not refused:
            approved = [machine.item_approved(i, now) for i in current]
            return await self._batch_step(
                batch, _merge(screened, approved), status=BatchStatus.PROCESSING, step="approved"
            )
        first = refused[0].screening
        reason = "screening_unavailable" if first and first.fallback else "fraud_declined"
        refused_ids = {i.id for i in refused}
        declined = [
            machine.item_declined(i, reason if i.id in refused_ids else "batch_declined", now)
            for i in current
        ]
        return await self._batch_step(
            batch,
            _merge(screened, declined),
            status=BatchStatus.COMPLETED,
            step="declined",
            reason=reason,
        )

    async def _screen_patiently(
        self, since: datetime, txns: Sequence[Transaction]
    ) -> list[Screening | Unavailable]:
        """Each one's screening; the ones the fraud service did not answer are asked
        again while the policy's patience since ``since`` lasts (as a single
        transaction's are, through :class:`~.steps.Retry`)."""
        answers: dict[str, Screening | Unavailable] = {}
        pending = list(txns)
        while pending:
            replies = await asyncio.gather(*(self._deps.fraud.screen(t) for t in pending))
            answers.update(zip((t.id for t in pending), replies, strict=True))
            unanswered = zip(pending, replies, strict=True)
            pending = [t for t, r in unanswered if isinstance(r, Unavailable)]
            wait = screening_retry_in(since, self._now(), self._policy) if pending else None
            if wait is None:
                break
            await asyncio.sleep(equal_jitter(wait))
        return [answers[t.id] for t in txns]

    async def _fund_batch(
        self, batch: TransferBatch, items: list[Transaction], clearing: str
    ) -> TransferBatch | None:
        """Debit the whole total from the source in one posting (refused: all declined)."""
        outcome = await self._deps.ledger.post(postings.batch_funding(batch, clearing))
        self._observe("effect:BatchFunding", batch)
        if isinstance(outcome, Unavailable):
            return None
        if isinstance(outcome, Refused):
            now = self._now()
            declined = [machine.item_declined(i, outcome.reason, now) for i in items]
            return await self._batch_step(
                batch,
                declined,
                status=BatchStatus.COMPLETED,
                step="declined",
                reason=outcome.reason,
            )
        return await self._batch_step(
            batch, [], step="funded", funding_posting_id=outcome.reference
        )

    async def _distribute(
        self, batch: TransferBatch, items: list[Transaction], clearing: str
    ) -> TransferBatch | None:
        """Credit the next chunk of destinations; a refusal starts the unwinding."""
        chunks = postings.batch_chunks(items)
        if batch.distributed_chunks >= len(chunks):
            return await self._batch_step(batch, [], status=BatchStatus.COMPLETED, step="done")
        index = batch.distributed_chunks
        spec = postings.batch_distribution(batch, clearing, chunks[index], index)
        outcome = await self._deps.ledger.post(spec)
        self._observe("effect:BatchDistribution", batch)
        if isinstance(outcome, Unavailable):
            return None
        if isinstance(outcome, Refused):
            return await self._batch_step(batch, [], step="unwinding", reason=outcome.reason)
        now = self._now()
        posted = [machine.item_posted(i, outcome.reference, now) for i in chunks[index]]
        return await self._batch_step(batch, posted, distributed_chunks=index + 1)

    async def _unwind(self, batch: TransferBatch, items: list[Transaction]) -> TransferBatch | None:
        """Compensate a batch that could not be distributed: reverse every posting it
        made (the ledger replays a reversal already made), then end every item."""
        reason = batch.reason or "batch_failed"
        made = {i.posting_id for i in items if i.posting_id} | {batch.funding_posting_id}
        for posting_id in sorted(p for p in made if p is not None):
            description = f"unwinding transfer batch {batch.id}"
            if isinstance(await self._deps.ledger.reverse(posting_id, description), Unavailable):
                return None
        now = self._now()
        undone = [
            machine.item_reversed(i, reason, now)
            if i.status is Status.POSTED
            else machine.item_declined(i, reason, now)
            for i in items
            if not i.final
        ]
        return await self._batch_step(batch, undone, status=BatchStatus.COMPLETED, step="unwound")

    # ------------------------------------------------------------ sweeping

    async def expire_reviews(self, limit: int = 100) -> int:
        """Reviews nobody resolved within the review timeout get the configured
        expiry policy (void: declined ``review_expired``; post: posted)."""
        before = self._now() - self._policy.review_timeout
        due = await self._read(
            lambda c: queries.due_waiting(c, self._t, Status.IN_REVIEW, before=before, limit=limit)
        )
        expired = 0
        for txn in due:
            if txn.review_outcome is not None:
                continue
            changed = replace(
                txn,
                version=txn.version + 1,
                updated_at=self._now(),
                review_outcome=ReviewOutcome.EXPIRED,
            )
            details = {"transaction_id": txn.id, "outcome": ReviewOutcome.EXPIRED.value}
            audit = recording(WORKER, txn.id, details, action="transaction.review_resolved")
            if await self._store([Write(changes=(changed,), recordings=(audit,))], []):
                expired += 1
                await self.advance(txn.id)
        return expired

    async def resume_stuck(self, older_than_seconds: float, limit: int = 200) -> int:
        """Send a command for every row the worker should have moved on but has not
        touched for ``older_than_seconds`` (lost command, dependency outage, owed
        compensation, pending refund) and every challenge past its timeout. The
        commands go through the outbox like any other."""
        now = self._now()
        before = now - timedelta(seconds=older_than_seconds)
        expired = now - self._policy.challenge_timeout

        async def due(conn: Tx) -> list[Transaction]:
            stuck = await queries.due_for_resume(conn, self._t, before=before, limit=limit)
            waiting = await queries.due_waiting(
                conn, self._t, Status.CHALLENGED, before=expired, limit=limit
            )
            return [*stuck, *waiting]

        rows = await self._read(due)
        targets: dict[str, tuple[str, dict[str, str]]] = {}
        for txn in rows:
            if txn.batch_id is not None:
                targets[txn.batch_id] = (partition_key(txn), {"batch_id": txn.batch_id})
            else:
                targets[txn.id] = (partition_key(txn), {"transaction_id": txn.id})
        if not targets:
            return 0
        recordings = [
            recording(
                WORKER, target, command_data(self.instance, **ids), COMMAND, COMMANDS_TOPIC, key
            )
            for target, (key, ids) in targets.items()
        ]
        await self._journal.write(Write(recordings=recordings))
        log.info("resumed %d stuck transactions or batches", len(targets))
        return len(targets)


def _merge(first: Sequence[Change], second: Sequence[Change]) -> list[Change]:
    """Item changes applied one after the other become one change per item (the
    later one's state, both ones' facts), so each row is written once."""
    later = {c.txn.id: c for c in second}
    merged = []
    for change in first:
        after = later.pop(change.txn.id, None)
        if after is None:
            merged.append(change)
            continue
        txn = replace(after.txn, version=change.txn.version)
        merged.append(Change(txn, change.facts + after.facts, after.audit or change.audit))
    merged.extend(later.values())
    return merged
