"""Rows ↔ domain records: the one place that knows how a record is stored."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lastro.transactions.domain.fx import Quote
from lastro.transactions.domain.model import (
    BatchStatus,
    CaptureMethod,
    Card,
    Decision,
    FxLeg,
    Kind,
    Refund,
    RefundStatus,
    RequestContext,
    ReviewOutcome,
    Screening,
    Status,
    Transaction,
    TransferBatch,
)


def _screening(data: Mapping[str, Any] | None) -> Screening | None:
    if data is None:
        return None
    return Screening(
        decision=Decision(data["decision"]),
        fallback=bool(data["fallback"]),
        screening_id=data.get("screening_id"),
        ruleset_version=data.get("ruleset_version"),
        score=data.get("score"),
        rule_ids=tuple(data.get("rule_ids", ())),
    )


def screening_json(screening: Screening | None) -> dict[str, Any] | None:
    if screening is None:
        return None
    return {
        "decision": screening.decision.value,
        "fallback": screening.fallback,
        "screening_id": screening.screening_id,
        "ruleset_version": screening.ruleset_version,
        "score": screening.score,
        "rule_ids": list(screening.rule_ids),
    }


def context_json(context: RequestContext) -> dict[str, Any]:
    return {
        "ip": context.ip,
        "device_id": context.device_id,
        "country": context.country,
        "location": dict(context.location) if context.location is not None else None,
        "strong_auth": context.strong_auth,
    }


def fx_json(fx: FxLeg | None) -> dict[str, Any] | None:
    if fx is None:
        return None
    return {"quote_id": fx.quote_id, "rate": fx.rate, "amount": fx.amount, "currency": fx.currency}


def card_json(card: Card | None) -> dict[str, Any] | None:
    if card is None:
        return None
    return {
        "token": card.token,
        "fingerprint": card.fingerprint,
        "brand": card.brand,
        "last4": card.last4,
    }


def transaction_from_row(row: Any) -> Transaction:
    context = row.context or {}
    fx = row.fx
    card = row.card
    return Transaction(
        id=row.id,
        kind=Kind(row.kind),
        status=Status(row.status),
        version=row.version,
        client_id=row.client_id,
        owner=row.owner,
        amount=row.amount,
        currency=row.currency,
        customer_id=row.customer_id,
        source_account_id=row.source_account_id,
        destination_account_id=row.destination_account_id,
        counterparty_customer_id=row.counterparty_customer_id,
        counterparty=row.counterparty,
        description=row.description,
        metadata=row.metadata or {},
        context=RequestContext(
            ip=context.get("ip"),
            device_id=context.get("device_id"),
            country=context.get("country"),
            location=context.get("location"),
            strong_auth=bool(context.get("strong_auth", False)),
        ),
        batch_id=row.batch_id,
        fx=None if fx is None else FxLeg(fx["quote_id"], fx["rate"], fx["amount"], fx["currency"]),
        card=None
        if card is None
        else Card(card["token"], card.get("fingerprint"), card.get("brand"), card.get("last4")),
        capture_method=None if row.capture_method is None else CaptureMethod(row.capture_method),
        screening=_screening(row.screening),
        reason=row.reason,
        posting_id=row.posting_id,
        hold_id=row.hold_id,
        hold_expires_at=row.hold_expires_at,
        authorization_id=row.authorization_id,
        capture_id=row.capture_id,
        captured_amount=row.captured_amount,
        refunded_amount=row.refunded_amount,
        capture_requested=row.capture_requested,
        void_requested=row.void_requested,
        confirmed_at=row.confirmed_at,
        review_outcome=None if row.review_outcome is None else ReviewOutcome(row.review_outcome),
        reverse_requested=row.reverse_requested,
        compensation=row.compensation,
        settlement_id=row.settlement_id,
        last_error=row.last_error,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


MUTABLE: tuple[str, ...] = (
    "status",
    "version",
    "card",
    "screening",
    "reason",
    "posting_id",
    "hold_id",
    "hold_expires_at",
    "authorization_id",
    "capture_id",
    "captured_amount",
    "refunded_amount",
    "capture_requested",
    "void_requested",
    "confirmed_at",
    "review_outcome",
    "reverse_requested",
    "compensation",
    "settlement_id",
    "last_error",
    "updated_at",
)
"""The columns a state change may write (everything else is fixed at creation)."""


def mutable_values(txn: Transaction) -> dict[str, Any]:
    return {
        "status": txn.status.value,
        "version": txn.version,
        "card": card_json(txn.card),
        "screening": screening_json(txn.screening),
        "reason": txn.reason,
        "posting_id": txn.posting_id,
        "hold_id": txn.hold_id,
        "hold_expires_at": txn.hold_expires_at,
        "authorization_id": txn.authorization_id,
        "capture_id": txn.capture_id,
        "captured_amount": txn.captured_amount,
        "refunded_amount": txn.refunded_amount,
        "capture_requested": txn.capture_requested,
        "void_requested": txn.void_requested,
        "confirmed_at": txn.confirmed_at,
        "review_outcome": None if txn.review_outcome is None else txn.review_outcome.value,
        "reverse_requested": txn.reverse_requested,
        "compensation": txn.compensation,
        "settlement_id": txn.settlement_id,
        "last_error": txn.last_error,
        "updated_at": txn.updated_at,
    }


def transaction_values(txn: Transaction) -> dict[str, Any]:
    """Every column, for the insert."""
    return {
        "id": txn.id,
        "kind": txn.kind.value,
        "client_id": txn.client_id,
        "owner": txn.owner,
        "amount": txn.amount,
        "currency": txn.currency,
        "customer_id": txn.customer_id,
        "source_account_id": txn.source_account_id,
        "destination_account_id": txn.destination_account_id,
        "counterparty_customer_id": txn.counterparty_customer_id,
        "counterparty": txn.counterparty,
        "description": txn.description,
        "metadata": dict(txn.metadata),
        "context": context_json(txn.context),
        "batch_id": txn.batch_id,
        "fx": fx_json(txn.fx),
        "capture_method": None if txn.capture_method is None else txn.capture_method.value,
        "created_at": txn.created_at,
        **mutable_values(txn),
    }


def refund_from_row(row: Any) -> Refund:
    return Refund(
        id=row.id,
        payment_id=row.payment_id,
        amount=row.amount,
        currency=row.currency,
        status=RefundStatus(row.status),
        created_at=row.created_at,
        reason=row.reason,
        posting_id=row.posting_id,
        acquirer_refund_id=row.acquirer_refund_id,
        failure=row.failure,
        version=row.version,
    )


def refund_values(refund: Refund) -> dict[str, Any]:
    return {
        "id": refund.id,
        "payment_id": refund.payment_id,
        "amount": refund.amount,
        "currency": refund.currency,
        "status": refund.status.value,
        "reason": refund.reason,
        "posting_id": refund.posting_id,
        "acquirer_refund_id": refund.acquirer_refund_id,
        "failure": refund.failure,
        "version": refund.version,
        "created_at": refund.created_at,
    }


def quote_from_row(row: Any) -> Quote:
    return Quote(
        id=row.id,
        scope=row.scope,
        sell_currency=row.sell_currency,
        buy_currency=row.buy_currency,
        sell_amount=row.sell_amount,
        buy_amount=row.buy_amount,
        provider_rate=row.provider_rate,
        rate=row.rate,
        spread_bps=row.spread_bps,
        created_at=row.created_at,
        expires_at=row.expires_at,
        rate_as_of=row.rate_as_of,
        used_by=row.used_by,
    )


def quote_values(quote: Quote) -> dict[str, Any]:
    return {
        "id": quote.id,
        "scope": quote.scope,
        "sell_currency": quote.sell_currency,
        "buy_currency": quote.buy_currency,
        "sell_amount": quote.sell_amount,
        "buy_amount": quote.buy_amount,
        "provider_rate": quote.provider_rate,
        "rate": quote.rate,
        "spread_bps": quote.spread_bps,
        "rate_as_of": quote.rate_as_of,
        "created_at": quote.created_at,
        "expires_at": quote.expires_at,
        "used_by": quote.used_by,
    }


def batch_from_row(row: Any) -> TransferBatch:
    return TransferBatch(
        id=row.id,
        client_id=row.client_id,
        owner=row.owner,
        source_account_id=row.source_account_id,
        customer_id=row.customer_id,
        currency=row.currency,
        atomic=row.atomic,
        count=row.count,
        total=row.total,
        status=BatchStatus(row.status),
        step=row.step,
        funding_posting_id=row.funding_posting_id,
        distributed_chunks=row.distributed_chunks,
        reason=row.reason,
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def batch_values(batch: TransferBatch) -> dict[str, Any]:
    return {
        "id": batch.id,
        "client_id": batch.client_id,
        "owner": batch.owner,
        "source_account_id": batch.source_account_id,
        "customer_id": batch.customer_id,
        "currency": batch.currency,
        "atomic": batch.atomic,
        "count": batch.count,
        "total": batch.total,
        "status": batch.status.value,
        "step": batch.step,
        "funding_posting_id": batch.funding_posting_id,
        "distributed_chunks": batch.distributed_chunks,
        "reason": batch.reason,
        "version": batch.version,
        "created_at": batch.created_at,
        "updated_at": batch.updated_at,
    }
