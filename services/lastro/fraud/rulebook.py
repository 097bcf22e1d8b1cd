"""The live rule set of one replica, and the rules admin use cases that change it.

Every replica rebuilds the same rule set from the compacted topic
``lastro.fraud.rules`` (:mod:`lastro.fraud.rulelog`), read from the beginning. The
rule-set version is the position in that log: the offset of the last rule change
applied, plus one. Compaction keeps offsets, so a replica started today and one
running for a month report the same version for the same set, and a decision
names exactly the rules that made it.

Changes go through the log, never straight into a replica: the admin API
validates a rule (the CEL compiler, :func:`lastro.fraud.domain.rules.compile_rule`),
writes ``rule_upserted`` (or ``rule_deleted``) to the outbox with its audit record
in one transaction, and waits until this replica has applied it, so its answer
carries the version the change is live in. An invalid rule never reaches the log
from here; one arriving from another publisher is logged, counted and skipped,
and the working set stays.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from prometheus_client import Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.changes import Caller, ChangeRecorder
from lastro.core.db import Tx, in_transaction
from lastro.core.observability import metrics_registry
from lastro.fraud.domain.alerts import precision
from lastro.fraud.domain.errors import RuleRejected, UnknownRule
from lastro.fraud.domain.rules import EMPTY, InvalidRule, Rule, RuleSet, compile_rule
from lastro.fraud.events import (
    RULE_DELETED,
    RULE_UPSERTED,
    RULES_TOPIC,
    RuleChange,
    RuleUpserted,
)
from lastro.fraud.store import queries

log = logging.getLogger(__name__)

SEED_LOCK: Final = "lastro.fraud.rules.seed"
DEFAULT_STATS_PERIOD: Final = timedelta(days=30)

RULESET_VERSION = Gauge(
    "lastro_fraud_ruleset_version",
    "Version (rules log position) of the rule set this replica screens with",
    registry=metrics_registry(),
)
RULE_RECORDS = Counter(
    "lastro_fraud_rule_records_total",
    "Records read from the rules log, by outcome (applied, rejected)",
    ["outcome"],
    registry=metrics_registry(),
)


class RuleBook:
    """This replica's current :class:`RuleSet`; ``ready`` once it caught up with the
    log (and, on a fresh stack, with the rule files it seeded)."""

    def __init__(self) -> None:
        self._set: RuleSet = EMPTY
        self.ready = asyncio.Event()
        self._changed = asyncio.Condition()

    @property
    def current(self) -> RuleSet:
        return self._set

    async def apply(self, change: RuleChange, position: int) -> RuleSet:
        """Apply one change read at ``position`` of the log; raises InvalidRule (the
        set is then unchanged)."""
        if isinstance(change, RuleUpserted):
            updated = self._set.upsert(change.rule)
        else:
            updated = self._set.delete(change.rule_id)
        self._set = replace(updated, version=position + 1)
        RULESET_VERSION.set(self._set.version)
        async with self._changed:
            self._changed.notify_all()
        return self._set

    async def wait_for(self, holds: Callable[[RuleSet], bool], seconds: float) -> RuleSet | None:
        """The current set once ``holds(set)`` is true, or None after ``seconds``."""
        try:
            async with asyncio.timeout(seconds), self._changed:
                await self._changed.wait_for(lambda: holds(self._set))
        except TimeoutError:
            return None
        return self._set


@dataclass(frozen=True)
class Published:
    """What a rules admin call left: the rule (None after a delete), and the version
    it is live in (None if this replica had not applied it within the wait)."""

    rule: Rule | None
    version: int | None

    @property
    def live(self) -> bool:
        return self.version is not None


@dataclass(frozen=True)
class RuleStats:
    """One rule's hit rate and precision over a period."""

    rule_id: str
    mode: str | None
    enforced_hits: int
    shadow_hits: int
    hit_rate: float
    true_positives: int
    false_positives: int

    @property
    def precision(self) -> float | None:
        return precision(self.true_positives, self.false_positives)


