"""The privacy API's use cases (docs/interfaces.md): export, erase, purge.

Data classes this service holds
    ``notifications.preferences``        a customer's channels, locale, quiet hours, consent
    ``notifications.deliveries``         every message planned, with its attempts
    ``notifications.rendered_messages``  the sealed text of e-mails and SMS
    ``notifications.addresses``          the sealed e-mail address or phone of a delivery
    ``notifications.webhook_endpoints``  a user's own endpoints and their notice address

Erasure crypto-shreds: the subject's data key is deleted, so every rendered message
and address sealed for the customer is unreadable even in backups (once the KMS key
versions that wrapped it are retired); the sealed columns are cleared too, pending
messages are dead-lettered (``erased``), preferences and the owner link are deleted.
The delivery log keeps ids, kinds, channels, times and outcomes. Erasing twice
changes nothing the second time.

Retention (``purge``): finished deliveries only (pending ones are in flight):
``notifications.deliveries`` ``purge`` deletes them with their attempts and dead
letters, ``anonymize`` clears address, message and webhook body;
``notifications.rendered_messages`` and ``notifications.addresses`` clear that
column (``purge`` and ``anonymize`` alike); ``notifications.audit_records``
``purge`` deletes the audit records older than the cutoff from the start of the
chain and anchors it there (``core.privacy.purge_audit_records``);
``notifications.published_events`` ``purge`` deletes the outbox rows published before
the cutoff (``core.privacy.purge_published_events``);
``notifications.applied_events`` ``purge`` deletes the inbox's record of events
applied before the cutoff, at least a week ago (``core.privacy.purge_applied_events``).
``crypto-shred`` is per subject, not per age: refused for every class.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core import privacy
from lastro.core.changes import Caller, ChangeRecorder
from lastro.core.db import Tx, in_transaction
from lastro.core.privacy import Erased, Erasure, Purge, Purged, Records, Subject
from lastro.notifications import store
from lastro.notifications.domain.delivery import Attempt, Delivery
from lastro.notifications.domain.preferences import preferences_fields
from lastro.notifications.sealing import Sealer, SubjectErased, open_json, open_text

SERVICE: Final = "notifications"
PREFERENCES: Final = "notifications.preferences"
DELIVERIES: Final = "notifications.deliveries"
RENDERED: Final = "notifications.rendered_messages"
ADDRESSES: Final = "notifications.addresses"
ENDPOINTS: Final = "notifications.webhook_endpoints"
SHARED: Final = privacy.SharedClasses(SERVICE, inbox=store.inbox)
PURGEABLE: Final[Mapping[str, frozenset[str]]] = {
    DELIVERIES: frozenset({"purge", "anonymize"}),
    RENDERED: frozenset({"purge", "anonymize"}),
    ADDRESSES: frozenset({"purge", "anonymize"}),
    **SHARED.actions,
}


def _attempt_record(attempt: Attempt) -> dict[str, Any]:
    return {
        "number": attempt.number,
        "started_at": attempt.started_at.isoformat(),
        "outcome": None if attempt.outcome is None else attempt.outcome.value,
        "status_code": attempt.status_code,
    }


def utc_now() -> datetime:
    return datetime.now(UTC)


class Privacy:
    """notifications' :class:`~lastro.core.privacy.PrivacyPort`."""

    service = SERVICE

    def __init__(
        self,
        engine: AsyncEngine,
        recorder: ChangeRecorder,
        sealer: Sealer,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._engine = engine
        self._recorder = recorder
        self._sealer = sealer
        self._clock = clock

    async def _delivery_record(
        self, tx: Tx, delivery: Delivery, attempts: list[Attempt]
    ) -> dict[str, Any]:
        record: dict[str, Any] = {
            "id": delivery.id,
            "event_id": delivery.event_id,
            "kind": delivery.kind.value,
            "channel": delivery.channel.value,
            "status": delivery.status.value,
            "created_at": delivery.created_at.isoformat(),
            "delivered_at": None
            if delivery.delivered_at is None
            else delivery.delivered_at.isoformat(),
            "address": None,
            "message": None,
            "attempts": [_attempt_record(a) for a in attempts],
        }
        if delivery.address is None and delivery.content is None:
            return record
        try:
            cipher = await self._sealer.existing(tx, delivery.subject_id or "")
        except SubjectErased:
            return record
        where = {"table": "deliveries", "row_id": delivery.id}
        if delivery.address is not None:
            record["address"] = open_text(cipher, delivery.address, column="address", **where)
        if delivery.content is not None:
            record["message"] = open_json(cipher, delivery.content, column="content", **where)
        return record

    async def export(self, subject: Subject, caller: Caller) -> Records:
        """Everything held about the customer (and the user's own endpoints), opened.
        The read of personal data is audited."""
        customer_id, user_id = subject.customer_id, subject.user_id

        async def work(tx: Tx) -> dict[str, list[dict[str, Any]]]:
            prefs = await store.get_preferences(tx, customer_id)
            deliveries = await store.deliveries_of_customer(tx, customer_id)
            attempts = await store.attempts_of(tx, [d.id for d in deliveries])
            records: dict[str, list[dict[str, Any]]] = {
                PREFERENCES: [] if prefs is None else [preferences_fields(prefs)],
                DELIVERIES: [
                    await self._delivery_record(tx, d, attempts[d.id]) for d in deliveries
                ],
            }
            if user_id is not None:
                records[ENDPOINTS] = [
                    {
                        "id": e.id,
                        "url": e.url,
                        "description": e.description,
                        "event_types": sorted(k.value for k in e.event_types),
                        "status": e.status.value,
                        "created_at": e.created_at.isoformat(),
                    }
                    for e in await store.list_endpoints(tx, user_id)
                ]
            await self._recorder.audit(
                tx,
                caller,
                action=privacy.EXPORTED,
                target=customer_id,
                details={"customer_id": customer_id, "user_id": user_id},
                now=self._clock(),
            )
            return records

        return await in_transaction(self._engine, work)

    async def erase(self, erasure: Erasure, caller: Caller) -> Erased:
        """Crypto-shred the customer's (and the user's) personal data here; returns
        counts per data class and when. Idempotent. Audited with the reason and
        request id."""
        customer_id, user_id = erasure.subject.customer_id, erasure.subject.user_id
        reason, request_id = erasure.reason, erasure.request_id
        now = self._clock()

        async def work(tx: Tx) -> dict[str, int]:
            shredded = await self._sealer.shred(tx, customer_id)
            addresses = await store.anonymize_customer_deliveries(tx, customer_id)
            killed = await store.kill_pending(tx, "erased", now, customer_id=customer_id)
            erased = {
                PREFERENCES: await store.delete_preferences(tx, customer_id),
                DELIVERIES: addresses,
                ADDRESSES: addresses,
                RENDERED: addresses,
                "notifications.pending_messages": len(killed)
                + await store.erase_occurrences_of(tx, customer_id, now),
                "notifications.subject_keys": int(shredded),
                "notifications.customer_owners": await store.forget_owner(tx, customer_id),
            }
            if user_id is not None:
                erased["notifications.subject_keys"] += int(await self._sealer.shred(tx, user_id))
                erased[ENDPOINTS] = await store.clear_notice_emails(tx, user_id, now)
            await self._recorder.audit(
                tx,
                caller,
                action=privacy.ERASED,
                target=customer_id,
                details={
                    "customer_id": customer_id,
                    "user_id": user_id,
                    "reason": reason,
                    "privacy_request_id": request_id,
                    "erased": erased,
                },
                now=now,
            )
            return erased

        return Erased(await in_transaction(self._engine, work), now)

    async def purge(self, purge: Purge, caller: Caller) -> Purged:
        """Apply a retention rule (module docstring); UnsupportedDataClass for a class
        this service does not hold, UnsupportedAction for an action it cannot do."""
        privacy.check_purge(SERVICE, PURGEABLE, purge)
        shared = await SHARED.purge(self._engine, self._recorder, purge, caller, now=self._clock())
        if shared is not None:
            return shared
        data_class, older_than, action, dry_run = (
            purge.data_class,
            purge.cutoff,
            purge.action,
            purge.dry_run,
        )

        async def work(tx: Tx) -> int:
            if data_class == DELIVERIES and action == "purge":
                affected = await store.purge_deliveries(tx, older_than, dry_run=dry_run)
            elif data_class == DELIVERIES:
                affected = await store.anonymize_deliveries(tx, older_than, dry_run=dry_run)
            else:
                column = "content" if data_class == RENDERED else "address"
                affected = await store.clear_delivery_column(
                    tx, column, older_than, dry_run=dry_run
                )
            if not dry_run:
                await self._recorder.audit(
                    tx,
                    caller,
                    action=privacy.PURGED,
                    target=data_class,
                    details={
                        "data_class": data_class,
                        "action": action,
                        "cutoff": older_than.isoformat(),
                        "affected": affected,
                    },
                    now=self._clock(),
                )
            return affected

        affected = await in_transaction(self._engine, work)
        return Purged(data_class, action, older_than, affected)
