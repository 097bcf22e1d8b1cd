"""The inbox consumer: each event applied at most once, offsets committed after.

:class:`EventConsumer` verifies each event's signature, then applies it and
records its id in the inbox in one transaction, and only then commits the Kafka
offset. A redelivered event finds its id in the inbox and has no second effect.
Unsigned or tampered events are counted, logged and skipped. A consumer that handles
only some types of a topic says which (``wants``): the others are counted and
skipped before the signature check and the inbox, as they would change nothing.

The records of one partition fetched together are applied in one transaction
(:meth:`EventConsumer.handle_many`): one inbox statement and one commit for the
lot instead of a transaction per event, which was most of a consumer's CPU under
load. Each event is still applied in order, in its own span; if the batch fails
for a reason other than an outage, its records are applied one by one, so one
bad event fails alone, exactly as before.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from typing import Final, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from opentelemetry import trace
from prometheus_client import Counter
from sqlalchemy import Column, DateTime, MetaData, String, Table, func
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lastro.core.background import report_failure, wait_for_stop
from lastro.core.backoff import full_jitter
from lastro.core.db import in_transaction
from lastro.core.events.envelope import CloudEvent, EventRejected, EventSigner
from lastro.core.lag import ConsumerLagMonitor
from lastro.core.observability import context_from_kafka, metrics_registry
from lastro.core.outages import dependency_outage

log = logging.getLogger(__name__)
_TRACER = trace.get_tracer("lastro.events")

Apply = Callable[[AsyncConnection, CloudEvent], Awaitable[None]]
"""What a consumer does with one verified event, inside the inbox transaction."""
GATHER_BYTES: Final = 1024 * 1024
"""With ``gather_seconds``: a fetch returns early once this much is waiting."""
BACKGROUND_GATHER_SECONDS: Final = 0.2
"""``gather_seconds`` of the consumers no request waits on (notifications, the fraud
analyser): at most five fetches a second each, events up to 0.2 s later."""

EVENTS_APPLIED = Counter(
    "lastro_events_applied_total", "Events applied", ["consumer"], registry=metrics_registry()
)
EVENTS_DUPLICATE = Counter(
    "lastro_events_duplicate_total",
    "Redelivered events skipped by the inbox",
    ["consumer"],
    registry=metrics_registry(),
)
EVENTS_IGNORED = Counter(
    "lastro_events_ignored_total",
    "Events of a type the consumer does not handle, skipped before the inbox",
    ["consumer"],
    registry=metrics_registry(),
)
EVENTS_REJECTED = Counter(
    "lastro_events_rejected_total",
    "Events rejected before applying",
    ["consumer", "reason"],
    registry=metrics_registry(),
)


def inbox_table(metadata: MetaData) -> Table:
    """Ids of events a consumer has applied (primary key: consumer + event id)."""
    return Table(
        "inbox",
        metadata,
        Column("consumer", String(100), primary_key=True),
        Column("event_id", String(40), primary_key=True),
        Column("event_type", String(200), nullable=False),
        Column("applied_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )


class Restartable(Protocol):
    """A consumer :func:`serve_restarting` can run: start, run until stopped, stop."""

    name: str

    async def start(self) -> None: ...
    async def run(self, stop: asyncio.Event) -> None: ...
    async def stop(self) -> None: ...


async def serve_restarting(consumer: Restartable, stop: asyncio.Event) -> None:
    """Start ``consumer``, run it until ``stop`` is set, stop it. After a failure its
    run does not ride out (the broker gone, say) it is stopped and started again after
    a full-jitter backoff (0.5 s doubling up to 10 s) and resumes from its group's
    last committed offsets, so a consumer never silently ends while its service runs."""
    failures = 0
    while not stop.is_set():
        try:
            await consumer.start()
            await consumer.run(stop)
        except Exception as error:
            failures += 1
            report_failure(f"consumer {consumer.name}", error, "restarting it")
        finally:
            try:
                await consumer.stop()
            except Exception:
                log.exception("consumer %s did not stop cleanly", consumer.name)
        if failures and not stop.is_set():
            await wait_for_stop(stop, full_jitter(failures, base=0.5, cap=10.0))


class EventConsumer:
    """Consumes topics in a consumer group and applies each event at most once.

    Offsets are committed only after the event's transaction committed, so a
    crash between the two redelivers the event, and the inbox turns the
    redelivery into a no-op. ``wants(type)``, if given, picks the event types to
    apply; the rest are skipped without an inbox row. ``gather_seconds`` lets the
    broker hold each fetch that long (or until a megabyte is waiting) so that events
    arrive in batches: fewer fetches for the broker and for this process, each event
    up to that much later (for consumers no request waits on). At 0 every event is
    fetched as it arrives.
    """

    def __init__(
        self,
        *,
        name: str,
        topics: Sequence[str],
        bootstrap_servers: str,
        engine: AsyncEngine,
        inbox: Table,
        signer: EventSigner,
        apply: Apply,
        wants: Callable[[str], bool] | None = None,
        auto_offset_reset: str = "earliest",
        gather_seconds: float = 0.0,
    ) -> None:
        self.name = name
        self._topics = list(topics)
        self._bootstrap = bootstrap_servers
        self._engine = engine
        self._inbox = inbox
        self._signer = signer
        self._apply = apply
        self._wants = wants
        self._offset_reset = auto_offset_reset
        self._gather_ms = round(gather_seconds * 1000)
        self._consumer: AIOKafkaConsumer | None = None
        # Present from the start (at 0), so "nothing applied lately" is a query, not a gap.
        EVENTS_APPLIED.labels(name)
        EVENTS_DUPLICATE.labels(name)
        EVENTS_IGNORED.labels(name)

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            *self._topics,
            bootstrap_servers=self._bootstrap,
            group_id=self.name,
            enable_auto_commit=False,
            auto_offset_reset=self._offset_reset,
            isolation_level="read_committed",
            # aiokafka's defaults (answer as soon as one byte waits, hold 0.5 s when idle)
            fetch_max_wait_ms=self._gather_ms or 500,
            fetch_min_bytes=GATHER_BYTES if self._gather_ms else 1,
        )
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> bool:
        """Verify and apply one record; True if applied now, False if rejected or a duplicate."""
        return bool(await self.handle_many([record]))

    async def handle_many(
        self, records: Sequence[ConsumerRecord[bytes, bytes]]
    ) -> list[ConsumerRecord[bytes, bytes]]:
        """Verify and apply ``records`` (in order) in one transaction; the records
        applied now (not rejected, not duplicates). A failure that is not an outage
        falls back to :meth:`handle` record by record, so it fails on its own record."""
        verified = []
        for record in records:
            event = self._verify(record)
            if event is not None:
                verified.append((record, event))
        if not verified:
            return []
        try:
            applied = await in_transaction(
                self._engine, lambda conn: self._apply_all(conn, verified)
            )
        except Exception as error:
            if dependency_outage(error) is not None or len(verified) == 1:
                raise
            return [record for record, _ in verified if await self.handle(record)]
        EVENTS_APPLIED.labels(self.name).inc(len(applied))
        EVENTS_DUPLICATE.labels(self.name).inc(len(verified) - len(applied))
        return applied

    async def _apply_all(
        self, conn: AsyncConnection, verified: list[tuple[ConsumerRecord[bytes, bytes], CloudEvent]]
    ) -> list[ConsumerRecord[bytes, bytes]]:
        claimed = await conn.execute(
            insert(self._inbox)
            .values(
                [
                    {"consumer": self.name, "event_id": event.id, "event_type": event.type}
                    for _, event in verified
                ]
            )
            .on_conflict_do_nothing()
            .returning(self._inbox.c.event_id)
        )
        new = {row.event_id for row in claimed}
        applied = []
        for record, event in verified:
            if event.id not in new:
                continue
            new.discard(event.id)  # a second copy in the same batch is a duplicate
            with self._span(record):
                await self._apply(conn, event)
            applied.append(record)
        return applied

    def _span(self, record: ConsumerRecord[bytes, bytes]) -> AbstractContextManager[trace.Span]:
        return _TRACER.start_as_current_span(
            f"consume {record.topic}",
            context=context_from_kafka(record.headers),
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": record.topic,
                "messaging.consumer.group.name": self.name,
            },
        )

    def _verify(self, record: ConsumerRecord[bytes, bytes]) -> CloudEvent | None:
        """The record's verified event; None (counted) if it is of a type this consumer
        does not want, or rejected (also logged)."""
        try:
            envelope = json.loads(record.value or b"")
            if not isinstance(envelope, dict):
                raise EventRejected("malformed", "envelope is not a JSON object")
            if self._wants is not None and not self._wants(str(envelope.get("type", ""))):
                EVENTS_IGNORED.labels(self.name).inc()
                return None
            return self._signer.verify(envelope)
        except (ValueError, EventRejected) as error:
            reason = error.reason if isinstance(error, EventRejected) else "malformed"
            EVENTS_REJECTED.labels(self.name, reason).inc()
            log.warning(
                "event rejected",
                extra={
                    "consumer": self.name,
                    "reason": reason,
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                },
            )
            return None

    async def serve(self, stop: asyncio.Event) -> None:
        """Start, :meth:`run` until ``stop`` is set, stop; restarted after a failure
        :meth:`run` does not ride out (:func:`serve_restarting`): nothing fetched but not
        applied is skipped, and the inbox makes events applied again harmless."""
        await serve_restarting(self, stop)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; commits offsets after each handled batch.

        While a dependency is down (the database restarting, say) the record at hand is
        retried with backoff, in order, instead of ending the consumer; stopping
        meanwhile commits nothing more, so the record is delivered again later. The
        group's lag is measured meanwhile (``core/lag.py``)."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("EventConsumer.start() was not called")
        monitor = ConsumerLagMonitor(consumer, self.name, self._topics)
        measuring = asyncio.create_task(monitor.run(stop), name=f"consumer-lag-{self.name}")
        try:
            await self._consume_until(consumer, stop)
        finally:
            measuring.cancel()
            await asyncio.gather(measuring, return_exceptions=True)

    async def _consume_until(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=200)
            for records in batches.values():
                if not await self._handle_through_outages(records, stop):
                    return
            if batches:
                await consumer.commit()

    async def _handle_through_outages(
        self, records: Sequence[ConsumerRecord[bytes, bytes]], stop: asyncio.Event
    ) -> bool:
        """Handle ``records``, retrying while a dependency is down; False if stopped first."""
        failures = 0
        while True:
            try:
                await self.handle_many(records)
                return True
            except Exception as error:
                outage = dependency_outage(error)
                if outage is None:
                    raise
                failures += 1
                delay = full_jitter(failures, base=0.1, cap=5.0)
                log.warning(
                    "consumer %s: %s unavailable (%s); retrying offset %d in %.2fs",
                    self.name,
                    outage.extra["dependency"],
                    error,
                    records[0].offset,
                    delay,
                )
                await wait_for_stop(stop, delay)
                if stop.is_set():
                    return False
