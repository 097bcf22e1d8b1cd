"""Transfers through the transaction service's HTTPS API, against pgbench on the same
PostgreSQL in the same run.

    lastro bench transfers -- --transfers 5000 --concurrency 32 --json out.json
    lastro bench transfers -- --bulk 100 --batches 20        # transfer batches instead
    lastro bench transfers -- --rate 150 --seconds 20         # open loop at a fixed rate

Sets up its own parties through the public APIs (client_credentials clients at the
identity service, customers with a funded account each at the account service,
funded from a settlement account), then fires transfers, each with a fresh
``Idempotency-Key``, from ``--concurrency`` clients (closed loop) or at ``--rate``
per second (open loop), and reads the ``lastro.transactions`` topic to see where each
one came to rest. Reports accepted/s (202s over the firing time), posted/s (posted
events over first accept → last post), p50/p95/p99 of the accept latency
(client-side) and of accept → posted (server timestamps), errors by status, where the
transfers rested (posted, in review, declined, ...), then runs pgbench tpcb-like with
as many clients, and the ratio posted/s ÷ pgbench TPS. ``--json`` writes it all.
It also reads every stack process's CPU time (``lastro.devstack.cpu``) before the
first transfer and once all rested, and prints the CPU per transfer by process and
in all, and the rate at which that would fill every core: what limits the run; and
PostgreSQL's busiest statements over the same window (``lastro.devstack.statements``,
lock waits included), which is where a contended row shows.

The traffic is shaped like a payment platform's, because the fraud service screens
every transfer with its real rules: many customers (by default one per three
transfers), each paying one of two regular payees (shops, a landlord: accounts that
receive and never pay out) amounts near its own usual one, at most three times in
the run. A flood from a few accounts would be held for review by the velocity and
mule rules, as it should be, and measure the review path instead of the money path.
Batches (``--bulk``) go from one customer to many payees, like a payroll.

Needs the stack up (``lastro dev up``) and enough rate limit for one client
(``LASTRO_RATE_LIMIT_PER_MINUTE`` on the transaction and account services, e.g.
1000000 while benchmarking).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition
from ledger_bench import _percentile, run_pgbench
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.config import Settings, load_settings
from lastro.core.db import engine_for
from lastro.core.events import TOPICS
from lastro.core.security.tls import client_context
from lastro.demo import Api, client_credentials, operator_token, register_service
from lastro.devstack.costs import RunCosts, cost_lines

SCOPES = ["accounts:read", "accounts:write", "transfers:read", "transfers:write"]


@dataclass
class Payer:
    """A customer with a funded account, its client's token, the two payees it pays
    and the amount (cents) it usually pays."""

    token: str
    account: str
    payees: list[str]
    amount: int


RESTING: Final = ("posted", "in_review", "challenged", "declined", "failed")
"""Statuses a transfer stays in without the client (or a person) acting."""


@dataclass
class Result:
    mode: str
    workers: str
    transfers: int
    concurrency: int | None
    rate: float | None
    fire_seconds: float
    accepted: int
    accepted_per_second: float
    posted: int
    posted_per_second: float
    accept_ms: dict[str, float]
    accept_to_posted_ms: dict[str, float]
    errors: dict[str, int]
    rested: dict[str, int]
    fallback_screenings: int


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {f"p{q}": round(_percentile(ordered, q / 100) * 1000, 2) for q in (50, 95, 99)}


def _progress(done: int, total: int) -> None:
    width = 40
    filled = width * done // max(total, 1)
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="", file=sys.stderr)
    if done >= total:
        print(file=sys.stderr)


async def setup(
    settings: Settings,
    http: aiohttp.ClientSession,
    *,
    parties: int,
    customers: int,
    payees: int,
    seed: int,
) -> list[Payer]:
    """Customers with funded accounts and payees, made the way their users would make
    them: ``parties`` clients share the customers; one more client holds the payees."""
    rng = random.Random(seed)
    identity = Api(http, settings.service_url("identity"))
    accounts = Api(http, settings.service_url("accounts"))
    admin = await operator_token(identity, settings)
    run = uuid.uuid4().hex[:6]
    _, funder = await register_service(
        identity, admin, f"bench-funder-{run}", ["ledger:write", "accounts:admin"], "accounts"
    )
    settlement = await accounts.call(
        "POST",
        "/internal/v1/accounts",
        token=funder,
        expect=201,
        json={"currency": "EUR", "purpose": "settlement"},
    )

    async def client(n: int) -> str:
        made = await identity.call(
            "POST",
            "/v1/clients",
            token=admin,
            expect=201,
            json={
                "name": f"bench-{run}-{n}",
                "grant_types": ["client_credentials"],
                "scopes": SCOPES,
                "audiences": ["accounts", "transactions"],
            },
        )
        return await client_credentials(
            identity, made["client_id"], made["client_secret"], " ".join(SCOPES),
            "accounts transactions",
        )  # fmt: skip

    async def account(token: str, n: int, funded: bool) -> str:
        customer = await accounts.call(
            "POST",
            "/v1/customers",
            token=token,
            expect=201,
            json={"name": f"Bench {n}", "email": f"bench-{run}-{n}@example.com",
                  "document_number": f"B{run}{n}"},
        )  # fmt: skip
        opened = await accounts.call(
            "POST",
            "/v1/accounts",
            token=token,
            expect=201,
            json={"customer_id": customer["id"], "currency": "EUR"},
        )
        if funded:
            leg = {"amount": 10**12, "currency": "EUR"}
            await accounts.call(
                "POST",
                "/internal/v1/postings",
                token=funder,
                expect=201,
                json={
                    "external_id": f"bench-fund-{opened['id']}",
                    "entries": [
                        {"account_id": settlement["id"], "direction": "debit", **leg},
                        {"account_id": opened["id"], "direction": "credit", **leg},
                    ],
                },
            )
        done[0] += 1
        _progress(done[0], customers + payees)
        return str(opened["id"])

    done = [0]
    tokens = await asyncio.gather(*(client(n) for n in range(parties + 1)))
    gate = asyncio.Semaphore(8)

    async def gated(token: str, n: int, funded: bool) -> str:
        async with gate:
            return await account(token, n, funded)

    receivers = await asyncio.gather(*(gated(tokens[-1], n, False) for n in range(payees)))
    owners = [tokens[n % parties] for n in range(customers)]
    paying = await asyncio.gather(
        *(gated(owner, payees + n, True) for n, owner in enumerate(owners))
    )
    return [
        Payer(owner, acc, rng.sample(receivers, 2), rng.randint(500, 20_000))
        for owner, acc in zip(owners, paying, strict=True)
    ]


class PostedTap:
    """Transaction events from now on: transaction id → server time it was posted, and
    where each transaction rests."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.posted: dict[str, datetime] = {}
        self.rested: dict[str, str] = {}
        self.fallbacks = 0
        self.completed_batches: set[str] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        topic = "lastro.transactions"
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap)
        await consumer.start()
        partitions = [TopicPartition(topic, p) for p in range(TOPICS[topic])]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)
        self._consumer = consumer
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._consumer is not None
        async for record in self._consumer:
            event = json.loads(record.value or b"{}")
            data = event.get("data") or {}
            status = data.get("status")
            if status == "screening" and (data.get("screening") or {}).get("decision") == "review":
                status = "in_review"  # the hold that follows is a state change with no event
            if status in RESTING and "transaction_id" in data:
                self.rested[data["transaction_id"]] = status
            if event.get("type") != "lastro.transaction.posted":
                continue
            self.posted[data["transaction_id"]] = datetime.fromisoformat(data["occurred_at"])
            if (data.get("screening") or {}).get("fallback"):
                self.fallbacks += 1

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._consumer is not None:
            await self._consumer.stop()


