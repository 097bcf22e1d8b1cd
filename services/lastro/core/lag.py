"""How far behind the event pipeline runs, as metrics: outbox age and consumer lag.

Both are measured by a task of their own beside the loop they watch, so a relay or a
consumer that is stuck (a hung call, a broker that refuses it, a record it cannot get
past) is seen falling behind instead of going silent:

* :class:`OutboxMonitor` (run by every ``OutboxRelay``): how many outbox rows wait to
  be published and how old the oldest is, ``lastro_outbox_pending_events{outbox}`` and
  ``lastro_outbox_oldest_pending_age_seconds{outbox}``. The age is computed when
  Prometheus scrapes, from the oldest row's creation time last seen, so it keeps
  growing while the row waits even if a measurement is late.
* :class:`ConsumerLagMonitor` (run by every ``EventConsumer``):
  ``lastro_consumer_lag_records{consumer,topic}``, the records of the topic after the
  group's committed offsets (end offset minus committed offset, summed over the
  topic's partitions). It asks the group coordinator for the committed offsets of
  every partition, not only those assigned to this replica, so every replica reports
  the group's whole lag (aggregate with ``max``, never ``sum``) and a consumer whose
  loop stopped, or that the group dropped for not polling, keeps reporting it. Beside
  it, ``lastro_consumer_committed_offsets{consumer,topic}`` (the committed offsets
  summed over the partitions): when it stops changing while the lag is above zero, the
  group is stuck, whatever kind of consumer it is.

Each measurement that fails (database or broker away) is logged at debug level and
retried at the next interval; the last values stay exported meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import Gauge
from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.background import wait_for_stop
from lastro.core.db import table_schema
from lastro.core.observability import metrics_registry

log = logging.getLogger(__name__)

OUTBOX_PENDING: Final = Gauge(
    "lastro_outbox_pending_events",
    "Outbox rows not yet published to Kafka, by outbox (the service's schema).",
    ["outbox"],
    registry=metrics_registry(),
)
OUTBOX_AGE: Final = Gauge(
    "lastro_outbox_oldest_pending_age_seconds",
    "Age of the oldest outbox row not yet published (0 when none waits), by outbox.",
    ["outbox"],
    registry=metrics_registry(),
)
CONSUMER_LAG: Final = Gauge(
    "lastro_consumer_lag_records",
    "Records of a topic after the consumer group's committed offsets (end offset minus "
    "committed offset, summed over the topic's partitions), by consumer group and topic.",
    ["consumer", "topic"],
    registry=metrics_registry(),
)

OUTBOX_INTERVAL_SECONDS: Final = 5.0
COMMITTED_OFFSETS: Final = Gauge(
    "lastro_consumer_committed_offsets",
    "The consumer group's committed offsets summed over a topic's partitions (the "
    "partition's beginning where it never committed): it changes while the group makes "
    "progress.",
    ["consumer", "topic"],
    registry=metrics_registry(),
)

LAG_INTERVAL_SECONDS: Final = 10.0


def outbox_name(engine: AsyncEngine, outbox: Table) -> str:
    """The schema an outbox lives in: the table's own, else the one the engine maps
    schema-less tables to (``schema_translate_map``), else ``public``."""
    return table_schema(engine, outbox)


class OutboxMonitor:
    """Exports the backlog of one outbox every ``interval`` seconds (module docstring)."""

    def __init__(
        self,
        engine: AsyncEngine,
        outbox: Table,
        *,
        interval: float = OUTBOX_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = outbox_name(engine, outbox)
        self._engine = engine
        self._outbox = outbox
        self._interval = interval
        self._clock = clock
        self._oldest: float | None = None
        OUTBOX_AGE.labels(self.name).set_function(self.age)

    def age(self) -> float:
        """Seconds the oldest pending row has waited, as of now (0 when none waits)."""
        if self._oldest is None:
            return 0.0
        return max(0.0, self._clock() - self._oldest)

    async def measure(self) -> tuple[int, datetime | None]:
        """Count the pending rows and find the oldest (the lowest id, through the
        pending-rows index); returns both and updates the metrics."""
        o = self._outbox
        pending = o.c.published_at.is_(None)
        async with self._engine.connect() as conn:
            count = await conn.scalar(select(func.count()).select_from(o).where(pending)) or 0
            oldest: datetime | None = await conn.scalar(
                select(o.c.created_at).where(pending).order_by(o.c.id).limit(1)
            )
        OUTBOX_PENDING.labels(self.name).set(count)
        self._oldest = None if oldest is None else oldest.timestamp()
        return count, oldest

    async def run(self, stop: asyncio.Event) -> None:
        """Measure until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.measure()
            except Exception as error:
                log.debug("outbox %s: measurement failed (%s)", self.name, error)
            await wait_for_stop(stop, self._interval)


class ConsumerLagMonitor:
    """Exports the lag of one consumer group on its topics every ``interval`` seconds."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        group: str,
        topics: Sequence[str],
        *,
        interval: float = LAG_INTERVAL_SECONDS,
    ) -> None:
        self._consumer = consumer
        self.group = group
        self._topics = list(topics)
        self._interval = interval

    async def measure(self) -> dict[str, int]:
        """The group's lag per topic (topics whose partitions the client does not
        know yet are left out); updates the metric."""
        partitions = [
            TopicPartition(topic, partition)
            for topic in self._topics
            for partition in sorted(self._consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return {}
        ends = await self._consumer.end_offsets(partitions)
        committed = await asyncio.gather(*(self._consumer.committed(tp) for tp in partitions))
        never = [tp for tp, offset in zip(partitions, committed, strict=True) if offset is None]
        starts = await self._consumer.beginning_offsets(never) if never else {}
        lag: dict[str, int] = {}
        positions: dict[str, int] = {}
        for tp, offset in zip(partitions, committed, strict=True):
            position = starts[tp] if offset is None else offset
            lag[tp.topic] = lag.get(tp.topic, 0) + max(0, ends[tp] - position)
            positions[tp.topic] = positions.get(tp.topic, 0) + position
        for topic, records in lag.items():
            CONSUMER_LAG.labels(self.group, topic).set(records)
            COMMITTED_OFFSETS.labels(self.group, topic).set(positions[topic])
        return lag

    async def run(self, stop: asyncio.Event) -> None:
        """Measure until ``stop`` is set; then the group's series are removed, so a
        consumer that stopped on purpose leaves no stale lag behind."""
        try:
            while not stop.is_set():
                try:
                    await self.measure()
                except Exception as error:
                    log.debug("consumer %s: lag measurement failed (%s)", self.group, error)
                await wait_for_stop(stop, self._interval)
        finally:
            for topic in self._topics:
                for gauge in (CONSUMER_LAG, COMMITTED_OFFSETS):
                    with contextlib.suppress(KeyError):
                        gauge.remove(self.group, topic)
