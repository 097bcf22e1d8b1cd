"""What every use case of the transaction API starts from: who asks
(:class:`Requester`), their accounts as the account service sees them, and the two
ways a use case stores something: a new transaction accepted ``received`` with its
command (``_accept``), or a decision stored on a row over its version with a new
command (``_decide``), each in one transaction (``journal.Write``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from lastro.core.changes import Caller
from lastro.core.config import TransactionSettings
from lastro.core.db import Engine, Tx, read
from lastro.core.errors import DependencyUnavailable
from lastro.core.ids import new_id
from lastro.core.problems import Problem
from lastro.core.security.fields import BlindIndex, SubjectKeys
from lastro.core.security.tokens import Principal
from lastro.core.stepup import require_recent_otp, requires_step_up
from lastro.transactions.clients import Dependencies
from lastro.transactions.clients.http import TRANSPORT_ERRORS
from lastro.transactions.clients.ledger import AccountInfo, AccountNotReadable
from lastro.transactions.domain.errors import UnknownAccount, UnknownTransaction
from lastro.transactions.domain.model import Kind, Refund, RequestContext, Status, Transaction
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


class Intake:
    """What every use case shares: the schema it works in (``instance``), the
    caller's accounts as the account service sees them, a new transaction stored
    ``received`` with its command, and a decision stored on a row over its version.
    The use-case modules (``transfers``, ``payments``, ``payouts``, ``reviews``,
    ``settlements``) extend it; ``service.Transactions`` gathers them."""

    def __init__(
        self,
        engine: Engine,
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
        return await read(self._engine, work)

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
