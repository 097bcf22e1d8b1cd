"""Screening latency of the fraud engine in process: the part of the HTTP path that is ours.

    python benchmarks/fraud_engine_bench.py [--screenings 20000] [--json out.json]
    lastro bench fraud-engine -- --screenings 20000

Replays the synthetic traffic of ``lastro fraud evaluate`` (seed ``--seed``)
to build realistic profiles, then, for the last ``--screenings`` transactions,
does what the screening endpoint will do between reading Redis and writing the
response: decode the customer's and the payee's stored profiles
(:meth:`CustomerProfile.from_bytes`), compute the features, evaluate the default
rule set of ``policies/fraudrules`` and render the response body. Prints
p50/p95/p99 per screening for each stage and in total, and the throughput of
one core. The target for the whole endpoint is p99 <= 5 ms at 500 requests/s.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from typing import Any

from lastro.fraud.domain.features import compute_features
from lastro.fraud.domain.profiles import CounterpartyProfile, CustomerProfile
from lastro.fraud.domain.rules import RuleSet
from lastro.fraud.domain.transactions import Status, Transaction, TransactionEvent
from lastro.fraud.rulefiles import load_rule_files
from lastro.fraud.synthetic import Scenario, generate

Stored = tuple[Transaction, bytes, bytes | None]


def stored_profiles(seed: int, customers: int, count: int) -> list[Stored]:
    """The last ``count`` transactions with their parties' profiles as Redis would hold them."""
    labelled = generate(seed, Scenario(customers=customers, cases_per_typology=customers // 40))
    payers: dict[str, CustomerProfile] = {}
    payees: dict[str, CounterpartyProfile] = {}
    out: list[Stored] = []
    start = len(labelled) - count
    for index, label in enumerate(labelled):
        txn = label.txn
        payer = payers.setdefault(txn.customer_id, CustomerProfile(txn.customer_id))
        party = None if txn.is_incoming else txn.other_party
        payee = payees.setdefault(party, CounterpartyProfile(party)) if party else None
        if index >= start:
            out.append((txn, payer.to_bytes(), payee.to_bytes() if payee else None))
        event = TransactionEvent(Status.POSTED, txn)
        payer.apply(event)
        if payee:
            payee.apply(event)
    return out


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": round(ordered[-1], 1),
            "mean": round(statistics.fmean(ordered), 1)}  # fmt: skip


def run(stored: list[Stored], rules: RuleSet) -> dict[str, Any]:
    stages: dict[str, list[float]] = {"decode": [], "features": [], "rules": [], "total": []}
    sizes = [len(raw) for _, raw, _ in stored]
    clock = time.perf_counter
    began_all = clock()
    for txn, raw_payer, raw_payee in stored:
        t0 = clock()
        payer = CustomerProfile.from_bytes(raw_payer)
        payee = CounterpartyProfile.from_bytes(raw_payee) if raw_payee else None
        t1 = clock()
        features = compute_features(payer, txn, payee)
        t2 = clock()
        body = rules.screen(txn, features, now=txn.occurred_at).to_json()
        t3 = clock()
        stages["decode"].append((t1 - t0) * 1e6)
        stages["features"].append((t2 - t1) * 1e6)
        stages["rules"].append((t3 - t2) * 1e6)
        stages["total"].append((t3 - t0) * 1e6)
        del body
    elapsed = clock() - began_all
    return {
        "screenings": len(stored),
        "rules": len(rules.rules),
        "microseconds": {stage: percentiles(values) for stage, values in stages.items()},
        "screenings_per_second_one_core": round(len(stored) / elapsed),
        "profile_bytes": {"p50": sorted(sizes)[len(sizes) // 2], "max": max(sizes)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--screenings", type=int, default=20_000)
    parser.add_argument("--customers", type=int, default=400)
    parser.add_argument("--seed", type=int, default=99)
    parser.add_argument("--json")
    args = parser.parse_args()
    rules = RuleSet.of(load_rule_files())
    stored = stored_profiles(args.seed, args.customers, args.screenings)
    run(stored[: min(len(stored), 1000)], rules)  # warm up
    report = run(stored, rules)
    report["machine"] = {"python": platform.python_version(), "cpu": platform.processor()}
    for stage, numbers in report["microseconds"].items():
        print(f"{stage:<9} " + "  ".join(f"{k}={v:.1f}us" for k, v in numbers.items()))
    size = report["profile_bytes"]
    print(
        f"{report['screenings']} screenings, {report['rules']} rules,"
        f" {report['screenings_per_second_one_core']} screenings/s on one core,"
        f" customer profile p50 {size['p50']} B, max {size['max']} B"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
