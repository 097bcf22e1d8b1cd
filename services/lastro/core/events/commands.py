"""The command consumer: resumable handlers, in order per key, at least once.

:class:`CommandConsumer` is the work-queue shape beside the inbox consumer, for
handlers that are resumable rather than applied once (a worker moving a payment on
through several external calls): no inbox; commands with the same key are handled
in order, different keys concurrently, and offsets are committed once every command
of a fetched batch was handled, so a crash redelivers them and the handler resumes.
The group's lag is measured beside the loop (``core/lag.py``), like every consumer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from opentelemetry import trace
from prometheus_client import Counter

from lastro.core.events.consumer import EVENTS_APPLIED, EVENTS_REJECTED, serve_restarting
from lastro.core.events.envelope import CloudEvent, EventRejected, EventSigner
from lastro.core.lag import ConsumerLagMonitor
from lastro.core.observability import context_from_kafka, metrics_registry

log = logging.getLogger(__name__)
_TRACER = trace.get_tracer("lastro.events")

Handle = Callable[[CloudEvent], Awaitable[None]]
"""What a command consumer does with one verified command (resumable, no inbox)."""

COMMANDS_FAILED = Counter(
    "lastro_commands_failed_total",
    "Commands whose handler raised (left to the service's own retry)",
    ["consumer"],
    registry=metrics_registry(),
)


class CommandConsumer:
    """Hands each verified command to ``handle``: in order per key, concurrently
    across keys (at most ``concurrency`` at once), at least once.

    Offsets are committed after every command of a fetched batch was handled;
    before partitions move to another group member (a rebalance, a graceful stop)
    the commands in flight finish and their offsets are committed, so nothing is
    lost or handed over half done. A crash redelivers what was not committed:
    ``handle`` must be safe to run again (resume from stored state). A handler that
    raises is logged and counted (``lastro_commands_failed_total``) and its offset
    is committed anyway: retrying is the handler's own job (a sweeper), so one bad
    command never blocks its partition. Unsigned or tampered commands are
    rejected like events.
    """

    def __init__(
        self,
        *,
        name: str,
        topics: Sequence[str],
        bootstrap_servers: str,
        signer: EventSigner,
        handle: Handle,
        concurrency: int = 256,
        max_records: int = 500,
    ) -> None:
        self.name = name
        self._topics = list(topics)
        self._bootstrap = bootstrap_servers
        self._signer = signer
        self._handle = handle
        self._limit = asyncio.Semaphore(concurrency)
        self._max_records = max_records
        self._consumer: AIOKafkaConsumer | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._uncommitted: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=self.name,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        self._consumer.subscribe(self._topics, listener=_FinishBeforeHandover(self))
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._finish()
            await self._consumer.stop()
            self._consumer = None

    async def serve(self, stop: asyncio.Event) -> None:
        """Start, :meth:`run` until ``stop`` is set, stop; restarted after a failure
        (:func:`~lastro.core.events.consumer.serve_restarting`): the commands not
        committed are redelivered and ``handle`` resumes them."""
        await serve_restarting(self, stop)

    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; the group's lag is measured meanwhile."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("CommandConsumer.start() was not called")
        monitor = ConsumerLagMonitor(consumer, self.name, self._topics)
        measuring = asyncio.create_task(monitor.run(stop), name=f"consumer-lag-{self.name}")
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=100, max_records=self._max_records)
                if not batches:
                    continue
                for tp, records in batches.items():
                    self._uncommitted[tp] = records[-1].offset + 1
                self._inflight = asyncio.create_task(self._process(batches))
                await asyncio.shield(self._inflight)
                await self._commit()
        finally:
            measuring.cancel()
            await asyncio.gather(measuring, return_exceptions=True)

    async def _finish(self) -> None:
        """Let the commands in flight finish, then commit their offsets."""
        if self._inflight is not None and not self._inflight.done():
            await asyncio.shield(self._inflight)
        await self._commit()

    async def _commit(self) -> None:
        offsets, self._uncommitted = self._uncommitted, {}
        if not offsets or self._consumer is None:
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as error:
            # The partitions moved on; their next owner redelivers, the handler resumes.
            log.warning("%s: offsets not committed (%s)", self.name, error)

    async def _process(self, batches: Mapping[TopicPartition, Sequence[Any]]) -> None:
        chains: dict[tuple[str, bytes | None], list[Any]] = {}
        for tp, records in batches.items():
            for record in records:
                chains.setdefault((tp.topic, record.key), []).append(record)

        async def in_order(records: list[Any]) -> None:
            for record in records:
                async with self._limit:
                    await self._one(record)

        await asyncio.gather(*(in_order(records) for records in chains.values()))

    async def _one(self, record: ConsumerRecord[bytes, bytes]) -> None:
        with _TRACER.start_as_current_span(
            f"consume {record.topic}",
            context=context_from_kafka(record.headers),
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": record.topic,
                "messaging.consumer.group.name": self.name,
            },
        ):
            try:
                envelope = json.loads(record.value or b"")
                if not isinstance(envelope, dict):
                    raise EventRejected("malformed", "envelope is not a JSON object")
                command = self._signer.verify(envelope)
            except (ValueError, EventRejected) as error:
                reason = error.reason if isinstance(error, EventRejected) else "malformed"
                EVENTS_REJECTED.labels(self.name, reason).inc()
                log.warning("command rejected", extra={"consumer": self.name, "reason": reason})
                return
            try:
                await self._handle(command)
            except Exception:
                COMMANDS_FAILED.labels(self.name).inc()
                log.exception("%s: handling %s failed", self.name, command.id)
                return
            EVENTS_APPLIED.labels(self.name).inc()


class _FinishBeforeHandover(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: CommandConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._consumer._finish()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("%s: assigned %s", self._consumer.name, sorted(str(tp) for tp in assigned))
