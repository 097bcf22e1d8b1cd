"""Webhook targets against SSRF, at registration and again at delivery.

Host names resolve through a stub resolver, never the network; this service instance
allows no private network at all, so loopback is refused too. No test here opens a
connection: a refused target is refused before any connect, and the only name that
resolves to a public address is never contacted (registration only resolves).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from notifications_kit import (
    EventPublisher,
    NotificationsApi,
    StaticResolver,
    event_publisher,
    eventually,
    running_notifications,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.config import Settings
from lastro.core.events import CloudEvent, EventSigner

REFUSED = "https://lastro.dev/problems/webhook-target-refused"
PUBLIC = "93.184.216.34"  # a public address: only ever resolved here, never contacted


@pytest.fixture(scope="module")
async def resolver() -> StaticResolver:
    return StaticResolver(
        {
            "internal.example": ["10.1.2.3"],
            "metadata.example": ["169.254.169.254"],
            "loopback.example": ["127.0.0.1"],
            "v6-loopback.example": ["::1"],
            "mixed.example": [PUBLIC, "192.168.0.10"],
            "mapped.example": ["::ffff:169.254.169.254"],
        }
    )


@pytest.fixture(scope="module")
async def service(
    settings: Settings, engine: AsyncEngine, resolver: StaticResolver
) -> AsyncIterator[NotificationsApi]:
    async with running_notifications(
        settings, engine, "notif_ssrf", resolver=resolver, webhook_allow_cidrs=()
    ) as api:
        yield api


@pytest.fixture(scope="module")
async def publisher(
    settings: Settings, engine: AsyncEngine, signer: EventSigner
) -> AsyncIterator[EventPublisher]:
    async with event_publisher(settings, engine, signer) as p:
        yield p


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://127.0.0.1/hook", "loopback"),
        ("https://10.0.0.5/hook", "private"),
        ("https://169.254.169.254/latest/meta-data/", "link-local"),
        ("https://[::1]/hook", "loopback"),
        ("https://[::ffff:10.0.0.5]/hook", "embeds 10.0.0.5"),
        ("https://internal.example/hook", "10.1.2.3 is a private address"),
        ("https://metadata.example/hook", "169.254.169.254 is a link-local address"),
        ("https://loopback.example:8443/hook", "127.0.0.1 is a loopback address"),
        ("https://v6-loopback.example/hook", "::1 is a loopback address"),
        ("https://mixed.example/hook", "192.168.0.10 is a private address"),
        ("https://mapped.example/hook", "embeds 169.254.169.254"),
        ("https://nowhere.example/hook", "does not resolve"),
    ],
)
async def test_registration_refuses_private_loopback_and_link_local_targets(
    service: NotificationsApi, url: str, reason: str
) -> None:
    owner = f"usr_{uuid.uuid4().hex[:12]}"
    problem = await service.call(
        "POST",
        "/v1/webhook-endpoints",
        service.bearer(owner),
        expect=422,
        json={"url": url},
    )
    assert problem["type"] == REFUSED
    assert reason in problem["detail"]
    assert problem["errors"][0]["field"] == "url"
    listed = await service.call("GET", "/v1/webhook-endpoints", service.bearer(owner), expect=200)
    assert listed["data"] == []


async def test_plain_http_is_refused_for_public_targets(
    service: NotificationsApi, resolver: StaticResolver
) -> None:
    resolver.table["plain.example"] = [PUBLIC]
    problem = await service.call(
        "POST",
        "/v1/webhook-endpoints",
        service.bearer("usr_plain"),
        expect=422,
        json={"url": "http://plain.example/hook"},
    )
    assert problem["type"] == "https://lastro.dev/problems/invalid-webhook-url"


async def test_a_name_that_later_resolves_to_metadata_is_refused_at_delivery(
    service: NotificationsApi, resolver: StaticResolver, publisher: EventPublisher
) -> None:
    owner = f"usr_{uuid.uuid4().hex[:12]}"
    host = f"rebind-{uuid.uuid4().hex[:8]}.example"
    resolver.table[host] = [PUBLIC]
    endpoint, _ = await service.register(owner, f"https://{host}/hook")

    problem = await service.call(
        "PATCH",
        f"/v1/webhook-endpoints/{endpoint['id']}",
        service.bearer(owner),
        expect=422,
        json={"url": "https://metadata.example/hook"},
    )
    assert problem["type"] == REFUSED

    resolver.table[host] = ["169.254.169.254"]  # DNS changed after registration
    event = CloudEvent(
        type="lastro.identity.totp_enabled",
        source="/identity",
        subject=owner,
        data={"user_id": owner, "at": datetime.now(UTC).isoformat()},
    )
    await publisher.publish(event, topic="lastro.identity", key=owner)

    async def dead() -> list[dict[str, object]] | None:
        found = await service.deliveries(owner, event_id=event.id)
        return found if found and found[0]["status"] == "dead" else None

    (delivery,) = await eventually(dead, 30, "the delivery to be refused")
    log = await service.delivery(owner, str(delivery["id"]))
    assert log["dead_reason"] == "target-refused"
    (attempt,) = log["attempts"]
    assert attempt["outcome"] == "refused" and attempt["status_code"] is None
    assert "169.254.169.254 is a link-local address" in attempt["error"]
