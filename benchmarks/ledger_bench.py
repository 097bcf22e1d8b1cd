"""Ledger posting throughput against pgbench's tpcb-like workload on the same server.

    python benchmarks/ledger_bench.py --seconds 20 --clients 16 [--json out.json]

Sets up a throwaway ledger schema (one settlement account, ``--accounts`` funded
customer accounts), posts random transfers through the service layer
(:meth:`Ledger.post_posting`: row locks, domain rules, entries, balances, outbox
event and audit record committed atomically; concurrent postings are group-committed,
at most ``--max-batch`` per transaction) from ``--clients`` concurrent clients
for ``--seconds``, then runs ``pgbench`` (builtin tpcb-like, simple protocol,
``-c clients -j 2 -T seconds``) in its own throwaway schema of the same database,
and prints postings/s, p50/p95/p99 latency and the ratio to pgbench's TPS.

With ``--http`` it also posts the same transfers through the running account
service (``POST /internal/v1/postings`` over HTTPS with a real service token from
the identity service: TLS, token check, rate limit, request validation, the same
use case), so start the services first (``lastro dev up``). :func:`run_load`
measures both paths the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.accounts import domain
from lastro.accounts.domain import AccountKind, Direction, EntryRequest, PostingRequest
from lastro.accounts.service import Ledger
from lastro.accounts.store import migrate_accounts
from lastro.core.changes import Caller
from lastro.core.config import Settings, load_settings
from lastro.core.db import create_engine
from lastro.core.events import EventSigner
from lastro.core.security.tls import client_context
from lastro.core.security.transit import TransitClient
from lastro.demo import Api, operator_token, register_service
from lastro.devstack.costs import REPORT_KEYS, RunCosts, cost_lines

PGBENCH = Path("/usr/lib/postgresql/15/bin/pgbench")
CALLER = Caller("service:ledger-bench")
PostOne = Callable[[int], Awaitable[None]]


@dataclass
class LoadResult:
    """Outcome of one load run: completed calls per second and latency percentiles (ms)."""

    label: str
    clients: int
    seconds: float
    completed: int
    per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    outcomes: dict[str, int] = field(default_factory=dict)


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))
    return sorted_values[index]


async def run_load(label: str, post_one: PostOne, *, seconds: float, clients: int) -> LoadResult:
    """Call ``post_one`` from ``clients`` concurrent loops for ``seconds``.

    Each call's latency is recorded; a call that raises a ledger rule error
    (e.g. insufficient funds) counts under its slug, any other error aborts."""
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**12))

    async def client() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                await post_one(next(counter))
                outcomes["ok"] += 1
            except domain.LedgerError as error:
                outcomes[error.slug] += 1
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return LoadResult(
        label=label,
        clients=clients,
        seconds=round(elapsed, 3),
        completed=len(latencies),
        per_second=round(len(latencies) / elapsed, 1),
        p50_ms=round(_percentile(latencies, 0.50) * 1000, 2),
        p95_ms=round(_percentile(latencies, 0.95) * 1000, 2),
        p99_ms=round(_percentile(latencies, 0.99) * 1000, 2),
        outcomes=dict(outcomes),
    )


async def _ledger(engine: AsyncEngine, settings: Settings, schema: str, max_batch: int) -> Ledger:
    transit = TransitClient.from_settings(settings)
    try:
        signer = await EventSigner.from_transit(transit, settings.events_key_name)
    finally:
        await transit.close()
    await migrate_accounts(engine, schema)
    return Ledger(
        engine, signer, b"ledger-bench-audit-key", schema=schema, max_posting_batch=max_batch
    )


async def _funded_accounts(ledger: Ledger, count: int) -> list[domain.AccountId]:
    settlement = await ledger.open_account("USD", AccountKind.SYSTEM, CALLER)
    run = uuid.uuid4().hex[:8]
    accounts = []
    for i in range(count):
        account = await ledger.open_account("USD", AccountKind.CUSTOMER, CALLER)
        await ledger.post_posting(
            transfer(f"fund-{run}-{i}", settlement.id, account.id, 10_000_000), CALLER
        )
        accounts.append(account.id)
    return accounts


def transfer(
    external_id: str, source: domain.AccountId, target: domain.AccountId, amount: int
) -> PostingRequest:
    return PostingRequest(
        external_id=external_id,
        entries=(
            EntryRequest(source, Direction.DEBIT, amount, "USD"),
            EntryRequest(target, Direction.CREDIT, amount, "USD"),
        ),
        description="benchmark transfer",
    )


def _pg_env(settings: Settings, schema: str) -> dict[str, str]:
    return {
        **os.environ,
        "PGPASSWORD": settings.pg_password,
        "PGOPTIONS": f"-c search_path={schema}",
    }


def _pg_conninfo(settings: Settings) -> str:
    return (
        f"host={settings.pg_host} port={settings.pg_port} user={settings.pg_user}"
        f" dbname={settings.pg_database} sslmode=require"
    )


async def _run_pgbench(env: dict[str, str], *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        str(PGBENCH),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"pgbench {' '.join(args[:2])} failed:\n{output.decode()}")
    return output.decode()


async def run_pgbench(
    engine: AsyncEngine, settings: Settings, *, seconds: int, clients: int
) -> dict[str, float]:
    """pgbench tpcb-like (scale 1, simple protocol) in a throwaway schema; its TPS."""
    schema = f"pgbench_{uuid.uuid4().hex[:10]}"
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    env, conninfo = _pg_env(settings, schema), _pg_conninfo(settings)
    try:
        await _run_pgbench(env, "-i", "-q", conninfo)
        out = await _run_pgbench(env, "-c", str(clients), "-j", "2", "-T", str(seconds), conninfo)
    finally:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    latency = re.search(r"latency average = ([0-9.]+) ms", out)
    if tps is None:
        raise RuntimeError(f"could not read pgbench output:\n{out}")
    return {"tps": float(tps.group(1)), "latency_avg_ms": float(latency.group(1) if latency else 0)}


async def _service_token(settings: Settings, http: aiohttp.ClientSession) -> str:
    """A ledger:write token for audience accounts, for a client registered just now."""
    identity = Api(http, settings.service_url("identity"))
    admin = await operator_token(identity, settings)
    name = f"ledger-bench-{uuid.uuid4().hex[:6]}"
    _, token = await register_service(identity, admin, name, ["ledger:write"], "accounts")
    return token


async def http_load(
    args: argparse.Namespace, settings: Settings, engine: AsyncEngine
) -> tuple[LoadResult, dict[str, Any]]:
    """Transfers through the running account service's internal postings route; with
    the stack's CPU per posting and PostgreSQL's busiest statements over the phase."""
    transit = TransitClient.from_settings(settings)
    try:
        signer = await EventSigner.from_transit(transit, settings.events_key_name)
        audit_key = await transit.local_hmac_key(settings.audit_key_name)
    finally:
        await transit.close()
    # Accounts are opened in the service's own schema through the service layer (the
    # HTTP API opens customer accounts only for their owners); the load is pure HTTP.
    ledger = Ledger(engine, signer, audit_key, schema="accounts")
    try:
        accounts = await _funded_accounts(ledger, args.accounts)
    finally:
        await ledger.aclose()
    connector = aiohttp.TCPConnector(ssl=client_context(settings.ca_file), limit=args.clients)
    async with aiohttp.ClientSession(connector=connector) as http:
        token = await _service_token(settings, http)
        url = f"{settings.service_url('accounts')}/internal/v1/postings"
        headers = {"Authorization": f"Bearer {token}"}
        rng = random.Random(args.seed)
        run = uuid.uuid4().hex[:8]
        sequence = itertools.count()

        async def post_one(_: int) -> None:
            source, target = rng.sample(accounts, 2)
            amount = rng.randint(1, 1000)
            leg = {"amount": amount, "currency": "USD"}
            body = {
                "external_id": f"bench-{run}-{next(sequence)}",
                "description": "benchmark transfer",
                "entries": [
                    {"account_id": source, "direction": "debit", **leg},
                    {"account_id": target, "direction": "credit", **leg},
                ],
            }
            async with http.post(url, json=body, headers=headers) as response:
                await response.read()
                if response.status != 201:
                    raise RuntimeError(f"HTTP {response.status}")

        await run_load(
            "http warm-up", post_one, seconds=min(2.0, args.seconds), clients=args.clients
        )
        costs = RunCosts(settings, engine)
        await costs.start()
        result = await run_load("http", post_one, seconds=args.seconds, clients=args.clients)
        costs.mark()
    return result, await costs.finish(result.completed)


async def bench(args: argparse.Namespace) -> dict[str, object]:
    settings = load_settings()
    engine = create_engine(
        settings, pool_size=args.clients + 2, max_overflow=0, name="ledger-bench"
    )
    schema = f"ledger_bench_{uuid.uuid4().hex[:10]}"
    ledger: Ledger | None = None
    try:
        ledger = await _ledger(engine, settings, schema, args.max_batch)
        accounts = await _funded_accounts(ledger, args.accounts)
        rng = random.Random(args.seed)
        sequence = itertools.count()

        async def post_one(_: int) -> None:
            source, target = rng.sample(accounts, 2)
            request = transfer(f"bench-{next(sequence)}", source, target, rng.randint(1, 1000))
            await ledger.post_posting(request, CALLER)

        await run_load("warm-up", post_one, seconds=min(2.0, args.seconds), clients=args.clients)
        service = await run_load(
            "service layer", post_one, seconds=args.seconds, clients=args.clients
        )
        await ledger.aclose()
        http, http_costs = await http_load(args, settings, engine) if args.http else (None, None)
        pgbench = await run_pgbench(
            engine, settings, seconds=int(args.seconds), clients=args.clients
        )
    finally:
        if ledger is not None:
            await ledger.aclose()
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await engine.dispose()
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seconds": args.seconds,
        "clients": args.clients,
        "accounts": args.accounts,
        "max_batch": args.max_batch,
        "cpus": os.cpu_count(),
        "service_layer": asdict(service),
        "pgbench_tpcb_like": pgbench,
        "service_ratio_to_pgbench": round(service.per_second / pgbench["tps"], 3),
        "http": asdict(http) if http else None,
        **{f"http_{key}": http_costs[key] if http_costs else None for key in REPORT_KEYS},
        "http_ratio_to_pgbench": round(http.per_second / pgbench["tps"], 3) if http else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--max-batch", type=int, default=128, help="postings per transaction at most"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--http", action="store_true", help="also post through the running account service"
    )
    args = parser.parse_args()
    results = asyncio.run(bench(args))
    service = results["service_layer"]
    assert isinstance(service, dict)
    pgbench = results["pgbench_tpcb_like"]
    assert isinstance(pgbench, dict)
    print(
        f"service layer: {service['per_second']:.1f} postings/s over {service['seconds']} s,"
        f" {args.clients} clients; p50 {service['p50_ms']} ms, p95 {service['p95_ms']} ms,"
        f" p99 {service['p99_ms']} ms; outcomes {service['outcomes']}"
    )
    print(f"pgbench tpcb-like: {pgbench['tps']:.1f} tps (avg {pgbench['latency_avg_ms']} ms)")
    print(f"ratio service/pgbench: {results['service_ratio_to_pgbench']}")
    http = results["http"]
    if isinstance(http, dict):
        print(
            f"http: {http['per_second']:.1f} postings/s; p50 {http['p50_ms']} ms,"
            f" p95 {http['p95_ms']} ms, p99 {http['p99_ms']} ms; outcomes {http['outcomes']}"
        )
        print(f"ratio http/pgbench: {results['http_ratio_to_pgbench']}")
        costs = {key: results[f"http_{key}"] for key in REPORT_KEYS}
        print("\n".join(cost_lines(costs, "posting")))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
