"""Use cases of transfers between Lastro accounts: a transfer (cross-currency
against a firm FX quote), a batch of up to 1,000, and an operator's reversal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Final

from lastro.core.db import Tx
from lastro.core.ids import new_id
from lastro.transactions.clients.ledger import AccountInfo
from lastro.transactions.domain import requests as rules
from lastro.transactions.domain.errors import QuoteMismatch, UnknownTransaction
from lastro.transactions.domain.fx import Quote, check_quote_for_transfer, make_quote
from lastro.transactions.domain.model import (
    BatchStatus,
    FxLeg,
    Kind,
    RequestContext,
    Transaction,
    TransferBatch,
)
from lastro.transactions.events import TOPIC, fact_type, partition_key, transaction_data
from lastro.transactions.intake import Intake, Requester
from lastro.transactions.journal import Write, recording
from lastro.transactions.store import queries

ACCOUNT_LOOKUPS: Final = 8


@dataclass(frozen=True)
class TransferRequest:
    source_account_id: str
    destination_account_id: str
    amount: int
    currency: str
    description: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    quote_id: str | None = None
    context: RequestContext = field(default_factory=RequestContext)


@dataclass(frozen=True)
class BatchRequest:
    source_account_id: str
    atomic: bool
    items: Sequence[rules.BatchItem]
    context: RequestContext = field(default_factory=RequestContext)


class Transfers(Intake):
    """Transfers between Lastro accounts: single, cross-currency against a quote,
    in batches, and an operator's reversal."""

    async def create_transfer(self, requester: Requester, r: TransferRequest) -> Transaction:
        """Accept a transfer between Lastro accounts (cross-currency with a quote).

        Stores it ``received`` with its command; moves no money. Refuses (and stores
        nothing) a source that is not the caller's, a destination that does not
        exist, a currency the source does not hold, a missing, foreign, expired,
        used or mismatching quote, and a large amount without a recent step-up."""
        rules.check_amount(r.amount, r.currency)
        rules.check_accounts(r.source_account_id, r.destination_account_id)
        self._step_up(requester, r.amount, r.currency)
        source, destination = await asyncio.gather(
            self._own_account(requester, r.source_account_id, "source_account_id"),
            self._any_account(r.destination_account_id, "destination_account_id"),
        )
        rules.check_currency(source.currency, r.currency, "currency")
        quote: Quote | None = None
        if destination.currency != r.currency:
            if r.quote_id is None:
                raise QuoteMismatch(
                    f"the destination holds {destination.currency}: a cross-currency "
                    "transfer needs a quote_id from POST /v1/fx/quotes",
                    field="quote_id",
                )
            found = await self._read(lambda c: queries.get_quote(c, self._t, r.quote_id or ""))
            quote = check_quote_for_transfer(
                found,
                scope=requester.scope,
                amount=r.amount,
                currency=r.currency,
                destination_currency=destination.currency,
                now=self._now(),
            )
        elif r.quote_id is not None:
            raise QuoteMismatch("a same-currency transfer takes no quote", field="quote_id")
        txn = self._new(
            requester,
            Kind.FX_TRANSFER if quote else Kind.TRANSFER,
            r.amount,
            r.currency,
            customer_id=source.customer_id,
            source_account_id=source.id,
            destination_account_id=destination.id,
            counterparty_customer_id=destination.customer_id,
            counterparty=destination.id,
            description=r.description,
            metadata=r.metadata,
            context=r.context,
            fx=None
            if quote is None
            else FxLeg(quote.id, quote.rate, quote.buy_amount, quote.buy_currency),
        )
        claim = None if quote is None else (quote.id, txn.id)
        return await self._accept(requester, txn, "transfer.created", claim_quote=claim)

    async def create_quote(
        self,
        requester: Requester,
        sell_currency: str,
        buy_currency: str,
        sell_amount: int | None,
        buy_amount: int | None,
    ) -> Quote:
        """A firm FX quote for this caller only, valid ``fx_quote_ttl`` seconds."""
        rules.check_amount(1, sell_currency, "sell_currency")
        rules.check_amount(1, buy_currency, "buy_currency")
        for value, name, currency in (
            (sell_amount, "sell_amount", sell_currency),
            (buy_amount, "buy_amount", buy_currency),
        ):
            if value is not None:
                rules.check_amount(value, currency, name)
        rate = await self._deps.fx.rate(sell_currency, buy_currency)
        now = self._now()
        quote = make_quote(
            quote_id=new_id("quo"),
            scope=requester.scope,
            sell_currency=sell_currency,
            buy_currency=buy_currency,
            sell_amount=sell_amount,
            buy_amount=buy_amount,
            provider_rate=rate.rate,
            rate_as_of=rate.as_of,
            spread_bps=self._config.fx_spread_bps,
            now=now,
            ttl=timedelta(seconds=self._config.fx_quote_ttl),
        )
        await self._journal.write(Write(new_quote=quote))
        return quote

    async def get_quote(self, requester: Requester, quote_id: str) -> Quote:
        quote = await self._read(lambda c: queries.get_quote(c, self._t, quote_id))
        if quote is None or quote.scope != requester.scope:
            raise UnknownTransaction(f"no quote {quote_id}")
        return quote

    async def create_batch(
        self, requester: Requester, r: BatchRequest
    ) -> tuple[TransferBatch, list[Transaction]]:
        """Accept up to 1,000 transfers from one of the caller's accounts, atomic
        (all or none) or independent; one command for the whole batch."""
        source = await self._own_account(requester, r.source_account_id, "source_account_id")
        total = rules.check_batch(source.id, source.currency, r.items)
        self._step_up(requester, total, source.currency)
        limit = asyncio.Semaphore(ACCOUNT_LOOKUPS)

        async def destination(index: int, item: rules.BatchItem) -> AccountInfo:
            async with limit:
                field = f"transfers[{index}].destination_account_id"
                info = await self._any_account(item.destination_account_id, field)
            rules.check_currency(info.currency, item.currency, f"transfers[{index}].currency")
            return info

        destinations = await asyncio.gather(*(destination(i, x) for i, x in enumerate(r.items)))
        now = self._now()
        batch = TransferBatch(
            id=new_id("bat"),
            client_id=requester.principal.client_id,
            owner=requester.principal.subject,
            source_account_id=source.id,
            customer_id=source.customer_id,
            currency=source.currency,
            atomic=r.atomic,
            count=len(r.items),
            total=total,
            status=BatchStatus.RECEIVED,
            created_at=now,
            updated_at=now,
        )
        items = [
            self._new(
                requester,
                Kind.TRANSFER,
                item.amount,
                item.currency,
                customer_id=source.customer_id,
                source_account_id=source.id,
                destination_account_id=info.id,
                counterparty_customer_id=info.customer_id,
                counterparty=info.id,
                description=item.description,
                metadata={"reference": item.reference} if item.reference else {},
                context=r.context,
                batch_id=batch.id,
            )
            for item, info in zip(r.items, destinations, strict=True)
        ]
        caller = requester.caller
        recordings = [
            recording(
                caller, x.id, transaction_data(x), fact_type("received"), TOPIC, partition_key(x)
            )
            for x in items
        ]
        summary = {
            "source_account_id": source.id,
            "count": batch.count,
            "total": total,
            "currency": batch.currency,
            "atomic": batch.atomic,
        }
        recordings.append(recording(caller, batch.id, summary, action="transfer_batch.created"))
        recordings.append(self._command(caller, source.id, batch_id=batch.id))
        await self._journal.write(Write(inserts=items, new_batch=batch, recordings=recordings))
        return batch, items

    async def get_batch(
        self, requester: Requester, batch_id: str
    ) -> tuple[TransferBatch, list[Transaction]]:
        async def load(conn: Tx) -> tuple[TransferBatch | None, list[Transaction]]:
            batch = await queries.get_batch(conn, self._t, batch_id)
            items = await queries.batch_items(conn, self._t, batch_id) if batch else []
            return batch, items

        batch, items = await self._read(load)
        if batch is None or not (requester.is_admin or batch.owner == requester.principal.subject):
            raise UnknownTransaction(f"no transfer batch {batch_id}")
        return batch, items

    async def reverse(self, requester: Requester, txn_id: str, reason: str) -> Transaction:
        """An operator undoes a posted transfer with a reversal posting."""
        txn, _ = await self.get(requester, txn_id, (Kind.TRANSFER,))
        rules.check_reverse(txn)
        return await self._decide(
            requester,
            txn,
            "transfer.reversal_requested",
            {"reason": reason},
            reverse_requested=True,
        )
