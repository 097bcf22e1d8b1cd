"""The worker's sweep for stuck work (``queries.due_for_resume``) against real
PostgreSQL: which rows it finds, in which order, each once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from schemas import unique_schema
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.db import Tx, in_transaction
from lastro.transactions.domain.model import (
    CaptureMethod,
    Kind,
    Refund,
    RefundStatus,
    Status,
    Transaction,
)
from lastro.transactions.store import migrate_transactions, queries
from lastro.transactions.store.tables import Tables, tables

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
BEFORE = NOW - timedelta(seconds=30)


@pytest.fixture
async def t(engine: AsyncEngine) -> AsyncIterator[Tables]:
    schema = unique_schema("txn_sweep")
    await migrate_transactions(engine, schema)
    yield tables(schema)
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def txn(txn_id: str, status: Status, minutes_ago: int, **changes: object) -> Transaction:
    at = NOW - timedelta(minutes=minutes_ago)
    base = Transaction(
        id=txn_id,
        kind=Kind.CARD_PAYMENT,
        status=status,
        client_id="c",
        owner="o",
        amount=5_000,
        currency="EUR",
        created_at=at,
        updated_at=at,
        destination_account_id="acc_merchant",
        capture_method=CaptureMethod.AUTOMATIC,
        captured_amount=5_000,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def refund(refund_id: str, payment_id: str, minutes_ago: int) -> Refund:
    at = NOW - timedelta(minutes=minutes_ago)
    return Refund(refund_id, payment_id, 1_000, "EUR", RefundStatus.PENDING, at)


async def test_the_sweep_finds_open_rows_owed_compensations_and_pending_refunds_once(
    engine: AsyncEngine, t: Tables
) -> None:
    rows = [
        txn("txn_open_old", Status.RECEIVED, 50),
        txn("txn_open_fresh", Status.SCREENING, 0),
        txn("txn_posted_old", Status.POSTED, 40),
        txn("txn_compensation_owed", Status.FAILED, 30, compensation="void_hold"),
        txn("txn_refund_owed", Status.SETTLED, 60),
        txn("txn_refund_fresh", Status.SETTLED, 70),
        txn("txn_open_and_refund", Status.AUTHORIZED, 20),
    ]

    async def seed(conn: Tx) -> None:
        await queries.insert_transactions(conn, t, rows)
        await queries.insert_refund(conn, t, refund("ref_owed", "txn_refund_owed", 10))
        await queries.insert_refund(conn, t, refund("ref_fresh", "txn_refund_fresh", 0))
        await queries.insert_refund(conn, t, refund("ref_both", "txn_open_and_refund", 10))

    await in_transaction(engine, seed)

    async def due(limit: int) -> list[str]:
        async def read(conn: Tx) -> list[str]:
            found = await queries.due_for_resume(conn, t, before=BEFORE, limit=limit)
            return [x.id for x in found]

        return await in_transaction(engine, read)

    assert await due(200) == [
        "txn_refund_owed",
        "txn_open_old",
        "txn_compensation_owed",
        "txn_open_and_refund",
    ]
    assert await due(2) == ["txn_refund_owed", "txn_open_old"]
