"""Postings: balanced sets of entries, their validation, balance effects,
idempotency fingerprints and reversals."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from lastro.accounts.domain.accounts import (
    AccountKind,
    AccountState,
    AccountStatus,
    BalanceDelta,
    _reject_closed,
)
from lastro.accounts.domain.errors import (
    AccountFrozen,
    CurrencyMismatch,
    ExternalIdConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidRequest,
    TooFewEntries,
    UnbalancedPosting,
    UnknownAccount,
)
from lastro.accounts.domain.ids import AccountId, PostingId
from lastro.accounts.domain.rules import (
    derived_external_id,
    validate_amount,
    validate_currency,
    validate_description,
    validate_external_id,
    validate_metadata,
)
from lastro.core import money


class Direction(StrEnum):
    DEBIT = "debit"
    CREDIT = "credit"

    @property
    def opposite(self) -> Direction:
        return Direction.CREDIT if self is Direction.DEBIT else Direction.DEBIT


def signed_amount(direction: Direction, amount: int) -> int:
    """The effect on a credit-normal balance: credits add, debits subtract."""
    return amount if direction is Direction.CREDIT else -amount


@dataclass(frozen=True)
class EntryRequest:
    """One leg of a posting: an explicit direction and a positive amount."""

    account_id: AccountId
    direction: Direction
    amount: int
    currency: str


@dataclass(frozen=True)
class PostingRequest:
    """What a caller asks the ledger to post. ``external_id`` is the caller's
    idempotency handle; ``reverses`` names the posting a reversal corrects."""

    external_id: str
    entries: tuple[EntryRequest, ...]
    description: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    reverses: PostingId | None = None


@dataclass(frozen=True)
class Posting:
    """An immutable posted transaction; corrections are new (reversal) postings."""

    id: PostingId
    external_id: str
    entries: tuple[EntryRequest, ...]
    description: str
    metadata: Mapping[str, str]
    reverses: PostingId | None
    created_at: datetime
    fingerprint: str


def _digest(kind: str, canonical: dict[str, object]) -> str:
    body = json.dumps(
        {"kind": kind, **canonical}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def posting_fingerprint(request: PostingRequest) -> str:
    """sha256 hex of the request's canonical JSON, used to tell a retry from a conflict.

    Covers every field the caller sends (external_id, entries, description,
    metadata, reverses). Entries are compared as a multiset: their order carries
    no meaning in a double-entry posting, so a client that re-serialises its
    legs in another order still replays instead of conflicting.
    """
    entries = sorted(
        [e.account_id, str(e.direction), e.currency, e.amount] for e in request.entries
    )
    return _digest(
        "lastro.posting.v1",
        {
            "external_id": request.external_id,
            "entries": entries,
            "description": request.description,
            "metadata": dict(request.metadata),
            "reverses": request.reverses,
        },
    )


def validate_posting(request: PostingRequest, accounts: Mapping[AccountId, AccountState]) -> None:
    """Raise the first rule the request breaks; return None when it may be applied
    (subject to the funds check in :func:`apply_posting`).

    Request-only rules come first, so the answer for a malformed request does not
    depend on account state: InvalidRequest, TooFewEntries, InvalidAmount,
    UnknownCurrency, UnbalancedPosting; then per entry UnknownAccount,
    CurrencyMismatch, AccountClosed, AccountFrozen (debits only).
    """
    validate_external_id(request.external_id)
    validate_description(request.description)
    validate_metadata(request.metadata)
    if len(request.entries) < 2:
        raise TooFewEntries(f"got {len(request.entries)} entries", field="entries")
    totals: dict[str, int] = {}
    for i, entry in enumerate(request.entries):
        if not isinstance(entry.direction, Direction):
            raise InvalidRequest(
                "direction must be debit or credit", field=f"entries[{i}].direction"
            )
        validate_amount(entry.amount, field=f"entries[{i}].amount")
        validate_currency(entry.currency, field=f"entries[{i}].currency")
        totals[entry.currency] = totals.get(entry.currency, 0) + signed_amount(
            entry.direction, entry.amount
        )
    for currency, total in sorted(totals.items()):
        if total:
            raise UnbalancedPosting(
                f"{currency} credits exceed debits by {total}"
                if total > 0
                else f"{currency} debits exceed credits by {-total}",
                field="entries",
            )
    for i, entry in enumerate(request.entries):
        account = accounts.get(entry.account_id)
        if account is None:
            raise UnknownAccount(
                f"account {entry.account_id} does not exist", field=f"entries[{i}].account_id"
            )
        if entry.currency != account.currency:
            raise CurrencyMismatch(
                f"account {account.id} holds {account.currency}, entry is {entry.currency}",
                field=f"entries[{i}].currency",
            )
        _reject_closed(account, field=f"entries[{i}].account_id")
        if entry.direction is Direction.DEBIT and account.status is AccountStatus.FROZEN:
            raise AccountFrozen(
                f"account {account.id} is frozen and accepts no debits",
                field=f"entries[{i}].account_id",
            )


def _posting_deltas(request: PostingRequest) -> dict[AccountId, BalanceDelta]:
    deltas: dict[AccountId, BalanceDelta] = {}
    for entry in request.entries:
        change = BalanceDelta(posted=signed_amount(entry.direction, entry.amount))
        deltas[entry.account_id] = deltas.get(entry.account_id, BalanceDelta()) + change
    return deltas


def _check_range(
    accounts: Mapping[AccountId, AccountState], deltas: Mapping[AccountId, BalanceDelta]
) -> None:
    for account_id, delta in deltas.items():
        after = accounts[account_id].apply(delta)
        if abs(after.posted) > money.MAX_MINOR_UNITS or after.pending > money.MAX_MINOR_UNITS:
            raise InvalidAmount(f"balance of account {account_id} would leave the BIGINT range")


def _check_funds(
    accounts: Mapping[AccountId, AccountState], deltas: Mapping[AccountId, BalanceDelta]
) -> None:
    """A customer account whose available balance falls must stay ≥ -overdraft_limit.
    An account whose available balance rises or stays is never refused, even if it
    is overdrawn already (a credit must always be able to repair it)."""
    for account_id in sorted(deltas):
        account, delta = accounts[account_id], deltas[account_id]
        if account.kind is not AccountKind.CUSTOMER or delta.posted - delta.pending >= 0:
            continue
        after = account.apply(delta)
        if after.available < -account.overdraft_limit:
            raise InsufficientFunds(
                f"account {account_id} has {account.available} available"
                f" (overdraft limit {account.overdraft_limit}),"
                f" needs {delta.pending - delta.posted}"
            )


def apply_posting(
    accounts: Mapping[AccountId, AccountState], request: PostingRequest
) -> dict[AccountId, BalanceDelta]:
    """The balance change of every account the posting touches (entries on one
    account are netted). All-or-nothing: raises any :func:`validate_posting`
    error, InsufficientFunds, or InvalidAmount if a balance would leave the BIGINT
    range, and returns nothing partial. Reversals obey the same rules."""
    validate_posting(request, accounts)
    deltas = _posting_deltas(request)
    _check_range(accounts, deltas)
    _check_funds(accounts, deltas)
    return deltas


def record_posting(request: PostingRequest, posting_id: PostingId, now: datetime) -> Posting:
    """The immutable posting for an applied request (call after :func:`apply_posting`)."""
    return Posting(
        id=posting_id,
        external_id=request.external_id,
        entries=request.entries,
        description=request.description,
        metadata=dict(request.metadata),
        reverses=request.reverses,
        created_at=now,
        fingerprint=posting_fingerprint(request),
    )


def replay_posting(existing: Posting, request: PostingRequest) -> Posting:
    """Idempotency on external_id: the existing posting when ``request`` has the same
    content, otherwise ExternalIdConflict. Never posts anything."""
    if existing.fingerprint != posting_fingerprint(request):
        raise ExternalIdConflict(
            f"external_id {request.external_id!r} was used for posting {existing.id}"
            " with different content",
            field="external_id",
        )
    return existing


def reverse(posting: Posting, description: str | None = None) -> PostingRequest:
    """The correction of ``posting``: every entry with its direction swapped,
    ``reverses`` set to the original. The external_id is derived from the original
    id in the ledger's namespace (``lastro:reversal:<id>``, which no caller may use),
    so reversing the same posting again replays the first reversal (or
    conflicts, if the description differs) instead of reversing twice."""
    return PostingRequest(
        external_id=derived_external_id("reversal", posting.id),
        entries=tuple(replace(e, direction=e.direction.opposite) for e in posting.entries),
        description=f"Reversal of {posting.id}" if description is None else description,
        reverses=posting.id,
    )


@dataclass(frozen=True)
class Entry:
    """One stored ledger entry (a :class:`~lastro.accounts.domain.statements.Movement`)."""

    id: int
    posting_id: PostingId
    account_id: AccountId
    direction: Direction
    amount: int
    currency: str
    created_at: datetime
