"""The notification API: endpoints and secret rotation, test-send, preferences and
ownership, the delivery log; every answer checked against openapi.yaml."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from accounts_app import AccountsApi, running_accounts
from notifications_kit import (
    NotificationsApi,
    eventually,
    running_notifications,
    webhook_receiver,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.config import Settings

PROBLEM = "https://lastro.dev/problems/"


@dataclass
class World:
    accounts: AccountsApi
    api: NotificationsApi


@pytest.fixture(scope="module")
async def world(settings: Settings, engine: AsyncEngine) -> AsyncIterator[World]:
    async with (
        running_accounts(settings, engine, "notif_api_accounts") as accounts,
        running_notifications(settings, engine, "notif_api", accounts=accounts) as api,
    ):
        yield World(accounts, api)


def owner() -> str:
    return f"usr_{uuid.uuid4().hex[:12]}"


async def settled(api: NotificationsApi, who: str, delivery_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        log = await api.delivery(who, delivery_id)
        return log if log["status"] != "pending" else None

    result: dict[str, Any] = await eventually(done, 30, f"delivery {delivery_id}")
    return result


async def test_endpoint_lifecycle_and_the_secret_is_shown_only_once(
    world: World, settings: Settings
) -> None:
    api, me = world.api, owner()
    async with webhook_receiver(settings) as receiver:
        created, secret = await api.register(
            me, receiver.url, description="orders", event_types=["payout.sent"]
        )
        assert created["status"] == "enabled" and created["event_types"] == ["payout.sent"]
        assert created["notice_email"] is False
        path = f"/v1/webhook-endpoints/{created['id']}"
        shown = await api.call(
            "GET", path, api.bearer(me), expect=200, template="/v1/webhook-endpoints/{id}"
        )
        assert "secret" not in shown
        listed = await api.call(
            "GET",
            "/v1/webhook-endpoints",
            api.bearer(me),
            expect=200,
            template="/v1/webhook-endpoints",
        )
        assert [e["id"] for e in listed["data"]] == [created["id"]]

        changed = await api.call(
            "PATCH",
            path,
            api.bearer(me),
            expect=200,
            template="/v1/webhook-endpoints/{id}",
            json={
                "description": "all events",
                "event_types": [],
                "notice_email": "ops@shop.example",
            },
        )
        assert (changed["description"], changed["event_types"], changed["notice_email"]) == (
            "all events",
            [],
            True,
        )
        # somebody else sees nothing of it
        stranger = api.bearer(owner())
        for method in ("GET", "PATCH", "DELETE"):
            problem = await api.call(method, path, stranger, expect=404, json={"description": "x"})
            assert problem["type"] == PROBLEM + "unknown-webhook-endpoint"

        await api.call("DELETE", path, api.bearer(me), expect=204)
        await api.call("GET", path, api.bearer(me), expect=404)
        assert secret.startswith("whsec_")


async def send_test(api: NotificationsApi, who: str, endpoint_id: str) -> dict[str, Any]:
    queued = await api.call(
        "POST",
        f"/v1/webhook-endpoints/{endpoint_id}/test",
        api.bearer(who),
        expect=202,
        template="/v1/webhook-endpoints/{id}/test",
    )
    return await settled(api, who, queued["id"])


async def test_during_a_rotation_deliveries_are_signed_with_both_secrets(
    world: World, settings: Settings
) -> None:
    api, me = world.api, owner()
    async with webhook_receiver(settings) as receiver:
        endpoint, first = await api.register(me, receiver.url)
        receiver.secrets.append(first)
        rotate = f"/v1/webhook-endpoints/{endpoint['id']}/rotate-secret"
        rotated = await api.call(
            "POST",
            rotate,
            api.bearer(me),
            expect=200,
            template="/v1/webhook-endpoints/{id}/rotate-secret",
        )
        receiver.secrets.append(rotated["secret"])
        assert rotated["previous_expires_at"] is not None

        done = await send_test(api, me, endpoint["id"])
        assert done["status"] == "delivered" and done["kind"] == "webhook.test"
        assert receiver.received[-1].verified_with == [0, 1]  # old and new both verify
        assert receiver.received[-1].signature.count("v1,") == 2

        third = await api.call(
            "POST", rotate, api.bearer(me), expect=200, json={"expire_in_seconds": 0}
        )
        receiver.secrets.append(third["secret"])
        await send_test(api, me, endpoint["id"])
        assert receiver.received[-1].verified_with == [2]  # only the newest is active

        problem = await api.call(
            "POST", rotate, api.bearer(me), expect=422, json={"expire_in_seconds": 10**7}
        )
        assert problem["type"] == PROBLEM + "validation-error"


async def test_a_disabled_endpoint_gets_no_test_and_a_pending_delivery_cannot_be_replayed(
    world: World, settings: Settings
) -> None:
    api, me = world.api, owner()
    async with webhook_receiver(settings) as receiver:
        receiver.secrets.append((await api.register(me, receiver.url))[1])
        (endpoint,) = (await api.call("GET", "/v1/webhook-endpoints", api.bearer(me), expect=200))[
            "data"
        ]
        done = await send_test(api, me, endpoint["id"])
        problem = await api.call(
            "POST", f"/v1/deliveries/{done['id']}/replay", api.bearer(me), expect=409
        )
        assert problem["type"] == PROBLEM + "delivery-not-replayable"
        await api.call(
            "PATCH",
            f"/v1/webhook-endpoints/{endpoint['id']}",
            api.bearer(me),
            expect=200,
            json={"status": "disabled"},
        )
        problem = await api.call(
            "POST", f"/v1/webhook-endpoints/{endpoint['id']}/test", api.bearer(me), expect=409
        )
        assert problem["type"] == PROBLEM + "webhook-endpoint-disabled"


async def new_customer(world: World, who: str) -> str:
    tag = uuid.uuid4().hex[:10]
    customer = await world.accounts.call(
        "POST",
        "/v1/customers",
        world.accounts.customer(who),
        expect=201,
        json={"name": "Bia", "email": f"{tag}@example.com", "document_number": tag},
    )
    return str(customer["id"])


async def test_preferences_belong_to_the_customers_owner(world: World) -> None:
    api, me = world.api, owner()
    customer_id = await new_customer(world, me)
    defaults = await api.call(
        "GET",
        "/v1/preferences",
        api.bearer(me),
        expect=200,
        template="/v1/preferences",
        params={"customer_id": customer_id},
    )
    assert defaults == {
        "customer_id": customer_id,
        "locale": "en",
        "timezone": "UTC",
        "quiet_hours": None,
        "channels": {},
        "marketing_consent": False,
        "updated_at": None,
    }
    chosen = {
        "customer_id": customer_id,
        "locale": "pt-BR",
        "timezone": "America/Sao_Paulo",
        "quiet_hours": {"start": "22:00", "end": "07:00"},
        "channels": {"transaction.succeeded": ["email"]},
        "marketing_consent": True,
    }
    saved = await api.call(
        "PUT",
        "/v1/preferences",
        api.bearer(me),
        expect=200,
        template="/v1/preferences",
        json=chosen,
    )
    again = await api.call(
        "GET", "/v1/preferences", api.bearer(me), expect=200, params={"customer_id": customer_id}
    )
    assert saved == again and {k: again[k] for k in chosen} == chosen

    for method, kwargs in (
        ("GET", {"params": {"customer_id": customer_id}}),
        ("PUT", {"json": {"customer_id": customer_id, "locale": "en"}}),
    ):
        problem = await api.call(
            method, "/v1/preferences", api.bearer(owner()), expect=404, **kwargs
        )
        assert problem["type"] == PROBLEM + "unknown-customer"
    unknown = await api.call(
        "GET", "/v1/preferences", api.bearer(me), expect=404, params={"customer_id": "cus_nobody"}
    )
    assert unknown["type"] == PROBLEM + "unknown-customer"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"locale": "fr"}, "locale"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"quiet_hours": {"start": "25:00", "end": "07:00"}}, "quiet_hours"),
        ({"channels": {"payout.sent": ["fax"]}}, "channels.payout.sent[0]"),
        ({"marketing_consent": "yes"}, "marketing_consent"),
    ],
)
async def test_bad_preferences_are_refused_naming_the_field(
    world: World, body: dict[str, Any], field: str
) -> None:
    api, me = world.api, owner()
    customer_id = await new_customer(world, me)
    problem = await api.call(
        "PUT",
        "/v1/preferences",
        api.bearer(me),
        expect=422,
        json={"customer_id": customer_id, **body},
    )
    assert field in [e["field"] for e in problem["errors"]]


async def test_scopes_tokens_and_bodies_are_enforced(world: World) -> None:
    api, me = world.api, owner()
    read_only = api.bearer(me, scope="notifications:read")
    problem = await api.call(
        "POST", "/v1/webhook-endpoints", read_only, expect=403, json={"url": "https://x.example/"}
    )
    assert problem["type"] == PROBLEM + "insufficient-scope"
    await api.call("GET", "/v1/webhook-endpoints", {}, expect=401)
    malformed = await api.call(
        "POST",
        "/v1/webhook-endpoints",
        {**api.bearer(me), "Content-Type": "application/json"},
        expect=400,
        data=b"{not json",
    )
    assert malformed["type"] == PROBLEM + "malformed-json"
    extra = await api.call(
        "POST",
        "/v1/webhook-endpoints",
        api.bearer(me),
        expect=422,
        json={"url": "https://x.example/", "secret": "whsec_mine"},
    )
    assert extra["type"] == PROBLEM + "validation-error"
    bad_type = await api.call(
        "POST",
        "/v1/webhook-endpoints",
        api.bearer(me),
        expect=422,
        json={"url": "https://x.example/", "event_types": ["webhook.test"]},
    )
    assert bad_type["type"] == PROBLEM + "validation-error"


async def test_the_delivery_log_pages_newest_first_and_hides_other_owners(
    world: World, settings: Settings
) -> None:
    api, me = world.api, owner()
    async with webhook_receiver(settings) as receiver:
        endpoint, secret = await api.register(me, receiver.url)
        receiver.secrets.append(secret)
        sent = [(await send_test(api, me, endpoint["id"]))["id"] for _ in range(3)]
    first = await api.call(
        "GET",
        "/v1/deliveries",
        api.bearer(me),
        expect=200,
        template="/v1/deliveries",
        params={"limit": "2"},
    )
    assert [d["id"] for d in first["data"]] == sent[::-1][:2] and first["has_more"]
    rest = await api.call(
        "GET",
        "/v1/deliveries",
        api.bearer(me),
        expect=200,
        params={"limit": "2", "cursor": first["next_cursor"]},
    )
    assert [d["id"] for d in rest["data"]] == [sent[0]] and not rest["has_more"]
    assert (await api.call("GET", "/v1/deliveries", api.bearer(owner()), expect=200))["data"] == []
    await api.call("GET", f"/v1/deliveries/{sent[0]}", api.bearer(owner()), expect=404)
