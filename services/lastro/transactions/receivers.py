"""The worker's side of each effect the state machine asks for: which receiver
performs it (the fraud service, the ledger, the acquirer) and with what, per kind of
transaction: screening, review holds, postings (system accounts opened on first
use), card authorisations, captures, voids and refunds, payouts, the payments an
acquirer settlement pays. Every call is idempotent at its receiver, keyed by the
transaction (ledger ``external_id``, acquirer ``Idempotency-Key``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, TypeVar

from lastro.core.db import Engine, Tx, read
from lastro.core.errors import DomainError
from lastro.transactions.clients import Dependencies
from lastro.transactions.clients.http import TRANSPORT_ERRORS
from lastro.transactions.domain import ledger as postings
from lastro.transactions.domain import machine
from lastro.transactions.domain.effects import (
    Authorize,
    Capture,
    Done,
    Effect,
    Outcome,
    PlaceHold,
    PostLedger,
    RefundCard,
    Refused,
    ResolveHold,
    ReversePosting,
    Screen,
    SendPayout,
    SettlePayments,
    Unavailable,
    VoidAuthorization,
)
from lastro.transactions.domain.ledger import SystemAccounts, SystemKey, SystemPurpose
from lastro.transactions.domain.model import Kind, Refund, Transaction
from lastro.transactions.domain.steps import Change
from lastro.transactions.store import queries
from lastro.transactions.store.tables import Tables

log = logging.getLogger(__name__)
T = TypeVar("T")

RAILS: Final = {
    SystemPurpose.FX: ("fx", "fx"),
    SystemPurpose.ACQUIRER: ("settlement", "acquirer"),
    SystemPurpose.BANK: ("settlement", "bank"),
    SystemPurpose.FEES: ("fees", "acquirer-fees"),
    SystemPurpose.CLEARING: ("settlement", "batch-clearing"),
}


class Receivers:
    """Performs effects for the worker over one schema (``instance``)."""

    def __init__(
        self,
        engine: Engine,
        tables: Tables,
        deps: Dependencies,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._t = tables
        self._deps = deps
        self._now = clock
        self._system: dict[SystemKey, str] = {}
        self._system_lock = asyncio.Lock()
        self.instance = tables.schema

    async def _read(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        return await read(self._engine, work)

    async def perform(
        self, txn: Transaction, effect: Effect, refunds: Sequence[Refund]
    ) -> tuple[Outcome, list[Change]]:
        deps = self._deps
        try:
            match effect:
                case Screen():
                    return await deps.fraud.screen(txn), []
                case PlaceHold():
                    system = await self.system_accounts(postings.system_accounts_needed(txn, None))
                    return await deps.ledger.place_hold(postings.review_hold(txn, system)), []
                case ResolveHold(post=post):
                    assert txn.hold_id is not None
                    ledger = deps.ledger
                    if post:
                        return await ledger.post_hold(txn.hold_id), []
                    return await ledger.void_hold(txn.hold_id), []
                case PostLedger(purpose=purpose, refund_id=refund_id):
                    system = await self.system_accounts(
                        postings.system_accounts_needed(txn, purpose)
                    )
                    refund = next((r for r in refunds if r.id == refund_id), None)
                    spec = postings.posting_for(txn, purpose, system, refund)
                    return await deps.ledger.post(spec), []
                case ReversePosting(posting_id=posting_id):
                    description = f"reversal for {txn.id}"
                    return await deps.ledger.reverse(posting_id, description), []
                case Authorize():
                    assert txn.card is not None
                    return await deps.acquirer.authorize(
                        txn.id, txn.card.token, txn.amount, txn.currency
                    ), []
                case Capture(amount=amount):
                    assert txn.authorization_id is not None
                    return await deps.acquirer.capture(txn.id, txn.authorization_id, amount), []
                case VoidAuthorization():
                    return await self._void(txn), []
                case RefundCard(amount=amount, refund_id=refund_id):
                    assert txn.capture_id is not None
                    key = refund_id or f"{txn.id}:compensate"
                    return await deps.acquirer.refund(txn.capture_id, amount, key), []
                case SendPayout():
                    # The bank rail is simulated here (no bank exists among the fakes):
                    # the money already sits in the bank account; sending is the event.
                    return Done(f"payout:{txn.id}"), []
                case SettlePayments():
                    return Done(txn.settlement_id), await self._settled_payments(txn)
        except DomainError as error:  # a failure of ours, e.g. a system account missing
            log.exception("effect %s of %s failed", effect, txn.id)
            return Unavailable(error.detail), []
        raise AssertionError(f"unknown effect {effect!r}")

    async def _void(self, txn: Transaction) -> Done | Refused | Unavailable:
        acquirer = self._deps.acquirer
        authorization = txn.authorization_id
        if authorization is None:
            # Compensation after an authorisation whose answer was lost: the acquirer's
            # records say whether it authorised this reference at all.
            since = (txn.created_at - timedelta(minutes=5)).isoformat()
            until = (self._now() + timedelta(minutes=1)).isoformat()
            try:
                authorization = await acquirer.find_authorization(txn.id, since, until)
            except (*TRANSPORT_ERRORS, RuntimeError) as error:
                return Unavailable(f"acquirer records: {error!r}"[:300])
            if authorization is None:
                return Done(None)  # never authorised: nothing to release
        return await acquirer.void(txn.id, authorization)

    async def _settled_payments(self, deposit: Transaction) -> list[Change]:
        """The card payments whose captures this settlement batch paid (its capture
        items name our transaction ids as their ``reference``)."""
        payload = await self._read(lambda c: queries.settlement_of_deposit(c, self._t, deposit.id))
        if payload is None:
            return []
        references = {
            str(item["reference"])
            for item in payload.get("items", [])
            if isinstance(item, dict) and item.get("type") == "capture" and item.get("reference")
        }
        payments = await self._read(lambda c: queries.get_transactions(c, self._t, references))
        now = self._now()
        settled = (
            machine.settle_payment(p, deposit.settlement_id or "", now)
            for p in payments
            if p.kind is Kind.CARD_PAYMENT
        )
        return [change for change in settled if change is not None]

    async def system_accounts(self, keys: Sequence[SystemKey]) -> SystemAccounts:
        """The system accounts ``keys`` name, opened in the ledger on first use (once:
        under a lock here and the table's primary key across processes)."""
        missing = [k for k in keys if k not in self._system]
        if missing:
            async with self._system_lock:
                for key in missing:
                    if key not in self._system:
                        self._system[key] = await self._system_account(key)
        return {key: self._system[key] for key in keys}

    async def _system_account(self, key: SystemKey) -> str:
        purpose, currency = key

        async def find_or_open(conn: Tx) -> str:
            await queries.lock_system_account(conn, f"{self.instance}:system:{purpose}:{currency}")
            found = await queries.system_account(conn, self._t, purpose.value, currency)
            if found is not None:
                return found
            kind, rail = RAILS[purpose]
            opened = await self._deps.ledger.open_system_account(currency, kind, rail)
            await queries.insert_system_account(
                conn, self._t, purpose.value, currency, opened, self._now()
            )
            return opened

        async with self._engine.begin() as conn:
            return await find_or_open(conn)
