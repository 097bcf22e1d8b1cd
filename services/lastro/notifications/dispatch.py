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
left a notice address, an e-mail tells them.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.context import Context
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.backoff import full_jitter
from lastro.core.changes import Caller, ChangeRecorder
from lastro.core.db import Tx, in_transaction
from lastro.core.errors import DependencyUnavailable
from lastro.core.events import CloudEvent
from lastro.core.ids import new_id
from lastro.core.observability import current_traceparent, extract_context
from lastro.core.security.fields import FieldCipher
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
from lastro.notifications.domain.preferences import (
    Contact,
    CustomerMessage,
    Preferences,
    customer_messages,
    is_stale,
)
from lastro.notifications.domain.templates import (
    Email,
    render_email,
    render_sms,
    webhook_payload,
)
from lastro.notifications.domain.webhooks import EndpointStatus, should_disable
from lastro.notifications.metrics import (
    ATTEMPT_SECONDS,
    ATTEMPTS,
    DEAD_LETTERS,
    DELIVERIES,
    DELIVERY_LAG,
    EVENTS_SKIPPED,
    RETRY_QUEUE,
)
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

SYSTEM: Final = Caller("service:notifications/dispatch")
DELIVERIES_TABLE: Final = "deliveries"


def utc_now() -> datetime:
    return datetime.now(UTC)


def _log_failures(what: str, ids: Sequence[str], results: Sequence[object]) -> None:
    """One item failing (the database or the KMS went away mid-batch) must not hide the
    others; its claim lapses with its lease and it is taken again."""
    for item, result in zip(ids, results, strict=True):
        if isinstance(result, BaseException):
            log.error("%s of %s failed; retried when its lease ends", what, item, exc_info=result)


_TRACER = trace.get_tracer("lastro.notifications")