class RulesAdmin:
    """Rules admin use cases: read the live set, change it through the log, statistics."""

    def __init__(
        self,
        engine: AsyncEngine,
        recorder: ChangeRecorder,
        book: RuleBook,
        *,
        wait_seconds: float = 5.0,
    ) -> None:
        self._engine = engine
        self._recorder = recorder
        self._book = book
        self._wait = wait_seconds

    def ruleset(self) -> RuleSet:
        return self._book.current

    def get(self, rule_id: str) -> tuple[Rule, int]:
        """The rule and the version of the set it is in; UnknownRule if absent."""
        current = self._book.current
        rule = current.get(rule_id)
        if rule is None:
            raise UnknownRule(f"no rule {rule_id!r} in rule set {current.version}")
        return rule, current.version

    async def put(self, rule_id: str, body: Mapping[str, Any], caller: Caller) -> Published:
        """Create or replace a rule. Invalid (shape or CEL) → RuleRejected naming the
        field, and nothing is published. A rule identical to the live one is
        answered at once without publishing (the log and the version do not move)."""
        if "id" in body and body["id"] != rule_id:
            raise RuleRejected("the body's id differs from the path's", field="id")
        try:
            rule = compile_rule({**body, "id": rule_id}).rule
        except InvalidRule as exc:
            raise RuleRejected(exc.message, field=exc.field) from None
        if self._book.current.get(rule_id) == rule:
            return Published(rule, self._book.current.version)

        async def publish(tx: Tx) -> None:
            await self._publish_upsert(tx, rule, caller)

        await in_transaction(self._engine, publish)
        live = await self._book.wait_for(lambda s: s.get(rule_id) == rule, self._wait)
        return Published(rule, None if live is None else live.version)

    async def delete(self, rule_id: str, caller: Caller) -> Published:
        """Withdraw a rule (UnknownRule if the live set has none by that id)."""
        rule, _ = self.get(rule_id)

        async def publish(tx: Tx) -> None:
            data = {"id": rule_id, "revision": rule.revision}
            await self._recorder.record(
                tx,
                caller,
                action="rule.deleted",
                target=rule_id,
                data=data,
                event_type=RULE_DELETED,
                topic=RULES_TOPIC,
                key=rule_id,
            )

        await in_transaction(self._engine, publish)
        live = await self._book.wait_for(lambda s: s.get(rule_id) is None, self._wait)
        return Published(None, None if live is None else live.version)

    async def _publish_upsert(self, tx: Tx, rule: Rule, caller: Caller) -> None:
        await self._recorder.record(
            tx,
            caller,
            action="rule.upserted",
            target=rule.id,
            data=rule.to_json(),
            event_type=RULE_UPSERTED,
            topic=RULES_TOPIC,
            key=rule.id,
        )

    async def seed(self, rules: list[Rule], caller: Caller) -> bool:
        """Publish ``rules`` (the files under ``policies/fraudrules``) unless some
        replica already published rules: replicas starting together take an
        advisory lock, and the first one's outbox rows make the others skip.
        Returns True if this call published them."""

        async def publish(tx: Tx) -> bool:
            await queries.advisory_lock(tx, SEED_LOCK)
            if await queries.has_published(tx, RULES_TOPIC):
                return False
            for rule in rules:
                await self._publish_upsert(tx, rule, caller)
            return True

        return await in_transaction(self._engine, publish)

    async def stats(self, since: datetime | None = None) -> tuple[datetime, int, list[RuleStats]]:
        """Per rule of the live set (and any rule that fired since): hits in each
        mode, the hit rate over all screenings, and precision from resolved alerts."""
        since = since or datetime.now(UTC).replace(microsecond=0) - DEFAULT_STATS_PERIOD

        async def read(tx: Tx) -> tuple[queries.RuleHits, dict[str, tuple[int, int]]]:
            return await queries.rule_hits(tx, since), await queries.rule_outcomes(tx, since)

        hits, outcomes = await in_transaction(self._engine, read)
        live = self._book.current
        names = sorted({*live.rules, *hits.enforced, *hits.shadow, *outcomes})
        rows = []
        for name in names:
            rule = live.get(name)
            enforced, shadow = hits.enforced.get(name, 0), hits.shadow.get(name, 0)
            tp, fp = outcomes.get(name, (0, 0))
            rate = round((enforced + shadow) / hits.screenings, 6) if hits.screenings else 0.0
            mode = None if rule is None else rule.mode.value
            rows.append(RuleStats(name, mode, enforced, shadow, rate, tp, fp))
        return since, hits.screenings, rows
