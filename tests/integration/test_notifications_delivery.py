"""Events in, messages out: the notification service against the real stack.

Real PostgreSQL, Kafka (events published through a real outbox and relay, signed),
KMS, the dev stack's SMTP sink, the account service in-process for contacts, the
SMS gateway stand-in process and merchant receivers on loopback. Retries are
compressed (50 ms doubling to 400 ms, 4 attempts; an endpoint is disabled after 6
failures in a row).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from accounts_app import AccountsApi, running_accounts
from aiokafka import AIOKafkaConsumer
from notifications_kit import (
    EventPublisher,
    NotificationsApi,
    Receiver,
    SmsGateway,
    event_publisher,
    eventually,
    mail_to,
    phone_number,
    running_notifications,
    sms_gateway,
    start_group_at_end,
    webhook_receiver,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.config import Settings
from lastro.core.events import CloudEvent, EventSigner
from lastro.core.security.transit import TransitClient, TransitError
from lastro.notifications import store
from lastro.notifications.sealing import WEBHOOK_SECRETS_KEY, WebhookSecrets

PROBLEM = "https://lastro.dev/problems/"


@dataclass
class World:
    accounts: AccountsApi
    sms: SmsGateway
    publisher: EventPublisher
    notifications: NotificationsApi


@pytest.fixture(scope="module")
async def world(
    settings: Settings, engine: AsyncEngine, signer: EventSigner
) -> AsyncIterator[World]:
    async with (
        running_accounts(settings, engine, "notif_accounts") as accounts,
        sms_gateway(settings) as sms,
        event_publisher(settings, engine, signer) as publisher,
        running_notifications(
            settings, engine, "notif_delivery", accounts=accounts
        ) as notifications,
    ):
        yield World(accounts, sms, publisher, notifications)


@dataclass
class Person:
    owner: str
    customer_id: str
    account_id: str
    email: str
    phone: str


async def new_person(world: World, *, locale: str = "en", **prefs: Any) -> Person:
    """A customer (with an account) owned by a new user, with preferences set."""
    owner = f"usr_{uuid.uuid4().hex[:12]}"
    tag = uuid.uuid4().hex[:10]
    email = f"{tag}@example.com"
    phone = phone_number()
    customer = await world.accounts.call(
        "POST",
        "/v1/customers",
        world.accounts.customer(owner),
        expect=201,
        json={"name": f"Ana {tag}", "email": email, "phone": phone, "document_number": tag},
    )
    account = await world.accounts.call(
        "POST",
        "/v1/accounts",
        world.accounts.customer(owner),
        expect=201,
        json={"customer_id": customer["id"], "currency": "BRL"},
    )
    await world.notifications.call(
        "PUT",
        "/v1/preferences",
        world.notifications.bearer(owner),
        expect=200,
        template="/v1/preferences",
        json={"customer_id": customer["id"], "locale": locale, **prefs},
    )
    return Person(owner, customer["id"], account["id"], email, phone)


def transaction_event(
    person: Person, type_: str = "lastro.transaction.posted", **extra: Any
) -> CloudEvent:
    return CloudEvent(
        type=type_,
        source="/transactions",
        subject=f"txn_{uuid.uuid4().hex}",
        data={
            "transaction_id": f"txn_{uuid.uuid4().hex[:20]}",
            "type": "transfer",
            "status": type_.rsplit(".", 1)[1],
            "amount": 125000,
            "currency": "BRL",
            "customer_id": person.customer_id,
            "source_account_id": person.account_id,
            "destination_account_id": "acc_somebody_else",
            "device_id": "dev_1",
            "ip": "203.0.113.7",
            "occurred_at": datetime.now(UTC).isoformat(),
            **extra,
        },
    )


def identity_event(user_id: str, type_: str = "lastro.identity.totp_enabled") -> CloudEvent:
    return CloudEvent(
        type=type_,
        source="/identity",
        subject=user_id,
        data={"user_id": user_id, "at": datetime.now(UTC).isoformat()},
    )


async def publish(world: World, event: CloudEvent) -> CloudEvent:
    topic = (
        "lastro.identity" if event.type.startswith("lastro.identity.") else "lastro.transactions"
    )
    return await world.publisher.publish(event, topic=topic, key=event.subject or event.id)


async def deliveries_of(world: World, owner: str, event: CloudEvent) -> list[dict[str, Any]]:
    return await world.notifications.deliveries(owner, event_id=event.id)


async def settled(world: World, owner: str, event: CloudEvent, count: int) -> list[dict[str, Any]]:
    """Wait until ``count`` deliveries of ``event`` exist and none is pending."""

    async def check() -> list[dict[str, Any]] | None:
        found = await deliveries_of(world, owner, event)
        if len(found) == count and all(d["status"] != "pending" for d in found):
            return found
        return None

    result: list[dict[str, Any]] = await eventually(check, 30, f"{count} settled deliveries")
    return result


async def endpoint_for(world: World, owner: str, receiver: Receiver, **fields: Any) -> str:
    endpoint, secret = await world.notifications.register(owner, receiver.url, **fields)
    receiver.secrets.append(secret)
    return str(endpoint["id"])


@pytest.fixture
async def unpolled(world: World, settings: Settings, engine: AsyncEngine) -> AsyncIterator[World]:
    """A second notification service whose loops poll only every ten minutes: whatever
    it delivers within a test's timeout, it delivered because a commit woke it. Only
    while its test runs (it consumes the same events: other tests would see twice the
    mail)."""
    async with running_notifications(
        settings, engine, "notif_wake", accounts=world.accounts, poll_seconds=600.0
    ) as notifications:
        yield World(world.accounts, world.sms, world.publisher, notifications)


async def test_a_consumed_event_wakes_the_planner_and_the_planner_the_delivery_loop(
    unpolled: World, settings: Settings
) -> None:
    person = await new_person(unpolled)
    async with webhook_receiver(settings) as receiver:
        endpoint = await endpoint_for(unpolled, person.owner, receiver)
        event = await publish(unpolled, transaction_event(person))
        found = await settled(unpolled, person.owner, event, 3)
        assert all(d["status"] == "delivered" for d in found)
        assert [hook.payload["data"]["event_id"] for hook in receiver.received] == [event.id]

        # An API call that makes a delivery (a test webhook) wakes the loop too.
        sent = await unpolled.notifications.call(
            "POST",
            f"/v1/webhook-endpoints/{endpoint}/test",
            unpolled.notifications.bearer(person.owner),
            expect=202,
            template="/v1/webhook-endpoints/{id}/test",
        )
        await eventually(
            lambda: asyncio.sleep(0, result=len(receiver.received) == 2),
            30,
            "the test webhook",
        )
        assert receiver.received[-1].webhook_id == sent["id"]


# ---------------------------------------------------------------- the happy path


async def test_a_posted_transfer_reaches_the_merchant_the_mailbox_and_the_phone_once(
    world: World, settings: Settings
) -> None:
    person = await new_person(world, locale="pt-BR", timezone="America/Sao_Paulo")
    async with webhook_receiver(settings) as receiver:
        await endpoint_for(world, person.owner, receiver)
        event = await publish(world, transaction_event(person))
        found = await settled(world, person.owner, event, 3)

        assert {d["channel"]: d["status"] for d in found} == {
            "webhook": "delivered",
            "email": "delivered",
            "sms": "delivered",
        }
        by_channel = {d["channel"]: d["id"] for d in found}

        (hook,) = receiver.received
        assert hook.verified_with == [0]
        assert hook.webhook_id == by_channel["webhook"]
        assert hook.payload["type"] == "transaction.succeeded"
        assert hook.payload["data"]["event_id"] == event.id
        assert hook.payload["data"]["amount"] == 125000
        assert "ip" not in hook.payload["data"]

    (mail,) = mail_to(settings, person.email)
    assert mail.tls.startswith("TLSv1.")
    assert mail.message_id == f"<{by_channel['email']}@lastro.dev>"
    assert mail.subject == "Transação concluída: R$\xa01.250,00"
    assert mail.message.get_content_type() == "multipart/alternative"
    text, html = mail.part("text/plain"), mail.part("text/html")
    assert text is not None and html is not None
    assert f"••••{person.account_id[-4:]}" in text and person.account_id not in text
    assert "<p>" in html and "R$\xa01.250,00" in html

    (sms,) = await world.sms.messages(to=person.phone)
    assert sms["reference"] == by_channel["sms"]
    assert "R$\xa01.250,00" in sms["body"]

    log = await world.notifications.delivery(person.owner, by_channel["webhook"])
    (attempt,) = log["attempts"]
    assert (attempt["outcome"], attempt["status_code"]) == ("delivered", 200)
    assert attempt["latency_ms"] is not None and attempt["latency_ms"] >= 0


# ---------------------------------------------------------------- signing secrets at rest


async def secret_rows(engine: AsyncEngine, schema: str, endpoint_id: str) -> list[Any]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                f'SELECT id, secret, bound FROM "{schema}".webhook_secrets '
                "WHERE endpoint_id = :endpoint"
            ),
            {"endpoint": endpoint_id},
        )
        return list(rows)


async def tamper_secret_row(
    engine: AsyncEngine, schema: str, secret_id: str, **columns: Any
) -> None:
    """What someone who can write the table does to one secret's row."""
    assignments = ", ".join(f"{column} = :{column}" for column in columns)
    async with engine.begin() as conn:
        await conn.execute(
            text(f'UPDATE "{schema}".webhook_secrets SET {assignments} WHERE id = :id'),
            {**columns, "id": secret_id},
        )


