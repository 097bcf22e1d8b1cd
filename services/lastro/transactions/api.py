"""HTTP handlers of the transaction service: parse, call one use case, render.

Requests arrive authenticated, rate-limited, idempotency-checked and validated
against ``openapi.yaml`` (``core/http.py``, ``core/idempotency.py``). Money-moving
POSTs answer ``202 Accepted`` with ``Location``, or, when the client asked with
``Prefer: wait=N`` and the transaction rested within N seconds, ``201 Created``
with its resting state (``Preference-Applied: wait=N`` either way).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, Final

from aiohttp import web

from lastro.core.http import PARAMS_KEY, PRINCIPAL_KEY, caller_of, json_body, json_response
from lastro.core.stepup import MFA_ACR
from lastro.transactions.domain.errors import InvalidTransaction
from lastro.transactions.domain.fx import Quote
from lastro.transactions.domain.model import (
    CaptureMethod,
    Card,
    Kind,
    Refund,
    RefundStatus,
    RequestContext,
    ReviewOutcome,
    Status,
    Transaction,
    TransferBatch,
    is_resting,
)
from lastro.transactions.domain.requests import BatchItem
from lastro.transactions.notices import Waiter
from lastro.transactions.privacy import SERVICE, Privacy
from lastro.transactions.service import (
    BatchRequest,
    HistoryFilter,
    PaymentRequest,
    PayoutRequest,
    Requester,
    Transactions,
    TransferRequest,
)

TRANSACTIONS_KEY: Final = web.AppKey("transactions", Transactions)
PRIVACY_KEY: Final = web.AppKey("privacy", Privacy)
WAITER_KEY: Final = web.AppKey("waiter", Waiter)
MAX_WAIT_KEY: Final = web.AppKey("max_wait", int)

OBJECTS: Final = {
    Kind.TRANSFER: "transfer",
    Kind.FX_TRANSFER: "transfer",
    Kind.CARD_PAYMENT: "payment",
    Kind.PAYOUT: "payout",
    Kind.DEPOSIT: "deposit",
}
PATHS: Final = {
    "transfer": "/v1/transfers",
    "payment": "/v1/payments",
    "payout": "/v1/payouts",
    "deposit": "/v1/transactions",
}
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


def refund_view(refund: Refund) -> dict[str, Any]:
    return {
        "id": refund.id,
        "object": "refund",
        "payment_id": refund.payment_id,
        "amount": refund.amount,
        "currency": refund.currency,
        "status": refund.status.value,
        "reason": refund.reason,
        "failure": refund.failure,
        "created_at": refund.created_at.isoformat(),
    }


def transaction_view(
    txn: Transaction,
    refunds: Sequence[Refund] = (),
    destination: dict[str, str] | None = None,
    max_age: int = 300,
) -> dict[str, Any]:
    """A transaction as every route shows it (the fields its type has)."""
    obj = OBJECTS[txn.kind]
    view: dict[str, Any] = {
        "id": txn.id,
        "object": obj,
        "type": txn.kind.value,
        "status": txn.status.value,
        "amount": txn.amount,
        "currency": txn.currency,
        "source_account_id": txn.source_account_id,
        "destination_account_id": txn.destination_account_id,
        "description": txn.description,
        "metadata": dict(txn.metadata),
        "screening": None if txn.screening is None else txn.screening.summary(),
        "reason": txn.reason,
        "last_error": txn.last_error,
        "batch_id": txn.batch_id,
        "next_action": None,
        "created_at": txn.created_at.isoformat(),
        "updated_at": txn.updated_at.isoformat(),
    }
    if txn.status is Status.CHALLENGED:
        view["next_action"] = {
            "type": "step_up",
            "confirm_url": f"/v1/transfers/{txn.id}/confirm",
            "acr_values": MFA_ACR,
            "max_age": max_age,
        }
    if txn.fx is not None:
        view["fx"] = {
            "quote_id": txn.fx.quote_id,
            "rate": txn.fx.rate,
            "destination_amount": txn.fx.amount,
            "destination_currency": txn.fx.currency,
        }
    if txn.kind is Kind.CARD_PAYMENT:
        capturable = txn.amount if txn.status is Status.AUTHORIZED and not txn.capture_id else 0
        view.update(
            capture_method=None if txn.capture_method is None else txn.capture_method.value,
            amount_capturable=capturable,
            captured_amount=txn.captured_amount,
            refunded_amount=txn.refunded_amount,
            card={"brand": txn.card.brand, "last4": txn.card.last4} if txn.card else {},
            acquirer={
                "authorization_id": txn.authorization_id,
                "capture_id": txn.capture_id,
            },
            refunds=[refund_view(r) for r in refunds],
        )
    if destination:
        view["destination"] = destination
    return view


def quote_view(quote: Quote) -> dict[str, Any]:
    return {
        "id": quote.id,
        "object": "fx_quote",
        "sell_currency": quote.sell_currency,
        "buy_currency": quote.buy_currency,
        "sell_amount": quote.sell_amount,
        "buy_amount": quote.buy_amount,
        "rate": quote.rate,
        "provider_rate": quote.provider_rate,
        "spread_bps": quote.spread_bps,
        "rate_as_of": quote.rate_as_of.isoformat(),
        "expires_at": quote.expires_at.isoformat(),
        "created_at": quote.created_at.isoformat(),
        "used": quote.used_by is not None,
    }


def batch_view(batch: TransferBatch, items: Sequence[Transaction]) -> dict[str, Any]:
    return {
        "id": batch.id,
        "object": "transfer_batch",
        "source_account_id": batch.source_account_id,
        "currency": batch.currency,
        "atomic": batch.atomic,
        "count": batch.count,
        "total": batch.total,
        "status": batch.status.value,
        "reason": batch.reason,
        "counts": dict(Counter(item.status.value for item in items)),
        "transfers": [
            {
                "id": item.id,
                "status": item.status.value,
                "destination_account_id": item.destination_account_id,
                "amount": item.amount,
                "reason": item.reason,
                **(
                    {"reference": item.metadata["reference"]}
                    if "reference" in item.metadata
                    else {}
                ),
            }
            for item in items
        ],
        "created_at": batch.created_at.isoformat(),
        "updated_at": batch.updated_at.isoformat(),
    }


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


# ---------------------------------------------------------------- privacy


@routes.post("/internal/v1/privacy/export")
async def export_data(request: web.Request) -> web.Response:
    body = await json_body(request)
    records = await request.app[PRIVACY_KEY].export(body["customer_id"], caller_of(request))
    return json_response(
        {"service": SERVICE, "customer_id": body["customer_id"], "records": records}
    )


@routes.post("/internal/v1/privacy/erase")
async def erase_data(request: web.Request) -> web.Response:
    body = await json_body(request)
    caller = replace(caller_of(request), reason=body["reason"])
    erased, at = await request.app[PRIVACY_KEY].erase(
        body["customer_id"], body["request_id"], caller
    )
    return json_response({"service": SERVICE, "erased": erased, "erased_at": at.isoformat()})


@routes.post("/internal/v1/privacy/purge")
async def purge_data(request: web.Request) -> web.Response:
    body = await json_body(request)
    purged = await request.app[PRIVACY_KEY].purge(
        body["data_class"],
        body["older_than"],
        body["action"],
        bool(body.get("dry_run", False)),
        caller_of(request),
    )
    return json_response(
        {
            "service": SERVICE,
            "data_class": purged.data_class,
            "action": purged.action,
            "cutoff": purged.cutoff.isoformat(),
            "affected": purged.affected,
        }
    )
