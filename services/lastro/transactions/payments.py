"""Use cases of card payments: accept one into the merchant's account, then
capture (in full or in part), void or refund it. The worker talks to the acquirer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lastro.core.ids import new_id
from lastro.transactions.domain import requests as rules
from lastro.transactions.domain.model import (
    CaptureMethod,
    Card,
    Kind,
    Refund,
    RefundStatus,
    RequestContext,
    Transaction,
)
from lastro.transactions.events import partition_key
from lastro.transactions.intake import Intake, Requester
from lastro.transactions.journal import Write, recording


@dataclass(frozen=True)
class PaymentRequest:
    destination_account_id: str
    amount: int
    currency: str
    card: Card
    capture_method: CaptureMethod
    description: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    context: RequestContext = field(default_factory=RequestContext)


class CardPayments(Intake):
    """Card payments into a merchant's account and what the merchant does next."""

    async def create_payment(self, requester: Requester, r: PaymentRequest) -> Transaction:
        """Accept a card payment into one of the caller's (the merchant's) accounts."""
        rules.check_amount(r.amount, r.currency)
        merchant = await self._own_account(
            requester, r.destination_account_id, "destination_account_id"
        )
        rules.check_currency(merchant.currency, r.currency, "currency")
        txn = self._new(
            requester,
            Kind.CARD_PAYMENT,
            r.amount,
            r.currency,
            customer_id=merchant.customer_id,
            destination_account_id=merchant.id,
            counterparty=r.card.fingerprint or r.card.token,
            description=r.description,
            metadata=r.metadata,
            context=r.context,
            card=r.card,
            capture_method=r.capture_method,
        )
        return await self._accept(requester, txn, "payment.created")

    async def _merchant_payment(
        self, requester: Requester, payment_id: str
    ) -> tuple[Transaction, list[Refund]]:
        txn, refunds = await self.get(requester, payment_id, (Kind.CARD_PAYMENT,))
        return txn, refunds

    async def capture(
        self, requester: Requester, payment_id: str, amount: int | None
    ) -> Transaction:
        """Ask for a (partial) capture of an authorised payment: never above the
        authorisation; the rest of it is released."""
        txn, _ = await self._merchant_payment(requester, payment_id)
        wanted = rules.check_capture(txn, amount)
        return await self._decide(
            requester,
            txn,
            "payment.capture_requested",
            {"amount": wanted},
            capture_requested=wanted,
        )

    async def void(self, requester: Requester, payment_id: str) -> Transaction:
        txn, _ = await self._merchant_payment(requester, payment_id)
        rules.check_void(txn)
        return await self._decide(requester, txn, "payment.void_requested", {}, void_requested=True)

    async def refund(
        self, requester: Requester, payment_id: str, amount: int | None, reason: str | None
    ) -> tuple[Transaction, Refund]:
        """Ask for a full or partial refund: refunds never exceed the captured amount."""
        txn, refunds = await self._merchant_payment(requester, payment_id)
        pending = sum(r.amount for r in refunds if r.status is RefundStatus.PENDING)
        wanted = rules.check_refund(txn, amount, pending)
        refund = Refund(
            id=new_id("re"),
            payment_id=txn.id,
            amount=wanted,
            currency=txn.currency,
            status=RefundStatus.PENDING,
            created_at=self._now(),
            reason=reason,
        )
        details = {"transaction_id": txn.id, "refund_id": refund.id, "amount": wanted}
        recordings = [
            recording(requester.caller, refund.id, details, action="refund.created"),
            self._command(requester.caller, partition_key(txn), transaction_id=txn.id),
        ]
        await self._journal.write(Write(new_refund=refund, recordings=recordings))
        return txn, refund
