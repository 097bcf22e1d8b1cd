"""HTTP handlers of the notification service: parse, call one use case, render.

Requests arrive authenticated and validated against ``openapi.yaml`` (scopes
included, ``core/http.py``); rule violations are DomainErrors rendered as
problem+json by the app factory. The owner a route acts for is always the token's
subject.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final

from aiohttp import web

from lastro.core.http import PARAMS_KEY, PRINCIPAL_KEY, caller_of, json_body, json_response
from lastro.core.privacy import add_privacy_routes
from lastro.notifications import store
from lastro.notifications.domain.delivery import Attempt, Delivery, DeliveryStatus
from lastro.notifications.domain.preferences import Preferences, preferences_fields
from lastro.notifications.domain.webhooks import Endpoint
from lastro.notifications.service import DeliveryLog, Notifications

NOTIFICATIONS_KEY: Final = web.AppKey("notifications", Notifications)
DEFAULT_PAGE: Final = 50

routes = web.RouteTableDef()


def _owner(request: web.Request) -> str:
    return request[PRINCIPAL_KEY].subject


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def endpoint_view(endpoint: Endpoint) -> dict[str, Any]:
    return {
        "id": endpoint.id,
        "object": "webhook_endpoint",
        "url": endpoint.url,
        "description": endpoint.description,
        "event_types": sorted(k.value for k in endpoint.event_types),
        "status": endpoint.status.value,
        "consecutive_failures": endpoint.consecutive_failures,
        "notice_email": endpoint.notice_email,
        "disabled_at": _iso(endpoint.disabled_at),
        "disabled_reason": endpoint.disabled_reason,
        "created_at": endpoint.created_at.isoformat(),
        "updated_at": endpoint.updated_at.isoformat(),
    }


def attempt_view(attempt: Attempt) -> dict[str, Any]:
    return {
        "number": attempt.number,
        "started_at": attempt.started_at.isoformat(),
        "finished_at": _iso(attempt.finished_at),
        "outcome": None if attempt.outcome is None else attempt.outcome.value,
        "status_code": attempt.status_code,
        "latency_ms": attempt.latency_ms,
        "error": attempt.error,
    }


def delivery_view(log: DeliveryLog | Delivery) -> dict[str, Any]:
    delivery = log.delivery if isinstance(log, DeliveryLog) else log
    view: dict[str, Any] = {
        "id": delivery.id,
        "object": "delivery",
        "event_id": delivery.event_id,
        "kind": delivery.kind.value,
        "channel": delivery.channel.value,
        "destination": delivery.destination,
        "status": delivery.status.value,
        "attempt_count": delivery.attempts,
        "next_attempt_at": _iso(delivery.next_attempt_at)
        if delivery.status is DeliveryStatus.PENDING
        else None,
        "delivered_at": _iso(delivery.delivered_at),
        "created_at": delivery.created_at.isoformat(),
        "last_error": delivery.last_error,
    }
    if isinstance(log, DeliveryLog):
        view["dead_reason"] = log.dead_reason
        view["attempts"] = [attempt_view(a) for a in log.attempts]
    return view


def preferences_view(preferences: Preferences) -> dict[str, Any]:
    return preferences_fields(preferences)


# ---------------------------------------------------------------- webhook endpoints


@routes.post("/v1/webhook-endpoints")
async def create_endpoint(request: web.Request) -> web.Response:
    body = await json_body(request)
    endpoint, secret = await request.app[NOTIFICATIONS_KEY].create_endpoint(
        _owner(request), body, caller_of(request)
    )
    return json_response(
        {**endpoint_view(endpoint), "secret": secret},
        201,
        headers={"Location": f"/v1/webhook-endpoints/{endpoint.id}"},
    )


@routes.get("/v1/webhook-endpoints")
async def list_endpoints(request: web.Request) -> web.Response:
    endpoints = await request.app[NOTIFICATIONS_KEY].endpoints(_owner(request))
    return json_response({"object": "list", "data": [endpoint_view(e) for e in endpoints]})


@routes.get("/v1/webhook-endpoints/{id}")
async def get_endpoint(request: web.Request) -> web.Response:
    endpoint = await request.app[NOTIFICATIONS_KEY].endpoint(
        request.match_info["id"], _owner(request)
    )
    return json_response(endpoint_view(endpoint))


@routes.patch("/v1/webhook-endpoints/{id}")
async def update_endpoint(request: web.Request) -> web.Response:
    endpoint = await request.app[NOTIFICATIONS_KEY].update_endpoint(
        request.match_info["id"], _owner(request), await json_body(request), caller_of(request)
    )
    return json_response(endpoint_view(endpoint))


@routes.delete("/v1/webhook-endpoints/{id}")
async def delete_endpoint(request: web.Request) -> web.Response:
    await request.app[NOTIFICATIONS_KEY].delete_endpoint(
        request.match_info["id"], _owner(request), caller_of(request)
    )
    return web.Response(status=204)


@routes.post("/v1/webhook-endpoints/{id}/rotate-secret")
async def rotate_secret(request: web.Request) -> web.Response:
    body = await json_body(request) or {}
    seconds = body.get("expire_in_seconds")
    endpoint_id = request.match_info["id"]
    secret, previous_until = await request.app[NOTIFICATIONS_KEY].rotate_secret(
        endpoint_id,
        _owner(request),
        None if seconds is None else timedelta(seconds=seconds),
        caller_of(request),
    )
    return json_response(
        {
            "object": "webhook_secret",
            "endpoint_id": endpoint_id,
            "secret": secret,
            "previous_expires_at": _iso(previous_until),
        },
    )


@routes.post("/v1/webhook-endpoints/{id}/test")
async def send_test(request: web.Request) -> web.Response:
    log = await request.app[NOTIFICATIONS_KEY].send_test(
        request.match_info["id"], _owner(request), caller_of(request)
    )
    return json_response(delivery_view(log), 202)


# ---------------------------------------------------------------- preferences


@routes.get("/v1/preferences")
async def get_preferences(request: web.Request) -> web.Response:
    prefs = await request.app[NOTIFICATIONS_KEY].preferences(
        request[PARAMS_KEY]["customer_id"], _owner(request)
    )
    return json_response(preferences_view(prefs))


@routes.put("/v1/preferences")
async def put_preferences(request: web.Request) -> web.Response:
    body = dict(await json_body(request))
    customer_id = body.pop("customer_id")
    prefs = await request.app[NOTIFICATIONS_KEY].set_preferences(
        customer_id, _owner(request), body, caller_of(request)
    )
    return json_response(preferences_view(prefs))


# ---------------------------------------------------------------- deliveries


@routes.get("/v1/deliveries")
async def list_deliveries(request: web.Request) -> web.Response:
    params = request[PARAMS_KEY]
    limit = params.get("limit", DEFAULT_PAGE)
    status = params.get("status")
    page = await request.app[NOTIFICATIONS_KEY].deliveries(
        store.DeliveryFilter(
            owner=_owner(request),
            endpoint_id=params.get("endpoint_id"),
            customer_id=params.get("customer_id"),
            event_id=params.get("event_id"),
            status=None if status is None else DeliveryStatus(status),
            before=params.get("cursor"),
            limit=limit + 1,
        )
    )
    more = len(page) > limit
    shown = page[:limit]
    return json_response(
        {
            "object": "list",
            "data": [delivery_view(d) for d in shown],
            "has_more": more,
            "next_cursor": shown[-1].id if more else None,
        }
    )


@routes.get("/v1/deliveries/{id}")
async def get_delivery(request: web.Request) -> web.Response:
    log = await request.app[NOTIFICATIONS_KEY].delivery(request.match_info["id"], _owner(request))
    return json_response(delivery_view(log))


@routes.post("/v1/deliveries/{id}/replay")
async def replay_delivery(request: web.Request) -> web.Response:
    log = await request.app[NOTIFICATIONS_KEY].replay(
        request.match_info["id"], _owner(request), caller_of(request)
    )
    return json_response(delivery_view(log), 202)


# ---------------------------------------------------------------- privacy

add_privacy_routes(routes)
