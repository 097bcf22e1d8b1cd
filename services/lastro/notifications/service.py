"""Use cases of the API: webhook endpoints, preferences, the delivery log, replay and
test-send.

Ownership: a merchant's endpoints belong to the token subject that created them; a
customer's preferences may be read and set by the customer's owner (the user or
client that created the customer in accounts); the delivery log shows the caller
the deliveries to their endpoints and to their customers. Anything else answers
exactly like an id that does not exist (404).

Every change runs in one transaction with its audit record and its event
(``core.changes.ChangeRecorder``): ids only, never a URL's secret parts, a secret
or a contact.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from lastro.core.changes import Caller, ChangeRecorder
from lastro.core.db import Engine, Tx, after_commit, in_transaction
from lastro.core.ids import new_id
from lastro.notifications import events, store
from lastro.notifications.channels import WebhookTargets
from lastro.notifications.domain.delivery import Attempt, Delivery, DeliveryStatus
from lastro.notifications.domain.errors import (
    DeliveryNotReplayable,
    EndpointDisabled,
    InvalidEndpoint,
    UnknownCustomer,
    UnknownDelivery,
    UnknownEndpoint,
)
from lastro.notifications.domain.kinds import Channel, Kind
from lastro.notifications.domain.preferences import (
    Preferences,
    parse_preferences,
    preferences_fields,
)
from lastro.notifications.domain.webhooks import (
    DEFAULT_ROTATION_OVERLAP,
    Endpoint,
    EndpointStatus,
    new_secret,
    rotation_expiries,
    subscription,
)
from lastro.notifications.ports import Contacts
from lastro.notifications.sealing import Sealer, WebhookSecrets, seal_text

_EMAIL: Final = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{2,63}")
MAX_DESCRIPTION: Final = 500


@dataclass(frozen=True)
class DeliveryLog:
    """A delivery with every attempt and, when dead-lettered, why."""

    delivery: Delivery
    attempts: list[Attempt]
    dead_reason: str | None


def _notice_email(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _EMAIL.fullmatch(value):
        raise InvalidEndpoint("notice_email must be an e-mail address", field="notice_email")
    return value


def _description(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
        raise InvalidEndpoint(f"description is text up to {MAX_DESCRIPTION}", field="description")
    return value


def utc_now() -> datetime:
    return datetime.now(UTC)


class Notifications:
    """The API's use cases over one notifications schema."""

    def __init__(
        self,
        engine: Engine,
        recorder: ChangeRecorder,
        sealer: Sealer,
        secrets: WebhookSecrets,
        targets: WebhookTargets,
        contacts: Contacts,
        *,
        clock: Callable[[], datetime] = utc_now,
        on_deliveries: Callable[[], None] = lambda: None,
    ) -> None:
        self._engine = engine
        self._on_deliveries = on_deliveries
        self._recorder = recorder
        self._sealer = sealer
        self._secrets = secrets
        self._targets = targets
        self._contacts = contacts
        self._clock = clock

    async def _record(
        self,
        tx: Tx,
        caller: Caller,
        action: str,
        target: str,
        data: Mapping[str, Any],
        event_type: str,
    ) -> None:
        await self._recorder.record(
            tx,
            caller,
            action=action,
            target=target,
            data=data,
            event_type=event_type,
            topic=events.TOPIC,
            key=target,
            now=self._clock(),
        )

    # ------------------------------------------------------------ preferences

    async def owner_of(self, customer_id: str) -> str | None:
        """Who owns the customer: learned from accounts' events, else asked."""
        async with self._engine.connect() as tx:
            owner = await store.owner_of(tx, customer_id)
        if owner is not None:
            return owner
        contact = await self._contacts.contact(customer_id)
        if contact is None:
            return None

        async def learn(tx: Tx) -> None:
            await store.record_owner(tx, customer_id, contact.owner, self._clock())

        await in_transaction(self._engine, learn)
        return contact.owner

    async def _require_owner(self, customer_id: str, owner: str | None) -> None:
        known = await self.owner_of(customer_id)
        if known is None or (owner is not None and known != owner):
            raise UnknownCustomer(f"customer {customer_id} does not exist", field="customer_id")

    async def preferences(self, customer_id: str, owner: str | None) -> Preferences:
        """The customer's preferences (the defaults if never set); UnknownCustomer
        unless ``owner`` owns the customer."""
        await self._require_owner(customer_id, owner)
        async with self._engine.connect() as tx:
            found = await store.get_preferences(tx, customer_id)
        return found or Preferences(customer_id)

    async def set_preferences(
        self, customer_id: str, owner: str | None, body: Mapping[str, Any], caller: Caller
    ) -> Preferences:
        """Replace the customer's preferences; raises InvalidPreferences naming the
        field, UnknownCustomer. Audited, ``lastro.preferences.updated``."""
        await self._require_owner(customer_id, owner)
        prefs = parse_preferences(customer_id, body, self._clock())
        fields = preferences_fields(prefs)

        async def work(tx: Tx) -> None:
            await store.put_preferences(tx, prefs, fields["channels"])
            await self._record(
                tx,
                caller,
                "preferences.updated",
                customer_id,
                {"customer_id": customer_id, "fields": sorted(body)},
                events.PREFERENCES_UPDATED,
            )

        await in_transaction(self._engine, work)
        return prefs

    # ------------------------------------------------------------ endpoints

    async def create_endpoint(
        self, owner: str, body: Mapping[str, Any], caller: Caller
    ) -> tuple[Endpoint, str]:
        """Register an endpoint for ``owner``; returns it and its signing secret (shown
        once). The URL is checked against the address policy now (and again at every
        delivery): InvalidWebhookUrl, WebhookTargetRefused, InvalidEndpoint."""
        url = body["url"]
        await self._targets.check(url)
        kinds = subscription(body.get("event_types", []))
        description = _description(body.get("description", ""))
        notice = _notice_email(body.get("notice_email"))
        now = self._clock()
        endpoint = Endpoint(
            id=new_id("whe"),
            owner=owner,
            url=url,
            description=description,
            event_types=kinds,
            status=EndpointStatus.ENABLED,
            consecutive_failures=0,
            notice_email=notice is not None,
            created_at=now,
            updated_at=now,
        )
        sealed = await self._seal_notice(owner, endpoint.id, notice)
        secret = new_secret()
        secret_id = new_id("whs")
        ciphertext = await self._secrets.encrypt(secret_id, secret)

        async def work(tx: Tx) -> None:
            await store.insert_endpoint(tx, endpoint, sealed, secret_id, ciphertext)
            await self._record(
                tx,
                caller,
                "webhook_endpoint.created",
                endpoint.id,
                {"endpoint_id": endpoint.id, "owner": owner},
                events.ENDPOINT_EVENT.format(fact="created"),
            )

        await in_transaction(self._engine, work)
        return endpoint, secret

    async def _seal_notice(self, owner: str, endpoint_id: str, notice: str | None) -> str | None:
        if notice is None:
            return None
        cipher = await self._sealer.cipher(owner)
        return seal_text(
            cipher, notice, table="webhook_endpoints", column="notice_email", row_id=endpoint_id
        )

    async def endpoints(self, owner: str) -> list[Endpoint]:
        async with self._engine.connect() as tx:
            return await store.list_endpoints(tx, owner)

    async def endpoint(self, endpoint_id: str, owner: str) -> Endpoint:
        """The endpoint; UnknownEndpoint if absent or not ``owner``'s."""
        async with self._engine.connect() as tx:
            found = await store.get_endpoint(tx, endpoint_id, owner)
        if found is None:
            raise UnknownEndpoint(f"webhook endpoint {endpoint_id} does not exist")
        return found

    async def update_endpoint(
        self, endpoint_id: str, owner: str, body: Mapping[str, Any], caller: Caller
    ) -> Endpoint:
        """Change url (checked again), description, event_types, notice_email (null
        clears it) or status; enabling a disabled endpoint clears its failure run."""
        await self.endpoint(endpoint_id, owner)
        values: dict[str, Any] = {}
        if "url" in body:
            await self._targets.check(body["url"])
            values["url"] = body["url"]
        if "description" in body:
            values["description"] = _description(body["description"])
        if "event_types" in body:
            values["event_types"] = sorted(k.value for k in subscription(body["event_types"]))
        if "notice_email" in body:
            notice = _notice_email(body["notice_email"])
            values["notice_email"] = await self._seal_notice(owner, endpoint_id, notice)
        now = self._clock()

        async def work(tx: Tx) -> Endpoint:
            current = await store.get_endpoint(tx, endpoint_id, owner, lock=True)
            if current is None:
                raise UnknownEndpoint(f"webhook endpoint {endpoint_id} does not exist")
            status = body.get("status")
            if status == EndpointStatus.ENABLED and current.status is EndpointStatus.DISABLED:
                values.update(
                    status=status, consecutive_failures=0, disabled_at=None, disabled_reason=None
                )
            elif status == EndpointStatus.DISABLED and current.status is EndpointStatus.ENABLED:
                values.update(status=status, disabled_at=now, disabled_reason="disabled by owner")
            await store.update_endpoint(tx, endpoint_id, {**values, "updated_at": now})
            await self._record(
                tx,
                caller,
                "webhook_endpoint.updated",
                endpoint_id,
                {"endpoint_id": endpoint_id, "fields": sorted(body)},
                events.ENDPOINT_EVENT.format(fact="updated"),
            )
            updated = await store.get_endpoint(tx, endpoint_id)
            assert updated is not None
            return updated

        return await in_transaction(self._engine, work)

    async def delete_endpoint(self, endpoint_id: str, owner: str, caller: Caller) -> None:
        """Delete the endpoint and its secrets; its pending deliveries are dead-lettered
        (``endpoint-deleted``), its delivery log stays."""
        now = self._clock()

        async def work(tx: Tx) -> list[str]:
            current = await store.get_endpoint(tx, endpoint_id, owner, lock=True)
            if current is None:
                raise UnknownEndpoint(f"webhook endpoint {endpoint_id} does not exist")
            secret_ids = [s.id for s in await store.secret_versions(tx, endpoint_id)]
            await store.kill_pending(tx, "endpoint-deleted", now, endpoint_id=endpoint_id)
            await store.delete_endpoint(tx, endpoint_id)
            await self._record(
                tx,
                caller,
                "webhook_endpoint.deleted",
                endpoint_id,
                {"endpoint_id": endpoint_id},
                events.ENDPOINT_EVENT.format(fact="deleted"),
            )
            return secret_ids

        self._secrets.forget(await in_transaction(self._engine, work))

    async def rotate_secret(
        self, endpoint_id: str, owner: str, overlap: timedelta | None, caller: Caller
    ) -> tuple[str, datetime | None]:
        """A new signing secret (returned once); the previous one keeps signing beside
        it for ``overlap`` (default 24 h, 0 ends it now), any older one ends now.
        Returns the secret and when the previous one stops being used."""
        await self.endpoint(endpoint_id, owner)
        secret = new_secret()
        secret_id = new_id("whs")
        ciphertext = await self._secrets.encrypt(secret_id, secret)
        now = self._clock()

        async def work(tx: Tx) -> datetime | None:
            if await store.get_endpoint(tx, endpoint_id, owner, lock=True) is None:
                raise UnknownEndpoint(f"webhook endpoint {endpoint_id} does not exist")
            current = await store.secret_versions(tx, endpoint_id)
            expiries = rotation_expiries(
                current, now, DEFAULT_ROTATION_OVERLAP if overlap is None else overlap
            )
            await store.expire_secrets(tx, expiries)
            await store.insert_secret(tx, endpoint_id, secret_id, ciphertext, now)
            await self._record(
                tx,
                caller,
                "webhook_endpoint.secret_rotated",
                endpoint_id,
                {"endpoint_id": endpoint_id, "secret_id": secret_id},
                events.ENDPOINT_EVENT.format(fact="secret_rotated"),
            )
            return max(expiries.values(), default=None)

        return secret, await in_transaction(self._engine, work)

    async def send_test(self, endpoint_id: str, owner: str, caller: Caller) -> DeliveryLog:
        """Queue a ``webhook.test`` delivery to the endpoint, due now; EndpointDisabled
        when it is disabled."""
        endpoint = await self.endpoint(endpoint_id, owner)
        if endpoint.status is not EndpointStatus.ENABLED:
            raise EndpointDisabled(f"webhook endpoint {endpoint_id} is disabled; enable it first")
        now = self._clock()
        event_id = new_id("evt")
        delivery = store.NewDelivery(
            id=new_id("dlv"),
            event_id=event_id,
            kind=Kind.WEBHOOK_TEST,
            channel=Channel.WEBHOOK,
            destination=endpoint_id,
            next_attempt_at=now,
            endpoint_id=endpoint_id,
            payload={
                "type": Kind.WEBHOOK_TEST.value,
                "timestamp": now.isoformat(),
                "data": {"event_id": event_id, "endpoint_id": endpoint_id},
            },
        )

        async def work(tx: Tx) -> DeliveryLog:
            await store.insert_deliveries(tx, [delivery], now)
            after_commit(tx, "notifications-deliver", self._on_deliveries)
            await self._recorder.audit(
                tx,
                caller,
                action="webhook_endpoint.test_sent",
                target=endpoint_id,
                details={"endpoint_id": endpoint_id, "delivery_id": delivery.id},
                now=now,
            )
            return await self._log(tx, delivery.id)

        return await in_transaction(self._engine, work)

    # ------------------------------------------------------------ deliveries

    async def deliveries(self, query: store.DeliveryFilter) -> list[Delivery]:
        async with self._engine.connect() as tx:
            return await store.list_deliveries(tx, query)

    async def _log(self, tx: Tx, delivery_id: str) -> DeliveryLog:
        delivery = await store.get_delivery(tx, delivery_id)
        if delivery is None:
            raise UnknownDelivery(f"delivery {delivery_id} does not exist")
        attempts = await store.attempts_of(tx, [delivery_id])
        reason = await store.dead_reason(tx, delivery_id)
        return DeliveryLog(delivery, attempts[delivery_id], reason)

    async def _visible(self, tx: Tx, delivery: Delivery, owner: str | None) -> bool:
        if owner is None:
            return True
        if delivery.endpoint_id is not None:
            endpoint = await store.get_endpoint(tx, delivery.endpoint_id, owner)
            if endpoint is not None:
                return True
        if delivery.customer_id is not None and delivery.channel is not Channel.WEBHOOK:
            return await store.owner_of(tx, delivery.customer_id) == owner
        return False

    async def delivery(self, delivery_id: str, owner: str | None) -> DeliveryLog:
        """The delivery with its attempts; UnknownDelivery unless ``owner`` may see it."""
        async with self._engine.connect() as tx:
            log = await self._log(tx, delivery_id)
            if not await self._visible(tx, log.delivery, owner):
                raise UnknownDelivery(f"delivery {delivery_id} does not exist")
        return log

    async def replay(self, delivery_id: str, owner: str | None, caller: Caller) -> DeliveryLog:
        """Send a dead-lettered delivery again, with its original id and a fresh round
        of attempts. DeliveryNotReplayable unless it is dead; EndpointDisabled while
        its endpoint is. Audited, ``lastro.notification.replayed``."""
        now = self._clock()

        async def work(tx: Tx) -> DeliveryLog:
            delivery = await store.get_delivery(tx, delivery_id, lock=True)
            if delivery is None or not await self._visible(tx, delivery, owner):
                raise UnknownDelivery(f"delivery {delivery_id} does not exist")
            if delivery.status is not DeliveryStatus.DEAD:
                raise DeliveryNotReplayable(f"delivery {delivery_id} is {delivery.status}")
            if delivery.channel is Channel.WEBHOOK:
                endpoint = await store.get_endpoint(tx, delivery.endpoint_id or "")
                if endpoint is None:
                    raise UnknownEndpoint("the delivery's webhook endpoint was deleted")
                if endpoint.status is not EndpointStatus.ENABLED:
                    raise EndpointDisabled(
                        f"webhook endpoint {endpoint.id} is disabled; enable it first"
                    )
            await store.replay(tx, delivery_id, now)
            after_commit(tx, "notifications-deliver", self._on_deliveries)
            await self._record(
                tx,
                caller,
                "delivery.replayed",
                delivery_id,
                {"delivery_id": delivery_id, "event_id": delivery.event_id},
                events.REPLAYED,
            )
            return await self._log(tx, delivery_id)

        return await in_transaction(self._engine, work)
