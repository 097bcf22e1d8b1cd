"""PostgreSQL access: the async engine, units of work and per-service migrations.

* :func:`create_engine` opens an asyncpg pool over TLS, verified against the CA.
* :func:`open_statement_pool` and :func:`fetch_statement` are the driver-level path
  for a hot loop of single, self-committing statements, where SQLAlchemy's own work
  per statement would cost more than the statement (the fraud decision log).
* :class:`UnitOfWork` is one transaction that rolls back unless ``commit()`` is
  called explicitly; :func:`after_commit` registers work to run in-process once it
  committed (the outbox wakes its relay that way).
* :func:`in_transaction` runs a unit of work and retries it, from the start, when
  PostgreSQL reports a serialization failure (40001) or a deadlock (40P01), with
  exponential backoff and full jitter. Callers never see those two errors unless
  every attempt failed.
* :func:`migrate` upgrades one service schema to its newest Alembic revision;
  each service keeps its revisions in ``lastro/<service>/migrations`` and its
  version table inside its own schema.
* :func:`from_row` and :func:`row_values` map result rows to and from the frozen
  dataclasses a store returns (the one way every store maps rows);
  :func:`unique_violations` turns a unique-key refusal into :class:`UniqueViolation`
  naming the constraint, so use cases can replay without importing SQLAlchemy;
  :func:`snapshot` is a read-only REPEATABLE READ connection (one consistent view).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager, suppress
from functools import cache, lru_cache
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar

import asyncpg
from prometheus_client import Counter
from sqlalchemy import Table, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from lastro.core.backoff import full_jitter
from lastro.core.config import Settings
from lastro.core.observability import metrics_registry
from lastro.core.outages import connection_is_dead
from lastro.core.security.tls import client_context

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T")
Record = TypeVar("Record", bound="DataclassInstance")

Tx = AsyncConnection
"""What a use case holds inside :func:`in_transaction`: one open transaction. Use
cases pass it to their store's queries and to ``ChangeRecorder.record``; only
``store.py`` modules (and core) use SQLAlchemy themselves."""

Engine = AsyncEngine
"""The database a use case is given (a pool); it opens transactions with
:func:`in_transaction` and reads with :func:`read` (or :func:`snapshot`)."""

StatementPool = asyncpg.Pool
"""A driver-level pool for single self-committing statements
(:func:`open_statement_pool`); use cases pass it to a store's query, never use it."""

RETRYABLE_SQLSTATES: Final = frozenset({"40001", "40P01"})
UNIQUE_VIOLATION: Final = "23505"
ALEMBIC_DIR: Final = Path(__file__).parent / "alembic"

TRANSACTION_RETRIES = Counter(
    "lastro_db_transaction_retries_total",
    "Transactions retried: after a serialization failure or a deadlock (by SQLSTATE), or "
    "on another connection after a stale pooled one (stale-connection)",
    ["sqlstate"],
    registry=metrics_registry(),
)


def create_engine(
    settings: Settings,
    *,
    pool_size: int = 10,
    max_overflow: int = 10,
    name: str = "lastro",
    pre_ping: bool = True,
) -> AsyncEngine:
    """An asyncpg-backed engine; TLS verified against the configured CA when pg_ssl is on.

    Each connection is tested as it leaves the pool (pre-ping), so a connection the
    server dropped is replaced instead of failing the caller's first statement; errors
    that leave a connection unusable invalidate it (:func:`discard_dead_connections`).
    The test costs three round trips per checkout, not one: SQLAlchemy's asyncpg
    dialect wraps its empty query in BEGIN and ROLLBACK (for PgBouncer's transaction
    mode); at 30 transfers/s the account service's checkouts sent three to five such
    pairs per transfer (PostgreSQL's statement log, 2026-12-01). ``pre_ping=False``
    saves them on a hot path whose caller has a fallback for the one statement a
    dropped connection fails (:func:`in_transaction` and :func:`read` retry it once)."""
    connect_args: dict[str, Any] = {"server_settings": {"application_name": name}}
    if settings.pg_ssl:
        connect_args["ssl"] = client_context(settings.ca_file)
    engine = create_async_engine(
        settings.database_url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=pre_ping,
        connect_args=connect_args,
    )
    event.listen(engine.sync_engine, "handle_error", discard_dead_connections)
    return engine


@asynccontextmanager
async def engine_for(
    settings: Settings, name: str, pool_size: int = 1
) -> AsyncIterator[AsyncEngine]:
    """A small pool for one command or benchmark run, disposed when it ends."""
    engine = create_engine(settings, pool_size=pool_size, max_overflow=0, name=name)
    try:
        yield engine
    finally:
        await engine.dispose()


async def _keep_session(_connection: asyncpg.Connection) -> None:
    """A pool ``reset`` that does nothing (see :func:`open_statement_pool`)."""


