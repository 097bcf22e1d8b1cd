"""The rules log reader: ``lastro.fraud.rules`` from the beginning, into a RuleBook.

Every API replica runs one. It joins no consumer group (each replica needs every
record) and commits no offsets: on start it reads the whole compacted log, which
holds the latest record of every rule ever published, and marks itself caught up
when it has read up to the end offsets it saw at start. After a broker outage it
resumes from the next record it has not applied, so the set never moves back.

Each record must be a signed CloudEvent (``core/events.py``) of type
``rule_upserted`` or ``rule_deleted`` whose rule compiles; anything else is logged,
counted (``lastro_fraud_rule_records_total{outcome="rejected"}``) and skipped.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Final

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from lastro.core.background import report_failure, wait_for_stop
from lastro.core.backoff import full_jitter
from lastro.core.events import TOPICS, EventRejected, EventSigner
from lastro.fraud.domain.rules import InvalidRule
from lastro.fraud.events import RULES_TOPIC, UnknownRuleEvent, rule_change
from lastro.fraud.rulebook import RULE_RECORDS, RuleBook

log = logging.getLogger(__name__)

POLL_MS: Final = 200


class RuleLog:
    """Feeds one RuleBook from the rules topic (see the module docstring)."""

    def __init__(
        self, bootstrap_servers: str, signer: EventSigner, book: RuleBook, topic: str = RULES_TOPIC
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._signer = signer
        self._book = book
        self._topic = topic
        self._next: dict[TopicPartition, int] = {}
        self.caught_up = asyncio.Event()
        self.was_empty: bool | None = None
        """Whether the log held no record when this replica started (None until known)."""
        self.started = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Read until ``stop``; a failure (broker outage) restarts the reader after a
        backoff, from the next unread record."""
        failures = 0
        while not stop.is_set():
            try:
                await self._read(stop)
                failures = 0
            except Exception as error:
                failures += 1
                report_failure("rules log reader", error, "restarting it")
                await wait_for_stop(stop, full_jitter(failures, base=0.5, cap=10.0))

    async def _read(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        await consumer.start()
        try:
            if self._topic not in await consumer.topics():
                raise RuntimeError(f"topic {self._topic} does not exist")
            assigned = [TopicPartition(self._topic, p) for p in range(TOPICS[self._topic])]
            consumer.assign(assigned)
            for tp in assigned:
                if tp in self._next:
                    consumer.seek(tp, self._next[tp])
                else:
                    await consumer.seek_to_beginning(tp)
            ends = await consumer.end_offsets(assigned)
            if self.was_empty is None:
                self.was_empty = all(offset == 0 for offset in ends.values())
                self.started.set()
            self._check_caught_up(ends)
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=POLL_MS)
                for records in batches.values():
                    for record in records:
                        await self._apply(record)
                self._check_caught_up(ends)
        finally:
            await consumer.stop()

    def _check_caught_up(self, ends: dict[TopicPartition, int]) -> None:
        if not self.caught_up.is_set() and all(
            self._next.get(tp, 0) >= end for tp, end in ends.items()
        ):
            self.caught_up.set()

    async def _apply(self, record: ConsumerRecord[bytes, bytes]) -> None:
        tp = TopicPartition(record.topic, record.partition)
        self._next[tp] = record.offset + 1
        try:
            envelope = json.loads(record.value or b"")
            if not isinstance(envelope, dict):
                raise EventRejected("malformed", "envelope is not a JSON object")
            event = self._signer.verify(envelope)
            change = rule_change(event.type, event.data)
            current = await self._book.apply(change, record.offset)
        except (ValueError, EventRejected, InvalidRule, UnknownRuleEvent) as exc:
            RULE_RECORDS.labels("rejected").inc()
            log.warning(
                "rule record skipped: %s",
                exc,
                extra={"topic": record.topic, "offset": record.offset, "key": record.key},
            )
            return
        RULE_RECORDS.labels("applied").inc()
        log.info(
            "rule set %d: %s",
            current.version,
            event.type.rsplit(".", 1)[-1],
            extra={"rule": (record.key or b"").decode(errors="replace")},
        )
