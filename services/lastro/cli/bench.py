"""`lastro bench <name>`: the benchmarks under benchmarks/ (docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

BENCHMARKS = {
    "ledger": "ledger_bench.py",
    "fraud": "fraud_bench.py",
    "fraud-engine": "fraud_engine_bench.py",
    "transfers": "transactions_bench.py",
    "statements": "statement_paths_bench.py",
    "relay": "outbox_relay_bench.py",
}


def register(sub: Any) -> None:
    bench = sub.add_parser("bench", help="run a benchmark (see docs/benchmarks.md)")
    bench.add_argument("name", choices=sorted(BENCHMARKS))
    bench.add_argument("options", nargs=argparse.REMAINDER, help="passed to the benchmark")
    bench.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[3] / "benchmarks" / BENCHMARKS[args.name]
    if not script.exists():
        print(f"{script} not found: benchmarks run from a source checkout", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, str(script), *args.options])  # noqa: S603
