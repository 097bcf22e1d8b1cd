"""HTTP handlers of the transaction service: parse, call one use case, render.

Requests arrive authenticated, rate-limited, idempotency-checked and validated
against ``openapi.yaml`` (``core/http.py``, ``core/idempotency.py``). Money-moving
POSTs answer ``202 Accepted`` with ``Location``, or, when the client asked with
``Prefer: wait=N`` and the transaction rested within N seconds, ``201 Created``
with its resting state (``Preference-Applied: wait=N`` either way).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Final

from aiohttp import web

from lastro.core.http import PARAMS_KEY, PRINCIPAL_KEY, caller_of, json_body, json_response
from lastro.core.privacy import add_privacy_routes
from lastro.transactions.domain.errors import InvalidTransaction
from lastro.transactions.domain.model import (
    CaptureMethod,
    Card,
    Kind,
    RefundStatus,
    RequestContext,
    ReviewOutcome,
    Transaction,
    is_resting,
)
from lastro.transactions.domain.requests import BatchItem
from lastro.transactions.notices import Waiter
from lastro.transactions.service import (
    BatchRequest,
    HistoryFilter,
    PaymentRequest,
    PayoutRequest,
    Requester,
    Transactions,
    TransferRequest,
)
from lastro.transactions.views import (
    OBJECTS,
    PATHS,
    batch_view,
    quote_view,
    refund_view,
    transaction_view,
)

TRANSACTIONS_KEY: Final = web.AppKey("transactions", Transactions)
WAITER_KEY: Final = web.AppKey("waiter", Waiter)
MAX_WAIT_KEY: Final = web.AppKey("max_wait", int)

_WAIT: Final = re.compile(r"(?:^|[,;\s])wait\s*=\s*([0-9]{1,6})(?:$|[,;\s])")

routes = web.RouteTableDef()


# ---------------------------------------------------------------- helpers


def _requester(request: web.Request) -> Requester:
    _, _, token = request.headers.get("Authorization", "").partition(" ")
    return Requester(caller_of(request), request[PRINCIPAL_KEY], token.strip())


def _service(request: web.Request) -> Transactions:
    return request.app[TRANSACTIONS_KEY]


def _context(request: web.Request, body: dict[str, Any]) -> RequestContext:
    given = body.get("context") or {}
    return RequestContext(
        ip=given.get("ip") or request.remote,
        device_id=given.get("device_id"),
        country=given.get("country"),
        location=given.get("location"),
    )


def _wait_seconds(request: web.Request) -> int | None:
    """The ``wait`` preference (RFC 7240), capped at the configured maximum."""
    for header in request.headers.getall("Prefer", []):
        match = _WAIT.search(f" {header} ")
        if match is not None:
            return min(int(match.group(1)), request.app[MAX_WAIT_KEY])
    return None


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


async def _render(
    request: web.Request,
    txn: Transaction,
    *,
    created: bool,
    waited: Callable[[], Awaitable[bool]] | None = None,
) -> web.Response:
    """202 + Location, or the resting state when it came within ``Prefer: wait``."""
    service = _service(request)
    path = f"{PATHS[OBJECTS[txn.kind]]}/{txn.id}"
    headers = {"Location": path}
    seconds = _wait_seconds(request)
    rested = False
    if seconds is not None:
        headers["Preference-Applied"] = f"wait={seconds}"

        async def done() -> bool:
            nonlocal txn
            txn = await service.current(txn.id)
            return await waited() if waited is not None else is_resting(txn)

        rested = await request.app[WAITER_KEY].until(txn.id, seconds, done)
    refunds = await service.refunds(txn.id) if txn.kind is Kind.CARD_PAYMENT else []
    destination = await service.payout_destination(txn.id) if txn.kind is Kind.PAYOUT else None
    view = transaction_view(txn, refunds, destination)
    status = (201 if created else 200) if rested else 202
    return json_response(view, status, headers=headers)


async def _show(request: web.Request, kinds: Sequence[Kind] = ()) -> web.Response:
    service = _service(request)
    txn, refunds = await service.get(_requester(request), request.match_info["id"], kinds)
    destination = await service.payout_destination(txn.id) if txn.kind is Kind.PAYOUT else None
    return json_response(transaction_view(txn, refunds, destination))


# ---------------------------------------------------------------- transfers


@routes.post("/v1/transfers")
async def create_transfer(request: web.Request) -> web.Response:
    body = await json_body(request)
    transfer = TransferRequest(
        source_account_id=body["source_account_id"],
        destination_account_id=body["destination_account_id"],
        amount=body["amount"],
        currency=body["currency"],
        description=body.get("description", ""),
        metadata=body.get("metadata", {}),
        quote_id=body.get("quote_id"),
        context=_context(request, body),
    )
    txn = await _service(request).create_transfer(_requester(request), transfer)
    return await _render(request, txn, created=True)


@routes.get("/v1/transfers/{id}")
async def get_transfer(request: web.Request) -> web.Response:
    return await _show(request, (Kind.TRANSFER, Kind.FX_TRANSFER))


@routes.post("/v1/transfers/{id}/confirm")
async def confirm_transfer(request: web.Request) -> web.Response:
    txn = await _service(request).confirm(_requester(request), request.match_info["id"])
    return await _render(request, txn, created=False)


@routes.post("/v1/transfers/{id}/reverse")
async def reverse_transfer(request: web.Request) -> web.Response:
    body = await json_body(request)
    txn = await _service(request).reverse(
        _requester(request), request.match_info["id"], body["reason"]
    )
    return await _render(request, txn, created=False)


@routes.post("/v1/transfer-batches")
async def create_batch(request: web.Request) -> web.Response:
    body = await json_body(request)
    items = [
        BatchItem(
            destination_account_id=item["destination_account_id"],
            amount=item["amount"],
            currency=item["currency"],
            description=item.get("description", ""),
            reference=item.get("reference"),
        )
        for item in body["transfers"]
    ]
    service = _service(request)
    requester = _requester(request)
    batch, txns = await service.create_batch(
        requester,
        BatchRequest(
            body["source_account_id"], body.get("atomic", False), items, _context(request, body)
        ),
    )
    headers = {"Location": f"/v1/transfer-batches/{batch.id}"}
    seconds = _wait_seconds(request)
    rested = False
    if seconds is not None:
        headers["Preference-Applied"] = f"wait={seconds}"

        async def done() -> bool:
            nonlocal batch, txns
            batch, txns = await service.get_batch(requester, batch.id)
            return batch.status.value == "completed"

        rested = await request.app[WAITER_KEY].until(batch.id, seconds, done)
    return json_response(batch_view(batch, txns), 201 if rested else 202, headers=headers)


@routes.get("/v1/transfer-batches/{id}")
async def get_batch(request: web.Request) -> web.Response:
    batch, txns = await _service(request).get_batch(_requester(request), request.match_info["id"])
    return json_response(batch_view(batch, txns))


@routes.post("/v1/fx/quotes")
async def create_quote(request: web.Request) -> web.Response:
    body = await json_body(request)
    quote = await _service(request).create_quote(
        _requester(request),
        body["sell_currency"],
        body["buy_currency"],
        body.get("sell_amount"),
        body.get("buy_amount"),
    )
    return json_response(quote_view(quote), 201, headers={"Location": f"/v1/fx/quotes/{quote.id}"})


@routes.get("/v1/fx/quotes/{id}")
async def get_quote(request: web.Request) -> web.Response:
    quote = await _service(request).get_quote(_requester(request), request.match_info["id"])
    return json_response(quote_view(quote))


# ---------------------------------------------------------------- payments


@routes.post("/v1/payments")
async def create_payment(request: web.Request) -> web.Response:
    body = await json_body(request)
    card = body["card"]
    payment = PaymentRequest(
        destination_account_id=body["destination_account_id"],
        amount=body["amount"],
        currency=body["currency"],
        card=Card(card["token"], card.get("fingerprint"), card.get("brand"), card.get("last4")),
        capture_method=CaptureMethod(body.get("capture_method", "automatic")),
        description=body.get("description", ""),
        metadata=body.get("metadata", {}),
        context=_context(request, body),
    )
    txn = await _service(request).create_payment(_requester(request), payment)
    return await _render(request, txn, created=True)


@routes.get("/v1/payments/{id}")
async def get_payment(request: web.Request) -> web.Response:
    return await _show(request, (Kind.CARD_PAYMENT,))


@routes.post("/v1/payments/{id}/capture")
async def capture_payment(request: web.Request) -> web.Response:
    body = await json_body(request) or {}
    txn = await _service(request).capture(
        _requester(request), request.match_info["id"], body.get("amount")
    )
    return await _render(request, txn, created=False)


@routes.post("/v1/payments/{id}/void")
async def void_payment(request: web.Request) -> web.Response:
    txn = await _service(request).void(_requester(request), request.match_info["id"])
    return await _render(request, txn, created=False)


@routes.post("/v1/payments/{id}/refunds")
async def refund_payment(request: web.Request) -> web.Response:
    body = await json_body(request) or {}
    service = _service(request)
    txn, refund = await service.refund(
        _requester(request), request.match_info["id"], body.get("amount"), body.get("reason")
    )
    headers: dict[str, str] = {}
    seconds = _wait_seconds(request)
    if seconds is not None:
        headers["Preference-Applied"] = f"wait={seconds}"

        async def done() -> bool:
            nonlocal refund
            refund = next(r for r in await service.refunds(txn.id) if r.id == refund.id)
            return refund.status is not RefundStatus.PENDING

        await request.app[WAITER_KEY].until(txn.id, seconds, done)
    status = 202 if refund.status is RefundStatus.PENDING else 201
    return json_response(refund_view(refund), status, headers=headers)


# ---------------------------------------------------------------- payouts, history


@routes.post("/v1/payouts")
async def create_payout(request: web.Request) -> web.Response:
    body = await json_body(request)
    payout = PayoutRequest(
        source_account_id=body["source_account_id"],
        amount=body["amount"],
        currency=body["currency"],
        iban=body["destination"]["iban"],
        holder_name=body["destination"]["holder_name"],
        description=body.get("description", ""),
        metadata=body.get("metadata", {}),
        context=_context(request, body),
    )
    txn = await _service(request).create_payout(_requester(request), payout)
    return await _render(request, txn, created=True)


@routes.get("/v1/payouts/{id}")
async def get_payout(request: web.Request) -> web.Response:
    return await _show(request, (Kind.PAYOUT,))


@routes.get("/v1/transactions")
async def list_transactions(request: web.Request) -> web.Response:
    params = request[PARAMS_KEY]
    limit = params.get("limit", 25)
    history = HistoryFilter(
        kinds=tuple(params.get("type", ())),
        statuses=tuple(params.get("status", ())),
        account_id=params.get("account_id"),
        since=_time(params.get("created_after"), "created_after"),
        until=_time(params.get("created_before"), "created_before"),
        before=params.get("cursor"),
        limit=limit + 1,
    )
    found = await _service(request).history(_requester(request), history)
    page = found[:limit]
    more = len(found) > limit
    return json_response(
        {
            "object": "list",
            "data": [transaction_view(t) for t in page],
            "has_more": more,
            "next_cursor": page[-1].id if more and page else None,
        }
    )


def _time(value: str | None, field: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidTransaction(f"{field} is not an RFC 3339 time", field=field) from None
    if parsed.tzinfo is None:
        raise InvalidTransaction(f"{field} needs a UTC offset", field=field)
    return parsed


@routes.get("/v1/transactions/{id}")
async def get_transaction(request: web.Request) -> web.Response:
    return await _show(request)


# ---------------------------------------------------------------- internal


@routes.post("/internal/v1/transactions/{id}/review-outcome")
async def review_outcome(request: web.Request) -> web.Response:
    body = await json_body(request)
    txn = await _service(request).resolve_review(
        _requester(request),
        request.match_info["id"],
        ReviewOutcome(body["outcome"]),
        body.get("alert_id"),
    )
    return json_response(transaction_view(txn))


@routes.post("/internal/v1/acquirer/settlements")
async def acquirer_settlement(request: web.Request) -> web.Response:
    raw = await request.read()
    body = await json_body(request)
    txn = await _service(request).settle(raw, request.headers.get("Acquirer-Signature"), body)
    return json_response(
        transaction_view(txn), 202, headers={"Location": f"/v1/transactions/{txn.id}"}
    )


add_privacy_routes(routes)