async def fire(
    http: aiohttp.ClientSession,
    base: str,
    payers: list[Payer],
    args: argparse.Namespace,
    tap: PostedTap,
) -> tuple[dict[str, datetime], list[float], Counter[str], float]:
    """Send the transfers (or batches); returns accepted id → server accept time,
    accept latencies, outcomes and the firing time."""
    rng = random.Random(args.seed)
    accepted: dict[str, datetime] = {}
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    total = args.batches if args.bulk else args.transfers
    sent = iter(range(total))
    receivers = sorted({payee for payer in payers for payee in payer.payees})

    async def one(n: int) -> None:
        # Customers take turns, so each pays at most ceil(total / customers) times.
        payer = payers[n % len(payers)]
        if args.bulk:
            path = "/v1/transfer-batches"
            # Small items: a batch's total stays under the step-up threshold (1,000.00),
            # which a client_credentials token (no second factor) could not pass.
            top = max(1, 90_000 // args.bulk)
            body: dict[str, Any] = {
                "source_account_id": payer.account,
                "atomic": args.atomic,
                "transfers": [
                    {
                        "destination_account_id": rng.choice(receivers),
                        "amount": rng.randint(1, top),
                        "currency": "EUR",
                    }
                    for _ in range(args.bulk)
                ],
            }
        else:
            path = "/v1/transfers"
            amount = round(payer.amount * rng.uniform(0.8, 1.25))
            body = {"source_account_id": payer.account,
                    "destination_account_id": rng.choice(payer.payees),
                    "amount": amount, "currency": "EUR"}  # fmt: skip
        headers = {
            "Authorization": f"Bearer {payer.token}",
            "Idempotency-Key": uuid.uuid4().hex,
        }
        started = time.perf_counter()
        async with http.post(f"{base}{path}", json=body, headers=headers) as response:
            answer = await response.json(content_type=None)
            status = response.status
        latencies.append(time.perf_counter() - started)
        outcomes[str(status)] += 1
        if status in (201, 202):
            created = datetime.fromisoformat(answer["created_at"])
            if args.bulk:
                for item in answer["transfers"]:
                    accepted[item["id"]] = created
            else:
                accepted[answer["id"]] = created
        _progress(sum(outcomes.values()), total)

    began = time.perf_counter()
    if args.rate:
        tasks = []
        for n in sent:
            delay = began + n / args.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(n)))
        await asyncio.gather(*tasks)
    else:

        async def client() -> None:
            for n in sent:
                await one(n)

        await asyncio.gather(*(client() for _ in range(args.concurrency)))
    return accepted, latencies, outcomes, time.perf_counter() - began


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings()
    async with engine_for(settings, "transactions-bench", pool_size=2) as engine:
        return await _bench(args, settings, engine)