async def test_a_secret_copied_into_another_endpoints_row_signs_nothing_there(
    world: World, settings: Settings, engine: AsyncEngine
) -> None:
    """Someone who can write the table copies a victim endpoint's secret ciphertext
    into their own endpoint's row, hoping their deliveries get signed with it (a
    signature oracle for the victim's receiver). The ciphertext is bound to its row:
    it does not open there, the delivery is dead-lettered ``secret-unreadable`` and
    nothing reaches their receiver, while the victim's endpoint keeps working."""
    schema = world.notifications.schema
    victim, intruder = await new_person(world), await new_person(world)
    async with webhook_receiver(settings) as theirs, webhook_receiver(settings) as mine:
        victims = await endpoint_for(world, victim.owner, theirs)
        intruders = await endpoint_for(world, intruder.owner, mine)
        ((_, stolen, bound),) = await secret_rows(engine, schema, victims)
        assert bound
        ((own_id, _, _),) = await secret_rows(engine, schema, intruders)
        await tamper_secret_row(engine, schema, own_id, secret=stolen)

        event = await publish(world, transaction_event(intruder))
        found = await settled(world, intruder.owner, event, 3)
        (hook,) = [d for d in found if d["channel"] == "webhook"]
        assert hook["status"] == "dead"
        log = await world.notifications.delivery(intruder.owner, hook["id"])
        assert log["dead_reason"] == "secret-unreadable"
        assert mine.received == []

        event = await publish(world, transaction_event(victim))
        found = await settled(world, victim.owner, event, 3)
        assert all(d["status"] == "delivered" for d in found)
        (delivered,) = theirs.received
        assert delivered.verified_with == [0]


