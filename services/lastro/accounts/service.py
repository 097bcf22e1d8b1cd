"""Use cases of the ledger: accounts, postings, holds, history and statements.

Every use case that changes state is one database transaction run through
:func:`lastro.core.db.in_transaction` (serialization failures and deadlocks are
retried there, from the start, so callers never see them). Inside it the use
case locks the accounts it touches with ``SELECT ... FOR UPDATE`` in sorted id
order, applies the pure rules of :mod:`lastro.accounts.domain`, and writes the
rows, the balance changes, its outbox event and its audit record. Any error
rolls the whole transaction back: nothing is written on any error.

Idempotency: postings and holds are keyed by the caller's ``external_id``. A
repeat with the same content returns what was recorded the first time
(``Recorded.replayed`` is true); different content raises ExternalIdConflict.
Concurrent duplicates are settled by the database's unique constraint: the
loser's transaction rolls back and it re-reads the winner's row.

Group commit: concurrent :meth:`Ledger.post_posting` calls are settled together
(:mod:`lastro.accounts.batching`), one transaction per batch: it locks the union
of the batch's accounts in id order, applies each request's rules in arrival
order against the balances the earlier ones left, and writes every accepted
posting, its entries, balance changes, outbox event and audit record with a few
set-based statements. A request that breaks a rule gets its own error and is
simply not written; the others commit. Each posting keeps every guarantee it
has alone; the batch only shares the round trips and the commit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Generic, TypeVar

from opentelemetry import propagate
from sqlalchemy import case, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lastro.accounts import domain
from lastro.accounts.batching import GroupCommitter
from lastro.accounts.domain import (
    AccountId,
    AccountKind,
    Direction,
    EntryRequest,
    Hold,
    HoldRequest,
    HoldStatus,
    HoldTransition,
    Posting,
    PostingId,
    PostingRequest,
)
from lastro.accounts.store import (
    Account,
    Entry,
    LedgerQueries,
    LedgerTables,
    account_from_row,
    decode_cursor,
    encode_cursor,
    entry_from_row,
    hold_from_row,
    ledger_tables,
)
from lastro.core import audit
from lastro.core.db import constraint_name, in_transaction
from lastro.core.events import (
    CloudEvent,
    EventSigner,
    OutboxMessage,
    enqueue,
    enqueue_many,
    new_event,
)

T = TypeVar("T")
Clock = Callable[[], datetime]

SOURCE: Final = "/accounts"
LEDGER_TOPIC: Final = "lastro.ledger"
ACCOUNTS_TOPIC: Final = "lastro.accounts"
MAX_PAGE: Final = 200
# Audit actions are imperative like "account.open"; events are past-tense facts.
HOLD_ACTIONS: Final = {"placed": "place", "posted": "post", "voided": "void", "expired": "expire"}
SWEEPER_ACTOR: Final = "service:accounts/hold-sweeper"
POSTING_BATCHES_IN_FLIGHT: Final = 2
"""Two batches overlap one's commit (fsync) with the next one's locking and rules;
both lock accounts in id order and then the audit head, so they queue, never deadlock."""


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Recorded(Generic[T]):
    """What an idempotent use case returns: the stored item, and whether this call
    replayed an earlier one with the same ``external_id`` (nothing new written)."""

    item: T
    replayed: bool


@dataclass(frozen=True)
class Caller:
    """Who asks: the authenticated principal (user, client or service id) and the
    address the request came from; both go into the audit record."""

    actor: str
    source_ip: str | None = None


@dataclass(frozen=True)
class Balance:
    account_id: AccountId
    currency: str
    posted: int
    pending: int
    available: int

    @classmethod
    def of(cls, account: domain.AccountState) -> Balance:
        return cls(account.id, account.currency, account.posted, account.pending, account.available)


@dataclass(frozen=True)
class EntryPage:
    """Entries newest first; ``next_cursor`` fetches the older ones (None at the end)."""

    entries: list[Entry]
    next_cursor: str | None


@dataclass(frozen=True)
class Statement:
    """An account's entries in ``[start, end)`` with ``closing = opening + credits - debits``."""

    account_id: AccountId
    currency: str
    start: datetime
    end: datetime
    entries: list[Entry]
    totals: domain.StatementTotals


