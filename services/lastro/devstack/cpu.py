"""CPU time used by the dev stack's processes: what a benchmark's load cost each of them.

:func:`cpu_seconds` reads ``/proc``: user + system time of a process and, with
``tree``, of every live descendant plus the children each has already reaped, so
PostgreSQL's backends (which come and go under the postmaster) count towards
PostgreSQL. :func:`stack_cpu` gives that for every running component of the stack
(PostgreSQL, Redis, Kafka, the KMS, the SMTP sink, each service, Prometheus, and the
Kubernetes processes when they run), keyed by component name. The difference of two
readings is the CPU each used in between: the benchmarks divide it by the work done.

:func:`reference_ms` times a fixed piece of pure-Python work: this machine is shared,
and the same code needed 1.4 ms of CPU per screening at one hour and 1.9 ms the next,
so the benchmarks print it before and after a run to say which kind of hour it was.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lastro.core.config import Settings

PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class _Stat:
    ppid: int
    ticks: int  # utime + stime of the process, cutime + cstime of its reaped children


def _stat(pid: int) -> _Stat | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may hold spaces or parentheses itself.
    fields = text.rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return _Stat(ppid=int(fields[1]), ticks=utime + stime + cutime + cstime)


def _all_stats() -> dict[int, _Stat]:
    stats: dict[int, _Stat] = {}
    for entry in os.listdir(PROC):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            stats[int(entry)] = stat
    return stats


def _children(stats: Mapping[int, _Stat]) -> dict[int, list[int]]:
    children: dict[int, list[int]] = defaultdict(list)
    for pid, stat in stats.items():
        children[stat.ppid].append(pid)
    return children


def _tree_seconds(
    root: int, stats: Mapping[int, _Stat], children: Mapping[int, list[int]]
) -> float:
    ticks, pending = 0, [root]
    while pending:
        pid = pending.pop()
        ticks += stats[pid].ticks if pid in stats else 0
        pending.extend(children.get(pid, ()))
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, tree: bool = False) -> float:
    """CPU seconds ``pid`` has used (0.0 if it is gone); with ``tree``, its live
    descendants' and every reaped child's too."""
    if tree:
        stats = _all_stats()
        return _tree_seconds(pid, stats, _children(stats))
    own = _stat(pid)
    return own.ticks / os.sysconf("SC_CLK_TCK") if own else 0.0


def stack_cpu(settings: Settings, also: Sequence[int] = ()) -> dict[str, float]:
    """CPU seconds used so far by each running component of the stack (with its
    descendants), by component name, and by each process in ``also`` (a worker started
    by hand), as ``pid N``; what is not running is left out. One read of ``/proc``."""
    from lastro.devstack.components import components

    stats = _all_stats()
    children = _children(stats)
    pids = [
        (component.name, component.pid()) for component in components(settings, kubernetes=True)
    ]
    pids += [(f"pid {pid}", pid) for pid in also]
    return {
        name: _tree_seconds(pid, stats, children)
        for name, pid in pids
        if pid is not None and pid in stats
    }


def used_between(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """CPU seconds each component used between two :func:`stack_cpu` readings, largest
    first (a component that started or stopped in between is left out)."""
    used = {name: after[name] - before[name] for name in after if name in before}
    return dict(sorted(used.items(), key=lambda item: item[1], reverse=True))


def cost_per(used: Mapping[str, float], units: int, cores: int | None = None) -> dict[str, Any]:
    """CPU milliseconds per unit of work (a transfer, a posting), by component and in
    all, from :func:`used_between`'s seconds; and the units per second at which that
    much CPU per unit would fill every core (``cores``, this machine's by default).
    No units, no costs."""
    per_unit = (
        {name: round(seconds * 1000 / units, 2) for name, seconds in used.items()} if units else {}
    )
    total = round(sum(per_unit.values()), 1)
    cores = cores or os.cpu_count() or 1
    return {
        "ms_per_unit": per_unit,
        "total_ms_per_unit": total,
        "ceiling_per_second": round(cores * 1000 / total, 1) if total else None,
    }


def cost_line(cost: Mapping[str, Any], unit: str, shown: int = 6) -> str:
    """One line for a :func:`cost_per` result, the largest components first."""
    largest = ", ".join(f"{name} {ms}" for name, ms in list(cost["ms_per_unit"].items())[:shown])
    return (
        f"stack CPU per {unit}: {cost['total_ms_per_unit']} ms ({largest}, ...);"
        f" the cores fill at {cost['ceiling_per_second']} {unit}s/s"
    )


REFERENCE_ROWS: int = 100_000


def reference_ms(rounds: int = 3) -> float:
    """CPU milliseconds this process needs for a fixed piece of work shaped like a
    service's (build :data:`REFERENCE_ROWS` small dicts, index them, look some up, JSON
    round-trip a tenth of them), the best of ``rounds``: the machine's speed right now
    (lower is faster), comparable between runs of the same Python. Allocation and
    memory traffic are in it on purpose: a tight arithmetic loop kept its speed while
    the services slowed down by a quarter. The garbage collector is off meanwhile, so
    the caller's own heap does not count."""
    best = float("inf")
    collecting = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            best = min(best, _reference_round())
    finally:
        if collecting:
            gc.enable()
    return round(best * 1000, 1)


def _reference_round() -> float:
    started = time.process_time()
    rows: list[dict[str, Any]] = [
        {"id": n, "name": f"row-{n}", "values": [n, n + 1]} for n in range(REFERENCE_ROWS)
    ]
    index = {row["id"]: row for row in rows}
    sum(index[(n * 7919) % REFERENCE_ROWS]["values"][1] for n in range(0, REFERENCE_ROWS, 3))
    json.loads(json.dumps(rows[: REFERENCE_ROWS // 10]))
    return time.process_time() - started
