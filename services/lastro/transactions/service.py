"""Use cases of the transaction API: accept money movements, read them, and pass
on what people and partners decide about them.

Accepting never moves money: a use case checks the request (its own rules, the
caller's ownership of the account money leaves or arrives on, step-up for large
amounts), then stores the transaction with its ``received`` event, its audit
record and a command for the workers, in one transaction (``journal.Write``). The
workers do the rest (``processor.py``). Follow-up operations (capture, void,
refund, confirm, reverse, a review outcome) store the decision on the row, guarded
by its version, with a new command in the same transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.changes import Caller
from lastro.core.config import TransactionSettings
from lastro.core.db import Tx
from lastro.core.errors import DependencyUnavailable
from lastro.core.ids import new_id
from lastro.core.problems import Problem
from lastro.core.security.fields import BlindIndex, FieldCipher, SubjectKeys
from lastro.core.security.tokens import Principal
from lastro.core.stepup import require_recent_otp, requires_step_up
from lastro.transactions.clients import Dependencies
from lastro.transactions.clients.http import TRANSPORT_ERRORS
from lastro.transactions.clients.ledger import AccountInfo, AccountNotReadable
from lastro.transactions.domain import requests as rules
from lastro.transactions.domain.errors import (
    InvalidSignature,
    InvalidTransaction,
    QuoteMismatch,
    UnknownAccount,
    UnknownTransaction,
)
from lastro.transactions.domain.fx import Quote, check_quote_for_transfer, make_quote
from lastro.transactions.domain.model import (
    BatchStatus,
    CaptureMethod,
    Card,
    FxLeg,
    Kind,
    Refund,
    RefundStatus,
    RequestContext,
    ReviewOutcome,
    Status,
    Transaction,
    TransferBatch,
)
from lastro.transactions.events import (
    COMMAND,
    COMMANDS_TOPIC,
    TOPIC,
    command_data,
    fact_type,
    partition_key,
    transaction_data,
)
from lastro.transactions.journal import Journal, Recording, Write, recording
from lastro.transactions.store import queries
from lastro.transactions.store.tables import Tables

T = TypeVar("T")

ADMIN_SCOPE: Final = "transactions:admin"
ACCOUNT_LOOKUPS: Final = 8


@dataclass(frozen=True)
class Requester:
    """The authenticated caller: who (for the audit log), which client and end user
    (idempotency and quote scope, ownership), and their bearer token (forwarded to
    the account service to prove ownership)."""

    caller: Caller
    principal: Principal
    bearer: str

    @property
    def scope(self) -> str:
        return f"{self.principal.client_id}:{self.principal.subject}"

    @property
    def is_admin(self) -> bool:
        return ADMIN_SCOPE in self.principal.scopes

    def strongly_authenticated(self, max_age: int) -> bool:
        """A second factor within ``max_age`` seconds (``core.stepup``'s test)."""
        try:
            require_recent_otp(self.principal, max_age=max_age)
        except Problem:
            return False
        return True


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
class PaymentRequest:
    destination_account_id: str
    amount: int
    currency: str
    card: Card
    capture_method: CaptureMethod
    description: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    context: RequestContext = field(default_factory=RequestContext)


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


@dataclass(frozen=True)
class BatchRequest:
    source_account_id: str
    atomic: bool
    items: Sequence[rules.BatchItem]
    context: RequestContext = field(default_factory=RequestContext)


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


@dataclass(frozen=True)
class HistoryFilter:
    kinds: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    account_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: str | None = None
    limit: int = 50


class Transactions:
    """The API's use cases over one schema (``instance``)."""

    def __init__(
        self,
        engine: AsyncEngine,
        tables: Tables,
        journal: Journal,
        deps: Dependencies,
        config: TransactionSettings,
        *,
        subject_keys: SubjectKeys,
        blind_index: BlindIndex,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._reader = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._t = tables
        self._journal = journal
        self._deps = deps
        self._config = config
        self._keys = subject_keys
        self._index = blind_index
        self._now = clock
        self.instance = tables.schema

    # ------------------------------------------------------------ helpers

    async def _read(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        """Run read-only ``work`` in autocommit: no BEGIN/ROLLBACK round trips."""
        async with self._reader.connect() as conn:
            return await work(conn)

    def _step_up(self, requester: Requester, amount: int, currency: str) -> None:
        """Large amounts need a recent second factor (RFC 9470 challenge otherwise)."""
        if requires_step_up(amount, currency, self._config.step_up_thresholds):
            require_recent_otp(requester.principal, max_age=self._config.step_up_max_age)

    async def _own_account(self, requester: Requester, account_id: str, field: str) -> AccountInfo:
        """The account if it is the caller's (the account service decides)."""
        try:
            info = await self._deps.ledger.caller_account(
                account_id, requester.bearer, requester.principal.subject
            )
        except AccountNotReadable:
            raise UnknownAccount(
                "the account service does not accept this token: it needs audience "
                "'accounts' and scope 'accounts:read' besides this service's",
                field=field,
            ) from None
        except TRANSPORT_ERRORS:
            raise DependencyUnavailable("the account service cannot be reached") from None
        if info is None:
            raise UnknownAccount(f"no account {account_id} of yours", field=field)
        return info

    async def _any_account(self, account_id: str, field: str) -> AccountInfo:
        try:
            info = await self._deps.ledger.account(account_id)
        except (*TRANSPORT_ERRORS, AccountNotReadable):
            raise DependencyUnavailable("the account service cannot be reached") from None
        if info is None or info.kind != "customer":
            raise UnknownAccount(f"no account {account_id}", field=field)
        return info

    def _new(
        self, requester: Requester, kind: Kind, amount: int, currency: str, **fields: Any
    ) -> Transaction:
        now = self._now()
        context = fields.pop("context", RequestContext())
        strong = requester.strongly_authenticated(self._config.step_up_max_age)
        fields["context"] = replace(context, strong_auth=strong)
        return Transaction(
            id=new_id("txn"),
            kind=kind,
            status=Status.RECEIVED,
            client_id=requester.principal.client_id,
            owner=requester.principal.subject,
            amount=amount,
            currency=currency,
            created_at=now,
            updated_at=now,
            **fields,
        )

    def _command(self, caller: Caller, key: str, **target: str) -> Recording:
        data = command_data(self.instance, **target)
        target_id = target.get("transaction_id") or target["batch_id"]
        return recording(caller, target_id, data, COMMAND, COMMANDS_TOPIC, key)

    def _received(self, requester: Requester, txn: Transaction, action: str) -> list[Recording]:
        data = transaction_data(txn)
        key = partition_key(txn)
        return [
            recording(
                requester.caller, txn.id, data, fact_type("received"), TOPIC, key, action=action
            ),
            self._command(requester.caller, key, transaction_id=txn.id),
        ]

    async def _accept(
        self, requester: Requester, txn: Transaction, action: str, **write: Any
    ) -> Transaction:
        await self._journal.write(
            Write(inserts=(txn,), recordings=self._received(requester, txn, action), **write)
        )
        return txn

    # ------------------------------------------------------------ transfers

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

    # ------------------------------------------------------------ card payments, payouts

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

    # ------------------------------------------------------------ reads

    async def _visible(
        self, requester: Requester, txn: Transaction | None, txn_id: str
    ) -> Transaction:
        """``txn`` if the caller asked for it, owns its source account (or its
        destination, once money arrived there), or is an operator; otherwise
        UnknownTransaction, as for an id that does not exist."""
        if txn is not None:
            if requester.is_admin or txn.owner == requester.principal.subject:
                return txn
            moved = txn.status in (Status.POSTED, Status.SETTLED, Status.REVERSED, Status.REFUNDED)
            for account_id in (
                txn.source_account_id,
                txn.destination_account_id if moved else None,
            ):
                if account_id is None:
                    continue
                try:
                    own = await self._deps.ledger.caller_account(
                        account_id, requester.bearer, requester.principal.subject
                    )
                except (*TRANSPORT_ERRORS, AccountNotReadable):
                    own = None
                if own is not None:
                    return txn
        raise UnknownTransaction(f"no transaction {txn_id}")

    async def get(
        self, requester: Requester, txn_id: str, kinds: Sequence[Kind] = ()
    ) -> tuple[Transaction, list[Refund]]:
        async def load(conn: Tx) -> tuple[Transaction | None, list[Refund]]:
            txn = await queries.get_transaction(conn, self._t, txn_id)
            refunds = (
                await queries.refunds_of(conn, self._t, txn_id)
                if txn is not None and txn.kind is Kind.CARD_PAYMENT
                else []
            )
            return txn, refunds

        txn, refunds = await self._read(load)
        if txn is not None and kinds and txn.kind not in kinds:
            txn = None
        return await self._visible(requester, txn, txn_id), refunds

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

    # ------------------------------------------------------------ follow-ups

    async def _decide(
        self,
        requester: Requester,
        txn: Transaction,
        action: str,
        details: dict[str, Any],
        **changes: Any,
    ) -> Transaction:
        """Store a decision on ``txn`` over its version, with a command and an audit record."""
        changed = replace(txn, version=txn.version + 1, updated_at=self._now(), **changes)
        recordings = [
            recording(
                requester.caller, txn.id, {"transaction_id": txn.id, **details}, action=action
            ),
            self._command(requester.caller, partition_key(txn), transaction_id=txn.id),
        ]
        await self._journal.write(Write(changes=(changed,), recordings=recordings))
        return changed

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

    async def confirm(self, requester: Requester, txn_id: str) -> Transaction:
        """The customer answers a fraud ``challenge`` with a fresh second factor."""
        txn, _ = await self.get(requester, txn_id)
        if txn.owner != requester.principal.subject:
            raise UnknownTransaction(f"no transaction {txn_id}")
        require_recent_otp(requester.principal, max_age=self._config.step_up_max_age)
        rules.check_confirm(txn)
        return await self._decide(
            requester, txn, "transfer.confirmed", {}, confirmed_at=self._now()
        )

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

    async def resolve_review(
        self, requester: Requester, txn_id: str, outcome: ReviewOutcome, alert_id: str | None
    ) -> Transaction:
        """The fraud service reports how an alert on a held transaction was resolved.
        Repeating the same outcome is harmless; another outcome is refused."""
        txn = await self._read(lambda c: queries.get_transaction(c, self._t, txn_id))
        if txn is None:
            raise UnknownTransaction(f"no transaction {txn_id}")
        if not rules.check_review_outcome(txn, outcome):
            return txn
        return await self._decide(
            requester,
            txn,
            "transaction.review_resolved",
            {"outcome": outcome.value, "alert_id": alert_id},
            review_outcome=outcome,
        )

    # ------------------------------------------------------------ acquirer settlement

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

    # ------------------------------------------------------------ waiting

    async def current(self, txn_id: str) -> Transaction:
        txn = await self._read(lambda c: queries.get_transaction(c, self._t, txn_id))
        if txn is None:
            raise UnknownTransaction(f"no transaction {txn_id}")
        return txn

    async def refunds(self, payment_id: str) -> list[Refund]:
        return await self._read(lambda c: queries.refunds_of(c, self._t, payment_id))


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