def entry_fields(entry: EntryRequest | Entry) -> dict[str, Any]:
    """One leg as events and API resources show it."""
    return {
        "account_id": entry.account_id,
        "direction": entry.direction.value,
        "amount": entry.amount,
        "currency": entry.currency,
    }


def posting_fields(posting: Posting) -> dict[str, Any]:
    """A posting as its events and its API resource show it, but for its id (which
    an event names ``posting_id`` and the resource ``id``)."""
    return {
        "external_id": posting.external_id,
        "entries": [entry_fields(e) for e in posting.entries],
        "description": posting.description,
        "metadata": dict(posting.metadata),
        "reverses": posting.reverses,
        "created_at": posting.created_at.isoformat(),
    }


def hold_fields(hold: Hold) -> dict[str, Any]:
    """The fields of a hold its events and its API resource share (the resource
    adds its description, metadata and times; neither includes the id)."""
    return {
        "external_id": hold.external_id,
        "account_id": hold.account_id,
        "counterparty_id": hold.counterparty_id,
        "amount": hold.amount,
        "currency": hold.currency,
        "status": hold.status.value,
        "posted_amount": hold.posted_amount,
        "expires_at": hold.expires_at.isoformat(),
    }


def account_fields(account: domain.AccountState) -> dict[str, Any]:
    """The fields of an account its events and its API resource share (no id)."""
    return {
        "currency": account.currency,
        "kind": account.kind.value,
        "status": account.status.value,
        "overdraft_limit": account.overdraft_limit,
    }


def _posting_written(
    posting: Posting, caller: Caller, traceparent: str | None
) -> tuple[OutboxMessage, audit.AuditRecord]:
    """The ``lastro.ledger.posting_created`` event (keyed by the lowest debited
    account) and the audit record that commit with ``posting``."""
    data = {"posting_id": posting.id, **posting_fields(posting)}
    debits = [e.account_id for e in posting.entries if e.direction is Direction.DEBIT]
    event = CloudEvent(
        type="lastro.ledger.posting_created",
        source=SOURCE,
        data=data,
        subject=posting.id,
        traceparent=traceparent,
    )
    record = audit.AuditRecord(
        actor=caller.actor,
        action="ledger.posting.create",
        target=posting.id,
        outcome="succeeded",
        source_ip=caller.source_ip,
        details={"external_id": posting.external_id, "entries": data["entries"]},
        occurred_at=posting.created_at,
    )
    key = min(debits) if debits else posting.entries[0].account_id
    return OutboxMessage(event, LEDGER_TOPIC, key), record