async def open_statement_pool(
    settings: Settings,
    *,
    name: str,
    max_size: int = 4,
    server_settings: Mapping[str, str] | None = None,
    reset_on_release: bool = False,
) -> StatementPool:
    """An asyncpg pool, without SQLAlchemy, for single self-committing statements on a
    hot path: the same TLS, CA and ``application_name`` as :func:`create_engine`, plus
    ``server_settings`` for every connection (``synchronous_commit``, say).

    Through SQLAlchemy a one-row INSERT cost 290 µs of CPU, 105 µs here
    (docs/benchmarks.md, seventh session). Connections open on first use and are not
    reset when they go back to the pool (asyncpg's reset is a round trip per use), so
    a statement run here must leave no session state behind: no SET, LISTEN,
    advisory lock or open transaction (``reset_on_release=True`` restores asyncpg's
    reset, for comparison: ``lastro bench statements``). Close it with
    ``await pool.close()``."""
    return await asyncpg.create_pool(
        host=settings.pg_host,
        port=settings.pg_port,
        user=settings.pg_user,
        password=settings.pg_password,
        database=settings.pg_database,
        min_size=0,
        max_size=max_size,
        ssl=client_context(settings.ca_file) if settings.pg_ssl else None,
        server_settings={"application_name": name, **(server_settings or {})},
        reset=None if reset_on_release else _keep_session,
    )


_DRIVER_ERRORS: Final = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a protocol a dropped connection left stuck
    OSError,
)


async def fetch_statement(
    pool: StatementPool, sql: str, *args: Any, rerun: bool = True
) -> list[asyncpg.Record]:
    """Run one self-committing statement on ``pool`` and return its rows.

    A pooled connection the server closed (PostgreSQL restarted since its last use)
    is dropped and the statement run again at once on a new one, once, as
    :func:`in_transaction` does; whether a statement that failed that way committed is
    unknown, so a statement whose second run would answer differently passes
    ``rerun=False`` and gets the error instead."""
    try:
        return await _fetch_once(pool, sql, args)
    except _DRIVER_ERRORS as error:
        if not rerun or not connection_is_dead(error):
            raise
    TRANSACTION_RETRIES.labels("stale-connection").inc()
    return await _fetch_once(pool, sql, args)


async def _fetch_once(pool: StatementPool, sql: str, args: tuple[Any, ...]) -> list[asyncpg.Record]:
    async with pool.acquire() as connection:
        try:
            return await connection.fetch(sql, *args)
        except _DRIVER_ERRORS as error:
            if connection_is_dead(error):
                # A connection asyncpg saw closing has left the pool already; one left
                # mid-operation is closed here. The pool opens a new one on demand.
                with suppress(asyncpg.InterfaceError):
                    connection.terminate()
            raise


def discard_dead_connections(context: ExceptionContext) -> None:
    """SQLAlchemy ``handle_error`` hook: an error that leaves the connection unusable
    counts as a disconnect, so the connection is invalidated instead of going back to
    the pool, and a pre-ping that hits one replaces it silently.

    SQLAlchemy's asyncpg dialect calls a connection dead only once asyncpg has closed
    it. A connection whose server was shut down or restarted can still look open, its
    protocol stuck mid-operation (asyncpg's ``cannot switch to state ...; another
    operation is in progress``): the pool kept handing it out and every checkout
    failed (the 500s seen while PostgreSQL restarted). Which errors mean "dead" is
    decided in one place, :func:`lastro.core.outages.connection_is_dead`."""
    if not context.is_disconnect and connection_is_dead(context.original_exception):
        context.is_disconnect = True


