"""The simulated card acquirer: `lastro serve acquirer` (port 7102).

The payer's client tokenises the card here (``POST /v1/tokens``), so Lastro never
sees a card number; Lastro then authorizes, captures (in parts, never more than
authorized), voids and refunds (in parts, never more than captured), each POST
under an Idempotency-Key of Lastro's choosing. ``GET /v1/records`` lists every
operation of a period for reconciliation. The books are in
:mod:`~lastro.external.acquirer_book`, the card rules in :mod:`~lastro.external.cards`.

Settlement: every :data:`SETTLEMENT_INTERVAL_SECONDS` (or at once on
``POST /admin/settle``) the unsettled captures and refunds are closed into one batch
per currency, and each batch is POSTed to ``settings.acquirer_callback_url``
(transactions' ``/internal/v1/acquirer/settlements``) signed with the shared secret
(:mod:`~lastro.external.acquirer_signing`, re-signed on every attempt). A delivery
that is not answered 2xx is retried with exponential backoff and full jitter
(``core/backoff.py``) up to :data:`MAX_DELIVERY_ATTEMPTS` times; the queue is in the
state file, so a restart resumes it. Delivery is at least once: the receiver
deduplicates on the batch ``id``. ``GET /admin/settlements`` shows each batch and
its delivery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import web

from lastro.core.background import periodic
from lastro.core.backoff import full_jitter
from lastro.core.config import Settings
from lastro.core.http import PARAMS_KEY, json_body, json_response
from lastro.core.problems import validation_problem
from lastro.core.security.tls import client_context
from lastro.external import acquirer_book as book
from lastro.external import acquirer_settlement as settlement
from lastro.external.acquirer_signing import SIGNATURE_HEADER, sign_settlement
from lastro.external.cards import checked_card
from lastro.external.provider import STATE_KEY, create_provider_app, state_of, timestamp

log = logging.getLogger(__name__)

NAME: Final = "acquirer"
OPENAPI: Final = Path(__file__).with_name("acquirer.openapi.yaml")
SETTLEMENT_INTERVAL_SECONDS: Final = 60.0
DELIVERY_POLL_SECONDS: Final = 0.5
DELIVERY_TIMEOUT_SECONDS: Final = 10.0
DELIVERY_BACKOFF_BASE: Final = 1.0
DELIVERY_BACKOFF_CAP: Final = 120.0
MAX_DELIVERY_ATTEMPTS: Final = 10
ATTEMPT_HEADER: Final = "Acquirer-Delivery-Attempt"

FINGERPRINT_KEY: Final = web.AppKey("fingerprint_key", bytes)
CALLBACKS_KEY: Final = web.AppKey("settlement_callbacks", aiohttp.ClientSession)


# ---------------------------------------------------------------------- handlers


async def create_token(request: web.Request) -> web.Response:
    body = await json_body(request)
    card = checked_card(
        body["number"], body["exp_month"], body["exp_year"], body["cvc"], datetime.now(UTC).date()
    )
    token = book.tokenize(state_of(request), request.app[FINGERPRINT_KEY], card)
    return json_response(token, status=201)


async def create_authorization(request: web.Request) -> web.Response:
    body = await json_body(request)
    doc = book.authorize(
        state_of(request), body["token"], body["amount"], body["currency"], body["reference"]
    )
    return json_response(doc, status=201)


async def get_authorization(request: web.Request) -> web.Response:
    return json_response(book.authorization_doc(state_of(request), request[PARAMS_KEY]["id"]))


async def create_capture(request: web.Request) -> web.Response:
    body = await json_body(request) or {}
    doc = book.capture(state_of(request), request[PARAMS_KEY]["id"], body.get("amount"))
    return json_response(doc, status=201)


async def void_authorization(request: web.Request) -> web.Response:
    return json_response(book.void(state_of(request), request[PARAMS_KEY]["id"]))


async def get_capture(request: web.Request) -> web.Response:
    return json_response(book.capture_doc(state_of(request), request[PARAMS_KEY]["id"]))


async def create_refund(request: web.Request) -> web.Response:
    body = await json_body(request) or {}
    doc = book.refund(state_of(request), request[PARAMS_KEY]["id"], body.get("amount"))
    return json_response(doc, status=201)


async def list_records(request: web.Request) -> web.Response:
    params = request[PARAMS_KEY]
    page, cursor = book.records(
        state_of(request),
        _instant(params.get("from"), "from"),
        _instant(params.get("to"), "to"),
        params.get("limit", 100),
        int(params.get("cursor", "0")),
    )
    return json_response({"records": page, "next_cursor": None if cursor is None else str(cursor)})


def _instant(value: str | None, field: str) -> str | None:
    """An RFC 3339 date-time as the acquirer writes times (UTC); 422 otherwise."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is not None:
            return timestamp(parsed)
    except (ValueError, OverflowError):
        pass
    raise validation_problem([{"field": field, "detail": "an RFC 3339 date-time with offset"}])