def _traceparent() -> str | None:
    """The caller's trace context, captured before its request joins a batch."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


@dataclass(frozen=True)
class _Submitted:
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


class Ledger:
    """The account service's use cases over one ledger schema.

    ``signer`` signs the outbox events, ``audit_key`` keys the audit chain head
    (see :mod:`lastro.core.audit`), ``clock`` is the only source of time (tests
    inject one to move past hold expiries). ``max_posting_batch`` caps how many
    postings one transaction carries. Call :meth:`aclose` before disposing of
    the engine.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        signer: EventSigner,
        audit_key: bytes,
        *,
        schema: str = "accounts",
        clock: Clock = utc_now,
        max_posting_batch: int = 128,
    ) -> None:
        self._engine = engine
        self._signer = signer
        self._audit_key = audit_key
        self._clock = clock
        self.tables: LedgerTables = ledger_tables(schema)
        self._q = LedgerQueries(self.tables)
        self._postings: GroupCommitter[_Submitted, Recorded[Posting]] = GroupCommitter(
            self._settle_postings,
            max_batch=max_posting_batch,
            max_concurrent=POSTING_BATCHES_IN_FLIGHT,
        )

    async def aclose(self) -> None:
        """Wait for postings already submitted, then refuse new ones (``close`` is
        the account use case)."""
        await self._postings.close()

    # ------------------------------------------------------------ plumbing

    async def record_change(
        self,
        conn: AsyncConnection,
        caller: Caller,
        action: str,
        target: str,
        data: dict[str, Any],
        now: datetime,
        *,
        event_type: str,
        topic: str,
        key: str,
    ) -> None:
        """Write a change's signed outbox event ``event_type`` (``data`` as payload,
        ``target`` as subject, partitioned by ``key``) and its
        audit record (``caller`` did ``action`` on ``target``, ``data`` as details)
        in the caller's transaction: they commit or roll back with the change."""
        await enqueue(
            conn,
            self.tables.outbox,
            self._signer,
            new_event(event_type, SOURCE, data, subject=target),
            topic=topic,
            key=key,
        )
        record = audit.AuditRecord(
            actor=caller.actor,
            action=action,
            target=target,
            outcome="succeeded",
            source_ip=caller.source_ip,
            details=data,
            occurred_at=now,
        )
        await audit.append(conn, self.tables.audit, record, self._audit_key)

    async def _read(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        async with self._engine.connect() as conn:
            return await work(conn)

    async def _load_account_row(
        self, conn: AsyncConnection, account_id: str, *, lock: bool = False
    ) -> Account:
        a = self.tables.accounts
        query = select(a).where(a.c.id == account_id)
        row = (await conn.execute(query.with_for_update() if lock else query)).one_or_none()
        if row is None:
            raise domain.UnknownAccount(f"account {account_id} does not exist", field="account_id")
        return account_from_row(row)

    # ------------------------------------------------------------ accounts

    async def open_account(
        self,
        currency: str,
        kind: AccountKind,
        caller: Caller,
        *,
        customer_id: str | None = None,
        overdraft_limit: int = 0,
        metadata: Mapping[str, str] | None = None,
    ) -> Account:
        """Open an active account with zero balances; audited, ``lastro.account.opened``.
        Raises UnknownCurrency or InvalidRequest; writes nothing then."""
        now = self._clock()
        meta = dict(metadata or {})
        domain.validate_metadata(meta)
        state = domain.open_account(domain.new_account_id(now), currency, kind, overdraft_limit)

        async def work(conn: AsyncConnection) -> Account:
            await conn.execute(
                insert(self.tables.accounts).values(
                    id=state.id,
                    customer_id=customer_id,
                    currency=state.currency,
                    kind=state.kind.value,
                    status=state.status.value,
                    overdraft_limit=state.overdraft_limit,
                    metadata=meta,
                    created_at=now,
                    updated_at=now,
                )
            )
            data = {"account_id": state.id, **account_fields(state), "customer_id": customer_id}
            await self.record_change(
                conn,
                caller,
                "account.open",
                state.id,
                data,
                now,
                event_type="lastro.account.opened",
                topic=ACCOUNTS_TOPIC,
                key=state.id,
            )
            return Account(state, customer_id, meta, now, now)

        return await in_transaction(self._engine, work)

    async def get_account(self, account_id: str) -> Account:
        """The account; raises UnknownAccount."""
        return await self._read(lambda conn: self._load_account_row(conn, account_id))

    async def list_accounts(self, customer_id: str) -> list[Account]:
        """The customer's accounts, oldest first."""
        a = self.tables.accounts

        async def work(conn: AsyncConnection) -> list[Account]:
            rows = await conn.execute(
                select(a).where(a.c.customer_id == customer_id).order_by(a.c.id)
            )
            return [account_from_row(row) for row in rows]

        return await self._read(work)

    async def get_balance(self, account_id: str) -> Balance:
        """Posted, pending and available (posted - pending) as of the last commit."""
        return Balance.of((await self.get_account(account_id)).state)

    async def freeze(self, account_id: str, caller: Caller) -> Account:
        """Active → frozen (debits and new holds refused, credits still accepted)."""
        return await self._change_status(account_id, caller, domain.freeze, "frozen")

    async def unfreeze(self, account_id: str, caller: Caller) -> Account:
        """Frozen → active."""
        return await self._change_status(account_id, caller, domain.unfreeze, "unfrozen")

    async def close(self, account_id: str, caller: Caller) -> Account:
        """Close an account; only with zero posted and pending balance (AccountNotEmpty),
        checked under the account's row lock, so no posting can slip in between."""
        return await self._change_status(account_id, caller, domain.close, "closed")

    async def _change_status(
        self,
        account_id: str,
        caller: Caller,
        rule: Callable[[domain.AccountState], domain.AccountState],
        fact: str,
    ) -> Account:
        async def work(conn: AsyncConnection) -> Account:
            now = self._clock()
            account = await self._load_account_row(conn, account_id, lock=True)
            changed = rule(account.state)
            a = self.tables.accounts
            await conn.execute(
                update(a)
                .where(a.c.id == account.id)
                .values(status=changed.status.value, updated_at=now)
            )
            await self.record_change(
                conn,
                caller,
                f"account.{fact}",
                account.id,
                {
                    "account_id": account.id,
                    "customer_id": account.customer_id,
                    **account_fields(changed),
                },
                now,
                event_type=f"lastro.account.{fact}",
                topic=ACCOUNTS_TOPIC,
                key=account.id,
            )
            return Account(changed, account.customer_id, account.metadata, account.created_at, now)

        return await in_transaction(self._engine, work)

    # ------------------------------------------------------------ postings

    async def post_posting(self, request: PostingRequest, caller: Caller) -> Recorded[Posting]:
        """Record a balanced posting and its balance changes.

        Guarantee: atomic — the posting, its entries, every balance change, the
        ``lastro.ledger.posting_created`` outbox event and the audit record commit
        together or not at all; it never leaves a partial posting. Fails with any
        :class:`domain.LedgerError` (InsufficientFunds, AccountFrozen, ...) and then
        writes nothing. Idempotent on ``external_id``: the same content returns the
        stored posting (``replayed``), different content raises ExternalIdConflict,
        and concurrent duplicates produce exactly one posting. Returns only after
        the commit. Concurrent calls share one transaction (group commit); a
        request never fails because another one in its batch did.
        """
        _check_entry_shapes(request)
        domain.validate_external_id(request.external_id)
        submitted = _Submitted(request, caller, _traceparent())
        if request.reverses is not None:
            return await self._post_alone(submitted)
        return await self._postings.submit(submitted)

    async def _post_alone(self, submitted: _Submitted) -> Recorded[Posting]:
        """One posting in its own transaction (reversals, and batches that failed)."""
        request = submitted.request
        try:
            (outcome,) = await in_transaction(
                self._engine, lambda conn: self._post_together(conn, [submitted])
            )
        except IntegrityError as error:
            constraint = constraint_name(error)
            if constraint == "postings_reverses_key":
                raise domain.PostingAlreadyReversed(
                    f"posting {request.reverses} was already reversed", field="reverses"
                ) from None
            if constraint != "postings_external_id_key":
                raise
        else:
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        return await in_transaction(
            self._engine, lambda conn: self._replay_by_external(conn, request)
        )

    async def _settle_postings(self, batch: Sequence[_Submitted]) -> list[PostingOutcome]:
        """One outcome per request: all of the batch in one transaction or, if that
        transaction fails for a reason no single rule explains (a unique-key race
        with another writer, a request the database refuses), each request alone,
        so one request can never fail the others."""
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

    async def _post_together(
        self, conn: AsyncConnection, batch: Sequence[_Submitted]
    ) -> list[PostingOutcome]:
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
        accepted: list[tuple[Posting, _Submitted]] = []
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
        await self._write_postings(conn, accepted, totals)
        return outcomes

    async def reverse_posting(
        self, posting_id: str, caller: Caller, *, description: str | None = None
    ) -> Recorded[Posting]:
        """Post the exact mirror of ``posting_id`` (every entry's direction swapped).

        Same guarantees as :meth:`post_posting`; reversing a posting again replays
        the first reversal. Raises UnknownPosting, or InsufficientFunds when the
        credited account has spent the money since.
        """
        original = await self.get_posting(posting_id)
        return await self.post_posting(domain.reverse(original, description), caller)

    async def get_posting(self, posting_id: str) -> Posting:
        """The posting with its entries; raises UnknownPosting."""

        async def work(conn: AsyncConnection) -> Posting:
            posting = await self._q.load_posting(conn, posting_id)
            if posting is None:
                raise domain.UnknownPosting(f"posting {posting_id} does not exist")
            return posting

        return await self._read(work)

    async def _write_postings(
        self,
        conn: AsyncConnection,
        accepted: Sequence[tuple[Posting, _Submitted]],
        deltas: Mapping[AccountId, domain.BalanceDelta],
    ) -> None:
        """Write the postings with their entries, the summed balance changes, and each
        posting's outbox event and audit record (nothing when ``accepted`` is empty)."""
        if not accepted:
            return
        await self._q.write_postings(conn, [posting for posting, _ in accepted], deltas)
        written = [_posting_written(p, s.caller, s.traceparent) for p, s in accepted]
        await enqueue_many(conn, self.tables.outbox, self._signer, [event for event, _ in written])
        await audit.append_many(
            conn, self.tables.audit, [record for _, record in written], self._audit_key
        )

    async def _replay_by_external(
        self, conn: AsyncConnection, request: PostingRequest
    ) -> Recorded[Posting]:
        posting_id = await self._q.posting_id_for(conn, request.external_id)
        assert posting_id is not None, "the unique violation proved it exists"
        existing = await self._q.load_posting(conn, posting_id)
        assert existing is not None, "postings are never deleted"
        return Recorded(domain.replay_posting(existing, request), replayed=True)

    async def _check_reversible(self, conn: AsyncConnection, posting_id: PostingId) -> None:
        p = self.tables.postings
        found = (await conn.execute(select(p.c.id).where(p.c.id == posting_id))).first()
        if found is None:
            raise domain.UnknownPosting(f"posting {posting_id} does not exist", field="reverses")
        reversed_by = await conn.scalar(select(p.c.id).where(p.c.reverses == posting_id))
        if reversed_by is not None:
            raise domain.PostingAlreadyReversed(
                f"posting {posting_id} was already reversed by {reversed_by}", field="reverses"
            )

    # ------------------------------------------------------------ holds

    async def place_hold(self, request: HoldRequest, caller: Caller) -> Recorded[Hold]:
        """Reserve funds until ``expires_at`` (pending += amount on the held account).

        Guarantee: atomic with its balance change, ``lastro.ledger.hold_placed`` and
        its audit record; obeys the same spend rule as a debit, so posting it later
        cannot overdraw. Idempotent on ``external_id`` like :meth:`post_posting`.
        """
        if not isinstance(request.account_id, str) or not isinstance(request.counterparty_id, str):
            raise domain.InvalidRequest("account ids must be text", field="account_id")

        async def work(conn: AsyncConnection) -> Recorded[Hold]:
            now = self._clock()
            existing = await self._hold_by_external(conn, request.external_id)
            if existing is not None:
                return Recorded(domain.replay_hold(existing, request), replayed=True)
            states = await self._q.lock_accounts(
                conn, [request.account_id, request.counterparty_id]
            )
            transition = domain.place_hold(states, request, domain.new_hold_id(now), now)
            hold = transition.hold
            await conn.execute(
                insert(self.tables.holds).values(
                    id=hold.id,
                    external_id=hold.external_id,
                    fingerprint=hold.fingerprint,
                    account_id=hold.account_id,
                    counterparty_id=hold.counterparty_id,
                    amount=hold.amount,
                    currency=hold.currency,
                    status=hold.status.value,
                    expires_at=hold.expires_at,
                    description=hold.description,
                    metadata=dict(hold.metadata),
                    created_at=now,
                )
            )
            await self._q.apply_deltas(conn, transition.deltas, now)
            await self._hold_written(conn, transition, "placed", caller, now)
            return Recorded(hold, replayed=False)

        try:
            return await in_transaction(self._engine, work)
        except IntegrityError as error:
            if constraint_name(error) != "holds_external_id_key":
                raise

        async def replay(conn: AsyncConnection) -> Recorded[Hold]:
            existing = await self._hold_by_external(conn, request.external_id)
            assert existing is not None, "the unique violation proved it exists"
            return Recorded(domain.replay_hold(existing, request), replayed=True)

        return await in_transaction(self._engine, replay)

    async def post_hold(self, hold_id: str, caller: Caller, *, amount: int | None = None) -> Hold:
        """Post ``amount`` (default: all) of a pending hold and release the rest.

        Guarantee: atomic — the hold becomes ``posted`` exactly once, its posting
        (external_id ``<hold id>:post``) and balance changes, events and audit record
        commit together. Raises HoldAlreadyPosted, HoldAlreadyVoided, HoldExpired
        (also when the expiry passed before the sweeper ran), HoldAmountExceeded,
        UnknownHold; writes nothing then.
        """

        async def work(conn: AsyncConnection) -> Hold:
            now = self._clock()
            hold = await self._load_hold(conn, hold_id)
            states = await self._q.lock_accounts(conn, [hold.account_id, hold.counterparty_id])
            transition = domain.post_hold(
                states, hold, hold.amount if amount is None else amount, now
            )
            assert transition.posting is not None
            posting = domain.record_posting(transition.posting, domain.new_posting_id(now), now)
            submitted = _Submitted(transition.posting, caller, _traceparent())
            await self._write_postings(conn, [(posting, submitted)], transition.deltas)
            await self._hold_written(conn, transition, "posted", caller, now, posting.id)
            return transition.hold

        return await in_transaction(self._engine, work)

    async def void_hold(self, hold_id: str, caller: Caller) -> Hold:
        """Release a pending hold (pending -= amount), also on a frozen account.
        Atomic with its event and audit record; raises HoldAlreadyPosted,
        HoldAlreadyVoided, HoldExpired or UnknownHold."""

        async def work(conn: AsyncConnection) -> Hold:
            now = self._clock()
            hold = await self._load_hold(conn, hold_id)
            await self._q.lock_accounts(conn, [hold.account_id])
            transition = domain.void_hold(hold, now)
            await self._q.apply_deltas(conn, transition.deltas, now)
            await self._hold_written(conn, transition, "voided", caller, now)
            return transition.hold

        return await in_transaction(self._engine, work)

    async def expire_due_holds(
        self, now: datetime | None = None, *, limit: int = 500, caller: Caller | None = None
    ) -> list[Hold]:
        """Release every pending hold whose expiry is at or before ``now`` (default:
        the clock), up to ``limit``, one transaction per hold. Safe to run from
        several sweepers and alongside post/void: each hold is re-read under its
        lock and skipped if it already left pending. Returns the expired holds."""
        cutoff = now or self._clock()
        who = caller or Caller(SWEEPER_ACTOR)
        h = self.tables.holds

        async def due(conn: AsyncConnection) -> list[str]:
            rows = await conn.execute(
                select(h.c.id)
                .where(h.c.status == HoldStatus.PENDING.value, h.c.expires_at <= cutoff)
                .order_by(h.c.expires_at)
                .limit(limit)
            )
            return [row.id for row in rows]

        expired: list[Hold] = []
        for hold_id in await self._read(due):

            async def work(conn: AsyncConnection, hold_id: str = hold_id) -> Hold | None:
                hold = await self._load_hold(conn, hold_id)
                if hold.status is not HoldStatus.PENDING:
                    return None
                await self._q.lock_accounts(conn, [hold.account_id])
                transition = domain.expire_hold(hold, cutoff)
                await self._q.apply_deltas(conn, transition.deltas, cutoff)
                await self._hold_written(conn, transition, "expired", who, cutoff)
                return transition.hold

            done = await in_transaction(self._engine, work)
            if done is not None:
                expired.append(done)
        return expired

    async def get_hold(self, hold_id: str) -> Hold:
        """The hold; raises UnknownHold."""
        return await self._read(lambda conn: self._load_hold(conn, hold_id, lock=False))

    async def _load_hold(self, conn: AsyncConnection, hold_id: str, *, lock: bool = True) -> Hold:
        h = self.tables.holds
        query = select(h).where(h.c.id == hold_id)
        row = (await conn.execute(query.with_for_update() if lock else query)).one_or_none()
        if row is None:
            raise domain.UnknownHold(f"hold {hold_id} does not exist", field="hold_id")
        return hold_from_row(row)

    async def _hold_by_external(self, conn: AsyncConnection, external_id: str) -> Hold | None:
        h = self.tables.holds
        row = (await conn.execute(select(h).where(h.c.external_id == external_id))).one_or_none()
        return None if row is None else hold_from_row(row)

    async def _hold_written(
        self,
        conn: AsyncConnection,
        transition: HoldTransition,
        fact: str,
        caller: Caller,
        now: datetime,
        posting_id: PostingId | None = None,
    ) -> None:
        hold = transition.hold
        if fact != "placed":
            h = self.tables.holds
            await conn.execute(
                update(h)
                .where(h.c.id == hold.id)
                .values(
                    status=hold.status.value,
                    posted_amount=hold.posted_amount,
                    resolved_at=hold.resolved_at,
                    posting_id=posting_id,
                )
            )
        await self.record_change(
            conn,
            caller,
            f"ledger.hold.{HOLD_ACTIONS[fact]}",
            hold.id,
            {"hold_id": hold.id, **hold_fields(hold), "posting_id": posting_id},
            now,
            event_type=f"lastro.ledger.hold_{fact}",
            topic=LEDGER_TOPIC,
            key=hold.account_id,
        )

    # ------------------------------------------------------------ history

    async def history(
        self,
        account_id: str,
        *,
        limit: int = 50,
        cursor: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        direction: Direction | None = None,
    ) -> EntryPage:
        """The account's entries, newest first, ``limit`` (1..200) per page; filters:
        ``since`` ≤ created_at < ``until``, ``direction``. Keyset-paginated on the
        entry id, so pages never skip or repeat an entry while new ones arrive."""
        if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
            raise domain.InvalidRequest(f"limit must be 1..{MAX_PAGE}", field="limit")
        _check_range(since, until)
        before = None if cursor is None else decode_cursor(cursor)
        if direction is not None and direction not in tuple(Direction):
            raise domain.InvalidRequest("direction must be debit or credit", field="direction")
        e = self.tables.entries

        async def work(conn: AsyncConnection) -> EntryPage:
            await self._load_account_row(conn, account_id)
            query = select(e).where(e.c.account_id == account_id)
            if before is not None:
                query = query.where(e.c.id < before)
            if since is not None:
                query = query.where(e.c.created_at >= since)
            if until is not None:
                query = query.where(e.c.created_at < until)
            if direction is not None:
                query = query.where(e.c.direction == Direction(direction).value)
            rows = (await conn.execute(query.order_by(e.c.id.desc()).limit(limit + 1))).all()
            entries = [entry_from_row(row) for row in rows[:limit]]
            more = len(rows) > limit
            return EntryPage(entries, encode_cursor(entries[-1].id) if more else None)

        return await self._read(work)

    async def statement(self, account_id: str, start: datetime, end: datetime) -> Statement:
        """Opening balance at ``start``, the entries in ``[start, end)`` oldest first,
        and the closing balance, read from one consistent snapshot."""
        _check_range(start, end)
        if start >= end:
            raise domain.InvalidRequest("statement needs start < end", field="start")
        e = self.tables.entries
        signed = case((e.c.direction == Direction.CREDIT.value, e.c.amount), else_=-e.c.amount)

        snapshot = self._engine.execution_options(
            isolation_level="REPEATABLE READ", postgresql_readonly=True
        )
        async with snapshot.connect() as conn:
            account = await self._load_account_row(conn, account_id)
            opening = int(
                await conn.scalar(
                    select(func.coalesce(func.sum(signed), 0)).where(
                        e.c.account_id == account_id, e.c.created_at < start
                    )
                )
                or 0
            )
            rows = await conn.execute(
                select(e)
                .where(e.c.account_id == account_id, e.c.created_at >= start, e.c.created_at < end)
                .order_by(e.c.created_at, e.c.id)
            )
            entries = [entry_from_row(row) for row in rows]
            await conn.rollback()
        return Statement(
            account.id,
            account.state.currency,
            start,
            end,
            entries,
            domain.summarize_statement(opening, entries),
        )


def _check_range(since: datetime | None, until: datetime | None) -> None:
    for name, value in (("since", since), ("until", until)):
        if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
            raise domain.InvalidRequest(f"{name} must be an aware time", field=name)
    if since is not None and until is not None and since > until:
        raise domain.InvalidRequest("since must not be after until", field="since")
