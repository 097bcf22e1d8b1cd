"""The privacy API (docs/interfaces.md): export, erase by crypto-shredding, purge."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from accounts_app import AccountsApi, running_accounts
from notifications_kit import (
    EventPublisher,
    NotificationsApi,
    event_publisher,
    eventually,
    phone_number,
    running_notifications,
    sms_gateway,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.config import Settings
from lastro.core.events import CloudEvent, EventSigner

PROBLEM = "https://lastro.dev/problems/"


@dataclass
class World:
    accounts: AccountsApi
    publisher: EventPublisher
    api: NotificationsApi


@pytest.fixture(scope="module")
async def world(
    settings: Settings, engine: AsyncEngine, signer: EventSigner
) -> AsyncIterator[World]:
    async with (
        running_accounts(settings, engine, "notif_privacy_accounts") as accounts,
        sms_gateway(settings),
        event_publisher(settings, engine, signer) as publisher,
        running_notifications(settings, engine, "notif_privacy", accounts=accounts) as api,
    ):
        yield World(accounts, publisher, api)


@dataclass
class Notified:
    owner: str
    customer_id: str
    email: str
    phone: str
    deliveries: list[dict[str, Any]]


async def notified_customer(world: World) -> Notified:
    """A customer with preferences, told about one refund by e-mail and SMS."""
    owner = f"usr_{uuid.uuid4().hex[:12]}"
    tag = uuid.uuid4().hex[:10]
    email, phone = f"{tag}@example.com", phone_number()
    customer = await world.accounts.call(
        "POST",
        "/v1/customers",
        world.accounts.customer(owner),
        expect=201,
        json={"name": "Caio", "email": email, "phone": phone, "document_number": tag},
    )
    customer_id = customer["id"]
    await world.api.call(
        "PUT",
        "/v1/preferences",
        world.api.bearer(owner),
        expect=200,
        json={"customer_id": customer_id, "locale": "pt-BR", "marketing_consent": True},
    )
    event = CloudEvent(
        type="lastro.transaction.refunded",
        source="/transactions",
        subject="txn_refund",
        data={
            "transaction_id": f"txn_{tag}",
            "type": "card_payment",
            "amount": 4990,
            "currency": "BRL",
            "customer_id": customer_id,
            "source_account_id": "acc_01JD5Q8Z6M4V3W2X1Y0ZABCDEF",
        },
    )
    await world.publisher.publish(event, topic="lastro.transactions", key=customer_id)

    async def delivered() -> list[dict[str, Any]] | None:
        found = await world.api.deliveries(owner, event_id=event.id)
        ok = len(found) == 2 and all(d["status"] == "delivered" for d in found)
        return found if ok else None

    deliveries = await eventually(delivered, 30, "the refund notices")
    return Notified(owner, customer_id, email, phone, deliveries)


async def privacy(world: World, action: str, body: dict[str, Any], expect: int = 200) -> Any:
    return await world.api.call(
        "POST",
        f"/internal/v1/privacy/{action}",
        world.api.privacy(),
        expect=expect,
        template=f"/internal/v1/privacy/{action}",
        json=body,
    )


async def test_export_opens_what_is_held_and_nothing_is_stored_in_clear(
    world: World, engine: AsyncEngine
) -> None:
    person = await notified_customer(world)
    exported = await privacy(world, "export", {"customer_id": person.customer_id})
    records = exported["records"]
    (prefs,) = records["notifications.preferences"]
    assert prefs["locale"] == "pt-BR" and prefs["marketing_consent"] is True
    by_channel = {d["channel"]: d for d in records["notifications.deliveries"]}
    assert by_channel["email"]["address"] == person.email
    assert by_channel["sms"]["address"] == person.phone
    assert by_channel["email"]["message"]["subject"] == "Estorno de R$\xa049,90"
    assert by_channel["sms"]["message"]["body"].startswith("Lastro: estorno de R$\xa049,90")
    assert by_channel["email"]["attempts"][0]["outcome"] == "delivered"

    async with engine.connect() as conn:
        dump = await conn.execute(
            text(
                f'SELECT address, content FROM "{world.api.schema}".deliveries '
                "WHERE customer_id = :c"
            ),
            {"c": person.customer_id},
        )
        rows = dump.all()
    assert len(rows) == 2
    for address, content in rows:
        assert address.startswith("lf1:") and content.startswith("lf1:")
        assert person.email not in address + content and "49,90" not in content


async def test_erasure_crypto_shreds_and_is_idempotent(world: World, engine: AsyncEngine) -> None:
    person = await notified_customer(world)
    request = {
        "customer_id": person.customer_id,
        "reason": "GDPR art. 17 request",
        "request_id": f"prq_{uuid.uuid4().hex[:10]}",
    }
    erased = await privacy(world, "erase", request)
    assert erased["service"] == "notifications"
    counts = erased["erased"]
    assert counts["notifications.preferences"] == 1
    assert counts["notifications.addresses"] == 2
    assert counts["notifications.subject_keys"] == 1

    schema = world.api.schema
    async with engine.connect() as conn:
        key = await conn.scalar(
            text(f'SELECT count(*) FROM "{schema}".subject_keys WHERE subject_id = :c'),
            {"c": person.customer_id},
        )
        sealed = await conn.scalar(
            text(
                f'SELECT count(*) FROM "{schema}".deliveries WHERE customer_id = :c '
                "AND (address IS NOT NULL OR content IS NOT NULL)"
            ),
            {"c": person.customer_id},
        )
        audited = await conn.scalar(
            text(
                f"SELECT details->>'privacy_request_id' FROM \"{schema}\".audit_log "
                "WHERE action = 'privacy.erased' AND target = :c"
            ),
            {"c": person.customer_id},
        )
    assert (key, sealed, audited) == (0, 0, request["request_id"])

    after = (await privacy(world, "export", {"customer_id": person.customer_id}))["records"]
    assert after["notifications.preferences"] == []
    assert {(d["address"], d["message"]) for d in after["notifications.deliveries"]} == {
        (None, None)
    }
    assert {d["status"] for d in after["notifications.deliveries"]} == {"delivered"}

    again = (await privacy(world, "erase", request))["erased"]
    assert again["notifications.preferences"] == 0 and again["notifications.subject_keys"] == 0
    assert again["notifications.addresses"] == 0


async def test_retention_purges_rendered_messages_addresses_and_deliveries(world: World) -> None:
    person = await notified_customer(world)
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    earlier = (datetime.now(UTC) - timedelta(days=1)).isoformat()

    nothing = await privacy(
        world,
        "purge",
        {"data_class": "notifications.deliveries", "older_than": earlier, "action": "purge"},
    )
    assert nothing["affected"] == 0
    dry = await privacy(
        world,
        "purge",
        {
            "data_class": "notifications.rendered_messages",
            "older_than": later,
            "action": "anonymize",
            "dry_run": True,
        },
    )
    assert dry["affected"] >= 2
    exported = await privacy(world, "export", {"customer_id": person.customer_id})
    assert all(d["message"] for d in exported["records"]["notifications.deliveries"])

    cleared = await privacy(
        world,
        "purge",
        {"data_class": "notifications.rendered_messages", "older_than": later, "action": "purge"},
    )
    assert cleared["affected"] == dry["affected"]
    exported = await privacy(world, "export", {"customer_id": person.customer_id})
    records = exported["records"]["notifications.deliveries"]
    assert {d["message"] for d in records} == {None}
    assert {d["address"] for d in records} == {person.email, person.phone}

    gone = await privacy(
        world,
        "purge",
        {"data_class": "notifications.deliveries", "older_than": later, "action": "purge"},
    )
    assert gone["affected"] >= 2
    assert await world.api.deliveries(person.owner) == []


@pytest.mark.parametrize(
    ("body", "slug"),
    [
        ({"data_class": "notifications.passwords", "action": "purge"}, "unsupported-data-class"),
        (
            {"data_class": "notifications.deliveries", "action": "crypto-shred"},
            "unsupported-retention-action",
        ),
        (
            {
                "data_class": "notifications.deliveries",
                "action": "purge",
                "older_than": "2026-01-01T00:00:00",
            },
            "validation-error",
        ),
    ],
)
async def test_purge_refuses_what_it_cannot_do(
    world: World, body: dict[str, Any], slug: str
) -> None:
    request = {"older_than": "2026-01-01T00:00:00Z", **body}
    problem = await privacy(world, "purge", request, expect=422)
    assert problem["type"] == PROBLEM + slug


async def test_the_privacy_api_needs_its_scope(world: World) -> None:
    problem = await world.api.call(
        "POST",
        "/internal/v1/privacy/export",
        world.api.bearer("usr_curious"),
        expect=403,
        json={"customer_id": "cus_x"},
    )
    assert problem["type"] == PROBLEM + "insufficient-scope"