async def test_secrets_stored_before_binding_are_bound_once_and_keep_signing(
    world: World, settings: Settings, engine: AsyncEngine, transit: TransitClient
) -> None:
    """A row written before ciphertexts were bound to their row (encrypted without
    associated data, ``bound`` false) still signs, and ``bind_older`` (run when the
    service starts) re-encrypts it bound, once."""
    schema = world.notifications.schema
    person = await new_person(world)
    secrets = WebhookSecrets(transit)
    async with webhook_receiver(settings) as receiver:
        endpoint_id = await endpoint_for(world, person.owner, receiver)
        ((secret_id, _, _),) = await secret_rows(engine, schema, endpoint_id)
        clear = receiver.secrets[-1]
        unbound = await transit.encrypt(WEBHOOK_SECRETS_KEY, clear.encode())
        await tamper_secret_row(engine, schema, secret_id, secret=unbound, bound=False)
        with pytest.raises(TransitError):
            await secrets.reveal(secret_id, unbound)  # as a bound one it does not open
        assert await secrets.reveal(secret_id, unbound, bound=False) == clear

        # Another unbound row whose ciphertext does not open (tampered with): left as it
        # is, logged, and the binding of the others goes on.
        other = await new_person(world)
        async with webhook_receiver(settings) as elsewhere:
            broken_endpoint = await endpoint_for(world, other.owner, elsewhere)
        ((broken_id, broken, _),) = await secret_rows(engine, schema, broken_endpoint)
        await tamper_secret_row(engine, schema, broken_id, bound=False)

        schema_engine = store.bind_schema(engine, schema)
        assert await WebhookSecrets(transit).bind_older(schema_engine) == 1
        assert await WebhookSecrets(transit).bind_older(schema_engine) == 0
        ((_, still, still_bound),) = await secret_rows(engine, schema, broken_endpoint)
        assert (still, still_bound) == (broken, False)
        ((_, rebound, bound),) = await secret_rows(engine, schema, endpoint_id)
        assert bound and rebound != unbound
        assert await WebhookSecrets(transit).reveal(secret_id, rebound) == clear

        event = await publish(world, transaction_event(person))
        found = await settled(world, person.owner, event, 3)
        assert all(d["status"] == "delivered" for d in found)
        (hook,) = receiver.received
        assert hook.verified_with == [0]


