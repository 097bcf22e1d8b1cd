"""Compare the Python CEL engines on the fraud rule set (docs/decisions/0006-cel-engine.md).

    pip install cel-expr-python common-expression-language cel-python
    python benchmarks/cel_engines_bench.py [--screenings 2000] [--json out.json]

Engines: ``cel-expr-python`` (Google's cel-cpp through pybind11, type-checked),
``common-expression-language`` (the Rust ``cel`` crate through PyO3) and
``cel-python`` (``celpy``, pure Python on lark). For each installed engine it
measures, on the expressions of ``policies/fraudrules`` and features from the
synthetic traffic of ``lastro fraud evaluate``: compile time per rule, evaluation
time per rule, and the time to evaluate the whole rule set once per screening
(p50/p99 over ``--screenings`` transactions, values converted to the engine's
input types inside the timing, as a service would). Then it runs the hostile
expressions, each in a child process with a timeout, and reports what each
engine does with them: rejected at compile time, failed at evaluation, or ran
(with the time it took).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from lastro.fraud.domain.features import Features, compute_features
from lastro.fraud.domain.profiles import CounterpartyProfile, CustomerProfile
from lastro.fraud.domain.transactions import Status, Transaction, TransactionEvent
from lastro.fraud.rulefiles import load_rule_files
from lastro.fraud.synthetic import Scenario, generate

ENGINES = ("cel-expr-python", "common-expression-language", "cel-python")

ITEMS_300 = "[" + ",".join(str(n) for n in range(300)) + "]"
ITEMS_100 = "[" + ",".join(str(n) for n in range(100)) + "]"
ITEMS_150 = "[" + ",".join(str(n) for n in range(150)) + "]"
HOSTILE = {
    "attribute access": "txn.__class__.__name__ == 'dict'",
    "python builtins": "__import__('os').system('true') == 0",
    "type error": "txn.amount + 'x' == 'y'",
    "misspelt field": "features.count_1mm > 3",
    "division by zero": "txn.amount / features.count_1m > 1",
    "integer overflow": "txn.amount * 9223372036854775807 > 0",
    "22k-iteration loop": f"{ITEMS_150}.all(a, {ITEMS_150}.all(b, a + b >= 0))",
    "90k-iteration loop": f"{ITEMS_300}.all(a, {ITEMS_300}.all(b, a + b >= 0))",
    "1M-iteration loop": f"{ITEMS_100}.all(a, {ITEMS_100}.all(b, {ITEMS_100}.all(c, a+b+c >= 0)))",
    "string blow-up": f"{ITEMS_100}.map(a, {ITEMS_100}.map(b, '{'x' * 1000}' + '{'y' * 1000}'))"
    ".size() > 0",
    "deep nesting (200)": "(" * 200 + "txn.amount > 1" + ")" * 200,
    "1 MB literal": "txn.ip == '" + "a" * 1_000_000 + "'",
    "non-boolean result": "txn.amount",
}


def _plain(txn: Transaction, features: Features) -> dict[str, Any]:
    location = txn.location
    return {
        "txn": {
            "transaction_id": txn.transaction_id,
            "type": txn.type.value,
            "amount": txn.amount,
            "currency": txn.currency,
            "customer_id": txn.customer_id,
            "source_account_id": txn.source_account_id,
            "destination_account_id": txn.destination_account_id or "",
            "counterparty": txn.counterparty or "",
            "device_id": txn.device_id or "",
            "ip": txn.ip or "",
            "country": txn.country or "",
            "occurred_at": txn.occurred_at,
            "location": {"lat": location.lat, "lon": location.lon} if location else None,
        },
        "features": asdict(features),
        "now": txn.occurred_at,
    }


class Engine:
    """One engine: compile an expression, bind one screening's values, evaluate."""

    name: str
    compile: Callable[[str], Any]
    bind: Callable[[Transaction, Features], Any]
    run: Callable[[Any, Any], Any]


def cel_cpp() -> Engine:
    from lastro.fraud.domain import expressions

    engine = Engine()
    engine.name = "cel-expr-python"
    engine.compile = expressions.CompiledExpression
    engine.bind = lambda txn, features: expressions.Bindings(txn, features, txn.occurred_at)
    engine.run = lambda program, bound: program.matches(bound)
    return engine


def cel_rust() -> Engine:
    import cel

    engine = Engine()
    engine.name = "common-expression-language"
    engine.compile = cel.compile
    engine.bind = lambda txn, features: cel.Context(_plain(txn, features))
    engine.run = lambda program, bound: program.execute(bound)
    return engine


def cel_python() -> Engine:
    import celpy
    from celpy import celtypes

    environment = celpy.Environment()

    def bind(txn: Transaction, features: Features) -> dict[str, Any]:
        plain = _plain(txn, features)
        plain["txn"]["occurred_at"] = txn.occurred_at.isoformat()
        activation = {name: celpy.json_to_cel(value) for name, value in plain.items()}
        stamp = celtypes.TimestampType(txn.occurred_at)
        activation["txn"][celtypes.StringType("occurred_at")] = stamp
        activation["now"] = stamp
        return activation

    engine = Engine()
    engine.name = "cel-python"
    engine.compile = lambda source: environment.program(environment.compile(source))
    engine.bind = bind
    engine.run = lambda program, bound: program.evaluate(bound)
    return engine