async def settle_now(request: web.Request) -> web.Response:
    batches = settlement.settle(state_of(request), time.time())
    return json_response({"settlements": batches})


async def list_settlements(request: web.Request) -> web.Response:
    return json_response({"settlements": settlement.settlements(state_of(request))})


ROUTES: Final = (
    web.post("/v1/tokens", create_token),
    web.post("/v1/authorizations", create_authorization),
    web.get("/v1/authorizations/{id}", get_authorization),
    web.post("/v1/authorizations/{id}/captures", create_capture),
    web.post("/v1/authorizations/{id}/void", void_authorization),
    web.get("/v1/captures/{id}", get_capture),
    web.post("/v1/captures/{id}/refunds", create_refund),
    web.get("/v1/records", list_records),
    web.post("/admin/settle", settle_now),
    web.get("/admin/settlements", list_settlements),
)


# -------------------------------------------------------------------- settlement


async def _settle(app: web.Application) -> None:
    async with app[STATE_KEY].unit_of_work() as db:
        batches = settlement.settle(db, time.time())
    for batch in batches:
        log.info("settlement %s closed: %s net %d", batch["id"], batch["currency"], batch["net"])


async def _attempt(
    session: aiohttp.ClientSession, url: str, secret: str, delivery: settlement.Delivery
) -> str | None:
    """POST one batch; None when the receiver took it (2xx), else why not."""
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign_settlement(secret, delivery.body),
        ATTEMPT_HEADER: str(delivery.attempts + 1),
    }
    try:
        async with session.post(url, data=delivery.body, headers=headers) as response:
            if 200 <= response.status < 300:
                return None
            return f"HTTP {response.status}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"


def _deliverer(settings: Settings) -> Callable[[web.Application], Awaitable[None]]:
    """One delivery round: every due batch, one attempt each (module docstring)."""

    async def deliver_due(app: web.Application) -> None:
        state = app[STATE_KEY]
        for delivery in settlement.due_deliveries(state.db, time.time()):
            error = await _attempt(
                app[CALLBACKS_KEY],
                settings.acquirer_callback_url,
                settings.acquirer_webhook_secret,
                delivery,
            )
            async with state.unit_of_work() as db:
                if error is None:
                    settlement.delivered(db, delivery.settlement_id)
                    continue
                attempts = delivery.attempts + 1
                retry_at = None
                if attempts < MAX_DELIVERY_ATTEMPTS:
                    delay = full_jitter(
                        delivery.attempts, base=DELIVERY_BACKOFF_BASE, cap=DELIVERY_BACKOFF_CAP
                    )
                    retry_at = time.time() + delay
                settlement.delivery_failed(db, delivery.settlement_id, error, retry_at)
            log.warning(
                "settlement %s delivery attempt %d failed (%s); %s",
                delivery.settlement_id,
                attempts,
                error,
                "giving up" if retry_at is None else f"retrying in {retry_at - time.time():.1f}s",
            )

    return deliver_due


async def create_app(settings: Settings) -> web.Application:
    """The acquirer (module docstring)."""
    if not settings.acquirer_webhook_secret:
        raise ValueError(
            "acquirer: no webhook secret (LASTRO_ACQUIRER_WEBHOOK_SECRET, or "
            ".dev/secrets/acquirer_webhook_secret written by `lastro dev up`)"
        )

    async def keys_and_callbacks(app: web.Application) -> AsyncIterator[None]:
        app[FINGERPRINT_KEY] = book.fingerprint_key(app[STATE_KEY].db)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_context(settings.ca_file)),
            timeout=aiohttp.ClientTimeout(total=DELIVERY_TIMEOUT_SECONDS),
        )
        app[CALLBACKS_KEY] = session
        try:
            yield
        finally:
            await session.close()

    return create_provider_app(
        name=NAME,
        settings=settings,
        openapi_path=OPENAPI,
        routes=ROUTES,
        schema=book.SCHEMA,
        cleanup_ctx=[
            keys_and_callbacks,
            periodic("acquirer-settlement", _settle, SETTLEMENT_INTERVAL_SECONDS),
            periodic("acquirer-settlement-delivery", _deliverer(settings), DELIVERY_POLL_SECONDS),
        ],
    )
