"""Every query of the transaction service. Each takes the caller's open
transaction (``core.db.Tx``) and the schema's :class:`Tables`; none commits."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Integer,
    Text,
    and_,
    bindparam,
    cast,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.sql.type_api import TypeEngine

from lastro.core.db import Tx
from lastro.transactions.domain.fx import Quote
from lastro.transactions.domain.model import (
    Kind,
    Refund,
    Status,
    Transaction,
    TransferBatch,
)
from lastro.transactions.store.rows import (
    MUTABLE,
    batch_from_row,
    batch_values,
    mutable_values,
    quote_from_row,
    quote_values,
    refund_from_row,
    refund_values,
    transaction_from_row,
    transaction_values,
)
from lastro.transactions.store.tables import Tables

OPEN_STATUSES: Final = (
    Status.RECEIVED.value,
    Status.SCREENING.value,
    Status.APPROVED.value,
    Status.AUTHORIZED.value,
)
"""Statuses the worker moves on by itself; a row resting in one is stuck."""
MOVED_STATUSES: Final = (
    Status.POSTED.value,
    Status.SETTLED.value,
    Status.REVERSED.value,
    Status.REFUNDED.value,
)
"""Statuses in which money reached the destination (or came back from it)."""

_COLUMN_TYPES: Final[dict[str, TypeEngine[Any]]] = {
    "status": Text(),
    "version": Integer(),
    "card": JSONB(),
    "screening": JSONB(),
    "reason": Text(),
    "posting_id": Text(),
    "hold_id": Text(),
    "hold_expires_at": DateTime(timezone=True),
    "authorization_id": Text(),
    "capture_id": Text(),
    "captured_amount": BigInteger(),
    "refunded_amount": BigInteger(),
    "capture_requested": BigInteger(),
    "void_requested": Boolean(),
    "confirmed_at": DateTime(timezone=True),
    "review_outcome": Text(),
    "reverse_requested": Boolean(),
    "compensation": Text(),
    "settlement_id": Text(),
    "last_error": Text(),
    "updated_at": DateTime(timezone=True),
}


# ---------------------------------------------------------------- transactions


async def insert_transactions(conn: Tx, t: Tables, txns: Sequence[Transaction]) -> None:
    if txns:
        await conn.execute(insert(t.transactions), [transaction_values(x) for x in txns])


@lru_cache(maxsize=8)
def _changes_statement(t: Tables) -> Any:
    """One UPDATE of many rows from arrays (``unnest``), each guarded by the version
    its change was computed from; returns the ids it changed."""
    names = ["id", "expected", *MUTABLE]
    types: dict[str, TypeEngine[Any]] = {"id": Text(), "expected": Integer(), **_COLUMN_TYPES}
    rows = (
        func.unnest(*(cast(bindparam(f"p_{name}"), ARRAY(types[name])) for name in names))
        .table_valued(*names)
        .render_derived(name="u")
    )
    table = t.transactions
    return (
        update(table)
        .where(table.c.id == rows.c.id, table.c.version == rows.c.expected)
        .values({name: rows.c[name] for name in MUTABLE})
        .returning(table.c.id)
    )


async def apply_changes(conn: Tx, t: Tables, txns: Sequence[Transaction]) -> set[str]:
    """Write each new state over the version before it (``version - 1``); returns the
    ids written. A row whose version moved on meanwhile is left alone (a conflict)."""
    if not txns:
        return set()
    values = [mutable_values(x) for x in txns]
    params: dict[str, list[Any]] = {
        "p_id": [x.id for x in txns],
        "p_expected": [x.version - 1 for x in txns],
    }
    for name in MUTABLE:
        column = [v[name] for v in values]
        if name in ("screening", "card"):
            column = [None if c is None else json.dumps(c) for c in column]
        params[f"p_{name}"] = column
    result = await conn.execute(_changes_statement(t), params)
    return {row.id for row in result}


async def set_last_error(conn: Tx, t: Tables, txn_id: str, error: str) -> None:
    """Note why the last attempt stalled (shown to the client; not a state change)."""
    table = t.transactions
    await conn.execute(update(table).where(table.c.id == txn_id).values(last_error=error[:500]))


async def get_transaction(conn: Tx, t: Tables, txn_id: str) -> Transaction | None:
    row = (await conn.execute(select(t.transactions).where(t.transactions.c.id == txn_id))).first()
    return None if row is None else transaction_from_row(row)


async def get_transactions(conn: Tx, t: Tables, ids: Collection[str]) -> list[Transaction]:
    if not ids:
        return []
    query = select(t.transactions).where(t.transactions.c.id.in_(list(ids)))
    return [transaction_from_row(row) for row in await conn.execute(query)]


async def history(
    conn: Tx,
    t: Tables,
    *,
    accounts: Collection[str],
    owner: str | None,
    kinds: Collection[str] = (),
    statuses: Collection[str] = (),
    since: datetime | None = None,
    until: datetime | None = None,
    before: str | None = None,
    limit: int,
) -> list[Transaction]:
    """Transactions ``owner`` (None: nobody) asked for, those from ``accounts``, and those to
    ``accounts`` that moved money (a refused transfer to somebody is none of their
    business), newest first (ids sort by creation), older than ``before``."""
    table = t.transactions
    mine = [] if owner is None else [table.c.owner == owner]
    if accounts:
        mine += [
            table.c.source_account_id.in_(list(accounts)),
            and_(
                table.c.destination_account_id.in_(list(accounts)),
                table.c.status.in_(MOVED_STATUSES),
            ),
        ]
    if not mine:
        return []
    conditions = [or_(*mine)]
    if kinds:
        conditions.append(table.c.kind.in_(list(kinds)))
    if statuses:
        conditions.append(table.c.status.in_(list(statuses)))
    if since is not None:
        conditions.append(table.c.created_at >= since)
    if until is not None:
        conditions.append(table.c.created_at < until)
    if before is not None:
        conditions.append(table.c.id < before)
    query = select(table).where(and_(*conditions)).order_by(table.c.id.desc()).limit(limit)
    return [transaction_from_row(row) for row in await conn.execute(query)]


async def due_for_resume(conn: Tx, t: Tables, *, before: datetime, limit: int) -> list[Transaction]:
    """Rows the worker should have moved on but has not touched since ``before``
    (a lost command, a dependency that was down, a compensation owed, a refund
    pending), oldest first.

    Two reads, each served by an index (the open rows' partial index, the pending
    refunds' partial index), merged here: one ``WHERE ... OR id IN (...)`` scanned the whole
    table on every sweep (28 ms at 64,000 rows, growing with the table).
    """
    table = t.transactions
    refunds = t.refunds
    open_rows = (
        select(table)
        .where(
            or_(table.c.status.in_(OPEN_STATUSES), table.c.compensation.is_not(None)),
            table.c.updated_at < before,
        )
        .order_by(table.c.updated_at)
        .limit(limit)
    )
    refunding = (
        select(table)
        .where(
            table.c.id.in_(
                select(refunds.c.payment_id).where(
                    refunds.c.status == "pending", refunds.c.updated_at < before
                )
            )
        )
        .order_by(table.c.updated_at)
        .limit(limit)
    )
    due: dict[str, Transaction] = {}
    for query in (open_rows, refunding):
        for row in await conn.execute(query):
            txn = transaction_from_row(row)
            due[txn.id] = txn
    return sorted(due.values(), key=lambda txn: txn.updated_at)[:limit]


async def due_waiting(
    conn: Tx, t: Tables, status: Status, *, before: datetime, limit: int
) -> list[Transaction]:
    """Rows resting in ``status`` (challenged, in review) since before ``before``."""
    table = t.transactions
    query = (
        select(table)
        .where(table.c.status == status.value, table.c.updated_at < before)
        .order_by(table.c.updated_at)
        .limit(limit)
    )
    return [transaction_from_row(row) for row in await conn.execute(query)]


async def in_period(conn: Tx, t: Tables, start: datetime, end: datetime) -> list[Transaction]:
    table = t.transactions
    query = (
        select(table)
        .where(table.c.created_at >= start, table.c.created_at < end)
        .order_by(table.c.id)
    )
    return [transaction_from_row(row) for row in await conn.execute(query)]


async def payments_by_capture(
    conn: Tx, t: Tables, capture_ids: Collection[str]
) -> list[Transaction]:
    table = t.transactions
    query = select(table).where(
        table.c.kind == Kind.CARD_PAYMENT.value, table.c.capture_id.in_(list(capture_ids))
    )
    return [transaction_from_row(row) for row in await conn.execute(query)]


# ---------------------------------------------------------------- refunds


async def insert_refund(conn: Tx, t: Tables, refund: Refund) -> None:
    await conn.execute(
        insert(t.refunds), {**refund_values(refund), "updated_at": refund.created_at}
    )


async def update_refund(conn: Tx, t: Tables, refund: Refund, now: datetime) -> bool:
    table = t.refunds
    values = refund_values(refund)
    del values["id"], values["payment_id"], values["created_at"]
    result = await conn.execute(
        update(table)
        .where(table.c.id == refund.id, table.c.version == refund.version - 1)
        .values(**values, updated_at=now)
        .returning(table.c.id)
    )
    return result.first() is not None


async def refunds_of(conn: Tx, t: Tables, payment_id: str) -> list[Refund]:
    table = t.refunds
    query = select(table).where(table.c.payment_id == payment_id).order_by(table.c.id)
    return [refund_from_row(row) for row in await conn.execute(query)]


# ---------------------------------------------------------------- quotes


async def insert_quote(conn: Tx, t: Tables, quote: Quote) -> None:
    await conn.execute(insert(t.quotes), quote_values(quote))


async def get_quote(conn: Tx, t: Tables, quote_id: str) -> Quote | None:
    row = (await conn.execute(select(t.quotes).where(t.quotes.c.id == quote_id))).first()
    return None if row is None else quote_from_row(row)


async def claim_quote(conn: Tx, t: Tables, quote_id: str, txn_id: str) -> bool:
    """Mark the quote used by ``txn_id``; False if another transaction used it."""
    table = t.quotes
    result = await conn.execute(
        update(table)
        .where(table.c.id == quote_id, table.c.used_by.is_(None))
        .values(used_by=txn_id)
        .returning(table.c.id)
    )
    return result.first() is not None


# ---------------------------------------------------------------- batches


async def insert_batch(conn: Tx, t: Tables, batch: TransferBatch) -> None:
    await conn.execute(insert(t.batches), batch_values(batch))


async def get_batch(conn: Tx, t: Tables, batch_id: str) -> TransferBatch | None:
    row = (await conn.execute(select(t.batches).where(t.batches.c.id == batch_id))).first()
    return None if row is None else batch_from_row(row)


async def update_batch(conn: Tx, t: Tables, batch: TransferBatch) -> bool:
    table = t.batches
    values = batch_values(batch)
    result = await conn.execute(
        update(table)
        .where(table.c.id == batch.id, table.c.version == batch.version - 1)
        .values(**values)
        .returning(table.c.id)
    )
    return result.first() is not None


async def batch_items(conn: Tx, t: Tables, batch_id: str) -> list[Transaction]:
    table = t.transactions
    query = select(table).where(table.c.batch_id == batch_id).order_by(table.c.id)
    return [transaction_from_row(row) for row in await conn.execute(query)]


# ---------------------------------------------------------------- system accounts


async def system_account(conn: Tx, t: Tables, purpose: str, currency: str) -> str | None:
    table = t.system_accounts
    row = (
        await conn.execute(
            select(table.c.account_id).where(
                table.c.purpose == purpose, table.c.currency == currency
            )
        )
    ).first()
    return None if row is None else str(row.account_id)


async def lock_system_account(conn: Tx, name: str) -> None:
    """Serialise the opening of one system account across processes, until ``conn``'s
    transaction ends (a transaction-scoped advisory lock on ``name``)."""
    await conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext($1))", (name,))


async def insert_system_account(
    conn: Tx, t: Tables, purpose: str, currency: str, account_id: str, now: datetime
) -> None:
    await conn.execute(
        insert(t.system_accounts),
        {"purpose": purpose, "currency": currency, "account_id": account_id, "created_at": now},
    )


# ---------------------------------------------------------------- settlements, payouts


async def settlement_deposit(conn: Tx, t: Tables, settlement_id: str) -> str | None:
    table = t.settlements
    row = (
        await conn.execute(select(table.c.deposit_id).where(table.c.id == settlement_id))
    ).first()
    return None if row is None else str(row.deposit_id)


async def insert_settlement(
    conn: Tx,
    t: Tables,
    *,
    settlement_id: str,
    deposit_id: str,
    amount: int,
    currency: str,
    payload: dict[str, Any],
    now: datetime,
) -> None:
    await conn.execute(
        insert(t.settlements),
        {
            "id": settlement_id,
            "deposit_id": deposit_id,
            "amount": amount,
            "currency": currency,
            "payload": payload,
            "received_at": now,
        },
    )


async def settlement_of_deposit(conn: Tx, t: Tables, deposit_id: str) -> dict[str, Any] | None:
    table = t.settlements
    row = (await conn.execute(select(table).where(table.c.deposit_id == deposit_id))).first()
    return None if row is None else dict(row.payload)


async def insert_payout_destination(conn: Tx, t: Tables, values: dict[str, Any]) -> None:
    await conn.execute(insert(t.payout_destinations), values)


async def payout_destination(conn: Tx, t: Tables, txn_id: str) -> Any:
    table = t.payout_destinations
    return (await conn.execute(select(table).where(table.c.transaction_id == txn_id))).first()
