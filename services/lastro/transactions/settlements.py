"""Use cases of acquirer settlements: a verified settlement batch becomes a
``deposit`` that moves the settled money from the acquirer account to the bank
account; the worker marks its payments settled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lastro.core.changes import Caller
from lastro.core.ids import new_id
from lastro.transactions.domain import requests as rules
from lastro.transactions.domain.errors import InvalidSignature, InvalidTransaction
from lastro.transactions.domain.model import Kind, Status, Transaction
from lastro.transactions.events import TOPIC, fact_type, transaction_data
from lastro.transactions.intake import Intake
from lastro.transactions.journal import Write, recording
from lastro.transactions.store import queries


@dataclass(frozen=True)
class Settlement:
    """An acquirer settlement batch: ``gross`` (captures less refunds) leaves the
    acquirer account, ``net`` arrives in the bank, ``fees`` are the acquirer's;
    ``references`` are our ids of the payments whose captures it pays."""

    id: str
    currency: str
    gross: int
    fees: int
    net: int
    references: tuple[str, ...]
    payload: dict[str, Any]

    @property
    def size(self) -> int:
        """A positive figure for the deposit's ``amount`` (its legs carry the detail)."""
        return max(abs(self.gross), abs(self.net), self.fees, 1)


class Settlements(Intake):
    """The acquirer's settlement batches, received as deposits."""

    async def settle(
        self, body: bytes, signature: str | None, parsed: dict[str, Any]
    ) -> Transaction:
        """A settlement from the acquirer: verified, then a ``deposit`` that moves the
        settled money from the acquirer account to the bank account and marks its
        payments settled. Idempotent on the acquirer's settlement id."""
        if not self._deps.acquirer.verify_settlement(signature, body):
            raise InvalidSignature("the settlement's Acquirer-Signature does not verify")
        settlement = _settlement(parsed)
        rules.check_amount(settlement.size, settlement.currency)
        existing = await self._read(lambda c: queries.settlement_deposit(c, self._t, settlement.id))
        if existing is not None:
            found = await self._read(lambda c: queries.get_transaction(c, self._t, existing))
            assert found is not None
            return found
        now = self._now()
        txn = Transaction(
            id=new_id("txn"),
            kind=Kind.DEPOSIT,
            status=Status.RECEIVED,
            client_id="acquirer",
            owner="acquirer",
            amount=settlement.size,
            currency=settlement.currency,
            created_at=now,
            updated_at=now,
            counterparty="acquirer",
            description=f"acquirer settlement {settlement.id}",
            metadata={
                "settlement_id": settlement.id,
                "gross": str(settlement.gross),
                "fees": str(settlement.fees),
                "net": str(settlement.net),
            },
            settlement_id=settlement.id,
        )
        caller = Caller("partner:acquirer")
        data = transaction_data(txn)
        recordings = [
            recording(
                caller,
                txn.id,
                data,
                fact_type("received"),
                TOPIC,
                txn.id,
                action="settlement.received",
            ),
            self._command(caller, txn.id, transaction_id=txn.id),
        ]
        row = {
            "settlement_id": settlement.id,
            "deposit_id": txn.id,
            "amount": settlement.net,
            "currency": settlement.currency,
            "payload": settlement.payload,
        }
        await self._journal.write(Write(inserts=(txn,), settlement=row, recordings=recordings))
        return txn


def _settlement(body: dict[str, Any]) -> Settlement:
    """The acquirer's settlement batch: ``{"id", "currency", "gross", "fees", "net",
    "items": [{"type": "capture"|"refund", "reference", "amount", ...}]}``."""
    try:
        gross, fees, net = int(body["gross"]), int(body["fees"]), int(body["net"])
        items = body.get("items", [])
        references = tuple(
            str(item["reference"]) for item in items if item.get("type") == "capture"
        )
        settlement = Settlement(
            id=str(body["id"]),
            currency=str(body["currency"]),
            gross=gross,
            fees=fees,
            net=net,
            references=references,
            payload=body,
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise InvalidTransaction(
            "the settlement lacks id, currency, gross, fees, net or items"
        ) from None
    if gross - fees != net or fees < 0:
        raise InvalidTransaction("the settlement's net is not its gross less its fees")
    return settlement
