"""`lastro.devstack.cpu.stack_cpu` on the running stack: every component, with the CPU
it has used, PostgreSQL's backends included."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.config import Settings
from lastro.devstack.components import available_services
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
