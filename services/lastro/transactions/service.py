"""Use cases of the transaction API: accept money movements, read them, and pass
on what people and partners decide about them.

Accepting never moves money: a use case checks the request (its own rules, the
caller's ownership of the account money leaves or arrives on, step-up for large
amounts), then stores the transaction with its ``received`` event, its audit
record and a command for the workers, in one transaction (``journal.Write``). The
workers do the rest (``processor.py``). Follow-up operations (capture, void,
refund, confirm, reverse, a review outcome) store the decision on the row, guarded
by its version, with a new command in the same transaction.

:class:`Transactions` gathers one module of use cases per flow, on the shared
steps of :mod:`.intake` (the caller, their accounts, accepting, deciding, reading
one transaction): :mod:`.transfers` (transfers, FX quotes, batches, reversals),
:mod:`.payments` (card payments: capture, void, refund), :mod:`.payouts`,
:mod:`.reviews` (a customer's step-up, the fraud service's review outcome) and
:mod:`.settlements` (the acquirer's settlement batches). This module adds the
reads of a caller's history and the API's request types.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from lastro.core.errors import DependencyUnavailable
from lastro.transactions.clients.http import TRANSPORT_ERRORS
from lastro.transactions.clients.ledger import AccountNotReadable
from lastro.transactions.domain.errors import UnknownAccount, UnknownTransaction
from lastro.transactions.domain.model import Refund, Transaction
from lastro.transactions.intake import Requester
from lastro.transactions.payments import CardPayments, PaymentRequest
from lastro.transactions.payouts import PayoutRequest, Payouts
from lastro.transactions.reviews import Reviews
from lastro.transactions.settlements import Settlements
from lastro.transactions.store import queries
from lastro.transactions.transfers import BatchRequest, TransferRequest, Transfers

__all__ = [
    "BatchRequest",
    "HistoryFilter",
    "PaymentRequest",
    "PayoutRequest",
    "Requester",
    "Transactions",
    "TransferRequest",
]


@dataclass(frozen=True)
class HistoryFilter:
    kinds: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    account_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: str | None = None
    limit: int = 50


class Transactions(Transfers, CardPayments, Payouts, Reviews, Settlements):
    """The API's use cases over one schema (``instance``): those of each flow's
    module, and the reads every flow shares."""

    async def history(self, requester: Requester, f: HistoryFilter) -> list[Transaction]:
        """The caller's transactions (asked for by them, or from or to one of their
        accounts), newest first; ``f.account_id`` must be one of theirs."""
        try:
            accounts = [a.id for a in await self._deps.ledger.caller_accounts(requester.bearer)]
        except AccountNotReadable:
            accounts = []
        except TRANSPORT_ERRORS:
            raise DependencyUnavailable("the account service cannot be reached") from None
        if f.account_id is not None:
            if f.account_id not in accounts:
                raise UnknownAccount(f"no account {f.account_id} of yours", field="account_id")
            accounts = [f.account_id]
        owner = requester.principal.subject if f.account_id is None else None
        return await self._read(
            lambda c: queries.history(
                c,
                self._t,
                accounts=accounts,
                owner=owner,
                kinds=f.kinds,
                statuses=f.statuses,
                since=f.since,
                until=f.until,
                before=f.before,
                limit=f.limit,
            )
        )

    # ------------------------------------------------------------ waiting

    async def current(self, txn_id: str) -> Transaction:
        txn = await self._read(lambda c: queries.get_transaction(c, self._t, txn_id))
        if txn is None:
            raise UnknownTransaction(f"no transaction {txn_id}")
        return txn

    async def refunds(self, payment_id: str) -> list[Refund]:
        return await self._read(lambda c: queries.refunds_of(c, self._t, payment_id))
