"""Use cases of the ledger: accounts, postings, holds, history and statements.

Every use case that changes state is one :func:`lastro.core.db.in_transaction`
(serialization failures and deadlocks are retried from the start): it locks the
accounts it touches in id order (``store``), applies the pure rules of
:mod:`lastro.accounts.domain`, and writes the rows, the balance changes, its outbox
event and audit record (``ChangeRecorder``). Any error writes nothing.

Ownership: reads and changes that take ``owner`` answer UnknownAccount for an
account of another owner's customer, exactly as for an id that does not exist;
``owner=None`` is for operators and services.

Idempotency: postings and holds are keyed by the caller's ``external_id``; the
postings the ledger derives itself (a hold's posting, a reversal) are keyed in a
namespace callers cannot write (``lastro:``, ``domain.DERIVED_PREFIX``). A
repeat with the same content returns what was recorded the first time
(``Recorded.replayed`` is true); different content raises ExternalIdConflict.
Concurrent duplicates are settled by the database's unique constraint: the
loser's transaction rolls back and it re-reads the winner's row.

Group commit: concurrent :meth:`Ledger.post_posting` calls are settled together
(:mod:`lastro.accounts.postings`); each posting keeps every guarantee it has
alone, the batch only shares the round trips and the commit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Final, TypeVar

from lastro.accounts import domain, events
from lastro.accounts.domain import (
    Account,
    AccountKind,
    Balance,
    Direction,
    EntryPage,
    Hold,
    HoldRequest,
    HoldStatus,
    HoldTransition,
    Posting,
    PostingId,
    PostingRequest,
    Statement,
)
from lastro.accounts.postings import PostingDesk, Recorded, Submitted, traceparent, utc_now
from lastro.accounts.store import (
    HOLD_EXTERNAL_ID_KEY,
    AccountQueries,
    CustomerQueries,
    LedgerTables,
    PostingQueries,
    decode_cursor,
    encode_cursor,
    ledger_tables,
)
from lastro.core.changes import Caller, ChangeRecorder
from lastro.core.db import Engine, Tx, UniqueViolation, in_transaction, read, snapshot
from lastro.core.events import EventSigner

T = TypeVar("T")
Clock = Callable[[], datetime]

MAX_PAGE: Final = 200
SWEEPER: Final = Caller("service:accounts/hold-sweeper")


def recorder_for(tables: LedgerTables, signer: EventSigner, audit_key: bytes) -> ChangeRecorder:
    """The account service's change recorder over the outbox and audit log of ``tables``."""
    return ChangeRecorder(
        source=events.SOURCE,
        outbox=tables.outbox,
        audit_tables=tables.audit,
        signer=signer,
        audit_key=audit_key,
    )


