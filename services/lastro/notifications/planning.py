"""Planning: who is told of a consumed event, through which channel, with what
message (step 2 of ``dispatch.py``), a batch of occurrences at a time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar

from opentelemetry import trace
from opentelemetry.context import Context
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.backoff import full_jitter
from lastro.core.db import Tx, in_transaction, read
from lastro.core.errors import DependencyUnavailable
from lastro.core.ids import new_id
from lastro.core.observability import current_traceparent, extract_context
from lastro.core.security.fields import FieldCipher
from lastro.notifications import store
from lastro.notifications.domain.kinds import Channel, Occurrence
from lastro.notifications.domain.preferences import (
    Contact,
    CustomerMessage,
    Preferences,
    customer_messages,
    is_stale,
)
from lastro.notifications.domain.templates import render_email, render_sms, webhook_payload
from lastro.notifications.domain.webhooks import Endpoint
from lastro.notifications.metrics import EVENTS_SKIPPED
from lastro.notifications.ports import Contacts, DispatchConfig
from lastro.notifications.sealing import Sealer, seal_json, seal_text
from lastro.notifications.store import NewDelivery

log = logging.getLogger(__name__)

T = TypeVar("T")
DELIVERIES_TABLE: Final = "deliveries"


def log_failures(what: str, ids: Sequence[str], results: Sequence[object]) -> None:
    """One item failing (the database or the KMS went away mid-batch) must not hide the
    others; its claim lapses with its lease and it is taken again."""
    for item, result in zip(ids, results, strict=True):
        if isinstance(result, BaseException):
            log.error("%s of %s failed; retried when its lease ends", what, item, exc_info=result)


TRACER = trace.get_tracer("lastro.notifications")


def trace_of(traceparent: str | None) -> Context | None:
    """The remote parent a stored ``traceparent`` names (None: the current context)."""
    return None if traceparent is None else extract_context({"traceparent": traceparent})


class Planner:
    """Plans pending occurrences (see :meth:`plan_due`)."""

    def __init__(
        self,
        engine: AsyncEngine,
        sealer: Sealer,
        contacts: Contacts,
        config: DispatchConfig,
        clock: Callable[[], datetime],
    ) -> None:
        self._engine = engine
        self._sealer = sealer
        self._contacts = contacts
        self.config = config
        self._clock = clock

    async def plan_due(self) -> int:
        """Plan every pending occurrence that is due, as one batch; returns how many
        were claimed.

        The batch costs a fixed number of statements whatever its size: one claim,
        one autocommit read of owners' customers, preferences and data keys, one
        contact lookup per distinct customer (concurrent), one read of the owners'
        endpoints, and one transaction writing every plan. An occurrence whose
        contact lookup failed is deferred alone; the others are planned."""
        now = self._clock()

        async def claim(tx: Tx) -> list[tuple[Occurrence, int]]:
            return await store.claim_occurrences(
                tx, now, now + self.config.lease, self.config.batch
            )

        claimed = await self._read(claim)  # one statement: atomic in autocommit
        if claimed:
            await self._plan_batch(claimed, now)
        return len(claimed)

    async def _plan_batch(self, claimed: list[tuple[Occurrence, int]], now: datetime) -> None:
        users = sorted({o.user_id for o, _ in claimed if o.user_id is not None})

        async def users_customers(tx: Tx) -> dict[str, list[str]]:
            return await store.customers_of_owners(tx, users)

        of_user = await self._read(users_customers)
        customers_of = {
            o.event_id: list(dict.fromkeys([*o.customer_ids, *of_user.get(o.user_id or "", [])]))
            for o, _ in claimed
        }
        everyone = sorted({c for cs in customers_of.values() for c in cs})

        async def customer_state(tx: Tx) -> tuple[dict[str, Preferences], dict[str, str]]:
            return (
                await store.preferences_of(tx, everyone),
                await store.subject_keys_of(tx, everyone),
            )

        (prefs, wrapped), found = await asyncio.gather(
            self._read(customer_state),
            asyncio.gather(*(self._contacts.contact(c) for c in everyone), return_exceptions=True),
        )
        contacts = dict(zip(everyone, found, strict=True))
        owners = {c.owner for c in contacts.values() if isinstance(c, Contact)} | set(users)

        async def owners_endpoints(tx: Tx) -> list[Endpoint]:
            return await store.endpoints_of(tx, sorted(owners))

        endpoints = await self._read(owners_endpoints)
        ciphers: dict[str, FieldCipher] = {}
        planned: dict[str, list[NewDelivery]] = {}
        deferred: list[tuple[Occurrence, int, DependencyUnavailable]] = []
        for occurrence, attempt in claimed:
            mine = [contacts[c] for c in customers_of[occurrence.event_id]]
            unavailable = next((e for e in mine if isinstance(e, DependencyUnavailable)), None)
            crashed = next((e for e in mine if isinstance(e, BaseException)), None)
            if unavailable is not None:
                deferred.append((occurrence, attempt, unavailable))
                continue
            if crashed is not None:  # a bug: logged, retried when the lease ends
                log_failures("planning", [occurrence.event_id], [crashed])
                continue
            reached = [c for c in mine if isinstance(c, Contact)]
            try:
                planned[occurrence.event_id] = await self._plan(
                    occurrence, reached, prefs, wrapped, ciphers, endpoints, now
                )
            except DependencyUnavailable as error:  # the KMS, for a new data key
                deferred.append((occurrence, attempt, error))
            except Exception as error:  # one bad occurrence must not stop the batch
                log_failures("planning", [occurrence.event_id], [error])

        reached_owners = {
            c.customer_id: c.owner for c in contacts.values() if isinstance(c, Contact)
        }

        async def write(tx: Tx) -> None:
            await store.record_owners(tx, reached_owners, now)
            marked = await store.occurrences_planned(tx, list(planned), now)
            await store.insert_deliveries(
                tx,
                [d for event_id in planned if event_id in marked for d in planned[event_id]],
                now,
            )
            for occurrence, attempt, error in deferred:
                delay = timedelta(seconds=full_jitter(attempt, base=1.0, cap=60.0) + 0.5)
                log.warning("planning %s deferred: %s", occurrence.event_id, error.detail)
                await store.defer_occurrence(tx, occurrence.event_id, now + delay)

        await in_transaction(self._engine, write)

    async def _read(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        return await read(self._engine, work)

    async def _plan(
        self,
        occurrence: Occurrence,
        contacts: list[Contact],
        prefs: Mapping[str, Preferences],
        wrapped: Mapping[str, str],
        ciphers: dict[str, FieldCipher],
        endpoints: Sequence[Endpoint],
        now: datetime,
    ) -> list[NewDelivery]:
        """The deliveries of one occurrence (its ``plan <kind>`` span)."""
        with TRACER.start_as_current_span(
            f"plan {occurrence.kind.value}",
            context=trace_of(occurrence.traceparent),
            attributes={"lastro.event.id": occurrence.event_id},
        ):
            planned: list[NewDelivery] = []
            if is_stale(occurrence.occurred_at, now, self.config.max_event_age):
                EVENTS_SKIPPED.labels("stale").inc()
            else:
                for contact in contacts:
                    customer = contact.customer_id
                    mine = prefs.get(customer) or Preferences(customer)
                    messages = customer_messages(occurrence.kind, mine, contact, now)
                    if not messages:
                        continue
                    if customer not in ciphers:
                        ciphers[customer] = await self._sealer.cipher_from(
                            customer, wrapped.get(customer)
                        )
                    planned += [
                        self._message(occurrence, contact, mine, m, ciphers[customer])
                        for m in messages
                    ]
            owners = {c.owner for c in contacts}
            if occurrence.user_id is not None:
                owners.add(occurrence.user_id)
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
                if endpoint.owner in owners and endpoint.accepts(occurrence.kind)
            ]
            return planned

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