def _trace_of(traceparent: str | None) -> Context | None:
    """The remote parent a stored ``traceparent`` names (None: the current context)."""
    return None if traceparent is None else extract_context({"traceparent": traceparent})


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

    # ------------------------------------------------------------ recording (inbox)

    async def record_occurrence(self, tx: Tx, occurrence: Occurrence) -> None:
        traced = replace(occurrence, traceparent=current_traceparent())
        await store.insert_occurrence(tx, traced, self._clock())

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
        """Plan every pending occurrence that is due; returns how many were claimed."""
        now = self._clock()

        async def claim(tx: Tx) -> list[tuple[Occurrence, int]]:
            return await store.claim_occurrences(
                tx, now, now + self.config.lease, self.config.batch
            )

        claimed = await in_transaction(self._engine, claim)
        results = await asyncio.gather(
            *(self._plan_or_defer(o, n) for o, n in claimed), return_exceptions=True
        )
        _log_failures("planning", [o.event_id for o, _ in claimed], results)
        return len(claimed)

    async def _plan_or_defer(self, occurrence: Occurrence, attempt: int) -> None:
        try:
            with _TRACER.start_as_current_span(
                f"plan {occurrence.kind.value}",
                context=_trace_of(occurrence.traceparent),
                attributes={"lastro.event.id": occurrence.event_id},
            ):
                await self._plan(occurrence)
        except DependencyUnavailable as error:
            delay = timedelta(seconds=full_jitter(attempt, base=1.0, cap=60.0) + 0.5)
            log.warning("planning %s deferred: %s", occurrence.event_id, error.detail)

            async def defer(tx: Tx) -> None:
                await store.defer_occurrence(tx, occurrence.event_id, self._clock() + delay)

            await in_transaction(self._engine, defer)

    async def _read(self, work: Callable[[Tx], Any]) -> Any:
        async with self._engine.connect() as conn:
            return await work(conn)

    async def _plan(self, occurrence: Occurrence) -> None:
        now = self._clock()
        customers = list(occurrence.customer_ids)
        if occurrence.user_id is not None:
            user = occurrence.user_id
            customers += await self._read(lambda tx: store.customers_of(tx, user))
        stale = is_stale(occurrence.occurred_at, now, self.config.max_event_age)
        if stale:
            EVENTS_SKIPPED.labels("stale").inc()
        owners = {occurrence.user_id} if occurrence.user_id else set()
        contacts: list[Contact] = []
        planned: list[NewDelivery] = []
        for customer_id in dict.fromkeys(customers):
            contact = await self._contacts.contact(customer_id)
            if contact is None:
                continue
            owners.add(contact.owner)
            contacts.append(contact)
            if not stale:
                planned += await self._customer_deliveries(occurrence, contact, now)
        endpoints = await self._read(lambda tx: store.endpoints_of(tx, sorted(owners)))
        payload = webhook_payload(
            occurrence.kind, occurrence.event_id, occurrence.occurred_at, occurrence.facts
        )
        planned += [
            NewDelivery(
                id=new_id("dlv"),
                event_id=occurrence.event_id,
                kind=occurrence.kind,
                channel=Channel.WEBHOOK,
                destination=endpoint.id,
                next_attempt_at=now,
                customer_id=occurrence.customer_ids[0] if occurrence.customer_ids else None,
                endpoint_id=endpoint.id,
                payload=payload,
                traceparent=current_traceparent(),
            )
            for endpoint in endpoints
            if endpoint.accepts(occurrence.kind)
        ]

        async def write(tx: Tx) -> None:
            for contact in contacts:
                await store.record_owner(tx, contact.customer_id, contact.owner, now)
            if await store.occurrence_planned(tx, occurrence.event_id, now):
                await store.insert_deliveries(tx, planned, now)

        await in_transaction(self._engine, write)

    async def _customer_deliveries(
        self, occurrence: Occurrence, contact: Contact, now: datetime
    ) -> list[NewDelivery]:
        customer_id = contact.customer_id
        prefs = await self._read(lambda tx: store.get_preferences(tx, customer_id))
        prefs = prefs or Preferences(customer_id)
        messages = customer_messages(occurrence.kind, prefs, contact, now)
        if not messages:
            return []
        cipher = await self._sealer.cipher(customer_id)
        return [self._message(occurrence, contact, prefs, m, cipher) for m in messages]

    def _message(
        self,
        occurrence: Occurrence,
        contact: Contact,
        prefs: Preferences,
        message: CustomerMessage,
        cipher: FieldCipher,
    ) -> NewDelivery:
        delivery_id = new_id("dlv")
        args = (occurrence.kind, prefs.locale, occurrence.facts, occurrence.occurred_at)
        content: dict[str, Any]
        if message.channel is Channel.EMAIL:
            address = contact.email
            content = asdict(render_email(*args, prefs.timezone))
        else:
            address = contact.phone
            content = {"body": render_sms(*args, prefs.timezone)}
        assert address is not None
        where = {"table": DELIVERIES_TABLE, "row_id": delivery_id}
        return NewDelivery(
            id=delivery_id,
            event_id=occurrence.event_id,
            kind=occurrence.kind,
            channel=message.channel,
            destination=contact.customer_id,
            next_attempt_at=message.not_before,
            customer_id=contact.customer_id,
            subject_id=contact.customer_id,
            address=seal_text(cipher, address, column="address", **where),
            content=seal_json(cipher, content, column="content", **where),
            traceparent=current_traceparent(),
        )

    # ------------------------------------------------------------ delivering

    async def deliver_due(self) -> int:
        """One attempt for every due delivery (a batch); returns how many."""
        now = self._clock()

        async def claim(tx: Tx) -> list[Delivery]:
            return await store.claim_deliveries(tx, now, now + self.config.lease, self.config.batch)

        claimed = await in_transaction(self._engine, claim)
        results = await asyncio.gather(*(self._deliver(d) for d in claimed), return_exceptions=True)
        _log_failures("delivery", [d.id for d in claimed], results)
        return len(claimed)

    async def _deliver(self, delivery: Delivery) -> None:
        with _TRACER.start_as_current_span(
            f"deliver {delivery.channel.value}",
            context=_trace_of(delivery.traceparent),
            attributes={
                "lastro.delivery.id": delivery.id,
                "lastro.event.id": delivery.event_id,
                "lastro.notification.kind": delivery.kind.value,
                "lastro.delivery.attempt": delivery.attempts,
            },
        ) as span:
            await self._attempt(delivery, span)

    async def _attempt(self, delivery: Delivery, span: trace.Span) -> None:
        override: str | None = None
        try:
            sent, override = await self._send(delivery)
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
        await self._record(delivery, sent, override)

    async def _send(self, delivery: Delivery) -> tuple[Sent, str | None]:
        if delivery.channel is Channel.WEBHOOK:
            return await self._send_webhook(delivery)
        subject = delivery.subject_id or ""
        where = {"table": DELIVERIES_TABLE, "row_id": delivery.id}
        if delivery.address is None or delivery.content is None:
            raise SubjectErased(subject)
        async with self._engine.connect() as tx:
            cipher = await self._sealer.existing(tx, subject)
        address = open_text(cipher, delivery.address, column="address", **where)
        content = open_json(cipher, delivery.content, column="content", **where)
        if delivery.channel is Channel.EMAIL:
            return await self._mailer.send(delivery.id, address, Email(**content)), None
        return await self._texter.send(delivery.id, address, content["body"]), None

    async def _send_webhook(self, delivery: Delivery) -> tuple[Sent, str | None]:
        endpoint_id = delivery.endpoint_id or ""
        now = self._clock()
        async with self._engine.connect() as tx:
            endpoint = await store.get_endpoint(tx, endpoint_id)
            active = await store.active_secrets(tx, endpoint_id, now)
        if endpoint is None:
            gone = AttemptResult(Outcome.FAILED, error="endpoint deleted", permanent=True)
            return Sent(gone, 0), "endpoint-deleted"
        if endpoint.status is not EndpointStatus.ENABLED:
            off = AttemptResult(Outcome.FAILED, error="endpoint disabled", permanent=True)
            return Sent(off, 0), "endpoint-disabled"
        secrets = [await self._secrets.reveal(i, c) for i, c in active]
        return await self._webhooks.send(
            endpoint.url, delivery.id, delivery.payload or {}, secrets
        ), None

    async def _record(self, delivery: Delivery, sent: Sent, override: str | None) -> None:
        now = self._clock()
        step = after_attempt(
            sent.result, delivery.round_attempts, self.config.retry, now, self._rng
        )
        if override is not None:
            step = NextStep(DeliveryStatus.DEAD, dead_reason=override)

        async def work(tx: Tx) -> bool:
            recorded = await store.finish_attempt(
                tx,
                delivery,
                sent.result,
                status=step.status,
                next_attempt_at=step.next_attempt_at,
                finished_at=now,
                latency_ms=sent.latency_ms,
            )
            if not recorded:
                return False
            if step.status is DeliveryStatus.DEAD:
                await store.dead_letter(tx, delivery.id, step.dead_reason or "exhausted", now)
                await self._announce_dead(tx, delivery.id, step.dead_reason or "exhausted", now)
            if delivery.channel is Channel.WEBHOOK and delivery.endpoint_id and override is None:
                failed = sent.result.outcome is not Outcome.DELIVERED
                run = await store.count_endpoint_failure(tx, delivery.endpoint_id, failed)
                if failed and should_disable(run, self.config.disable_after):
                    await self._disable(tx, delivery.endpoint_id, run, now)
            return True

        if not await in_transaction(self._engine, work):
            log.warning("delivery %s: claim lost before recording; attempt ignored", delivery.id)
            return
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
