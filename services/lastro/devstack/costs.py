"""What a window of benchmark load cost the stack: CPU per process and PostgreSQL's
busiest statements, per unit of work (a transfer, a posting).

    costs = RunCosts(settings, engine)
    await costs.start()
    ...                       # the load; ``costs.mark()`` moves the CPU window's end
    report = await costs.finish(units)
    print("\\n".join(cost_lines(report, "posting")))

The CPU comes from :mod:`lastro.devstack.cpu`, the statements from
:mod:`lastro.devstack.statements`; the report is JSON-ready (``stack_cpu``,
``busiest_statements``, and ``reference_ms``: the machine's speed when the window
opened and closed, :func:`lastro.devstack.cpu.reference_ms`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.config import Settings
from lastro.devstack.cpu import cost_line, cost_per, reference_ms, stack_cpu, used_between
from lastro.devstack.statements import (
    StatementTime,
    busiest_between,
    busiest_lines,
    per_unit,
    statement_times,
)

REPORT_KEYS: Final = ("reference_ms", "stack_cpu", "busiest_statements")
"""What :meth:`RunCosts.finish` reports (and :func:`cost_lines` reads)."""


class RunCosts:
    """Readings of the stack's CPU and statement times at the start and end of a window."""

    def __init__(self, settings: Settings, engine: AsyncEngine, also: Sequence[int] = ()) -> None:
        self._settings = settings
        self._engine = engine
        self._also = tuple(also)
        self._cpu_before: dict[str, float] = {}
        self._cpu_after: dict[str, float] | None = None
        self._statements_before: dict[int, StatementTime] | None = None
        self._reference_before = 0.0

    async def start(self) -> None:
        """Open the window: the machine's speed, every process's CPU and every
        statement's totals."""
        self._reference_before = reference_ms()
        self._cpu_before = stack_cpu(self._settings, self._also)
        self._cpu_after = None
        self._statements_before = await statement_times(self._engine)

    def mark(self) -> None:
        """Put the CPU window's end here (again at each call); :meth:`finish` reads it
        there unless marked before, so idle time after the work need not count."""
        self._cpu_after = stack_cpu(self._settings, self._also)

    async def finish(self, units: int) -> dict[str, Any]:
        """Close the window: the CPU per unit by process (:func:`cost_per`) and the
        busiest statements per unit, None when PostgreSQL keeps no statement times."""
        if self._cpu_after is None:
            self.mark()
        assert self._cpu_after is not None
        after = await statement_times(self._engine)
        before = self._statements_before
        return {
            "reference_ms": [self._reference_before, reference_ms()],
            "stack_cpu": cost_per(used_between(self._cpu_before, self._cpu_after), units),
            "busiest_statements": None
            if before is None or after is None
            else per_unit(busiest_between(before, after), units),
        }


def cost_lines(report: Mapping[str, Any], unit: str) -> list[str]:
    """Printable lines for a :meth:`RunCosts.finish` report."""
    before, after = report["reference_ms"]
    speed = f"reference work {before} ms before, {after} ms after (lower is faster)"
    lines = [f"machine speed: {speed}"]
    if report["stack_cpu"]["total_ms_per_unit"]:
        lines.append(cost_line(report["stack_cpu"], unit))
    return lines + busiest_lines(report["busiest_statements"], unit)
