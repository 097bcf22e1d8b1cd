"""`lastro bench` against the running stack, briefly: each benchmark finishes, prints its
report and writes the JSON the docs quote (the machine's speed, the stack's CPU per
unit, the busiest statements). Not a timing test: the loads are tiny and nothing here
asserts a rate or a latency."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def bench(tmp_path: Path, *args: str) -> tuple[str, dict[str, Any]]:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "lastro.cli", "bench", *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout, json.loads(out.read_text())


def assert_costs(report: dict[str, Any]) -> None:
    before, after = report["reference_ms"]
    assert before > 0 and after > 0
    assert report["stack_cpu"]["total_ms_per_unit"] > 0
    assert {"postgres", "kafka", "redis"} <= set(report["stack_cpu"]["ms_per_unit"])
    assert report["busiest_statements"], "pg_stat_statements is preloaded by the dev stack"


def test_the_ledger_benchmark_reports_the_http_path(tmp_path: Path) -> None:
    printed, report = bench(
        tmp_path, "ledger", "--seconds", "1", "--clients", "2", "--accounts", "10", "--http"
    )
    assert report["http"]["outcomes"].get("ok", 0) > 0
    assert report["http_ratio_to_pgbench"] > 0
    assert_costs(
        {key: report[f"http_{key}"] for key in ("reference_ms", "stack_cpu", "busiest_statements")}
    )
    assert "machine speed: reference work" in printed
    assert "stack CPU per posting" in printed


def test_the_transfers_benchmark_reports_where_transfers_rest(tmp_path: Path) -> None:
    printed, report = bench(
        tmp_path, "transfers", "--", "--transfers", "12", "--rate", "10", "--no-pgbench"
    )
    result = report["result"]
    assert result["accepted"] == 12 and result["errors"] == {}, result
    assert sum(result["rested"].values()) == 12, result
    assert_costs(report)
    assert "stack CPU per transfer" in printed


def test_the_fraud_benchmark_reports_latency_costs_and_collector_pauses(tmp_path: Path) -> None:
    printed, report = bench(
        tmp_path, "fraud", "--", "--rate", "50", "--seconds", "1", "--warmup", "0.5",
        "--customers", "20",
    )  # fmt: skip
    assert report["statuses"] == {"200": 50}, report["statuses"]
    assert report["in_service_samples"] == 50
    assert 0 <= report["slow"]["slow"] <= 50
    assert "largest bursts" in printed
    assert set(report["gc_pauses"]) == {"0", "1", "2"}
    assert_costs(report["costs"])
    assert "collector pauses in the run" in printed


def test_the_statement_paths_benchmark_reports_each_path(tmp_path: Path) -> None:
    printed, report = bench(tmp_path, "statements", "--", "--inserts", "20", "--rounds", "1")
    assert set(report["per_insert"]) == {
        "sqlalchemy-core",
        "exec-driver-sql",
        "asyncpg-pool",
        "statement-pool",
    }
    assert all(r[0]["cpu_us"] > 0 for r in report["per_insert"].values())
    assert "statement-pool" in printed


def test_the_relay_benchmark_reports_each_rounds_costs(tmp_path: Path) -> None:
    printed, report = bench(tmp_path, "relay", "--", "--events", "20", "--rounds", "2")
    assert report["events"] == 20 and len(report["rounds"]) == 2
    for result in report["rounds"]:
        assert result["publish_cpu_us"] > 0 and result["publish_wall_us"] > 0
        assert_costs(result)
    assert "publish_batch" in printed and "per event" in printed
