"""A consumer that fails is started again, not left dead while its service runs."""

from __future__ import annotations

import asyncio

from lastro.core.events.consumer import serve_restarting


class Flaky:
    """Fails its first ``failures`` runs (and its stops meanwhile), then runs until
    stopped; records what was called."""

    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[str] = []
        self.running = asyncio.Event()
        self.stopped = asyncio.Event()

    async def start(self) -> None:
        self.calls.append("start")

    async def run(self, stop: asyncio.Event) -> None:
        self.calls.append("run")
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the broker went away")
        self.running.set()
        await stop.wait()

    async def stop(self) -> None:
        self.calls.append("stop")
        self.stopped.set()
        if self.failures:
            raise RuntimeError("the broken client cannot leave its group cleanly")


async def test_a_failed_run_is_stopped_and_started_again_until_stop() -> None:
    consumer = Flaky(failures=2)
    stop = asyncio.Event()
    serving = asyncio.create_task(serve_restarting(consumer, stop))
    await asyncio.wait_for(consumer.running.wait(), timeout=10)
    stop.set()
    await asyncio.wait_for(serving, timeout=5)
    assert consumer.calls == ["start", "run", "stop"] * 3


async def test_stop_during_the_backoff_ends_it_at_once() -> None:
    consumer = Flaky(failures=100)
    stop = asyncio.Event()
    serving = asyncio.create_task(serve_restarting(consumer, stop))
    await asyncio.wait_for(consumer.stopped.wait(), timeout=5)
    stop.set()
    await asyncio.wait_for(serving, timeout=1)
    assert consumer.calls.count("start") <= 2
