"""How the transaction API renders its resources (Stripe-style objects): one view per
resource, the same on every route that shows it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Final

from lastro.core.stepup import MFA_ACR
from lastro.transactions.domain.fx import Quote
from lastro.transactions.domain.model import (
    Kind,
    Refund,
    Status,
    Transaction,
    TransferBatch,
)

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