FACTORIES = {"cel-expr-python": cel_cpp, "common-expression-language": cel_rust,
             "cel-python": cel_python}  # fmt: skip


def _screenings(count: int) -> list[tuple[Transaction, Features]]:
    """Transactions of the synthetic traffic with the features the service would compute."""
    customers: dict[str, CustomerProfile] = {}
    counterparties: dict[str, CounterpartyProfile] = {}
    labelled = generate(21, Scenario(customers=150, shops=4, days=50, cases_per_typology=3))
    out = []
    for label in labelled:
        txn = label.txn
        profile = customers.setdefault(txn.customer_id, CustomerProfile(txn.customer_id))
        party = None if txn.is_incoming else txn.other_party
        payee = counterparties.setdefault(party, CounterpartyProfile(party)) if party else None
        out.append((txn, compute_features(profile, txn, payee)))
        profile.apply(TransactionEvent(Status.POSTED, txn))
        if payee:
            payee.apply(TransactionEvent(Status.POSTED, txn))
    return out[-count:]


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(
    engine: Engine, sources: list[str], screenings: list[tuple[Transaction, Features]]
) -> dict[str, Any]:
    began = time.perf_counter()
    programs = [engine.compile(source) for source in sources]
    compile_us = (time.perf_counter() - began) / len(sources) * 1e6
    per_screening, errors = [], 0
    for txn, features in screenings:
        began = time.perf_counter()
        bound = engine.bind(txn, features)
        for program in programs:
            try:
                engine.run(program, bound)
            except Exception:  # a failing rule is counted, like the service does
                errors += 1
        per_screening.append((time.perf_counter() - began) * 1e6)
    return {
        "rules": len(sources),
        "compile_us_per_rule": round(compile_us, 1),
        "eval_us_per_rule": round(statistics.fmean(per_screening) / len(sources), 2),
        "ruleset_us_p50": round(_percentile(per_screening, 0.50), 1),
        "ruleset_us_p99": round(_percentile(per_screening, 0.99), 1),
        "evaluation_errors": errors,
    }


def hostile_case(engine_name: str, source: str) -> dict[str, Any]:
    """Run in a child process: compile and evaluate one expression, say what happened."""
    engine = FACTORIES[engine_name]()
    txn, features = _screenings(1)[0]
    began = time.perf_counter()
    try:
        program = engine.compile(source)
    except Exception as exc:
        return {"outcome": "rejected at compile", "detail": str(exc).splitlines()[0][:120],
                "ms": round((time.perf_counter() - began) * 1e3, 1)}  # fmt: skip
    bound = engine.bind(txn, features)
    began = time.perf_counter()
    try:
        result = engine.run(program, bound)
    except Exception as exc:
        return {"outcome": "failed at evaluation", "detail": str(exc).splitlines()[0][:120],
                "ms": round((time.perf_counter() - began) * 1e3, 1)}  # fmt: skip
    return {"outcome": "ran", "detail": repr(result)[:60],
            "ms": round((time.perf_counter() - began) * 1e3, 1)}  # fmt: skip


def hostile(engine_name: str, timeout: float) -> dict[str, Any]:
    results = {}
    for label in HOSTILE:
        try:
            done = subprocess.run(
                [sys.executable, __file__, "--hostile-case", engine_name, label],
                capture_output=True, text=True, timeout=timeout, check=False,
            )  # fmt: skip
            lines = done.stdout.strip().splitlines()
            results[label] = (
                json.loads(lines[-1])
                if lines
                else {"outcome": f"crashed (exit {done.returncode})", "detail": done.stderr[-200:]}
            )
        except subprocess.TimeoutExpired:
            results[label] = {"outcome": f"still running after {timeout:.0f} s (killed)"}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--screenings", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--json")
    parser.add_argument("--hostile-case", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hostile_case:
        engine_name, label = args.hostile_case
        print(json.dumps(hostile_case(engine_name, HOSTILE[label])))
        return 0
    sources = [rule.expression for rule in load_rule_files()]
    screenings = _screenings(args.screenings)
    report: dict[str, Any] = {"machine": {"python": sys.version.split()[0]},
                              "when": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
    for name, factory in FACTORIES.items():
        try:
            engine = factory()
        except ImportError:
            print(f"{name}: not installed, skipped")
            continue
        count = len(screenings) if name != "cel-python" else min(len(screenings), 200)
        numbers = measure(engine, sources, screenings[:count])
        numbers["screenings"] = count
        print(f"{name}: {json.dumps(numbers)}")
        numbers["hostile"] = hostile(name, args.timeout)
        for label, outcome in numbers["hostile"].items():
            detail = outcome.get("detail", "")
            print(
                f"  {label:<20} {outcome['outcome']:<26} {outcome.get('ms', '')!s:>8} ms  {detail}"
            )
        report[name] = numbers
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
