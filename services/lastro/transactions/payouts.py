"""Use cases of payouts to bank accounts: the IBAN and holder name are sealed
under a data key of their own, and only the last four digits are ever shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lastro.core.security.fields import FieldCipher
from lastro.transactions.domain import requests as rules
from lastro.transactions.domain.model import Kind, RequestContext, Transaction
from lastro.transactions.intake import Intake, Requester
from lastro.transactions.store import queries


@dataclass(frozen=True)
class PayoutRequest:
    source_account_id: str
    amount: int
    currency: str
    iban: str
    holder_name: str
    description: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    context: RequestContext = field(default_factory=RequestContext)


class Payouts(Intake):
    """Payouts from a customer's account to a bank account (IBAN)."""

    async def create_payout(self, requester: Requester, r: PayoutRequest) -> Transaction:
        """Accept a payout from one of the caller's accounts to a bank account (IBAN).

        The IBAN and holder name are sealed under a data key of their own (Transit),
        with a blind index as the screening counterparty."""
        rules.check_amount(r.amount, r.currency)
        iban = rules.normalise_iban(r.iban)
        self._step_up(requester, r.amount, r.currency)
        source = await self._own_account(requester, r.source_account_id, "source_account_id")
        rules.check_currency(source.currency, r.currency, "currency")
        index = self._index.compute(iban, purpose="iban")
        txn = self._new(
            requester,
            Kind.PAYOUT,
            r.amount,
            r.currency,
            customer_id=source.customer_id,
            source_account_id=source.id,
            counterparty=index,
            description=r.description,
            metadata=r.metadata,
            context=r.context,
        )
        key = await self._keys.create_subject_key()
        cipher = FieldCipher(key.plaintext)
        table = self._t.payout_destinations.name
        destination = {
            "transaction_id": txn.id,
            "wrapped_key": key.ciphertext,
            "iban": cipher.seal(iban, table=table, column="iban", row_id=txn.id),
            "holder_name": cipher.seal(
                r.holder_name, table=table, column="holder_name", row_id=txn.id
            ),
            "iban_index": index,
            "iban_last4": iban[-4:],
            "country": iban[:2],
        }
        return await self._accept(requester, txn, "payout.created", payout_destination=destination)

    async def payout_destination(self, txn_id: str) -> dict[str, str]:
        """The last four digits and country of a payout's IBAN (never the rest)."""
        row = await self._read(lambda c: queries.payout_destination(c, self._t, txn_id))
        if row is None:
            return {}
        return {"iban_last4": row.iban_last4, "country": row.country}
