"""What one self-committing statement costs through SQLAlchemy and through the driver.

    lastro dev up
    lastro bench statements [-- --inserts 3000 --rounds 2] [--json out.json]

The fraud decision log's one-row INSERT (``lastro.fraud.store.queries``), run
``--inserts`` times one after another against a scratch copy of the screenings table
(a schema of its own, dropped afterwards; asynchronous commit and TLS as the service
has them), by four paths, interleaved for ``--rounds`` rounds:

- ``sqlalchemy-core``: a SQLAlchemy Core ``insert()`` built once, through
  ``core.db.in_transaction`` on an autocommit engine without pre-ping (the decision
  log until 2026-12-01);
- ``exec-driver-sql``: the same SQL text the service uses now, through SQLAlchemy's
  ``exec_driver_sql`` (the alerting path);
- ``asyncpg-pool``: the same pool with asyncpg's default release, which resets the
  connection (a round trip; ``open_statement_pool(reset_on_release=True)``);
- ``statement-pool``: ``core.db.open_statement_pool`` + ``fetch_statement`` (the decision
  log now).

Reports the process's CPU and the wall time per insert for each (docs/benchmarks.md,
"Seventh session" under the screening benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.dialects.postgresql import insert

from lastro.core.config import load_settings
from lastro.core.db import (
    autocommit,
    create_engine,
    fetch_statement,
    in_transaction,
    open_statement_pool,
)
from lastro.fraud.domain.decision import Outcome
from lastro.fraud.domain.screening import ScreeningRecord
from lastro.fraud.store import queries, tables

SCHEMA = f"bench_statements_{secrets.token_hex(3)}"


def record() -> ScreeningRecord:
    transaction_id = f"txn_{secrets.token_hex(8)}"
    return ScreeningRecord(
        id=f"scr_{secrets.token_hex(8)}",
        transaction_id=transaction_id,
        customer_id="cus_bench",
        fingerprint=secrets.token_hex(32),
        request={"transaction_id": transaction_id, "amount": 1000, "currency": "EUR"},
        outcome=Outcome.APPROVE,
        score=3,
        ruleset_version=1,
        reasons=[],
        shadow=[{"rule_id": "r1", "mode": "shadow", "values": {"amount": 1000}}],
        failed=(),
        shadow_outcome=Outcome.APPROVE,
        screened_at=datetime.now(UTC),
    )


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings()
    engine = create_engine(settings, pool_size=2, name="lastro-bench-statements", pre_ping=False)

    def commit_asynchronously(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("SET synchronous_commit TO off")  # as the pools below, and the service
        cursor.close()

    event.listen(engine.sync_engine, "connect", commit_asynchronously)
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f'CREATE SCHEMA "{SCHEMA}"')
        await conn.exec_driver_sql(
            f'CREATE TABLE "{SCHEMA}".screenings (LIKE fraud.screenings INCLUDING ALL)'
        )
    off = {"synchronous_commit": "off"}
    scratch = tables.bind_schema(autocommit(engine), SCHEMA)
    statement_pool = await open_statement_pool(
        settings, name="lastro-bench-statements", max_size=2, server_settings=off
    )
    plain_pool = await open_statement_pool(
        settings,
        name="lastro-bench-statements-reset",
        max_size=2,
        server_settings=off,
        reset_on_release=True,
    )
    core_insert = (
        insert(tables.screenings)
        .on_conflict_do_nothing(index_elements=["transaction_id"])
        .returning(tables.screenings.c.transaction_id)
    )

    async def sqlalchemy_core(r: ScreeningRecord) -> None:
        values = {
            "transaction_id": r.transaction_id,
            "id": r.id,
            "customer_id": r.customer_id,
            "fingerprint": r.fingerprint,
            "request": r.request,
            "decision": r.outcome.value,
            "score": r.score,
            "ruleset_version": r.ruleset_version,
            "reasons": r.reasons,
            "shadow": r.shadow,
            "enforced_rules": r.enforced_rules,
            "shadow_rules": r.shadow_rules,
            "failed_rules": list(r.failed),
            "shadow_decision": r.shadow_outcome.value,
            "screened_at": r.screened_at,
        }
        await in_transaction(scratch, lambda tx: tx.execute(core_insert, [values]))

    async def exec_driver_sql(r: ScreeningRecord) -> None:
        await in_transaction(scratch, lambda tx: queries.insert_screenings(tx, SCHEMA, [r]))

    async def asyncpg_pool(r: ScreeningRecord) -> None:
        sql, params = queries.insert_screenings_statement(SCHEMA, [r])
        async with plain_pool.acquire() as connection:
            await connection.fetch(sql, *params)

    async def statement(r: ScreeningRecord) -> None:
        sql, params = queries.insert_screenings_statement(SCHEMA, [r])
        await fetch_statement(statement_pool, sql, *params)

    paths: dict[str, Callable[[ScreeningRecord], Awaitable[None]]] = {
        "sqlalchemy-core": sqlalchemy_core,
        "exec-driver-sql": exec_driver_sql,
        "asyncpg-pool": asyncpg_pool,
        "statement-pool": statement,
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
    try:
        for path in paths.values():  # warm each path (prepared statements, pools)
            for _ in range(50):
                await path(record())
        for _ in range(args.rounds):
            for name, path in paths.items():
                records = [record() for _ in range(args.inserts)]
                cpu, wall = time.process_time(), time.perf_counter()
                for r in records:
                    await path(r)
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                results[name].append(
                    {
                        "cpu_us": round(cpu / args.inserts * 1e6, 1),
                        "wall_us": round(wall / args.inserts * 1e6, 1),
                    }
                )
    finally:
        await statement_pool.close()
        await plain_pool.close()
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f'DROP SCHEMA "{SCHEMA}" CASCADE')
        await engine.dispose()
    return {"inserts": args.inserts, "rounds": args.rounds, "per_insert": results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inserts", type=int, default=3000, help="inserts per path and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    for name, rounds in report["per_insert"].items():
        cpu = ", ".join(f"{r['cpu_us']}" for r in rounds)
        wall = ", ".join(f"{r['wall_us']}" for r in rounds)
        print(f"{name:16} CPU per insert {cpu} µs; wall {wall} µs")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
