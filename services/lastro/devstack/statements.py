"""Where PostgreSQL's time goes, per statement, from ``pg_stat_statements``.

The dev stack's PostgreSQL preloads the extension (``devstack/postgres.py``), so a
benchmark can read :func:`statement_times` before and after its load and list the
statements that took the most time in between (:func:`busiest_between`). Times are
the server's ``total_exec_time``: execution, including waiting for row locks, so a
contended lock shows up as the statement that takes it. A stack created before the
extension was preloaded has no such view; :func:`statement_times` then returns None.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lastro.core.db import read, sqlstate

# 42P01 undefined_table: the extension is not installed; 55000
# object_not_in_prerequisite_state: installed, not preloaded.
_NOT_KEPT = frozenset({"42P01", "55000"})
_QUERY = text(
    "SELECT queryid, query, calls, total_exec_time, rows FROM pg_stat_statements"
    " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND queryid IS NOT NULL"
)


@dataclass(frozen=True, slots=True)
class StatementTime:
    """One normalised statement's totals (``query`` has ``$n`` for its constants)."""

    query: str
    calls: int
    total_ms: float
    rows: int


async def statement_times(engine: AsyncEngine) -> dict[int, StatementTime] | None:
    """Every statement's totals so far in this database, by query id; None when
    ``pg_stat_statements`` is not installed or not preloaded."""

    async def load(conn: AsyncConnection) -> dict[int, StatementTime]:
        rows = (await conn.execute(_QUERY)).all()
        return {
            row.queryid: StatementTime(row.query, row.calls, row.total_exec_time, row.rows)
            for row in rows
        }

    try:
        return await read(engine, load)
    except DBAPIError as error:
        if sqlstate(error) in _NOT_KEPT:
            return None
        raise


def busiest_between(
    before: dict[int, StatementTime], after: dict[int, StatementTime], most: int = 10
) -> list[StatementTime]:
    """The ``most`` statements that took the most time between two readings, with
    the calls, time and rows of that interval only."""
    empty = StatementTime("", 0, 0.0, 0)
    used = []
    for queryid, now in after.items():
        then = before.get(queryid, empty)
        if now.calls > then.calls:
            calls, rows = now.calls - then.calls, now.rows - then.rows
            used.append(StatementTime(now.query, calls, now.total_ms - then.total_ms, rows))
    used.sort(key=lambda statement: statement.total_ms, reverse=True)
    return used[:most]


def per_unit(statements: list[StatementTime], units: int) -> list[dict[str, Any]]:
    """The statements as JSON-ready rows with their server milliseconds per unit of work."""
    return [
        {**asdict(statement), "ms_per_unit": round(statement.total_ms / units, 3) if units else 0.0}
        for statement in statements
    ]


def busiest_lines(rows: list[dict[str, Any]] | None, unit: str, shown: int = 5) -> list[str]:
    """Printable lines for :func:`per_unit` rows (None: the stack has no statistics)."""
    if rows is None:
        return ["pg_stat_statements is not preloaded in this stack: no statement times"]
    lines = [f"database time per {unit}, busiest statements (locks waited for included):"]
    for row in rows[:shown]:
        query = " ".join(row["query"].split())[:110]
        lines.append(f"  {row['ms_per_unit']:7.3f} ms  {row['calls']:6} calls  {query}")
    return lines