def sqlstate(error: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE behind a SQLAlchemy/asyncpg error, if any."""
    orig = getattr(error, "orig", error)
    for candidate in (orig, getattr(orig, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def constraint_name(error: BaseException) -> str | None:
    """The name of the constraint a SQLAlchemy/asyncpg integrity error violated, if any."""
    orig = getattr(error, "orig", error)
    for candidate in (orig, getattr(orig, "__cause__", None)):
        name = getattr(candidate, "constraint_name", None)
        if isinstance(name, str):
            return name
    return None


async def database_ready(engine: AsyncEngine) -> bool:
    """True once PostgreSQL answers ``SELECT 1`` (a ``/readyz`` check); raises otherwise."""
    async with engine.connect() as conn:
        await conn.exec_driver_sql("SELECT 1")
    return True


def after_commit(conn: AsyncConnection, name: str, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the transaction ``conn`` is in has committed, never if it
    rolls back; one callback per ``name`` per transaction.

    Only transactions run by :class:`UnitOfWork` (and so :func:`in_transaction`) run
    them; elsewhere this does nothing. Anything relying on a callback must also work
    without it (the outbox relay polls as a fallback), because the row may have been
    written by another process.
    """
    unit = _OPEN_UNITS.get(id(conn))
    if unit is not None and unit.connection is conn:
        unit._after_commit[name] = callback


class UnitOfWork:
    """One database transaction; rolls back on exit unless :meth:`commit` was called."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._conn: AsyncConnection | None = None
        self._committed = False
        self._after_commit: dict[str, Callable[[], None]] = {}

    @property
    def connection(self) -> AsyncConnection:
        if self._conn is None:
            raise RuntimeError("UnitOfWork used outside 'async with'")
        return self._conn

    async def __aenter__(self) -> UnitOfWork:
        self._conn = await self._engine.connect()
        await self._conn.begin()
        _OPEN_UNITS[id(self._conn)] = self
        return self

    async def commit(self) -> None:
        await self.connection.commit()
        self._committed = True
        callbacks, self._after_commit = self._after_commit, {}
        for callback in callbacks.values():
            callback()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        self._after_commit = {}
        if conn is None:
            return
        _OPEN_UNITS.pop(id(conn), None)
        try:
            if not self._committed:
                await conn.rollback()
        finally:
            await conn.close()


# The unit of work each open connection belongs to (by the connection's id), so
# after_commit() finds it from the connection a store or the outbox is handed.
_OPEN_UNITS: Final[dict[int, UnitOfWork]] = {}


async def in_transaction(
    engine: AsyncEngine,
    work: Callable[[AsyncConnection], Awaitable[T]],
    *,
    attempts: int = 8,
    base_delay: float = 0.005,
    max_delay: float = 0.5,
) -> T:
    """Run ``work`` in a transaction and commit it.

    Atomic: either everything ``work`` wrote is committed or nothing is. On a
    serialization failure or deadlock the whole unit is retried from the
    start (so ``work`` must not have side effects outside the database). A pooled
    connection the server closed (PostgreSQL restarted since it was last used) fails
    its first statement: SQLAlchemy discards it and the unit is retried at once on
    another connection, once, so the first request after a restart succeeds without a
    ping before every checkout. A failure while committing is never retried: whether
    the commit happened is unknown.
    """
    stale_retried = False
    for attempt in range(attempts):
        committing = False
        try:
            async with UnitOfWork(engine) as uow:
                result = await work(uow.connection)
                committing = True
                await uow.commit()
                return result
        except sa_exc.DBAPIError as error:
            if error.connection_invalidated and not committing and not stale_retried:
                stale_retried = True
                TRANSACTION_RETRIES.labels("stale-connection").inc()
                continue
            code = sqlstate(error)
            if code not in RETRYABLE_SQLSTATES or attempt == attempts - 1:
                raise
            TRANSACTION_RETRIES.labels(code).inc()
            await asyncio.sleep(full_jitter(attempt, base=base_delay, cap=max_delay))
    raise AssertionError("unreachable")  # pragma: no cover


def table_schema(engine: AsyncEngine, table: Table) -> str:
    """The schema ``table`` lives in: its own, else the one ``engine`` maps schema-less
    tables to (``schema_translate_map``), else ``public``."""
    if table.schema:
        return table.schema
    translated = engine.get_execution_options().get("schema_translate_map") or {}
    return str(translated.get(None) or "public")


def driver_table_name(engine: AsyncEngine, table: Table) -> str:
    """``table``'s schema-qualified name, quoted by ``engine``'s dialect, for SQL run on
    the driver (which no SQLAlchemy compile translates)."""
    quote = engine.dialect.identifier_preparer.quote
    return f"{quote(table_schema(engine, table))}.{quote(table.name)}"


async def in_driver_transaction(
    engine: AsyncEngine, work: Callable[[asyncpg.Connection], Awaitable[T]]
) -> T:
    """Run ``work`` in a transaction on one of ``engine``'s pooled connections as
    asyncpg's own (SQLAlchemy's documented ``driver_connection``) and commit it.

    For a loop that runs the same few statements on every wake-up (the outbox relay):
    through SQLAlchemy each statement cost about 170 µs more CPU
    (``lastro bench statements``). It shares the engine's pool, TLS and settings; the
    connection goes back to the pool with no transaction open. A pooled connection
    the server closed fails the first statement: it is discarded and ``work`` run once
    more on another, as :func:`in_transaction` does; a failure while committing is
    never retried. Serialization failures are not retried here (the loops that use it
    take no snapshot they could lose)."""
    for stale_retry in (False, True):
        committing = False
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            if not isinstance(driver, asyncpg.Connection):
                raise TypeError("in_driver_transaction needs an asyncpg engine")
            try:
                transaction = driver.transaction()
                await transaction.start()
                try:
                    result = await work(driver)
                except BaseException:
                    try:
                        await transaction.rollback()
                    except _DRIVER_ERRORS:
                        await conn.invalidate()  # in no state to be reused
                    raise
                committing = True
                await transaction.commit()
                return result
            except _DRIVER_ERRORS as error:
                if not connection_is_dead(error):
                    raise
                if not conn.invalidated:
                    await conn.invalidate()  # never back into the pool
                if committing or stale_retry:
                    raise
            TRANSACTION_RETRIES.labels("stale-connection").inc()
    raise AssertionError("unreachable")  # pragma: no cover


def _alembic(connection: Connection, schema: str, versions: Path, step: str, target: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("path_separator", "os")
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    config.set_main_option("version_locations", str(versions))
    config.attributes["connection"] = connection
    config.attributes["schema"] = schema
    if step == "downgrade":
        command.downgrade(config, target)
    else:
        command.upgrade(config, target)


async def migrate(
    engine: AsyncEngine, schema: str, versions: Path, *, target: str = "head"
) -> None:
    """Upgrade ``schema`` to ``target`` (default: the newest revision found in
    ``versions``; ``+1`` for one step); idempotent.

    Replicas starting together serialise on a transaction-scoped advisory lock per
    schema, so only one of them runs each revision.
    """
    async with engine.begin() as conn:
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:s))"), {"s": schema})
        await conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.run_sync(_alembic, schema, versions, "upgrade", target)


async def downgrade(engine: AsyncEngine, schema: str, versions: Path, target: str) -> None:
    """Downgrade ``schema`` to ``target`` (``-1`` for one step, ``base`` for all)."""
    async with engine.begin() as conn:
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:s))"), {"s": schema})
        await conn.run_sync(_alembic, schema, versions, "downgrade", target)


async def read(engine: AsyncEngine, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run read-only ``work`` outside a transaction (autocommit).

    Each statement sees the data committed when it starts, exactly as in a READ
    COMMITTED transaction, without the BEGIN and ROLLBACK round trips around it;
    for reads that must share one snapshot use :func:`snapshot`. A pooled connection
    the server closed is replaced once, as :func:`in_transaction` does."""
    reader = autocommit(engine)
    try:
        async with reader.connect() as conn:
            return await work(conn)
    except sa_exc.DBAPIError as error:
        if not error.connection_invalidated:
            raise
    TRANSACTION_RETRIES.labels("stale-connection").inc()
    async with reader.connect() as conn:
        return await work(conn)


