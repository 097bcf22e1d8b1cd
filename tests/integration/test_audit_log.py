"""The audit log against the dev stack's PostgreSQL, tampered with by direct SQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from schemas import unique_schema
from sqlalchemy import MetaData, delete, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.schema import CreateSchema, DropSchema
from sqlalchemy.sql.expression import Executable

from lastro.core.audit import (
    AuditChainBroken,
    AuditRecord,
    AuditTables,
    append,
    audit_tables,
    verify,
    verify_schema,
)

KEY = b"integration-audit-key"


@dataclass(frozen=True)
class AuditLog:
    schema: str
    tables: AuditTables


@pytest.fixture
async def audit_log(engine: AsyncEngine) -> AsyncIterator[AuditLog]:
    schema = unique_schema("audit_test")
    metadata = MetaData(schema=schema)
    tables = audit_tables(metadata)
    async with engine.begin() as conn:
        await conn.execute(CreateSchema(schema))
        await conn.run_sync(metadata.create_all)
    yield AuditLog(schema, tables)
    async with engine.begin() as conn:
        await conn.execute(DropSchema(schema, cascade=True))


def record(i: int) -> AuditRecord:
    return AuditRecord(
        actor=f"usr_{i}",
        action="transfer.posted",
        target=f"txn_{i}",
        outcome="success",
        source_ip="198.51.100.23",
        details={"amount": 2500 + i, "currency": "BRL", "nota": "transferência", "big": 2**62},
        occurred_at=datetime(2026, 3, 1, 12, 0, tzinfo=UTC) + timedelta(microseconds=i),
    )


async def append_records(engine: AsyncEngine, log: AuditLog, count: int) -> list[int]:
    seqs = []
    for i in range(1, count + 1):
        async with engine.begin() as conn:
            seqs.append(await append(conn, log.tables, record(i), KEY))
    return seqs


async def tamper(engine: AsyncEngine, log: AuditLog, *statements: Executable) -> None:
    """What a database owner could do: switch the append-only triggers off, then edit."""
    table = f'"{log.schema}".audit_log'
    async with engine.begin() as conn:
        await conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
        for statement in statements:
            await conn.execute(statement)
        await conn.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER USER"))


async def test_clean_chain_verifies(engine: AsyncEngine, audit_log: AuditLog) -> None:
    assert await append_records(engine, audit_log, 5) == [1, 2, 3, 4, 5]

    result = await verify_schema(engine, audit_log.schema, KEY)

    assert result.ok and result.checked == 5 and result.first_bad_seq is None


async def test_empty_log_verifies(engine: AsyncEngine, audit_log: AuditLog) -> None:
    result = await verify_schema(engine, audit_log.schema, KEY)
    assert result.ok and result.checked == 0


async def test_concurrent_appends_form_one_gap_free_chain(
    engine: AsyncEngine, audit_log: AuditLog
) -> None:
    async def append_one(i: int) -> int:
        async with engine.begin() as conn:
            return await append(conn, audit_log.tables, record(i), KEY)

    seqs = await asyncio.gather(*(append_one(i) for i in range(25)))

    assert sorted(seqs) == list(range(1, 26))
    result = await verify_schema(engine, audit_log.schema, KEY)
    assert result.ok and result.checked == 25


async def test_rolled_back_append_leaves_no_trace(engine: AsyncEngine, audit_log: AuditLog) -> None:
    await append_records(engine, audit_log, 2)
    async with engine.connect() as conn:
        await conn.begin()
        assert await append(conn, audit_log.tables, record(99), KEY) == 3
        await conn.rollback()

    assert await append_records(engine, audit_log, 1) == [3]
    assert (await verify_schema(engine, audit_log.schema, KEY)).checked == 3


@pytest.mark.parametrize("statement", ["update", "delete", "truncate"])
async def test_database_rejects_changes_to_the_log(
    engine: AsyncEngine, audit_log: AuditLog, statement: str
) -> None:
    await append_records(engine, audit_log, 2)
    log = audit_log.tables.log
    changes: dict[str, Executable] = {
        "update": update(log).where(log.c.seq == 1).values(outcome="failure"),
        "delete": delete(log).where(log.c.seq == 2),
        "truncate": text(f'TRUNCATE "{audit_log.schema}".audit_log'),
    }

    with pytest.raises(DBAPIError, match="append-only"):
        async with engine.begin() as conn:
            await conn.execute(changes[statement])

    assert (await verify_schema(engine, audit_log.schema, KEY)).ok


async def test_edited_record_is_pinpointed(engine: AsyncEngine, audit_log: AuditLog) -> None:
    await append_records(engine, audit_log, 5)
    log = audit_log.tables.log
    await tamper(engine, audit_log, update(log).where(log.c.seq == 3).values(outcome="failure"))

    result = await verify_schema(engine, audit_log.schema, KEY)

    assert not result.ok and result.first_bad_seq == 3 and result.checked == 2
    assert result.reason is not None and "edited" in result.reason


async def test_edited_details_are_pinpointed(engine: AsyncEngine, audit_log: AuditLog) -> None:
    await append_records(engine, audit_log, 4)
    log = audit_log.tables.log
    await tamper(
        engine,
        audit_log,
        update(log).where(log.c.seq == 2).values(details={"amount": 1, "currency": "BRL"}),
    )
    assert (await verify_schema(engine, audit_log.schema, KEY)).first_bad_seq == 2


async def test_deleted_record_is_pinpointed(engine: AsyncEngine, audit_log: AuditLog) -> None:
    await append_records(engine, audit_log, 5)
    log = audit_log.tables.log
    await tamper(engine, audit_log, delete(log).where(log.c.seq == 3))

    result = await verify_schema(engine, audit_log.schema, KEY)

    assert not result.ok and result.first_bad_seq == 3
    assert result.reason is not None and "missing" in result.reason


async def test_reordered_records_are_pinpointed(engine: AsyncEngine, audit_log: AuditLog) -> None:
    await append_records(engine, audit_log, 5)
    log = audit_log.tables.log
    await tamper(
        engine,
        audit_log,
        update(log).where(log.c.seq == 2).values(seq=1000),
        update(log).where(log.c.seq == 3).values(seq=2),
        update(log).where(log.c.seq == 1000).values(seq=3),
    )

    result = await verify_schema(engine, audit_log.schema, KEY)

    assert not result.ok and result.first_bad_seq == 2
    assert result.reason is not None and "does not follow" in result.reason


async def test_truncated_tail_is_detected(engine: AsyncEngine, audit_log: AuditLog) -> None:
    await append_records(engine, audit_log, 5)
    log = audit_log.tables.log
    await tamper(engine, audit_log, delete(log).where(log.c.seq >= 4))

    result = await verify_schema(engine, audit_log.schema, KEY)

    assert not result.ok and result.first_bad_seq == 4 and result.checked == 3
    assert result.reason is not None and "truncated" in result.reason


async def test_append_refuses_to_extend_a_forged_head(
    engine: AsyncEngine, audit_log: AuditLog
) -> None:
    await append_records(engine, audit_log, 5)
    log, head = audit_log.tables.log, audit_log.tables.head
    async with engine.connect() as conn:
        third = (await conn.execute(select(log.c.hash).where(log.c.seq == 3))).scalar_one()
    # hide the last two records by rolling the head back, without the key to sign it
    await tamper(
        engine,
        audit_log,
        delete(log).where(log.c.seq > 3),
        update(head).values(seq=3, hash=third),
    )

    with pytest.raises(AuditChainBroken):
        async with engine.begin() as conn:
            await append(conn, audit_log.tables, record(6), KEY)
    async with engine.connect() as conn:
        result = await verify(conn, audit_log.tables, KEY)
    assert not result.ok and result.reason is not None and "signature" in result.reason
