"""What one outbox relay cycle costs when each wake-up carries one event.

    lastro dev up
    lastro bench relay [-- --events 1500 --rounds 3] [--json out.json]

The open loop's shape (at 50 transfers/s most relay wake-ups in every service find
one event): an event is enqueued and committed, then ``OutboxRelay.publish_batch``
claims, publishes (the dev stack's Kafka, ``acks=all``) and commits it, ``--events``
times in a row, against a scratch outbox (a schema of its own, dropped afterwards).
Reports, per round, this process's CPU per ``publish_batch`` and its wall time, and
the stack's CPU per event (enqueue and publish; PostgreSQL's share is what the relay's
statements cost the server) with PostgreSQL's busiest statements (``RunCosts``).
docs/benchmarks.md, "Eleventh session" under the transfers benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData
from sqlalchemy.schema import CreateSchema, DropSchema

from lastro.core.config import load_settings
from lastro.core.db import create_engine
from lastro.core.events import EventSigner, OutboxRelay, enqueue, new_event, outbox_table
from lastro.core.security.transit import TransitClient
from lastro.devstack.costs import RunCosts, cost_lines

SCHEMA = f"bench_relay_{secrets.token_hex(3)}"
TOPIC = "lastro.platform.test"
WARM_UP = 50


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings()
    engine = create_engine(settings, pool_size=2, name="lastro-bench-relay", pre_ping=False)
    metadata = MetaData(schema=SCHEMA)
    outbox = outbox_table(metadata)
    async with engine.begin() as conn:
        await conn.execute(CreateSchema(SCHEMA))
        await conn.run_sync(metadata.create_all)
    transit = TransitClient.from_settings(settings)
    signer = await EventSigner.from_transit(transit, "lastro-events")
    relay = OutboxRelay(engine, outbox, settings.kafka_bootstrap)
    await relay.start()

    async def one_cycle(n: int) -> tuple[float, float]:
        """Enqueue one event, then publish it: (CPU, wall) seconds of the publish."""
        event = new_event("lastro.platform.test_happened", "/bench", {"n": n})
        async with engine.begin() as conn:
            await enqueue(conn, outbox, signer, event, topic=TOPIC, key="bench")
        cpu, wall = time.process_time(), time.perf_counter()
        published = await relay.publish_batch()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        if published != 1:
            raise RuntimeError(f"expected one event published, got {published}")
        return cpu, wall

    rounds: list[dict[str, Any]] = []
    try:
        for n in range(WARM_UP):
            await one_cycle(n)
        for _ in range(args.rounds):
            costs = RunCosts(settings, engine)
            await costs.start()
            cpu = wall = 0.0
            for n in range(args.events):
                used, took = await one_cycle(n)
                cpu, wall = cpu + used, wall + took
            costs.mark()
            rounds.append(
                {
                    "publish_cpu_us": round(cpu / args.events * 1e6, 1),
                    "publish_wall_us": round(wall / args.events * 1e6, 1),
                    **await costs.finish(args.events),
                }
            )
    finally:
        await relay.stop()
        await transit.close()
        async with engine.begin() as conn:
            await conn.execute(DropSchema(SCHEMA, cascade=True))
        await engine.dispose()
    return {"events": args.events, "rounds": rounds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1500, help="relay cycles per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    for n, result in enumerate(report["rounds"], start=1):
        print(
            f"round {n}: publish_batch {result['publish_cpu_us']} µs of this process's CPU,"
            f" {result['publish_wall_us']} µs wall, per event"
        )
        print("\n".join(cost_lines(result, "event")))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