@lru_cache(maxsize=32)
def autocommit(engine: AsyncEngine) -> AsyncEngine:
    """``engine`` for one-statement units: each statement commits on its own, so a
    read, an idempotency claim or a completion is one round trip, not BEGIN, the
    statement and COMMIT. Remembered for the last few engines (a service has one or
    two; tests make more)."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


@asynccontextmanager
async def snapshot(engine: AsyncEngine) -> AsyncIterator[Tx]:
    """A read-only REPEATABLE READ transaction: every read sees one snapshot."""
    reader = engine.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    async with reader.connect() as conn:
        try:
            yield conn
        finally:
            await conn.rollback()


class UniqueViolation(Exception):
    """A write was refused by the unique constraint ``constraint``; the transaction
    is lost (roll it back), and the row that won is there to be read or replayed."""

    def __init__(self, constraint: str | None) -> None:
        super().__init__(f"unique constraint {constraint} refused the write")
        self.constraint = constraint


@contextmanager
def unique_violations() -> Iterator[None]:
    """Raise :class:`UniqueViolation` for a unique-key refusal inside the block."""
    try:
        yield
    except sa_exc.IntegrityError as error:
        if sqlstate(error) != UNIQUE_VIOLATION:
            raise
        raise UniqueViolation(constraint_name(error)) from error


@cache
def _field_types(cls: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _loaded(kind: Any, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return kind(value)
    return tuple(value) if isinstance(value, list) else value


def from_row(cls: type[Record], row: Any, **values: Any) -> Record:
    """The dataclass ``cls`` from a result row holding (at least) its fields:
    PostgreSQL arrays become tuples, enum-typed fields their enum; ``values``
    supply or override fields the row does not hold as such."""
    mapping: Mapping[str, Any] = row._mapping
    types = _field_types(cls)
    fields = {
        f.name: _loaded(types[f.name], mapping[f.name])
        for f in dataclasses.fields(cls)
        if f.name not in values and f.name in mapping
    }
    return cls(**fields, **values)


def row_values(table: Table, record: DataclassInstance) -> dict[str, Any]:
    """Insert values for ``table`` from a dataclass (fields that are not columns are
    skipped; tuples become arrays, enums their value)."""
    values = {
        f.name: getattr(record, f.name) for f in dataclasses.fields(record) if f.name in table.c
    }
    return {
        name: list(v) if isinstance(v, tuple) else v.value if isinstance(v, enum.Enum) else v
        for name, v in values.items()
    }
