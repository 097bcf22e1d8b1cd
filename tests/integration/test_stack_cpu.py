"""`lastro.devstack.cpu.stack_cpu` on the running stack: every component, with the CPU
it has used, PostgreSQL's backends included."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.config import Settings
from lastro.devstack.components import available_services
from lastro.devstack.costs import RunCosts, cost_lines
from lastro.devstack.cpu import stack_cpu, used_between


async def test_every_running_component_is_read_and_work_in_postgres_counts(
    settings: Settings, engine: AsyncEngine
) -> None:
    before = stack_cpu(settings)
    assert {"postgres", "redis", "kafka", "kms"} <= set(before)
    # The services the stack runs (a chaos test elsewhere may be restarting one).
    assert len(set(available_services()) & set(before)) >= len(available_services()) - 1
    assert all(seconds > 0 for seconds in before.values())
    # Work done in a backend (a connection of this test's pool) is PostgreSQL's.
    async with engine.connect() as conn:
        await conn.execute(text("SELECT count(*) FROM generate_series(1, 6000000)"))
    used = used_between(before, stack_cpu(settings))
    assert used["postgres"] >= 0.15


async def test_run_costs_report_a_window_per_unit(settings: Settings, engine: AsyncEngine) -> None:
    costs = RunCosts(settings, engine)
    await costs.start()
    async with engine.connect() as conn:
        for _ in range(4):
            # A statement of a shape no other test runs: pg_stat_statements keeps the
            # first text it saw for a shape, aliases and constants aside.
            await conn.execute(
                text("SELECT sum(n) AS run_costs_probe FROM generate_series(1, 1500000) AS g(n)")
            )
    costs.mark()
    report = await costs.finish(units=4)
    assert report["stack_cpu"]["ms_per_unit"]["postgres"] > 0
    [probe] = [row for row in report["busiest_statements"] if "run_costs_probe" in row["query"]]
    assert probe["calls"] == 4 and probe["ms_per_unit"] == round(probe["total_ms"] / 4, 3)
    assert all(ms > 0 for ms in report["reference_ms"])
    lines = cost_lines(report, "probe")
    assert lines[0].startswith("machine speed: reference work ")
    assert lines[1].startswith("stack CPU per probe: ")
    assert lines[2].startswith("database time per probe, busiest statements")
