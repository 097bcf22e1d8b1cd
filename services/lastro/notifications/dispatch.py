"""The background use cases: recording consumed events, planning who is told, and
delivering.

1. **Record** (inside the consumer's inbox transaction): a consumed event becomes an
   *occurrence* row, once (the inbox and the occurrence's primary key both stop a
   redelivered event).
2. **Plan** (:meth:`Dispatcher.plan_due`): for each pending occurrence, look up the
   customers' contacts (accounts), apply their preferences and quiet hours, render
   and seal each message, find the merchant endpoints subscribed to the kind, and
   write one delivery per (event, channel, destination) in one transaction (a
   unique constraint makes a second plan of the same event a no-op). A contact
   lookup that cannot be answered leaves the occurrence pending, retried later.
3. **Deliver** (:meth:`Dispatcher.deliver_due`): claim due deliveries under a lease,
   make one attempt each, record it and the next step (delivered, retry at a time
   from the retry policy, or dead-letter) in one transaction. A crash between
   sending and recording leaves the claim to expire; the next attempt reuses the
   same delivery id, so the receiver sees the same ``webhook-id``, ``Message-ID``
   or gateway ``Idempotency-Key`` and can tell it is the same message.

Tracing: an occurrence keeps the trace context of the consumer span that recorded
it, its deliveries that of the span that planned them, so planning (``plan <kind>``)
and every attempt (``deliver <channel>``, with the HTTP, SMTP or gateway call under
it) join the trace of the change that caused the event, although the loops run them
later in tasks of their own.

A webhook endpoint whose attempts fail ``disable_after`` times in a row is disabled
in the transaction that records the last failure: its pending deliveries are
dead-lettered, ``lastro.webhook_endpoint.disabled`` is published and, when the owner
left a notice address, an e-mail tells them. Attempts claimed before that transaction
committed (in the same batch, whose attempts run concurrently) still go out, so the
receiver can see one more attempt per other delivery in flight.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Final, TypeVar

from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.changes import Caller, ChangeRecorder
from lastro.core.db import Tx, after_commit, in_transaction, read
from lastro.core.events import CloudEvent
from lastro.core.ids import new_id
from lastro.core.observability import current_traceparent
from lastro.core.security.transit import TransitError, TransitUnavailable
from lastro.notifications import events, store
from lastro.notifications.domain.delivery import (
    AttemptResult,
    Delivery,
    DeliveryStatus,
    NextStep,
    Outcome,
    Sent,
    after_attempt,
)
from lastro.notifications.domain.kinds import Channel, Kind, Occurrence
from lastro.notifications.domain.templates import (
    Email,
    render_email,
)
from lastro.notifications.domain.webhooks import Endpoint, EndpointStatus, should_disable
from lastro.notifications.metrics import (
    ATTEMPT_SECONDS,
    ATTEMPTS,
    DEAD_LETTERS,
    DELIVERIES,
    DELIVERY_LAG,
    EVENTS_SKIPPED,
    RETRY_QUEUE,
)
from lastro.notifications.planning import TRACER, Planner, log_failures, trace_of
from lastro.notifications.ports import (
    Contacts,
    DispatchConfig,
    EmailChannel,
    SmsChannel,
    WebhookChannel,
)
from lastro.notifications.sealing import (
    Sealer,
    SubjectErased,
    WebhookSecrets,
    open_json,
    open_text,
    seal_json,
    seal_text,
)
from lastro.notifications.store import NewDelivery

log = logging.getLogger(__name__)

T = TypeVar("T")
SYSTEM: Final = Caller("service:notifications/dispatch")
DELIVERIES_TABLE: Final = "deliveries"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class _Needs:
    """What a batch of attempts reads before sending: subjects' wrapped data keys,
    the webhook endpoints and their active secrets."""

    wrapped: Mapping[str, str]
    endpoints: Mapping[str, Endpoint]
    secrets: Mapping[str, list[tuple[str, str, bool]]]


@dataclass(frozen=True)
class _Attempted:
    delivery: Delivery
    sent: Sent
    override: str | None


class Dispatcher:
    """Records, plans and delivers (see the module docstring)."""

    def __init__(
        self,
        engine: AsyncEngine,
        recorder: ChangeRecorder,
        sealer: Sealer,
        secrets: WebhookSecrets,
        contacts: Contacts,
        webhooks: WebhookChannel,
        mailer: EmailChannel,
        texter: SmsChannel,
        config: DispatchConfig,
        *,
        clock: Callable[[], datetime] = utc_now,
        rng: random.Random | None = None,
    ) -> None:
        self._engine = engine
        self._recorder = recorder
        self._sealer = sealer
        self._secrets = secrets
        self._contacts = contacts
        self._webhooks = webhooks
        self._mailer = mailer
        self._texter = texter
        self.config = config
        self._clock = clock
        self._rng = rng or random.Random()
        self._planner = Planner(engine, sealer, contacts, config, clock)
        self.planning = asyncio.Event()
        """Set when occurrences were committed in this process: the planner runs now."""
        self.delivering = asyncio.Event()
        """Set when deliveries were committed in this process: the delivery loop runs now."""

    # ------------------------------------------------------------ recording (inbox)

    async def record_occurrence(self, tx: Tx, occurrence: Occurrence) -> None:
        traced = replace(occurrence, traceparent=current_traceparent())
        await store.insert_occurrence(tx, traced, self._clock())
        after_commit(tx, "notifications-plan", self.planning.set)

    async def record_owner(self, tx: Tx, learned: events.OwnerLearned) -> None:
        await store.record_owner(tx, learned.customer_id, learned.owner, self._clock())

    def rejected(self, event: CloudEvent, error: events.MalformedEvent) -> None:
        EVENTS_SKIPPED.labels("malformed").inc()
        log.warning(
            "malformed event skipped",
            extra={"event_id": event.id, "event_type": event.type, "error": str(error)},
        )

    # ------------------------------------------------------------ planning

    async def plan_due(self) -> int:
        """Plan every pending occurrence that is due (``planning.Planner``)."""
        planned = await self._planner.plan_due()
        if planned:
            self.delivering.set()
        return planned

    async def _read(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        return await read(self._engine, work)

    # ------------------------------------------------------------ delivering

    async def deliver_due(self) -> int:
        """One attempt for every due delivery (a batch); returns how many.

        One claim, one autocommit read of what the attempts need (data keys,
        endpoints and their secrets), the attempts concurrently, then one transaction
        recording every result."""
        now = self._clock()

        async def claim(tx: Tx) -> list[Delivery]:
            return await store.claim_deliveries(tx, now, now + self.config.lease, self.config.batch)

        claimed = await self._read(claim)  # one statement: atomic in autocommit
        if not claimed:
            return 0
        needs = await self._read(lambda tx: self._needs(tx, claimed, now))
        results = await asyncio.gather(
            *(self._deliver(d, needs) for d in claimed), return_exceptions=True
        )
        log_failures("delivery", [d.id for d in claimed], results)
        await self._record([r for r in results if isinstance(r, _Attempted)])
        return len(claimed)

    async def _needs(self, tx: Tx, claimed: Sequence[Delivery], now: datetime) -> _Needs:
        subjects = [d.subject_id for d in claimed if d.channel is not Channel.WEBHOOK]
        endpoint_ids = [d.endpoint_id for d in claimed if d.channel is Channel.WEBHOOK]
        hooks = sorted({e for e in endpoint_ids if e})
        return _Needs(
            wrapped=await store.subject_keys_of(tx, [s for s in subjects if s]),
            endpoints=await store.endpoints_by_id(tx, hooks),
            secrets=await store.active_secrets_of(tx, hooks, now),
        )

    async def _deliver(self, delivery: Delivery, needs: _Needs) -> _Attempted:
        with TRACER.start_as_current_span(
            f"deliver {delivery.channel.value}",
            context=trace_of(delivery.traceparent),
            attributes={
                "lastro.delivery.id": delivery.id,
                "lastro.event.id": delivery.event_id,
                "lastro.notification.kind": delivery.kind.value,
                "lastro.delivery.attempt": delivery.attempts,
            },
        ) as span:
            return await self._attempt(delivery, needs, span)

    async def _attempt(self, delivery: Delivery, needs: _Needs, span: trace.Span) -> _Attempted:
        override: str | None = None
        try:
            sent, override = await self._send(delivery, needs)
        except SubjectErased:
            sent = Sent(AttemptResult(Outcome.FAILED, error="recipient erased", permanent=True), 0)
            override = "erased"
        except Exception as error:  # a bug must not stop the other deliveries
            log.exception("delivery %s: attempt crashed", delivery.id)
            sent = Sent(AttemptResult(Outcome.FAILED, error=type(error).__name__), 0)
        span.set_attribute("lastro.delivery.outcome", sent.result.outcome.value)
        if sent.result.status_code is not None:
            span.set_attribute("http.response.status_code", sent.result.status_code)
        if sent.result.outcome is not Outcome.DELIVERED:
            span.set_status(trace.Status(trace.StatusCode.ERROR, sent.result.error))
        return _Attempted(delivery, sent, override)

    async def _send(self, delivery: Delivery, needs: _Needs) -> tuple[Sent, str | None]:
        if delivery.channel is Channel.WEBHOOK:
            return await self._send_webhook(delivery, needs)
        subject = delivery.subject_id or ""
        where = {"table": DELIVERIES_TABLE, "row_id": delivery.id}
        if delivery.address is None or delivery.content is None:
            raise SubjectErased(subject)
        cipher = await self._sealer.opened(subject, needs.wrapped.get(subject))
        address = open_text(cipher, delivery.address, column="address", **where)
        content = open_json(cipher, delivery.content, column="content", **where)
        if delivery.channel is Channel.EMAIL:
            return await self._mailer.send(delivery.id, address, Email(**content)), None
        return await self._texter.send(delivery.id, address, content["body"]), None

    async def _send_webhook(self, delivery: Delivery, needs: _Needs) -> tuple[Sent, str | None]:
        endpoint_id = delivery.endpoint_id or ""
        endpoint = needs.endpoints.get(endpoint_id)
        if endpoint is None:
            gone = AttemptResult(Outcome.FAILED, error="endpoint deleted", permanent=True)
            return Sent(gone, 0), "endpoint-deleted"
        if endpoint.status is not EndpointStatus.ENABLED:
            off = AttemptResult(Outcome.FAILED, error="endpoint disabled", permanent=True)
            return Sent(off, 0), "endpoint-disabled"
        active = needs.secrets.get(endpoint_id, [])
        try:
            secrets = [await self._secrets.reveal(i, c, bound) for i, c, bound in active]
        except TransitUnavailable:
            raise  # the KMS is down: an ordinary failed attempt, retried
        except TransitError as error:
            # A ciphertext that does not open under its own row: tampered with, or
            # copied from another endpoint. Nothing is signed with it.
            log.error("endpoint %s: a signing secret does not open (%s)", endpoint_id, error)
            unreadable = AttemptResult(
                Outcome.FAILED, error="signing secret unreadable", permanent=True
            )
            return Sent(unreadable, 0), "secret-unreadable"
        return await self._webhooks.send(
            endpoint.url, delivery.id, delivery.payload or {}, secrets
        ), None

    async def _record(self, attempted: Sequence[_Attempted]) -> None:
        """Every attempt's result and next step in one transaction (see
        :func:`store.finish_attempts`), with the dead letters and endpoint failure
        runs they cause."""
        if not attempted:
            return
        now = self._clock()
        steps = {}
        for a in attempted:
            step = after_attempt(
                a.sent.result, a.delivery.round_attempts, self.config.retry, now, self._rng
            )
            if a.override is not None:
                step = NextStep(DeliveryStatus.DEAD, dead_reason=a.override)
            steps[a.delivery.id] = step
        finished = [
            store.FinishedAttempt(
                a.delivery,
                a.sent.result,
                steps[a.delivery.id].status,
                steps[a.delivery.id].next_attempt_at,
                a.sent.latency_ms,
            )
            for a in attempted
        ]

        async def work(tx: Tx) -> set[str]:
            recorded = await store.finish_attempts(tx, finished, now)
            for a in attempted:
                delivery, step = a.delivery, steps[a.delivery.id]
                if delivery.id not in recorded:
                    continue
                if step.status is DeliveryStatus.DEAD:
                    reason = step.dead_reason or "exhausted"
                    await store.dead_letter(tx, delivery.id, reason, now)
                    await self._announce_dead(tx, delivery.id, reason, now)
                if (
                    delivery.channel is Channel.WEBHOOK
                    and delivery.endpoint_id
                    and a.override is None
                ):
                    failed = a.sent.result.outcome is not Outcome.DELIVERED
                    run = await store.count_endpoint_failure(tx, delivery.endpoint_id, failed)
                    if failed and should_disable(run, self.config.disable_after):
                        await self._disable(tx, delivery.endpoint_id, run, now)
            return recorded

        recorded = await in_transaction(self._engine, work)
        for a in attempted:
            delivery, sent, step = a.delivery, a.sent, steps[a.delivery.id]
            if delivery.id not in recorded:
                log.warning(
                    "delivery %s: claim lost before recording; attempt ignored", delivery.id
                )
                continue
            channel = delivery.channel.value
            ATTEMPTS.labels(channel, sent.result.outcome.value).inc()
            ATTEMPT_SECONDS.labels(channel).observe(sent.latency_ms / 1000)
            if step.status is DeliveryStatus.DELIVERED:
                DELIVERIES.labels(channel, "delivered").inc()
                DELIVERY_LAG.labels(channel).observe((now - delivery.created_at).total_seconds())
            elif step.status is DeliveryStatus.DEAD:
                DELIVERIES.labels(channel, "dead").inc()

    async def _announce_dead(self, tx: Tx, delivery_id: str, reason: str, now: datetime) -> None:
        await self._recorder.record(
            tx,
            SYSTEM,
            action="delivery.dead_lettered",
            target=delivery_id,
            data={"delivery_id": delivery_id, "reason": reason},
            event_type=events.DEAD_LETTERED,
            topic=events.DEADLETTER_TOPIC,
            key=delivery_id,
            now=now,
        )

    async def _disable(self, tx: Tx, endpoint_id: str, failures: int, now: datetime) -> None:
        endpoint = await store.get_endpoint(tx, endpoint_id, lock=True)
        if endpoint is None or endpoint.status is EndpointStatus.DISABLED:
            return
        reason = f"{failures} failed delivery attempts in a row"
        await store.update_endpoint(
            tx,
            endpoint_id,
            {
                "status": EndpointStatus.DISABLED.value,
                "disabled_at": now,
                "disabled_reason": reason,
                "updated_at": now,
            },
        )
        for killed in await store.kill_pending(
            tx, "endpoint-disabled", now, endpoint_id=endpoint_id
        ):
            await self._announce_dead(tx, killed, "endpoint-disabled", now)
        await self._recorder.record(
            tx,
            SYSTEM,
            action="webhook_endpoint.disabled",
            target=endpoint_id,
            data={"endpoint_id": endpoint_id, "owner": endpoint.owner, "failures": failures},
            event_type=events.ENDPOINT_EVENT.format(fact="disabled"),
            topic=events.TOPIC,
            key=endpoint_id,
            now=now,
        )
        await self._notify_owner(tx, endpoint.owner, endpoint_id, endpoint.url, failures, now)

    async def _notify_owner(
        self, tx: Tx, owner: str, endpoint_id: str, url: str, failures: int, now: datetime
    ) -> None:
        sealed = await store.sealed_notice_email(tx, endpoint_id)
        if sealed is None:
            return
        try:
            cipher = await self._sealer.existing(tx, owner)
            address = open_text(
                cipher, sealed, table="webhook_endpoints", column="notice_email", row_id=endpoint_id
            )
        except SubjectErased:
            return
        delivery_id = new_id("dlv")
        facts = {"endpoint_id": endpoint_id, "url": url, "failures": failures}
        notice = asdict(render_email(Kind.ENDPOINT_DISABLED, "en", facts, now, "UTC"))
        where = {"table": DELIVERIES_TABLE, "row_id": delivery_id}
        await store.insert_deliveries(
            tx,
            [
                NewDelivery(
                    id=delivery_id,
                    event_id=new_id("evt"),
                    kind=Kind.ENDPOINT_DISABLED,
                    channel=Channel.EMAIL,
                    destination=endpoint_id,
                    next_attempt_at=now,
                    endpoint_id=endpoint_id,
                    subject_id=owner,
                    address=seal_text(cipher, address, column="address", **where),
                    content=seal_json(cipher, notice, column="content", **where),
                )
            ],
            now,
        )

    # ------------------------------------------------------------ gauges

    async def refresh_gauges(self) -> None:
        """Retry queue depth and DLQ size per channel, from the database."""
        waiting, dead = await self._read(store.queue_depths)
        for channel in Channel:
            RETRY_QUEUE.labels(channel.value).set(waiting.get(channel.value, 0))
            DEAD_LETTERS.labels(channel.value).set(dead.get(channel.value, 0))
