"""Queries of accounts, holds and account history (SQLAlchemy Core on the
caller's transaction), returning domain values.

Ownership is part of the query: with ``owner`` given, an account belongs to one of
that owner's customers or is not found, exactly as an id that does not exist.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from sqlalchemy import Select, case, func, insert, select, update

from lastro.accounts import domain
from lastro.accounts.domain import (
    Account,
    AccountStatus,
    Direction,
    Entry,
    Hold,
    HoldStatus,
    PostingId,
)
from lastro.accounts.store.postings import account_state
from lastro.accounts.store.tables import LedgerTables
from lastro.core.db import Tx, from_row, row_values, unique_violations


def account_from_row(row: Any) -> Account:
    return from_row(Account, row, state=account_state(row))


def encode_cursor(entry_id: int) -> str:
    """Opaque pagination cursor for "entries older than ``entry_id``"."""
    return base64.urlsafe_b64encode(f"e1:{entry_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The entry id inside a cursor; raises InvalidRequest for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, _, value = raw.partition(":")
        entry_id = int(value)
        if version != "e1" or entry_id <= 0 or str(entry_id) != value:
            raise ValueError(raw)
    except (ValueError, UnicodeDecodeError):
        raise domain.InvalidRequest("cursor is not valid", field="cursor") from None
    return entry_id


class AccountQueries:
    """Accounts, holds and entries of one schema."""

    def __init__(self, tables: LedgerTables) -> None:
        self.tables = tables

    # ------------------------------------------------------------ accounts

    def _owned(self, query: Select[Any], owner: str | None) -> Select[Any]:
        if owner is None:
            return query
        a, c = self.tables.accounts, self.tables.customers
        return query.where(a.c.customer_id.in_(select(c.c.id).where(c.c.owner == owner)))

    async def insert_account(self, conn: Tx, account: Account) -> None:
        state = account.state
        await conn.execute(
            insert(self.tables.accounts).values(
                id=state.id,
                customer_id=account.customer_id,
                currency=state.currency,
                kind=state.kind.value,
                status=state.status.value,
                overdraft_limit=state.overdraft_limit,
                metadata=dict(account.metadata),
                created_at=account.created_at,
                updated_at=account.updated_at,
            )
        )

    async def load_account(
        self, conn: Tx, account_id: str, *, owner: str | None = None, lock: bool = False
    ) -> Account:
        """The account (locked FOR UPDATE with ``lock``); UnknownAccount when it does
        not exist or, with ``owner``, belongs to another owner's customer."""
        a = self.tables.accounts
        query = self._owned(select(a).where(a.c.id == account_id), owner)
        row = (await conn.execute(query.with_for_update() if lock else query)).one_or_none()
        if row is None:
            raise domain.UnknownAccount(f"account {account_id} does not exist", field="account_id")
        return account_from_row(row)

    async def accounts_of_customer(self, conn: Tx, customer_id: str) -> list[Account]:
        """The customer's accounts, oldest first."""
        a = self.tables.accounts
        rows = await conn.execute(select(a).where(a.c.customer_id == customer_id).order_by(a.c.id))
        return [account_from_row(row) for row in rows]

    async def accounts_of_owner(self, conn: Tx, owner: str) -> list[Account]:
        """Every account of every customer ``owner`` created, by customer then account
        (both oldest first), in one query."""
        a = self.tables.accounts
        query = self._owned(select(a), owner).order_by(a.c.customer_id, a.c.id)
        return [account_from_row(row) for row in await conn.execute(query)]

    async def set_status(
        self, conn: Tx, account_id: str, status: AccountStatus, now: datetime
    ) -> None:
        a = self.tables.accounts
        await conn.execute(
            update(a).where(a.c.id == account_id).values(status=status.value, updated_at=now)
        )

    # ------------------------------------------------------------ holds

    async def insert_hold(self, conn: Tx, hold: Hold) -> None:
        """Insert a new hold; UniqueViolation (``holds_external_id_key``) when a
        concurrent transaction recorded the same external_id."""
        with unique_violations():
            await conn.execute(
                insert(self.tables.holds).values(row_values(self.tables.holds, hold))
            )

    async def load_hold(self, conn: Tx, hold_id: str, *, lock: bool = True) -> Hold:
        """The hold (locked FOR UPDATE unless ``lock`` is false); UnknownHold."""
        h = self.tables.holds
        query = select(h).where(h.c.id == hold_id)
        row = (await conn.execute(query.with_for_update() if lock else query)).one_or_none()
        if row is None:
            raise domain.UnknownHold(f"hold {hold_id} does not exist", field="hold_id")
        return from_row(Hold, row)

    async def hold_by_external(self, conn: Tx, external_id: str) -> Hold | None:
        h = self.tables.holds
        row = (await conn.execute(select(h).where(h.c.external_id == external_id))).one_or_none()
        return None if row is None else from_row(Hold, row)

    async def update_hold(self, conn: Tx, hold: Hold, posting_id: PostingId | None) -> None:
        """Store a hold's new status (and the posting that posted it)."""
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

    async def due_holds(self, conn: Tx, cutoff: datetime, limit: int) -> list[str]:
        """Ids of pending holds whose expiry is at or before ``cutoff``, soonest first."""
        h = self.tables.holds
        rows = await conn.execute(
            select(h.c.id)
            .where(h.c.status == HoldStatus.PENDING.value, h.c.expires_at <= cutoff)
            .order_by(h.c.expires_at)
            .limit(limit)
        )
        return [row.id for row in rows]

    # ------------------------------------------------------------ history

    async def entries_page(
        self,
        conn: Tx,
        account_id: str,
        *,
        limit: int,
        before: int | None,
        since: datetime | None,
        until: datetime | None,
        direction: Direction | None,
    ) -> list[Entry]:
        """Up to ``limit`` entries of the account, newest first, older than entry
        ``before``, with ``since`` <= created_at < ``until`` and the direction given."""
        e = self.tables.entries
        query = select(e).where(e.c.account_id == account_id)
        if before is not None:
            query = query.where(e.c.id < before)
        if since is not None:
            query = query.where(e.c.created_at >= since)
        if until is not None:
            query = query.where(e.c.created_at < until)
        if direction is not None:
            query = query.where(e.c.direction == Direction(direction).value)
        rows = await conn.execute(query.order_by(e.c.id.desc()).limit(limit))
        return [from_row(Entry, row) for row in rows]

    async def posted_before(self, conn: Tx, account_id: str, start: datetime) -> int:
        """The account's posted balance from every entry created before ``start``."""
        e = self.tables.entries
        signed = case((e.c.direction == Direction.CREDIT.value, e.c.amount), else_=-e.c.amount)
        total = await conn.scalar(
            select(func.coalesce(func.sum(signed), 0)).where(
                e.c.account_id == account_id, e.c.created_at < start
            )
        )
        return int(total or 0)

    async def entries_between(
        self, conn: Tx, account_id: str, start: datetime, end: datetime
    ) -> list[Entry]:
        """The account's entries created in ``[start, end)``, oldest first."""
        e = self.tables.entries
        rows = await conn.execute(
            select(e)
            .where(e.c.account_id == account_id, e.c.created_at >= start, e.c.created_at < end)
            .order_by(e.c.created_at, e.c.id)
        )
        return [from_row(Entry, row) for row in rows]
