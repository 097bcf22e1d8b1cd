"""The streaming analyser's use case: one transaction event → profiles, detectors, alerts.

:meth:`Analysis.apply` is the ``apply`` of the analyser's inbox consumer
(``core/events.py``): it runs inside the transaction that records the event id in
the inbox, and that transaction commits before the Kafka offset does. The Redis
side cannot join that transaction, so it is made idempotent on its own
(:meth:`lastro.fraud.store.profiles.ProfileStore.apply_event`): the profiles and a
marker holding the event's alerts are written by one Lua script, once. Whatever
crashes where, the effect per event is once:

- crash before the Redis write: the event comes again and is applied normally;
- crash after the Redis write, before the commit: the event comes again, finds its
  marker, and records the alerts of the first application (the profiles are not
  touched again, so nothing is counted twice);
- crash after the commit, before the offset commit: the inbox turns the redelivery
  into a no-op.

Alerts are recorded with their ``alert_raised`` event; a high or critical alert
also records a pending freeze request, which :mod:`lastro.fraud.effects` delivers
to the account service after the commit (audited there).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

from prometheus_client import Counter

from lastro.core.changes import Caller
from lastro.core.db import Tx
from lastro.core.errors import DependencyUnavailable
from lastro.core.events import CloudEvent
from lastro.core.observability import metrics_registry
from lastro.fraud.domain.alerts import Effect, detected
from lastro.fraud.domain.detectors import DEFAULT_CONFIG, Alert, DetectorConfig, observe
from lastro.fraud.domain.profiles import CounterpartyProfile, CustomerProfile
from lastro.fraud.domain.transactions import (
    InvalidTransaction,
    Status,
    TransactionEvent,
    parse_event,
)
from lastro.fraud.service import AlertRecorder
from lastro.fraud.store.profiles import ProfileConflict, ProfileStore, ProfilesUnavailable

log = logging.getLogger(__name__)

ACTOR: Final = "service:fraud-analyser/detectors"
LEARNS_FROM: Final = frozenset({Status.POSTED, Status.DECLINED})
"""Statuses that change a profile (money moved, or a payment was refused)."""
LEARNED_TYPES: Final = frozenset(f"lastro.transaction.{status.value}" for status in LEARNS_FROM)


def learns_from(event_type: str) -> bool:
    """Whether an event of this type can change a profile (the event's status is its
    type's suffix); the consumer skips the others before its inbox."""
    return event_type in LEARNED_TYPES


SKIPPED = Counter(
    "lastro_fraud_events_skipped_total",
    "Transaction events the analyser did not use, by reason",
    ["reason"],
    registry=metrics_registry(),
)


class Analysis:
    """Applies transaction events to the profiles and records what the detectors find."""

    def __init__(
        self,
        profiles: ProfileStore,
        alerts: AlertRecorder,
        *,
        config: DetectorConfig = DEFAULT_CONFIG,
        on_freeze_pending: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._profiles = profiles
        self._alerts = alerts
        self._config = config
        self._on_freeze_pending = on_freeze_pending
        self._clock = clock
        self._caller = Caller(ACTOR)

    async def apply(self, tx: Tx, event: CloudEvent) -> None:
        """Apply one ``lastro.transactions`` event (the consumer's ``apply``).

        Events that change no profile are ignored; a malformed one is counted and
        skipped (it would fail the same way on every redelivery). A Redis outage
        raises, so the transaction rolls back and the event is tried again."""
        if not event.type.startswith("lastro.transaction."):
            return
        if event.data.get("customer_id") is None:  # money of no customer (a settlement)
            SKIPPED.labels("no_customer").inc()
            return
        try:
            txn_event = parse_event(event.type, event.data)
        except InvalidTransaction as exc:
            SKIPPED.labels("malformed").inc()
            log.warning("transaction event %s skipped: %s", event.id, exc)
            return
        if txn_event.status not in LEARNS_FROM:
            return
        try:
            found = await self._profiles.apply_event(event.id, txn_event, self._detect(txn_event))
        except (ProfilesUnavailable, ProfileConflict) as exc:
            raise DependencyUnavailable(f"profiles not updated: {exc}") from exc
        freeze = False
        for alert in found:
            case = await self._alerts.record(
                tx, self._caller, detected(alert, event.id), self._clock()
            )
            freeze = freeze or (case is not None and case.freeze is Effect.PENDING)
        if freeze:
            self._on_freeze_pending()

    def _detect(
        self, event: TransactionEvent
    ) -> Callable[
        [CustomerProfile | None, CustomerProfile | None, CounterpartyProfile | None], list[Alert]
    ]:
        def detect(
            payer: CustomerProfile | None,
            receiver: CustomerProfile | None,
            counterparty: CounterpartyProfile | None,
        ) -> list[Alert]:
            return observe(event, payer, receiver, counterparty, self._config)

        return detect
