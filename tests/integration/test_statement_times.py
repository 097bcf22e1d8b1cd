"""`lastro.devstack.statements` on the stack's PostgreSQL, which preloads
pg_stat_statements: a statement run between two readings is listed with its calls."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.devstack.statements import (
    StatementTime,
    busiest_between,
    busiest_lines,
    per_unit,
    statement_times,
)


async def test_a_statement_run_between_two_readings_is_listed_with_its_calls(
    engine: AsyncEngine,
) -> None:
    before = await statement_times(engine)
    assert before is not None, "the dev stack's PostgreSQL preloads pg_stat_statements"
    async with engine.connect() as conn:
        for n in range(7):
            await conn.execute(
                text("SELECT count(*) AS lastro_statement_times_probe FROM generate_series(1, :n)"),
                {"n": 200_000 + n},
            )
    after = await statement_times(engine)
    assert after is not None
    [probe] = [s for s in busiest_between(before, after, most=1000) if "_probe" in s.query]
    assert probe.calls == 7 and probe.rows == 7 and probe.total_ms > 0
    assert "$1" in probe.query  # normalised: constants are parameters


def test_busiest_counts_only_the_interval_and_sorts_by_time() -> None:
    before = {1: StatementTime("SELECT a", 10, 100.0, 10), 2: StatementTime("SELECT b", 5, 1.0, 5)}
    after = {
        1: StatementTime("SELECT a", 12, 103.0, 12),  # 2 calls, 3 ms
        2: StatementTime("SELECT b", 5, 1.0, 5),  # not run in between
        3: StatementTime("SELECT c", 4, 9.0, 0),  # new: 4 calls, 9 ms
    }
    assert busiest_between(before, after) == [
        StatementTime("SELECT c", 4, 9.0, 0),
        StatementTime("SELECT a", 2, 3.0, 2),
    ]
    assert busiest_between(before, after, most=1) == [StatementTime("SELECT c", 4, 9.0, 0)]


def test_rows_per_unit_and_their_lines() -> None:
    rows = per_unit([StatementTime("SELECT\n  head FOR UPDATE", 40, 120.0, 40)], units=30)
    assert rows == [
        {
            "query": "SELECT\n  head FOR UPDATE",
            "calls": 40,
            "total_ms": 120.0,
            "rows": 40,
            "ms_per_unit": 4.0,
        }
    ]
    assert busiest_lines(rows, "transfer") == [
        "database time per transfer, busiest statements (locks waited for included):",
        "    4.000 ms      40 calls  SELECT head FOR UPDATE",
    ]
    assert busiest_lines(None, "transfer") == [
        "pg_stat_statements is not preloaded in this stack: no statement times"
    ]