# ---------------------------------------------------------------- retries and the DLQ


async def test_a_receiver_failing_three_times_gets_one_success_under_one_webhook_id(
    world: World, settings: Settings
) -> None:
    owner = f"usr_{uuid.uuid4().hex[:12]}"
    async with webhook_receiver(settings) as receiver:
        receiver.script = [500, 500, 500]
        await endpoint_for(world, owner, receiver)
        event = await publish(world, identity_event(owner))
        (delivery,) = await settled(world, owner, event, 1)

    assert delivery["status"] == "delivered"
    assert [r.answered for r in receiver.received] == [500, 500, 500, 200]
    assert receiver.ids() == {delivery["id"]}
    assert all(r.verified_with == [0] for r in receiver.received)
    assert len({r.timestamp for r in receiver.received}) >= 1  # re-signed per attempt
    log = await world.notifications.delivery(owner, delivery["id"])
    assert [(a["outcome"], a["status_code"]) for a in log["attempts"]] == [
        ("failed", 500),
        ("failed", 500),
        ("failed", 500),
        ("delivered", 200),
    ]


async def dead_letter_events(settings: Settings, group: str, wanted: str) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(
        "lastro.deadletter",
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    envelope: dict[str, Any] = json.loads(record.value or b"{}")
                    if envelope.get("subject") == wanted:
                        return envelope
        raise AssertionError(f"no dead-letter event for {wanted}")
    finally:
        await consumer.stop()


async def test_an_always_failing_receiver_ends_in_the_dlq_and_replay_delivers_it_once_healthy(
    world: World, settings: Settings
) -> None:
    owner = f"usr_{uuid.uuid4().hex[:12]}"
    dlq_group = f"dlq-watch-{uuid.uuid4().hex}"
    await start_group_at_end(settings, dlq_group, ("lastro.deadletter",))
    async with webhook_receiver(settings) as receiver:
        receiver.default = 503
        await endpoint_for(world, owner, receiver)
        event = await publish(world, identity_event(owner, "lastro.identity.totp_disabled"))
        (dead,) = await settled(world, owner, event, 1)
        assert dead["status"] == "dead"
        log = await world.notifications.delivery(owner, dead["id"])
        assert log["dead_reason"] == "exhausted"
        assert [a["status_code"] for a in log["attempts"]] == [503, 503, 503, 503]

        envelope = await dead_letter_events(settings, dlq_group, dead["id"])
        assert envelope["type"] == "lastro.notification.dead_lettered"
        assert envelope["data"] == {"delivery_id": dead["id"], "reason": "exhausted"}

        async def dlq_gauge() -> bool:
            async with world.notifications.client.get("/metrics") as response:
                text = await response.text()
            line = next(
                (
                    row
                    for row in text.splitlines()
                    if row.startswith('lastro_notifications_dead_letters{channel="webhook"}')
                ),
                "",
            )
            return bool(line) and float(line.split()[-1]) >= 1

        await eventually(dlq_gauge, 15, "the DLQ size gauge")

        receiver.default = 200
        replayed = await world.notifications.call(
            "POST",
            f"/v1/deliveries/{dead['id']}/replay",
            world.notifications.bearer(owner),
            expect=202,
            template="/v1/deliveries/{id}/replay",
        )
        assert replayed["status"] == "pending"
        (done,) = await settled(world, owner, event, 1)

    assert done["status"] == "delivered"
    assert receiver.ids() == {dead["id"]}
    assert len(receiver.successes()) == 1 and len(receiver.received) == 5
    again = await world.notifications.call(
        "POST",
        f"/v1/deliveries/{dead['id']}/replay",
        world.notifications.bearer(owner),
        expect=409,
    )
    assert again["type"] == PROBLEM + "delivery-not-replayable"
    async with world.notifications.client.get("/metrics") as response:
        metrics = await response.text()
    assert 'lastro_notifications_deliveries_total{channel="webhook",outcome="dead"}' in metrics
    assert 'lastro_notifications_attempts_total{channel="webhook",outcome="failed"}' in metrics
    assert 'lastro_notifications_retry_queue_depth{channel="webhook"}' in metrics
    assert "lastro_notifications_attempt_duration_seconds_bucket" in metrics


async def test_an_endpoint_failing_a_run_of_attempts_is_disabled_and_its_owner_told(
    world: World, settings: Settings
) -> None:
    owner = f"usr_{uuid.uuid4().hex[:12]}"
    notice = f"ops-{uuid.uuid4().hex[:8]}@merchant.example"
    async with webhook_receiver(settings) as receiver:
        receiver.default = 500
        endpoint_id = await endpoint_for(world, owner, receiver, notice_email=notice)
        first = await publish(world, identity_event(owner))
        second = await publish(world, identity_event(owner, "lastro.identity.totp_disabled"))

        async def disabled() -> dict[str, Any] | None:
            found: dict[str, Any] = await world.notifications.call(
                "GET",
                f"/v1/webhook-endpoints/{endpoint_id}",
                world.notifications.bearer(owner),
                expect=200,
            )
            return found if found["status"] == "disabled" else None

        endpoint = await eventually(disabled, 30, "the endpoint to be disabled")
        assert endpoint["disabled_reason"] == "6 failed delivery attempts in a row"
        for event in (first, second):
            (delivery,) = await settled(world, owner, event, 1)
            assert delivery["status"] == "dead"
        # The sixth failure disables the endpoint. The other delivery's attempt may be
        # out already, claimed in the same batch (a batch's attempts run concurrently):
        # then the last two attempts are one of each delivery, and nothing follows.
        received = receiver.received
        assert len(received) in (6, 7), received
        if len(received) == 7:
            assert received[-1].webhook_id != received[-2].webhook_id, received

        (mail,) = await eventually(lambda: _mail(settings, notice), 30, "the notice e-mail")
        assert mail.subject == f"Webhook endpoint {endpoint_id} disabled"
        assert "6 failed delivery attempts in a row" in (mail.part("text/plain") or "")

        third = await publish(world, identity_event(owner))
        await asyncio.sleep(1.5)  # time for the consumer and planner; nothing may come
        assert await deliveries_of(world, owner, third) == []

        receiver.default = 200
        enabled = await world.notifications.call(
            "PATCH",
            f"/v1/webhook-endpoints/{endpoint_id}",
            world.notifications.bearer(owner),
            expect=200,
            template="/v1/webhook-endpoints/{id}",
            json={"status": "enabled"},
        )
        assert (enabled["status"], enabled["consecutive_failures"]) == ("enabled", 0)
        (dead,) = await deliveries_of(world, owner, first)
        await world.notifications.call(
            "POST",
            f"/v1/deliveries/{dead['id']}/replay",
            world.notifications.bearer(owner),
            expect=202,
        )
        (redone,) = await settled(world, owner, first, 1)
        assert redone["status"] == "delivered"


async def _mail(settings: Settings, address: str) -> list[Any]:
    return mail_to(settings, address)


# ---------------------------------------------------------------- exactly once


async def duplicates_seen(world: World) -> float:
    async with world.notifications.client.get("/metrics") as response:
        text = await response.text()
    group = f'consumer="notifications-test-{world.notifications.schema}"'
    rows = [
        r
        for r in text.splitlines()
        if r.startswith("lastro_events_duplicate_total{") and group in r
    ]
    return sum(float(r.split()[-1]) for r in rows)


async def test_the_same_event_published_twice_notifies_each_destination_once(
    world: World, settings: Settings
) -> None:
    person = await new_person(world)
    async with webhook_receiver(settings) as receiver:
        await endpoint_for(world, person.owner, receiver)
        event = transaction_event(
            person, "lastro.transaction.declined", reason="insufficient_funds"
        )
        before = await duplicates_seen(world)
        await publish(world, event)
        await world.publisher.republish(event)
        found = await settled(world, person.owner, event, 3)
        await eventually(
            lambda: _greater(duplicates_seen(world), before), 30, "the duplicate to be consumed"
        )
        assert len(await deliveries_of(world, person.owner, event)) == 3
        assert len(receiver.received) == 1

    assert {d["status"] for d in found} == {"delivered"}
    (mail,) = mail_to(settings, person.email)
    assert mail.subject == "Transaction declined: R$1,250.00"
    assert len(await world.sms.messages(to=person.phone)) == 1


async def _greater(value: Any, than: float) -> bool:
    return float(await value) > than


# ---------------------------------------------------------------- preferences at work


async def test_quiet_hours_delay_a_transfer_notice_but_never_a_fraud_alert(
    world: World, settings: Settings
) -> None:
    now = datetime.now(UTC)
    start, end = (now - timedelta(hours=1)).strftime("%H:%M"), (now + timedelta(hours=2))
    person = await new_person(
        world,
        timezone="UTC",
        quiet_hours={"start": start, "end": end.strftime("%H:%M")},
        channels={"transaction.succeeded": ["email"]},
    )
    transfer = await publish(world, transaction_event(person))
    alert = await world.publisher.publish(
        CloudEvent(
            type="lastro.fraud.alert_raised",
            source="/fraud",
            subject="alr_1",
            data={
                "alert_id": f"alr_{uuid.uuid4().hex[:10]}",
                "typology": "velocity",
                "severity": "high",
                "customer_id": person.customer_id,
                "account_id": person.account_id,
                "rule_ids": ["velocity-burst"],
            },
        ),
        topic="lastro.fraud",
        key=person.account_id,
    )
    alerts = await settled(world, person.owner, alert, 2)
    assert {d["channel"] for d in alerts} == {"email", "sms"}

    async def waiting() -> list[dict[str, Any]]:
        return await deliveries_of(world, person.owner, transfer)

    (held,) = await eventually(waiting, 30, "the transfer notice to be planned")
    assert held["channel"] == "email" and held["status"] == "pending"
    due = datetime.fromisoformat(held["next_attempt_at"])
    assert due == end.replace(second=0, microsecond=0)
    (mail,) = mail_to(settings, person.email)
    assert mail.subject == "Security alert on your account"
