"""Posting a batch: the group commit behind :meth:`Ledger.post_posting`.

Concurrent postings are settled together (:mod:`lastro.core.batching`), one
transaction per batch: it locks the union of the batch's accounts in id order,
applies each request's rules in arrival order against the balances the earlier
ones left, and writes every accepted posting, its entries, balance changes,
outbox event and audit record with a few set-based statements. A request that
breaks a rule gets its own error and is simply not written; the others commit.
A batch whose transaction fails for a reason no single rule explains (a
unique-key race with another writer, a request the database refuses) is retried
request by request, so one request can never fail the others.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Generic, TypeVar

from opentelemetry import propagate

from lastro.accounts import domain, events
from lastro.accounts.domain import AccountId, Posting, PostingRequest
from lastro.accounts.store import POSTING_EXTERNAL_ID_KEY, POSTING_REVERSES_KEY, PostingQueries
from lastro.core.batching import GroupCommitter
from lastro.core.changes import Caller, Change, ChangeRecorder
from lastro.core.db import Engine, Tx, UniqueViolation, in_transaction

T = TypeVar("T")

BATCHES_IN_FLIGHT: Final = 2
"""Two batches overlap one's commit (fsync) with the next one's locking and rules;
both lock accounts in id order and then the audit head, so they queue, never deadlock."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def traceparent() -> str | None:
    """The caller's trace context, captured before its request joins a batch."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


@dataclass(frozen=True)
class Recorded(Generic[T]):
    """What an idempotent use case returns: the stored item, and whether this call
    replayed an earlier one with the same ``external_id`` (nothing new written)."""

    item: T
    replayed: bool


@dataclass(frozen=True)
class Submitted:
    """A posting request, who asked, and from which trace (captured before it waits
    for its batch)."""

    request: PostingRequest
    caller: Caller
    traceparent: str | None


PostingOutcome = Recorded[Posting] | BaseException


def _check_entry_shapes(request: PostingRequest) -> None:
    """Reject what could not even be sent to the database as an account id."""
    if not isinstance(request.entries, tuple | list):
        raise domain.InvalidRequest("entries must be a list", field="entries")
    for i, entry in enumerate(request.entries):
        if not isinstance(entry, domain.EntryRequest) or not isinstance(entry.account_id, str):
            raise domain.InvalidRequest("entry is malformed", field=f"entries[{i}]")


def posting_created(posting: Posting, submitted: Submitted) -> Change:
    """The event and audit record that commit with ``posting``."""
    data = events.posting_created(posting)
    return Change(
        submitted.caller,
        action="posting.created",
        target=posting.id,
        data=data,
        event_type=events.POSTING_CREATED,
        topic=events.LEDGER_TOPIC,
        key=events.posting_key(posting),
        details={"external_id": posting.external_id, "entries": data["entries"]},
        traceparent=submitted.traceparent,
        at=posting.created_at,
    )


class PostingDesk:
    """Where postings are submitted, batched and written (see module docstring)."""

    def __init__(
        self,
        engine: Engine,
        queries: PostingQueries,
        changes: ChangeRecorder,
        *,
        clock: Callable[[], datetime],
        max_batch: int,
    ) -> None:
        self._engine = engine
        self._q = queries
        self._changes = changes
        self._clock = clock
        self._batches: GroupCommitter[Submitted, Recorded[Posting]] = GroupCommitter(
            self._settle, max_batch=max_batch, max_concurrent=BATCHES_IN_FLIGHT
        )

    async def aclose(self) -> None:
        """Wait for postings already submitted, then refuse new ones."""
        await self._batches.close()

    async def post(self, request: PostingRequest, caller: Caller) -> Recorded[Posting]:
        """Validate the request's shape, then settle it in the next batch (reversals
        alone); see :meth:`Ledger.post_posting` for the guarantees."""
        _check_entry_shapes(request)
        domain.validate_external_id(request.external_id)
        submitted = Submitted(request, caller, traceparent())
        if request.reverses is not None:
            return await self._post_alone(submitted)
        return await self._batches.submit(submitted)

    async def write(
        self,
        conn: Tx,
        accepted: Sequence[tuple[Posting, Submitted]],
        deltas: Mapping[AccountId, domain.BalanceDelta],
    ) -> None:
        """Write the postings with their entries, the summed balance changes, and each
        posting's outbox event and audit record (nothing when ``accepted`` is empty)."""
        if not accepted:
            return
        await self._q.write_postings(conn, [posting for posting, _ in accepted], deltas)
        await self._changes.record_many(conn, [posting_created(p, s) for p, s in accepted])

    async def _post_alone(self, submitted: Submitted) -> Recorded[Posting]:
        """One posting in its own transaction (reversals, and batches that failed)."""
        request = submitted.request
        try:
            (outcome,) = await in_transaction(
                self._engine, lambda conn: self._post_together(conn, [submitted])
            )
        except UniqueViolation as violation:
            if violation.constraint == POSTING_REVERSES_KEY:
                raise domain.PostingAlreadyReversed(
                    f"posting {request.reverses} was already reversed", field="reverses"
                ) from None
            if violation.constraint != POSTING_EXTERNAL_ID_KEY:
                raise
        else:
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        return await in_transaction(self._engine, lambda conn: self._replay(conn, request))

    async def _settle(self, batch: Sequence[Submitted]) -> list[PostingOutcome]:
        """One outcome per request: all of the batch in one transaction or, if that
        transaction fails for a reason no single rule explains, each request alone."""
        try:
            return await in_transaction(self._engine, lambda conn: self._post_together(conn, batch))
        except Exception:
            outcomes: list[PostingOutcome] = []
            for submitted in batch:
                try:
                    outcomes.append(await self._post_alone(submitted))
                except Exception as error:
                    outcomes.append(error)
            return outcomes

    async def _post_together(self, conn: Tx, batch: Sequence[Submitted]) -> list[PostingOutcome]:
        """Apply the batch in order against progressively updated balances and write
        the accepted postings; a rule error settles only its own request. Pure
        computation between the reads and the writes, so a retried transaction
        recomputes everything from fresh reads."""
        states, existing = await self._q.lock_for_batch(
            conn,
            [entry.account_id for s in batch for entry in s.request.entries],
            [s.request.external_id for s in batch],
        )
        known: dict[str, Posting] = {}
        totals: dict[AccountId, domain.BalanceDelta] = {}
        accepted: list[tuple[Posting, Submitted]] = []
        outcomes: list[PostingOutcome] = []
        for submitted in batch:
            request = submitted.request
            try:
                stored = known.get(request.external_id)
                if stored is None and request.external_id in existing:
                    stored = await self._q.load_posting(conn, existing[request.external_id])
                    assert stored is not None, "postings are never deleted"
                    known[request.external_id] = stored
                if stored is not None:
                    outcomes.append(Recorded(domain.replay_posting(stored, request), True))
                    continue
                if request.reverses is not None:
                    await self._check_reversible(conn, request.reverses)
                deltas = domain.apply_posting(states, request)
            except domain.LedgerError as error:
                outcomes.append(error)
                continue
            now = self._clock()
            posting = domain.record_posting(request, domain.new_posting_id(now), now)
            for account_id, delta in deltas.items():
                states[account_id] = states[account_id].apply(delta)
                totals[account_id] = totals.get(account_id, domain.BalanceDelta()) + delta
            known[request.external_id] = posting
            accepted.append((posting, submitted))
            outcomes.append(Recorded(posting, replayed=False))
        await self.write(conn, accepted, totals)
        return outcomes

    async def _replay(self, conn: Tx, request: PostingRequest) -> Recorded[Posting]:
        posting_id = await self._q.posting_id_for(conn, request.external_id)
        assert posting_id is not None, "the unique violation proved it exists"
        existing = await self._q.load_posting(conn, posting_id)
        assert existing is not None, "postings are never deleted"
        return Recorded(domain.replay_posting(existing, request), replayed=True)

    async def _check_reversible(self, conn: Tx, posting_id: domain.PostingId) -> None:
        exists, reversed_by = await self._q.reversal_of(conn, posting_id)
        if not exists:
            raise domain.UnknownPosting(f"posting {posting_id} does not exist", field="reverses")
        if reversed_by is not None:
            raise domain.PostingAlreadyReversed(
                f"posting {posting_id} was already reversed by {reversed_by}", field="reverses"
            )
