"""Telling the API that a transaction changed, so ``Prefer: wait=N`` answers as
soon as the worker is done rather than at the next poll.

Workers publish the ids of the transactions they changed on one Redis channel per
instance (batched: one message per few milliseconds); each API process keeps one
subscription and wakes the requests waiting on those ids. A notice is a hint, not
the truth: the waiting request re-reads the row from PostgreSQL, and also looks
again every second, so a lost notice (Redis restarting, a worker dying between
its commit and its publish) only delays the answer, never changes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

from lastro.core.background import wait_for_stop

log = logging.getLogger(__name__)

FLUSH_SECONDS: Final = 0.005
POLL_SECONDS: Final = 1.0


def channel(instance: str) -> str:
    return f"lastro:transactions:{instance}:changed"


class Notifier:
    """Worker side: collects changed ids and publishes them in small batches."""

    def __init__(self, redis: Redis, instance: str) -> None:
        self._redis = redis
        self._channel = channel(instance)
        self._pending: set[str] = set()
        self._wake = asyncio.Event()

    def notify(self, ids: Sequence[str]) -> None:
        self._pending.update(ids)
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
            self._wake.clear()
            await asyncio.sleep(FLUSH_SECONDS)  # let the ids of one burst gather
            await self._flush()
        await self._flush()

    async def _flush(self) -> None:
        ids, self._pending = self._pending, set()
        if ids:
            try:
                await self._redis.publish(self._channel, " ".join(sorted(ids)))
            except (RedisError, OSError) as error:
                log.warning("change notices not published: %s", error)


class Waiter:
    """API side: one subscription, many waiting requests."""

    def __init__(self, redis: Redis, instance: str) -> None:
        self._redis = redis
        self._channel = channel(instance)
        self._waiting: dict[str, set[asyncio.Event]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    while not stop.is_set():
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=0.5
                        )
                        if message is not None:
                            self._wake(message["data"])
            except (RedisError, OSError) as error:
                log.warning("change notices unavailable (%s); waiting requests poll", error)
                await wait_for_stop(stop, POLL_SECONDS)

    def _wake(self, data: bytes | str) -> None:
        text = data.decode() if isinstance(data, bytes) else data
        for txn_id in text.split():
            for event in self._waiting.get(txn_id, ()):
                event.set()

    async def until(self, txn_id: str, seconds: float, done: Callable[[], Awaitable[bool]]) -> bool:
        """Wait up to ``seconds`` until ``done()`` (checked now, on every notice about
        ``txn_id`` and every second); returns its last answer."""
        event = asyncio.Event()
        self._waiting.setdefault(txn_id, set()).add(event)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        try:
            while True:
                event.clear()
                if await done():
                    return True
                left = deadline - loop.time()
                if left <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(left, POLL_SECONDS))
        finally:
            events = self._waiting.get(txn_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiting[txn_id]
