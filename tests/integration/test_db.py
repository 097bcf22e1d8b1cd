"""core.db against real PostgreSQL: migrations per schema, units of work, retries."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from schemas import unique_schema
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lastro.core.config import Settings
from lastro.core.db import (
    TRANSACTION_RETRIES,
    UnitOfWork,
    create_engine,
    fetch_statement,
    in_driver_transaction,
    in_transaction,
    migrate,
    open_statement_pool,
    read,
)
from lastro.core.outages import connection_is_dead

MIGRATIONS = Path(__file__).parent / "data" / "migrations"


@pytest.fixture
async def schema(engine: AsyncEngine) -> AsyncIterator[str]:
    name = unique_schema("db_test")
    yield name
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


async def test_migrate_creates_tables_and_version_in_the_service_schema_once(
    engine: AsyncEngine, schema: str
) -> None:
    await migrate(engine, schema, MIGRATIONS)
    await migrate(engine, schema, MIGRATIONS)  # idempotent
    async with engine.connect() as conn:
        version = await conn.scalar(text(f'SELECT version_num FROM "{schema}".alembic_version'))
        tables = await conn.scalar(
            text("SELECT count(*) FROM information_schema.tables WHERE table_schema = :s"),
            {"s": schema},
        )
    assert version == "0001_widgets"
    assert tables == 2  # widgets + alembic_version, nothing leaked into public


async def test_unit_of_work_rolls_back_unless_committed(engine: AsyncEngine, schema: str) -> None:
    await migrate(engine, schema, MIGRATIONS)
    async with UnitOfWork(engine) as uow:
        await uow.connection.execute(text(f'INSERT INTO "{schema}".widgets VALUES (1)'))
    async with UnitOfWork(engine) as uow:
        await uow.connection.execute(text(f'INSERT INTO "{schema}".widgets VALUES (2)'))
        await uow.commit()
    async with engine.connect() as conn:
        ids = (await conn.execute(text(f'SELECT id FROM "{schema}".widgets'))).scalars().all()
    assert ids == [2]


async def test_serialization_failures_are_retried_until_the_work_commits(
    engine: AsyncEngine, schema: str
) -> None:
    """Write skew under SERIALIZABLE: PostgreSQL aborts one side with 40001; it is retried."""
    await migrate(engine, schema, MIGRATIONS)
    both_read = asyncio.Barrier(2)
    attempts = {"a": 0, "b": 0}

    def skew(name: str, new_id: int):  # type: ignore[no-untyped-def]
        async def work(conn: AsyncConnection) -> None:
            attempts[name] += 1
            await conn.execute(text("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"))
            await conn.scalar(text(f'SELECT count(*) FROM "{schema}".widgets'))
            if attempts[name] == 1:
                await both_read.wait()
            await conn.execute(text(f'INSERT INTO "{schema}".widgets VALUES ({new_id})'))

        return work

    retried_before = TRANSACTION_RETRIES.labels("40001")._value.get()
    await asyncio.gather(
        in_transaction(engine, skew("a", 10)), in_transaction(engine, skew("b", 11))
    )
    async with engine.connect() as conn:
        ids = sorted((await conn.execute(text(f'SELECT id FROM "{schema}".widgets'))).scalars())
    assert ids == [10, 11]
    # At least one side was aborted and retried; on a busy machine the retry may meet the
    # other side still open and be aborted again. Every extra attempt is one counted retry.
    extra = attempts["a"] + attempts["b"] - 2
    assert extra >= 1
    assert TRANSACTION_RETRIES.labels("40001")._value.get() == retried_before + extra


async def test_replicas_migrating_at_once_run_each_revision_once(
    engine: AsyncEngine, schema: str
) -> None:
    await asyncio.gather(*(migrate(engine, schema, MIGRATIONS) for _ in range(4)))
    async with engine.connect() as conn:
        version = await conn.scalar(text(f'SELECT version_num FROM "{schema}".alembic_version'))
    assert version == "0001_widgets"


@pytest.mark.parametrize("pre_ping", [True, False], ids=["pre-ping", "no-pre-ping"])
@pytest.mark.parametrize("run", [in_transaction, read], ids=["in_transaction", "read"])
async def test_connections_the_server_killed_are_replaced_before_anyone_uses_them(
    settings: Settings, engine: AsyncEngine, pre_ping: bool, run: Any
) -> None:
    """Every pooled connection's backend is terminated (as a PostgreSQL restart does);
    the next units of work (or autocommit reads) still succeed, on fresh connections:
    found by the ping, or (pools without one) by the first statement, after which the
    work is retried on another connection."""
    name = f"lastro-db-test-{secrets.token_hex(4)}"
    pooled = create_engine(settings, pool_size=4, max_overflow=0, name=name, pre_ping=pre_ping)
    try:

        async def backend(conn: AsyncConnection) -> int:
            pid: int = await conn.scalar(text("SELECT pg_backend_pid()"))
            await asyncio.sleep(0.05)  # hold it, so the four run on four connections
            return pid

        before = set(await asyncio.gather(*(run(pooled, backend) for _ in range(4))))
        assert len(before) == 4
        async with engine.connect() as admin:
            killed = await admin.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = :name"
                ),
                {"name": name},
            )
        assert killed == 4
        after = set(await asyncio.gather(*(run(pooled, backend) for _ in range(4))))
        assert after and not after & before
    finally:
        await pooled.dispose()


async def test_a_driver_transaction_commits_rolls_back_and_replaces_a_killed_connection(
    settings: Settings, engine: AsyncEngine, schema: str
) -> None:
    """``in_driver_transaction`` (the outbox relay's path): the work's writes commit
    together, or none of them when it raises, and the connection goes back to the pool
    with no transaction open; a pooled connection whose backend was terminated (a
    PostgreSQL restart) is discarded and the work run once more on a new one; an error
    of the statement itself is raised, not retried."""
    await migrate(engine, schema, MIGRATIONS)
    name = f"lastro-db-test-{secrets.token_hex(4)}"
    pooled = create_engine(settings, pool_size=1, max_overflow=0, name=name, pre_ping=False)
    insert = f'INSERT INTO "{schema}".widgets VALUES ($1)'

    async def ids() -> list[int]:
        async with engine.connect() as conn:
            found = await conn.execute(text(f'SELECT id FROM "{schema}".widgets ORDER BY id'))
            return list(found.scalars())

    async def on(name: str, condition: str) -> int:
        async with engine.connect() as admin:
            count: int = await admin.scalar(
                text(
                    f"SELECT count({condition}) FROM pg_stat_activity"
                    " WHERE application_name = :name"
                ),
                {"name": name},
            )
        return count

    async def two(conn: asyncpg.Connection) -> int:
        await conn.execute(insert, 1)
        await conn.execute(insert, 2)
        pid: int = await conn.fetchval("SELECT pg_backend_pid()")
        return pid

    async def then_fail(conn: asyncpg.Connection) -> None:
        await conn.execute(insert, 3)
        raise LookupError("the work failed")

    retries = TRANSACTION_RETRIES.labels("stale-connection")
    try:
        first = await in_driver_transaction(pooled, two)
        with pytest.raises(LookupError):
            await in_driver_transaction(pooled, then_fail)
        assert await ids() == [1, 2]
        assert await on(name, "CASE WHEN state = 'idle' THEN 1 END") == 1  # no open transaction

        assert await on(name, "pg_terminate_backend(pid)") == 1
        before = retries._value.get()
        with pytest.raises(asyncpg.UniqueViolationError):
            await in_driver_transaction(pooled, two)  # a new connection, then a real error
        assert retries._value.get() == before + 1
        assert await ids() == [1, 2]

        async def four(conn: asyncpg.Connection) -> int:
            await conn.execute(insert, 4)
            pid: int = await conn.fetchval("SELECT pg_backend_pid()")
            return pid

        assert await in_driver_transaction(pooled, four) != first
        assert retries._value.get() == before + 1
        assert await ids() == [1, 2, 4]
    finally:
        await pooled.dispose()


async def test_a_statement_pool_replaces_connections_the_server_killed_and_keeps_errors(
    settings: Settings, engine: AsyncEngine, schema: str
) -> None:
    """The driver-level pool (fraud's decision log): a statement on an idle connection
    whose backend was terminated (as a PostgreSQL restart does) succeeds on a new one,
    whether the pool noticed first or the statement found the dead connection (asyncpg
    may see it as "another operation is in progress") and ran again; a statement whose
    backend dies under it runs again at once, once, unless it asked not to be
    (``rerun=False``: the error is raised); an error of the statement itself is
    raised, not retried. The settings asked for hold on every connection."""
    await migrate(engine, schema, MIGRATIONS)
    name = f"lastro-db-test-{secrets.token_hex(4)}"
    pool = await open_statement_pool(
        settings, name=name, max_size=2, server_settings={"synchronous_commit": "off"}
    )
    insert = f'INSERT INTO "{schema}".widgets VALUES ($1) RETURNING id'
    backend = "SELECT pg_backend_pid(), current_setting('synchronous_commit') FROM pg_sleep($1)"

    async def terminate() -> int:
        async with engine.connect() as admin:
            killed: int = await admin.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = :name"
                ),
                {"name": name},
            )
        return killed

    retries = TRANSACTION_RETRIES.labels("stale-connection")
    try:
        assert [r[0] for r in await fetch_statement(pool, insert, 1)] == [1]
        [first] = await fetch_statement(pool, backend, 0)
        assert first[1] == "off"
        assert await terminate() == 1
        before = retries._value.get()
        [second] = await fetch_statement(pool, backend, 0)
        assert second[0] != first[0] and second[1] == "off"
        assert retries._value.get() - before in (0, 1)  # noticed by the pool, or rerun once
        retried = retries._value.get()

        statement = asyncio.create_task(fetch_statement(pool, backend, 0.5))
        await asyncio.sleep(0.2)
        assert await terminate() == 1  # the backend running the statement
        [third] = await statement
        assert third[0] not in (first[0], second[0]) and third[1] == "off"
        assert retries._value.get() == retried + 1

        # rerun=False (a statement whose second run would answer differently): the
        # dead connection's error reaches the caller and nothing runs again.
        statement = asyncio.create_task(fetch_statement(pool, backend, 0.5, rerun=False))
        await asyncio.sleep(0.2)
        assert await terminate() == 1
        with pytest.raises(Exception) as dropped:  # which one asyncpg raises varies
            await statement
        assert connection_is_dead(dropped.value)
        assert retries._value.get() == retried + 1

        with pytest.raises(asyncpg.UniqueViolationError):
            await fetch_statement(pool, insert, 1)
        assert retries._value.get() == retried + 1
        async with engine.connect() as conn:
            ids = (await conn.execute(text(f'SELECT id FROM "{schema}".widgets'))).scalars().all()
        assert ids == [1]
    finally:
        await pool.close()
