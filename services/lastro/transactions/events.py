"""What the transaction service publishes, and the commands its workers consume.

Facts (topic ``lastro.transactions``, key = the source account, so one account's
events stay in order; card payments and deposits, which have no source account,
use the destination's): ``lastro.transaction.<fact>`` for ``received``,
``screened``, ``challenged``, ``approved``, ``authorized``, ``posted``,
``settled``, ``declined``, ``failed``, ``reversed``, ``refunded`` (each refund,
partial ones included; ``status`` tells whether the payment is now fully
refunded), ``refund_failed``, ``capture_failed``, ``reversal_failed``; and
``lastro.payout.sent``. Every payload has the fields of docs/interfaces.md.

Commands (topic ``lastro.transactions.commands``, same key):
``lastro.transaction.processing_requested`` with ``{"transaction_id"}`` or
``{"batch_id"}`` and ``instance`` (the schema that holds the row, so workers of
another instance sharing the broker ignore it). A command carries no state: the
worker reads the row and moves it on from wherever it is.
"""

from __future__ import annotations

from typing import Any, Final

from lastro.transactions.domain.model import Kind, Refund, Transaction, TransferBatch

SOURCE: Final = "/transactions"
TOPIC: Final = "lastro.transactions"
COMMANDS_TOPIC: Final = "lastro.transactions.commands"
COMMAND: Final = "lastro.transaction.processing_requested"
PAYOUT_SENT: Final = "lastro.payout.sent"


def fact_type(fact: str) -> str:
    """The CloudEvents ``type`` of a fact the state machine names."""
    return PAYOUT_SENT if fact == "payout_sent" else f"lastro.transaction.{fact}"


def partition_key(txn: Transaction) -> str:
    """The source account (the destination when money comes from outside)."""
    return txn.source_account_id or txn.destination_account_id or txn.id


def transaction_data(txn: Transaction, refund: Refund | None = None) -> dict[str, Any]:
    """The payload of every ``lastro.transaction.*`` event (docs/interfaces.md)."""
    data: dict[str, Any] = {
        "transaction_id": txn.id,
        "type": txn.kind.value,
        "status": txn.status.value,
        "amount": txn.amount,
        "currency": txn.currency,
        "customer_id": txn.customer_id,
        "source_account_id": txn.source_account_id,
        "destination_account_id": txn.destination_account_id,
        "counterparty_customer_id": txn.counterparty_customer_id,
        "counterparty": txn.counterparty,
        "reason": txn.reason,
        "device_id": txn.context.device_id,
        "ip": txn.context.ip,
        "country": txn.context.country,
        "location": None if txn.context.location is None else dict(txn.context.location),
        "occurred_at": txn.updated_at.isoformat(),
        "screening": None if txn.screening is None else txn.screening.summary(),
    }
    if txn.batch_id is not None:
        data["batch_id"] = txn.batch_id
    if txn.fx is not None:
        data["destination_amount"] = txn.fx.amount
        data["destination_currency"] = txn.fx.currency
        data["rate"] = txn.fx.rate
    if txn.kind is Kind.CARD_PAYMENT:
        data["captured_amount"] = txn.captured_amount
        data["refunded_amount"] = txn.refunded_amount
        if txn.card is not None:
            data["card"] = {"brand": txn.card.brand, "last4": txn.card.last4}
    if refund is not None:
        data["refund"] = {
            "id": refund.id,
            "amount": refund.amount,
            "status": refund.status.value,
            "failure": refund.failure,
        }
    return data


def command_data(
    instance: str, *, transaction_id: str | None = None, batch_id: str | None = None
) -> dict[str, Any]:
    if (transaction_id is None) == (batch_id is None):
        raise ValueError("a command names one transaction or one batch")
    target = {"transaction_id": transaction_id} if transaction_id else {"batch_id": batch_id}
    return {**target, "instance": instance}


def batch_key(batch: TransferBatch) -> str:
    return batch.source_account_id
