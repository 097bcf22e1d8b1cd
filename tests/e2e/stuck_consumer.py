"""A consumer process for the alerting test: an ``EventConsumer`` on the test topic
serving ``/metrics`` over HTTPS (a dev-CA certificate) like any Lastro worker. After
SIGUSR1 (until SIGUSR2), applying an event waits, as a consumer hung on a record
does; the process stays up and keeps serving its metrics."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator

from aiohttp import web
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncConnection

from lastro.core.config import load_settings
from lastro.core.db import create_engine
from lastro.core.events import CloudEvent, EventConsumer, EventSigner, inbox_table
from lastro.core.http import create_app, serve
from lastro.core.security.transit import TransitClient
from lastro.devstack.ca import DevCA

TOPIC = "lastro.platform.test"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--group", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    settings = load_settings()
    engine = create_engine(settings, name="stuck-consumer")
    metadata = MetaData(schema=args.schema)
    inbox = inbox_table(metadata)
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{args.schema}"')
        await conn.run_sync(metadata.create_all)
    transit = TransitClient.from_settings(settings)
    signer = await EventSigner.from_transit(transit, settings.events_key_name)
    await transit.close()

    released = asyncio.Event()
    released.set()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, released.clear)
    loop.add_signal_handler(signal.SIGUSR2, released.set)

    async def apply(conn: AsyncConnection, event: CloudEvent) -> None:
        await released.wait()

    consumer = EventConsumer(
        name=args.group,
        topics=[TOPIC],
        bootstrap_servers=settings.kafka_bootstrap,
        engine=engine,
        inbox=inbox,
        signer=signer,
        apply=apply,
    )

    async def consuming(app: web.Application) -> AsyncIterator[None]:
        await consumer.start()
        stop = asyncio.Event()
        task = asyncio.create_task(consumer.run(stop))
        yield
        stop.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await consumer.stop()
        await engine.dispose()

    app = create_app(
        name="e2e-stuck-consumer", settings=settings, openapi_path=None, cleanup_ctx=[consuming]
    )
    issued = DevCA(settings.dev_dir / "ca").issue("e2e-stuck-consumer")
    await serve(app, settings, issued.cert, issued.key, args.port)


if __name__ == "__main__":
    asyncio.run(main())