async def _bench(
    args: argparse.Namespace, settings: Settings, engine: AsyncEngine
) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(ssl=client_context(settings.ca_file), limit=1000)
    async with aiohttp.ClientSession(connector=connector) as http:
        customers = args.customers or (args.batches if args.bulk else -(-args.transfers // 3))
        print(f"setting up {customers} customers and {args.payees} payees", file=sys.stderr)
        payers = await setup(
            settings,
            http,
            parties=args.parties,
            customers=customers,
            payees=args.payees,
            seed=args.seed,
        )
        tap = PostedTap(settings)
        await tap.start()
        try:
            total = args.batches * args.bulk if args.bulk else args.transfers
            print(f"firing {total} transfers", file=sys.stderr)
            costs = RunCosts(settings, engine, also=args.also)
            await costs.start()
            accepted, latencies, outcomes, fired = await fire(
                http, settings.service_url("transactions"), payers, args, tap
            )
            # The CPU window closes when the last transfer came to rest (read again at
            # each poll that saw one rest), not when the drain gave up on one that
            # never will (a transfer waiting for step-up): idle time is not its cost.
            costs.mark()
            rested = len(set(accepted) & set(tap.rested))
            deadline = time.monotonic() + args.drain
            while set(accepted) - set(tap.rested) and time.monotonic() < deadline:
                _progress(rested, len(accepted))
                await asyncio.sleep(0.5)
                if (now_rested := len(set(accepted) & set(tap.rested))) > rested:
                    costs.mark()
                    rested = now_rested
            _progress(rested, len(accepted))
            report = await costs.finish(len(accepted))
        finally:
            await tap.stop()
    posted = {t: tap.posted[t] for t in accepted if t in tap.posted}
    to_posted = [(posted[t] - accepted[t]).total_seconds() for t in posted]
    span = (max(posted.values()) - min(accepted.values())).total_seconds() if posted else 0.0
    result = Result(
        mode=f"batches of {args.bulk}{' atomic' if args.atomic else ''}"
        if args.bulk
        else "transfers",
        workers=args.workers,
        transfers=len(accepted),
        concurrency=None if args.rate else args.concurrency,
        rate=args.rate,
        fire_seconds=round(fired, 3),
        accepted=len(accepted),
        accepted_per_second=round(len(accepted) / fired, 1) if fired else 0.0,
        posted=len(posted),
        posted_per_second=round(len(posted) / span, 1) if span else 0.0,
        accept_ms=_ms(latencies),
        accept_to_posted_ms=_ms(to_posted),
        errors={k: v for k, v in outcomes.items() if k not in ("201", "202")},
        rested=dict(Counter(tap.rested.get(t, "in flight") for t in accepted)),
        fallback_screenings=tap.fallbacks,
    )
    pgbench: dict[str, float] | None = None
    if not args.no_pgbench:
        pgbench = await run_pgbench(
            engine, settings, seconds=args.pgbench_seconds, clients=args.pgbench_clients
        )
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpus": os.cpu_count(),
        "result": asdict(result),
        **report,
        "pgbench_tpcb_like": pgbench,
        "posted_ratio_to_pgbench": round(result.posted_per_second / pgbench["tps"], 3)
        if pgbench
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transfers", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, help="open loop: requests per second")
    parser.add_argument("--bulk", type=int, default=0, help="transfers per batch (1-1000)")
    parser.add_argument("--batches", type=int, default=10, help="with --bulk: batches to send")
    parser.add_argument("--atomic", action="store_true", help="with --bulk: atomic batches")
    parser.add_argument("--parties", type=int, default=20, help="clients the customers share")
    parser.add_argument(
        "--customers", type=int, help="default: one per three transfers, or per batch"
    )
    parser.add_argument("--payees", type=int, default=60)
    parser.add_argument("--drain", type=float, default=120, help="seconds to wait to rest")
    parser.add_argument("--workers", default="1", help="how many workers run (for the record)")
    parser.add_argument(
        "--also",
        type=int,
        action="append",
        default=[],
        metavar="PID",
        help="count this process's CPU with the stack's (e.g. a second worker); repeatable",
    )
    parser.add_argument("--pgbench-seconds", type=int, default=15)
    parser.add_argument("--pgbench-clients", type=int, default=16)
    parser.add_argument("--no-pgbench", action="store_true")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = asyncio.run(bench(args))
    r = results["result"]
    print(
        f"{r['mode']} ({r['workers']} worker(s)): accepted {r['accepted']} at "
        f"{r['accepted_per_second']}/s, posted {r['posted']} at {r['posted_per_second']}/s; "
        f"accept {r['accept_ms']}, accept→posted {r['accept_to_posted_ms']}; "
        f"errors {r['errors'] or 'none'}; rested {r['rested']}; "
        f"fallback screenings {r['fallback_screenings']}"
    )
    print("\n".join(cost_lines(results, "transfer")))
    if results["pgbench_tpcb_like"]:
        tps = results["pgbench_tpcb_like"]["tps"]
        ratio = results["posted_ratio_to_pgbench"]
        print(f"pgbench tpcb-like: {tps:.1f} tps; posted/pgbench = {ratio}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
