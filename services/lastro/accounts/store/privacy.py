"""Queries of the privacy API (``accounts/privacy.py``), on the caller's transaction.

Reads only: what a customer's accounts, holds and postings hold, and which
customers have been closed long enough for retention. Nothing here writes to the
ledger (entries, postings, balances): erasure works on the customer row alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import exists, func, select

from lastro.accounts.domain import ACTIVE
from lastro.accounts.domain.accounts import AccountStatus
from lastro.accounts.store.tables import LedgerTables
from lastro.core.db import Tx


def _plain(row: Any) -> dict[str, Any]:
    return {
        key: value.isoformat() if isinstance(value, datetime) else value
        for key, value in row._mapping.items()
    }


class PrivacyQueries:
    """The privacy reads of one account-service schema."""

    def __init__(self, tables: LedgerTables) -> None:
        self.t = tables

    async def accounts_of(self, conn: Tx, customer_id: str) -> list[dict[str, Any]]:
        a = self.t.accounts
        query = select(
            a.c.id,
            a.c.currency,
            a.c.kind,
            a.c.status,
            a.c.overdraft_limit,
            a.c.posted,
            a.c.pending,
            a.c.metadata,
            a.c.created_at,
            a.c.updated_at,
        ).where(a.c.customer_id == customer_id)
        return [_plain(row) for row in await conn.execute(query.order_by(a.c.created_at, a.c.id))]

    async def holds_of(self, conn: Tx, account_ids: Sequence[str]) -> list[dict[str, Any]]:
        h = self.t.holds
        query = (
            select(
                h.c.id,
                h.c.account_id,
                h.c.counterparty_id,
                h.c.amount,
                h.c.currency,
                h.c.status,
                h.c.posted_amount,
                h.c.description,
                h.c.metadata,
                h.c.posting_id,
                h.c.created_at,
                h.c.expires_at,
                h.c.resolved_at,
            )
            .where(h.c.account_id.in_(account_ids))
            .order_by(h.c.created_at, h.c.id)
        )
        return [_plain(row) for row in await conn.execute(query)]

    async def postings_of(self, conn: Tx, account_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Postings touching the accounts, with their free text (``description``,
        ``metadata``: what a caller wrote about the movement) and the customer's
        own entries."""
        p, e = self.t.postings, self.t.entries
        query = (
            select(
                p.c.id,
                p.c.description,
                p.c.metadata,
                p.c.reverses,
                p.c.created_at,
                func.json_agg(
                    func.json_build_object(
                        "account_id",
                        e.c.account_id,
                        "direction",
                        e.c.direction,
                        "amount",
                        e.c.amount,
                        "currency",
                        e.c.currency,
                    )
                ).label("entries"),
            )
            .join(e, e.c.posting_id == p.c.id)
            .where(e.c.account_id.in_(account_ids))
            .group_by(p.c.id)
            .order_by(p.c.created_at, p.c.id)
        )
        return [_plain(row) for row in await conn.execute(query)]

    async def closed_customers(self, conn: Tx, cutoff: datetime) -> list[str]:
        """Live customers with at least one account, every account closed, the last
        closure before ``cutoff`` (an account's ``updated_at`` is its closure once it
        is closed: a closed account changes no more)."""
        c, a = self.t.customers, self.t.accounts
        still_open = exists().where(
            a.c.customer_id == c.c.id, a.c.status != AccountStatus.CLOSED.value
        )
        recent = exists().where(a.c.customer_id == c.c.id, a.c.updated_at >= cutoff)
        any_account = exists().where(a.c.customer_id == c.c.id)
        query = (
            select(c.c.id)
            .where(c.c.status == ACTIVE, any_account, ~still_open, ~recent)
            .order_by(c.c.id)
        )
        return [row.id for row in await conn.execute(query)]
