"""The fraud benchmark's grouping of slow screenings into bursts (benchmarks/fraud_bench.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "fraud_bench.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fraud_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_slow_screenings_finishing_close_together_are_one_burst() -> None:
    samples = [
        ("2026-12-01T05:32:55.034Z", 12.0),
        ("2026-12-01T05:32:55.010Z", 9.0),  # logged out of order: sorted by time
        ("2026-12-01T05:32:55.050Z", 55.2),
        ("2026-12-01T05:32:55.200Z", 1.0),  # fast: not counted, not a break either
        ("2026-12-01T05:32:56.500Z", 7.5),  # > 60 ms after the last slow one: a new burst
        ("2026-12-01T05:32:56.540Z", 6.0),
        ("2026-12-01T05:32:58.000Z", 5.0),  # not over 5 ms
    ]
    found = _bench().slow_bursts(samples, top=2)
    assert found["slow"] == 5
    assert found["largest_bursts"] == [
        {"at": "05:32:55.010", "screenings": 3, "max_ms": 55.2},
        {"at": "05:32:56.500", "screenings": 2, "max_ms": 7.5},
    ]


def test_no_slow_screening_means_no_burst() -> None:
    found = _bench().slow_bursts([("2026-12-01T05:00:00.000Z", 0.9)])
    assert found == {"over_ms": 5.0, "slow": 0, "largest_bursts": []}
