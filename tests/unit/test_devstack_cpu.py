"""CPU accounting from /proc (`lastro.devstack.cpu`): own time, a process tree's time
including children already reaped, and the difference of two readings."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time

import pytest

from lastro.devstack import cpu
from lastro.devstack.cpu import cost_line, cost_per, cpu_seconds, reference_ms, used_between

TICK = 2 / os.sysconf("SC_CLK_TCK")
BURN = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass\n"


def test_own_cpu_time_grows_with_work_done() -> None:
    before = cpu_seconds(os.getpid())
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    assert cpu_seconds(os.getpid()) - before >= 0.15


def test_a_tree_counts_live_descendants_and_reaped_children() -> None:
    me = os.getpid()
    alone, tree = cpu_seconds(me), cpu_seconds(me, tree=True)
    assert tree >= alone
    # A child that burns 0.3 s of CPU, then waits on stdin while we read.
    child = subprocess.Popen(
        [sys.executable, "-c", BURN.format(seconds=0.3) + "import sys; sys.stdin.read()"],
        stdin=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while cpu_seconds(child.pid) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        burnt = cpu_seconds(child.pid)
        live = cpu_seconds(me, tree=True) - cpu_seconds(me)
        assert burnt >= 0.3
        assert live >= burnt - TICK  # our own time may tick between the two reads
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=20)
    # Reaped: the child is gone from /proc, its time is in our cutime + cstime.
    assert cpu_seconds(child.pid) == 0.0
    assert cpu_seconds(me, tree=True) - tree >= 0.3 - TICK


def test_a_process_that_does_not_exist_used_nothing() -> None:
    assert cpu_seconds(2**22 + 1) == 0.0  # above the largest pid Linux allows


def test_usage_between_two_readings_is_largest_first_and_skips_comers_and_goers() -> None:
    before = {"postgres": 10.0, "kafka": 4.0, "fraud": 1.0}
    after = {"postgres": 10.5, "kafka": 6.0, "notifications": 3.0}
    assert list(used_between(before, after).items()) == [("kafka", 2.0), ("postgres", 0.5)]


def test_cost_per_unit_and_the_rate_that_fills_the_cores() -> None:
    cost = cost_per({"postgres": 3.0, "accounts": 1.0}, units=1000, cores=2)
    assert cost == {
        "ms_per_unit": {"postgres": 3.0, "accounts": 1.0},
        "total_ms_per_unit": 4.0,
        "ceiling_per_second": 500.0,  # 2,000 ms of CPU a second / 4 ms a unit
    }
    assert cost_line(cost, "posting") == (
        "stack CPU per posting: 4.0 ms (postgres 3.0, accounts 1.0, ...);"
        " the cores fill at 500.0 postings/s"
    )
    assert cost_per({"postgres": 3.0}, units=0, cores=2) == {
        "ms_per_unit": {},
        "total_ms_per_unit": 0.0,
        "ceiling_per_second": None,
    }


def test_the_reference_is_the_cpu_time_of_fixed_work(monkeypatch: pytest.MonkeyPatch) -> None:
    assert reference_ms(rounds=1) > 0
    assert gc.isenabled()  # the collector, off while it measured, is on again
    monkeypatch.setattr(cpu, "REFERENCE_ROWS", 0)
    assert reference_ms() == 0.0
