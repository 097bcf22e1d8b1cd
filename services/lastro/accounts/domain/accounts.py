"""Accounts: kinds, statuses, balances and the status transitions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from lastro.accounts.domain.errors import AccountClosed, AccountNotEmpty, InvalidRequest
from lastro.accounts.domain.ids import AccountId
from lastro.accounts.domain.rules import validate_currency
from lastro.core import money


class AccountStatus(StrEnum):
    ACTIVE = "active"
    FROZEN = "frozen"
    CLOSED = "closed"


class AccountKind(StrEnum):
    """``customer`` accounts obey spend rules; ``system`` accounts (settlement, fees,
    FX positions) are the platform's side of every movement and may go negative."""

    CUSTOMER = "customer"
    SYSTEM = "system"


@dataclass(frozen=True)
class BalanceDelta:
    """Signed changes to apply to one account: ``posted`` in the credit-normal sign,
    ``pending`` to the reserved (held) total."""

    posted: int = 0
    pending: int = 0

    def __add__(self, other: BalanceDelta) -> BalanceDelta:
        return BalanceDelta(self.posted + other.posted, self.pending + other.pending)


@dataclass(frozen=True)
class AccountState:
    """What the ledger needs to know about one account, as of the caller's lock."""

    id: AccountId
    currency: str
    kind: AccountKind
    status: AccountStatus = AccountStatus.ACTIVE
    overdraft_limit: int = 0
    posted: int = 0
    pending: int = 0

    @property
    def available(self) -> int:
        return self.posted - self.pending

    def apply(self, delta: BalanceDelta) -> AccountState:
        return replace(
            self, posted=self.posted + delta.posted, pending=self.pending + delta.pending
        )


def open_account(
    account_id: AccountId, currency: str, kind: AccountKind, overdraft_limit: int = 0
) -> AccountState:
    """A new active account with zero balances. Raises UnknownCurrency, or
    InvalidRequest for a negative overdraft or any overdraft on a system account
    (system accounts are unbounded already)."""
    validate_currency(currency)
    if type(overdraft_limit) is not int or not 0 <= overdraft_limit <= money.MAX_MINOR_UNITS:
        raise InvalidRequest("overdraft_limit must be a non-negative int", field="overdraft_limit")
    if kind is AccountKind.SYSTEM and overdraft_limit:
        raise InvalidRequest("system accounts take no overdraft limit", field="overdraft_limit")
    return AccountState(
        id=account_id, currency=currency, kind=kind, overdraft_limit=overdraft_limit
    )


def freeze(account: AccountState) -> AccountState:
    """Active → frozen (idempotent on frozen); raises AccountClosed."""
    _reject_closed(account)
    return replace(account, status=AccountStatus.FROZEN)


def unfreeze(account: AccountState) -> AccountState:
    """Frozen → active (idempotent on active); raises AccountClosed."""
    _reject_closed(account)
    return replace(account, status=AccountStatus.ACTIVE)


def close(account: AccountState) -> AccountState:
    """Active or frozen → closed, only with zero posted and zero pending balance.
    Raises AccountClosed or AccountNotEmpty."""
    _reject_closed(account)
    if account.posted or account.pending:
        raise AccountNotEmpty(
            f"account {account.id} has posted {account.posted} and pending {account.pending}"
        )
    return replace(account, status=AccountStatus.CLOSED)


def _reject_closed(account: AccountState, field: str | None = None) -> None:
    if account.status is AccountStatus.CLOSED:
        raise AccountClosed(f"account {account.id} is closed", field=field)


@dataclass(frozen=True)
class Account:
    """An account as the API shows it: the domain state plus its owner, metadata
    and times."""

    state: AccountState
    customer_id: str | None
    metadata: Mapping[str, str]
    created_at: datetime
    updated_at: datetime

    @property
    def id(self) -> AccountId:
        return self.state.id


@dataclass(frozen=True)
class Balance:
    account_id: AccountId
    currency: str
    posted: int
    pending: int
    available: int

    @classmethod
    def of(cls, account: AccountState) -> Balance:
        return cls(account.id, account.currency, account.posted, account.pending, account.available)
