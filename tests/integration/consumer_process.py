"""A consumer process for the crash test: applies events of one run and, with
--crash-after N, SIGKILLs itself right after the N-th event's transaction
committed and before Kafka's offset commit, as a real crash would."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from eventkit import TOPIC, apply_into, event_tables

from lastro.core.config import load_settings
from lastro.core.db import create_engine
from lastro.core.events import EventConsumer, EventSigner
from lastro.core.security.transit import TransitClient


class CrashingConsumer(EventConsumer):
    """Dies once `crash_after` events of this run were applied and committed (right
    after the batch that holds the crash_after-th), before the offsets are committed."""

    def __init__(self, crash_after: int, run: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.crash_after = crash_after
        self.run_id = run
        self.applied_of_run = 0

    async def handle_many(self, records):  # type: ignore[no-untyped-def]
        applied = await super().handle_many(records)
        for record in applied:
            if json.loads(record.value)["data"].get("run") == self.run_id:
                self.applied_of_run += 1
        if self.crash_after and self.applied_of_run >= self.crash_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return applied


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--schema", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--crash-after", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    settings = load_settings()
    engine = create_engine(settings, name="consumer-process")
    tables = event_tables(args.schema)
    signer = await EventSigner.from_transit(TransitClient.from_settings(settings), "lastro-events")
    consumer = CrashingConsumer(
        args.crash_after,
        args.run,
        name=args.group,
        topics=[TOPIC],
        bootstrap_servers=settings.kafka_bootstrap,
        engine=engine,
        inbox=tables.inbox,
        signer=signer,
        apply=apply_into(tables, args.run),
    )
    await consumer.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(args.seconds, stop.set)
    try:
        await consumer.run(stop)
    finally:
        await consumer.stop()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
