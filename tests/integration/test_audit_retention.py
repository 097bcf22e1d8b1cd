"""Audit-record retention against the dev stack's PostgreSQL: a purge drops a prefix of
the chain, anchors it (signed) and the chain still verifies; the append-only trigger
still refuses every other change; tampering with the anchor is found."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from schemas import unique_schema
from sqlalchemy import MetaData, delete, func, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.schema import CreateSchema, DropSchema
from sqlalchemy.sql.expression import Executable

from lastro.core.audit import (
    PURGE_SETTING,
    AuditChainBroken,
    AuditRecord,
    AuditTables,
    append,
    audit_head_table,
    audit_table,
    audit_tables,
    verify_schema,
)
from lastro.core.audit_retention import purge_before
from lastro.core.db import migrate

KEY = b"integration-audit-key"
OLD = datetime(2018, 5, 1, tzinfo=UTC)
NEW = datetime(2026, 5, 1, tzinfo=UTC)
CUTOFF = datetime(2019, 11, 30, tzinfo=UTC)


@dataclass(frozen=True)
class AuditLog:
    schema: str
    tables: AuditTables


@pytest.fixture
async def audit_log(engine: AsyncEngine) -> AsyncIterator[AuditLog]:
    schema = unique_schema("audit_retention")
    metadata = MetaData(schema=schema)
    tables = audit_tables(metadata)
    async with engine.begin() as conn:
        await conn.execute(CreateSchema(schema))
        await conn.run_sync(metadata.create_all)
    yield AuditLog(schema, tables)
    async with engine.begin() as conn:
        await conn.execute(DropSchema(schema, cascade=True))


def record(i: int, at: datetime) -> AuditRecord:
    return AuditRecord(
        actor=f"usr_{i}",
        action="login.succeeded",
        target=f"usr_{i}",
        outcome="success",
        source_ip="198.51.100.7",
        details={"n": i},
        occurred_at=at + timedelta(minutes=i),
    )


async def append_at(engine: AsyncEngine, tables: AuditTables, *times: datetime) -> None:
    for i, at in enumerate(times, start=1):
        async with engine.begin() as conn:
            await append(conn, tables, record(i, at), KEY)


async def purge(engine: AsyncEngine, tables: AuditTables, *, dry_run: bool = False) -> int:
    async with engine.begin() as conn:
        return await purge_before(conn, tables, CUTOFF, KEY, dry_run=dry_run)


async def seqs(engine: AsyncEngine, log: AuditLog) -> list[int]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(log.tables.log.c.seq).order_by(log.tables.log.c.seq))
        return list(rows.scalars())


async def tamper(engine: AsyncEngine, log: AuditLog, *statements: Executable) -> None:
    """What a database owner could do: switch the append-only triggers off, then edit."""
    table = f'"{log.schema}".audit_log'
    async with engine.begin() as conn:
        await conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
        for statement in statements:
            await conn.execute(statement)
        await conn.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER USER"))


async def test_purge_drops_the_expired_prefix_and_the_chain_verifies_from_the_anchor(
    engine: AsyncEngine, audit_log: AuditLog
) -> None:
    # seq 6 is old again (a late record): it is not at the start, so it is kept
    await append_at(engine, audit_log.tables, OLD, OLD, OLD, NEW, NEW, OLD)

    assert await purge(engine, audit_log.tables) == 3

    assert await seqs(engine, audit_log) == [4, 5, 6]
    result = await verify_schema(engine, audit_log.schema, KEY)
    assert result.ok and result.anchor == 3 and result.checked == 6
    async with engine.connect() as conn:
        anchor = (await conn.execute(select(audit_log.tables.anchor))).one()
    assert anchor.seq == 3 and len(anchor.mac) == 32


async def test_a_second_purge_with_the_same_cutoff_affects_nothing(
    engine: AsyncEngine, audit_log: AuditLog
) -> None:
    await append_at(engine, audit_log.tables, OLD, OLD, NEW)
    assert await purge(engine, audit_log.tables) == 2

    assert await purge(engine, audit_log.tables) == 0

    assert await seqs(engine, audit_log) == [3]
    assert (await verify_schema(engine, audit_log.schema, KEY)).ok


async def test_a_dry_run_counts_and_changes_nothing(
    engine: AsyncEngine, audit_log: AuditLog
) -> None:
    await append_at(engine, audit_log.tables, OLD, OLD, NEW)

    assert await purge(engine, audit_log.tables, dry_run=True) == 2

    assert await seqs(engine, audit_log) == [1, 2, 3]
    async with engine.connect() as conn:
        count = await conn.execute(select(func.count()).select_from(audit_log.tables.anchor))
        assert count.scalar_one() == 0


async def test_appends_after_a_purge_extend_the_anchored_chain(
    engine: AsyncEngine, audit_log: AuditLog
) -> None:
    await append_at(engine, audit_log.tables, OLD, OLD, NEW)
    await purge(engine, audit_log.tables)

    async with engine.begin() as conn:
        assert await append(conn, audit_log.tables, record(9, NEW), KEY) == 4

    result = await verify_schema(engine, audit_log.schema, KEY)
    assert result.ok and result.checked == 4 and result.anchor == 2


async def test_purging_everything_leaves_an_anchor_equal_to_the_head(
    engine: AsyncEngine, audit_log: AuditLog
) -> None:
    await append_at(engine, audit_log.tables, OLD, OLD)

    assert await purge(engine, audit_log.tables) == 2

    assert await seqs(engine, audit_log) == []
    result = await verify_schema(engine, audit_log.schema, KEY)
    assert result.ok and result.checked == 2 and result.anchor == 2


@pytest.mark.parametrize("statement", ["delete-kept", "delete-all", "update", "truncate"])
async def test_every_change_outside_the_purge_path_is_still_refused(
    engine: AsyncEngine, audit_log: AuditLog, statement: str
) -> None:
    await append_at(engine, audit_log.tables, OLD, OLD, NEW, NEW)
    await purge(engine, audit_log.tables)
    log = audit_log.tables.log
    changes: dict[str, Executable] = {
        "delete-kept": delete(log).where(log.c.seq == 4),
        "delete-all": delete(log),
        "update": update(log).where(log.c.seq == 3).values(outcome="failure"),
        "truncate": text(f'TRUNCATE "{audit_log.schema}".audit_log'),
    }

    with pytest.raises(DBAPIError, match="append-only"):
        async with engine.begin() as conn:
            await conn.execute(changes[statement])

    assert await seqs(engine, audit_log) == [3, 4]


async def test_the_purge_setting_alone_deletes_nothing_past_the_anchor(
    engine: AsyncEngine, audit_log: AuditLog
) -> None:
    """The transaction-local setting must name the anchor row's seq, and only records
    at or before that anchor go: claiming a later seq without moving the anchor fails."""
    await append_at(engine, audit_log.tables, OLD, OLD, NEW, NEW)
    await purge(engine, audit_log.tables)
    log = audit_log.tables.log

    with pytest.raises(DBAPIError, match="append-only"):
        async with engine.begin() as conn:
            await conn.execute(select(func.set_config(PURGE_SETTING, "4", True)))
            await conn.execute(delete(log).where(log.c.seq == 3))

    assert await seqs(engine, audit_log) == [3, 4]


async def test_a_forged_anchor_is_detected(engine: AsyncEngine, audit_log: AuditLog) -> None:
    """An attacker with the application's role moves the anchor past kept records and
    deletes them through the purge path: without the key the anchor does not verify."""
    await append_at(engine, audit_log.tables, OLD, OLD, NEW, NEW)
    await purge(engine, audit_log.tables)
    anchor, log = audit_log.tables.anchor, audit_log.tables.log
    async with engine.begin() as conn:
        third = (await conn.execute(select(log.c.hash).where(log.c.seq == 3))).scalar_one()
        await conn.execute(update(anchor).values(seq=3, hash=third))
        await conn.execute(select(func.set_config(PURGE_SETTING, "3", True)))
        await conn.execute(delete(log).where(log.c.seq == 3))

    result = await verify_schema(engine, audit_log.schema, KEY)

    assert not result.ok
    assert result.reason is not None and "anchor signature" in result.reason
    with pytest.raises(AuditChainBroken):
        await purge(engine, audit_log.tables)


async def test_a_deleted_anchor_leaves_the_chain_missing_its_start(
    engine: AsyncEngine, audit_log: AuditLog
) -> None:
    await append_at(engine, audit_log.tables, OLD, OLD, NEW)
    await purge(engine, audit_log.tables)
    async with engine.begin() as conn:
        await conn.execute(delete(audit_log.tables.anchor))

    result = await verify_schema(engine, audit_log.schema, KEY)

    assert not result.ok and result.first_bad_seq == 1
    assert result.reason is not None and "missing" in result.reason


async def test_a_purged_record_put_back_is_detected(
    engine: AsyncEngine, audit_log: AuditLog
) -> None:
    await append_at(engine, audit_log.tables, OLD, OLD, NEW)
    async with engine.connect() as conn:
        first = (await conn.execute(select(audit_log.tables.log).where(text("seq = 1")))).one()
    await purge(engine, audit_log.tables)
    async with engine.begin() as conn:
        await conn.execute(audit_log.tables.log.insert().values(**first._asdict()))

    result = await verify_schema(engine, audit_log.schema, KEY)

    assert not result.ok and result.first_bad_seq == 1
    assert result.reason is not None and "before the signed anchor" in result.reason


async def test_a_tampered_chain_is_never_purged(engine: AsyncEngine, audit_log: AuditLog) -> None:
    await append_at(engine, audit_log.tables, OLD, OLD, NEW)
    log = audit_log.tables.log
    await tamper(engine, audit_log, update(log).where(log.c.seq == 2).values(actor="someone"))

    with pytest.raises(AuditChainBroken, match="seq 2"):
        await purge(engine, audit_log.tables)

    assert await seqs(engine, audit_log) == [1, 2, 3]


async def test_the_migrated_schema_purges_through_the_same_path(engine: AsyncEngine) -> None:
    """The trigger as a service's revisions create it (not the metadata's DDL)."""
    from lastro.identity.store import MIGRATIONS
    from lastro.identity.store import audit as tables

    schema = unique_schema("audit_retention_migrated")
    mapped = engine.execution_options(schema_translate_map={None: schema})
    try:
        await migrate(engine, schema, MIGRATIONS)
        await append_at(mapped, tables, OLD, NEW)
        assert await purge(mapped, tables) == 1
        assert (await verify_schema(engine, schema, KEY)).ok
        with pytest.raises(DBAPIError, match="append-only"):
            async with mapped.begin() as conn:
                await conn.execute(delete(tables.log))
    finally:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def test_a_purge_resumes_from_a_snapshot_verification(
    engine: AsyncEngine, audit_log: AuditLog
) -> None:
    """What the privacy API does: verify from a snapshot without the lock, then walk
    under the lock only what was appended since."""
    await append_at(engine, audit_log.tables, OLD, OLD, NEW)
    before = await verify_schema(engine, audit_log.schema, KEY)
    assert before.verified is not None
    async with engine.begin() as conn:
        await append(conn, audit_log.tables, record(4, NEW), KEY)

    async with engine.begin() as conn:
        purged = await purge_before(conn, audit_log.tables, CUTOFF, KEY, verified=before.verified)

    assert purged == 2 and await seqs(engine, audit_log) == [3, 4]
    assert (await verify_schema(engine, audit_log.schema, KEY)).ok


async def test_a_log_migrated_before_the_anchor_existed_still_verifies(
    engine: AsyncEngine,
) -> None:
    """A service whose revisions predate the anchor table (one joining later) has never
    been purged: its chain verifies from the genesis."""
    schema = unique_schema("audit_no_anchor")
    created = MetaData(schema=schema)
    audit_table(created)
    audit_head_table(created)
    tables = audit_tables(MetaData(schema=schema))
    try:
        async with engine.begin() as conn:
            await conn.execute(CreateSchema(schema))
            await conn.run_sync(created.create_all)
        await append_at(engine, tables, OLD, NEW)

        result = await verify_schema(engine, schema, KEY)

        assert result.ok and result.checked == 2 and result.anchor == 0
    finally:
        async with engine.begin() as conn:
            await conn.execute(DropSchema(schema, cascade=True))