class Ledger:
    """The account service's ledger use cases over one schema.

    ``signer`` signs the outbox events, ``audit_key`` keys the audit chain head
    (see :mod:`lastro.core.audit`), ``clock`` is the only source of time (tests
    inject one to move past hold expiries). ``max_posting_batch`` caps how many
    postings one transaction carries. Call :meth:`aclose` before disposing of
    the engine.
    """

    def __init__(
        self,
        engine: Engine,
        signer: EventSigner,
        audit_key: bytes,
        *,
        schema: str = "accounts",
        clock: Clock = utc_now,
        max_posting_batch: int = 128,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self.tables: LedgerTables = ledger_tables(schema)
        self.changes = recorder_for(self.tables, signer, audit_key)
        self._accounts = AccountQueries(self.tables)
        self._postings = PostingQueries(self.tables)
        self._customers = CustomerQueries(self.tables)
        self._desk = PostingDesk(
            engine, self._postings, self.changes, clock=clock, max_batch=max_posting_batch
        )

    async def aclose(self) -> None:
        """Wait for postings already submitted, then refuse new ones (``close`` is
        the account use case)."""
        await self._desk.aclose()

    async def _read(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        return await read(self._engine, work)

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
        return await in_transaction(
            self._engine,
            lambda conn: self._open(
                conn, currency, kind, caller, customer_id, overdraft_limit, metadata
            ),
        )

    async def open_customer_account(
        self,
        customer_id: str,
        currency: str,
        caller: Caller,
        *,
        owner: str | None,
        overdraft_limit: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Account:
        """Open a customer account for an active customer of ``owner`` (any customer
        when ``owner`` is None, i.e. an operator). Only operators set an overdraft
        limit (InvalidRequest otherwise); UnknownCustomer or CustomerErased when the
        customer may not hold a new account. Atomic with its event and audit record."""
        if overdraft_limit is not None and owner is not None:
            raise domain.InvalidRequest(
                "overdraft_limit is set by operators only", field="overdraft_limit"
            )

        async def work(conn: Tx) -> Account:
            customer = await self._customers.load(conn, customer_id, owner)
            if customer.status == domain.ERASED:
                raise domain.CustomerErased(f"customer {customer_id} was erased")
            return await self._open(
                conn,
                currency,
                AccountKind.CUSTOMER,
                caller,
                customer_id,
                overdraft_limit or 0,
                metadata,
            )

        return await in_transaction(self._engine, work)

    async def _open(
        self,
        conn: Tx,
        currency: str,
        kind: AccountKind,
        caller: Caller,
        customer_id: str | None,
        overdraft_limit: int,
        metadata: Mapping[str, str] | None,
    ) -> Account:
        now = self._clock()
        meta = dict(metadata or {})
        domain.validate_metadata(meta)
        state = domain.open_account(domain.new_account_id(now), currency, kind, overdraft_limit)
        account = Account(state, customer_id, meta, now, now)
        await self._accounts.insert_account(conn, account)
        await self.changes.record(
            conn,
            caller,
            action="account.opened",
            target=account.id,
            data=events.account_opened(account),
            event_type=events.ACCOUNT_OPENED,
            topic=events.ACCOUNTS_TOPIC,
            key=account.id,
            now=now,
        )
        return account

    async def get_account(self, account_id: str, *, owner: str | None = None) -> Account:
        """The account; raises UnknownAccount (also for another owner's account)."""
        return await self._read(
            lambda conn: self._accounts.load_account(conn, account_id, owner=owner)
        )

    async def list_accounts(self, customer_id: str) -> list[Account]:
        """The customer's accounts, oldest first."""
        return await self._read(lambda conn: self._accounts.accounts_of_customer(conn, customer_id))

    async def accounts_of_owner(self, owner: str) -> list[Account]:
        """Every account of the customers ``owner`` created, by customer, oldest
        first; one query."""
        return await self._read(lambda conn: self._accounts.accounts_of_owner(conn, owner))

    async def get_balance(self, account_id: str, *, owner: str | None = None) -> Balance:
        """Posted, pending and available (posted - pending) as of the last commit."""
        return Balance.of((await self.get_account(account_id, owner=owner)).state)

    async def freeze(self, account_id: str, caller: Caller) -> Account:
        """Active → frozen (debits and new holds refused, credits still accepted)."""
        return await self._change_status(account_id, caller, domain.freeze, "frozen", None)

    async def unfreeze(self, account_id: str, caller: Caller) -> Account:
        """Frozen → active."""
        return await self._change_status(account_id, caller, domain.unfreeze, "unfrozen", None)

    async def close(self, account_id: str, caller: Caller, *, owner: str | None = None) -> Account:
        """Close an account; only with zero posted and pending balance (AccountNotEmpty),
        checked under the account's row lock, so no posting can slip in between."""
        return await self._change_status(account_id, caller, domain.close, "closed", owner)

    async def _change_status(
        self,
        account_id: str,
        caller: Caller,
        rule: Callable[[domain.AccountState], domain.AccountState],
        fact: str,
        owner: str | None,
    ) -> Account:
        async def work(conn: Tx) -> Account:
            now = self._clock()
            account = await self._accounts.load_account(conn, account_id, owner=owner, lock=True)
            changed = rule(account.state)
            await self._accounts.set_status(conn, account.id, changed.status, now)
            updated = Account(
                changed, account.customer_id, account.metadata, account.created_at, now
            )
            await self.changes.record(
                conn,
                caller,
                action=f"account.{fact}",
                target=account.id,
                data=events.account_changed(updated),
                event_type=f"lastro.account.{fact}",
                topic=events.ACCOUNTS_TOPIC,
                key=account.id,
                now=now,
            )
            return updated

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
        request never fails because another one in its batch did. The caller's
        ``external_id`` may not use the ledger's own namespace (ReservedExternalId),
        so no caller can take the id of a hold's posting or of a reversal.
        """
        domain.validate_caller_external_id(request.external_id)
        return await self._desk.post(request, caller)

    async def reverse_posting(
        self, posting_id: str, caller: Caller, *, description: str | None = None
    ) -> Recorded[Posting]:
        """Post the exact mirror of ``posting_id`` (every entry's direction swapped).

        Same guarantees as :meth:`post_posting`; reversing a posting again replays
        the first reversal. Raises UnknownPosting, or InsufficientFunds when the
        credited account has spent the money since.
        """
        original = await self.get_posting(posting_id)
        return await self._desk.post(domain.reverse(original, description), caller)

    async def get_posting(self, posting_id: str) -> Posting:
        """The posting with its entries; raises UnknownPosting."""

        async def work(conn: Tx) -> Posting:
            posting = await self._postings.load_posting(conn, posting_id)
            if posting is None:
                raise domain.UnknownPosting(f"posting {posting_id} does not exist")
            return posting

        return await self._read(work)

    # ------------------------------------------------------------ holds

    async def place_hold(self, request: HoldRequest, caller: Caller) -> Recorded[Hold]:
        """Reserve funds until ``expires_at`` (pending += amount on the held account).

        Guarantee: atomic with its balance change, ``lastro.ledger.hold_placed`` and
        its audit record; obeys the same spend rule as a debit, so posting it later
        cannot overdraw. Idempotent on ``external_id`` like :meth:`post_posting`.
        """
        if not isinstance(request.account_id, str) or not isinstance(request.counterparty_id, str):
            raise domain.InvalidRequest("account ids must be text", field="account_id")

        async def work(conn: Tx) -> Recorded[Hold]:
            now = self._clock()
            existing = await self._accounts.hold_by_external(conn, request.external_id)
            if existing is not None:
                return Recorded(domain.replay_hold(existing, request), replayed=True)
            states = await self._postings.lock_accounts(
                conn, [request.account_id, request.counterparty_id]
            )
            transition = domain.place_hold(states, request, domain.new_hold_id(now), now)
            await self._accounts.insert_hold(conn, transition.hold)
            await self._postings.apply_deltas(conn, transition.deltas, now)
            await self._hold_changed(conn, transition, "placed", caller, now)
            return Recorded(transition.hold, replayed=False)

        try:
            return await in_transaction(self._engine, work)
        except UniqueViolation as violation:
            if violation.constraint != HOLD_EXTERNAL_ID_KEY:
                raise

        async def replay(conn: Tx) -> Recorded[Hold]:
            existing = await self._accounts.hold_by_external(conn, request.external_id)
            assert existing is not None, "the unique violation proved it exists"
            return Recorded(domain.replay_hold(existing, request), replayed=True)

        return await in_transaction(self._engine, replay)

    async def post_hold(self, hold_id: str, caller: Caller, *, amount: int | None = None) -> Hold:
        """Post ``amount`` (default: all) of a pending hold and release the rest.

        Guarantee: atomic — the hold becomes ``posted`` exactly once, its posting
        (external_id ``lastro:hold:<hold id>:post``, in the ledger's own namespace)
        and balance changes, events and audit record
        commit together. Raises HoldAlreadyPosted, HoldAlreadyVoided, HoldExpired
        (also when the expiry passed before the sweeper ran), HoldAmountExceeded,
        UnknownHold; writes nothing then.
        """

        async def work(conn: Tx) -> Hold:
            now = self._clock()
            hold = await self._accounts.load_hold(conn, hold_id)
            states = await self._postings.lock_accounts(
                conn, [hold.account_id, hold.counterparty_id]
            )
            transition = domain.post_hold(
                states, hold, hold.amount if amount is None else amount, now
            )
            assert transition.posting is not None
            posting = domain.record_posting(transition.posting, domain.new_posting_id(now), now)
            submitted = Submitted(transition.posting, caller, traceparent())
            await self._desk.write(conn, [(posting, submitted)], transition.deltas)
            await self._hold_changed(conn, transition, "posted", caller, now, posting.id)
            return transition.hold

        return await in_transaction(self._engine, work)

    async def void_hold(self, hold_id: str, caller: Caller) -> Hold:
        """Release a pending hold (pending -= amount), also on a frozen account.
        Atomic with its event and audit record; raises HoldAlreadyPosted,
        HoldAlreadyVoided, HoldExpired or UnknownHold."""

        async def work(conn: Tx) -> Hold:
            now = self._clock()
            hold = await self._accounts.load_hold(conn, hold_id)
            await self._postings.lock_accounts(conn, [hold.account_id])
            transition = domain.void_hold(hold, now)
            await self._postings.apply_deltas(conn, transition.deltas, now)
            await self._hold_changed(conn, transition, "voided", caller, now)
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
        who = caller or SWEEPER
        expired: list[Hold] = []
        due = await self._read(lambda conn: self._accounts.due_holds(conn, cutoff, limit))
        for hold_id in due:

            async def work(conn: Tx, hold_id: str = hold_id) -> Hold | None:
                hold = await self._accounts.load_hold(conn, hold_id)
                if hold.status is not HoldStatus.PENDING:
                    return None
                await self._postings.lock_accounts(conn, [hold.account_id])
                transition = domain.expire_hold(hold, cutoff)
                await self._postings.apply_deltas(conn, transition.deltas, cutoff)
                await self._hold_changed(conn, transition, "expired", who, cutoff)
                return transition.hold

            done = await in_transaction(self._engine, work)
            if done is not None:
                expired.append(done)
        return expired

    async def get_hold(self, hold_id: str) -> Hold:
        """The hold; raises UnknownHold."""
        return await self._read(lambda conn: self._accounts.load_hold(conn, hold_id, lock=False))

    async def _hold_changed(
        self,
        conn: Tx,
        transition: HoldTransition,
        fact: str,
        caller: Caller,
        now: datetime,
        posting_id: PostingId | None = None,
    ) -> None:
        hold = transition.hold
        if fact != "placed":
            await self._accounts.update_hold(conn, hold, posting_id)
        await self.changes.record(
            conn,
            caller,
            action=f"hold.{fact}",
            target=hold.id,
            data=events.hold_changed(hold, posting_id),
            event_type=events.HOLD_CHANGED[fact],
            topic=events.LEDGER_TOPIC,
            key=hold.account_id,
            now=now,
        )

    # ------------------------------------------------------------ history

    async def history(
        self,
        account_id: str,
        *,
        owner: str | None = None,
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

        async def work(conn: Tx) -> EntryPage:
            await self._accounts.load_account(conn, account_id, owner=owner)
            rows = await self._accounts.entries_page(
                conn,
                account_id,
                limit=limit + 1,
                before=before,
                since=since,
                until=until,
                direction=direction,
            )
            entries = rows[:limit]
            more = len(rows) > limit
            return EntryPage(entries, encode_cursor(entries[-1].id) if more else None)

        return await self._read(work)

    async def statement(
        self, account_id: str, start: datetime, end: datetime, *, owner: str | None = None
    ) -> Statement:
        """Opening balance at ``start``, the entries in ``[start, end)`` oldest first,
        and the closing balance, read from one consistent snapshot."""
        _check_range(start, end)
        if start >= end:
            raise domain.InvalidRequest("statement needs start < end", field="start")
        async with snapshot(self._engine) as conn:
            account = await self._accounts.load_account(conn, account_id, owner=owner)
            opening = await self._accounts.posted_before(conn, account_id, start)
            entries = await self._accounts.entries_between(conn, account_id, start, end)
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
