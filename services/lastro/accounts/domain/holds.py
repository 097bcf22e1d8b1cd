"""Holds: two-phase reservations (pending → posted | voided | expired)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum

from lastro.accounts.domain.accounts import AccountState, BalanceDelta
from lastro.accounts.domain.errors import (
    ExternalIdConflict,
    HoldAlreadyPosted,
    HoldAlreadyVoided,
    HoldAmountExceeded,
    HoldExpired,
    HoldNotExpired,
    InvalidRequest,
    LedgerError,
)
from lastro.accounts.domain.ids import AccountId, HoldId
from lastro.accounts.domain.postings import (
    Direction,
    EntryRequest,
    PostingRequest,
    _check_funds,
    _check_range,
    _digest,
    _posting_deltas,
    validate_posting,
)
from lastro.accounts.domain.rules import (
    derived_external_id,
    validate_amount,
    validate_caller_external_id,
    validate_currency,
    validate_description,
    validate_metadata,
)


class HoldStatus(StrEnum):
    PENDING = "pending"
    POSTED = "posted"
    VOIDED = "voided"
    EXPIRED = "expired"


@dataclass(frozen=True)
class HoldRequest:
    """Reserve ``amount`` on ``account_id`` until ``expires_at`` (aware datetime);
    posting the hold debits ``account_id`` and credits ``counterparty_id``."""

    external_id: str
    account_id: AccountId
    counterparty_id: AccountId
    amount: int
    currency: str
    expires_at: datetime
    description: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Hold:
    """A two-phase reservation: pending → posted | voided | expired, each final.
    ``posted_amount`` is what was posted (≤ ``amount``); ``resolved_at`` when it left
    pending."""

    id: HoldId
    external_id: str
    account_id: AccountId
    counterparty_id: AccountId
    amount: int
    currency: str
    expires_at: datetime
    description: str
    metadata: Mapping[str, str]
    created_at: datetime
    fingerprint: str
    status: HoldStatus = HoldStatus.PENDING
    posted_amount: int = 0
    resolved_at: datetime | None = None


@dataclass(frozen=True)
class HoldTransition:
    """A hold's new state and the balance changes to write with it; ``posting`` is
    the ledger posting to record when the hold was posted."""

    hold: Hold
    deltas: dict[AccountId, BalanceDelta]
    posting: PostingRequest | None = None


def hold_fingerprint(request: HoldRequest) -> str:
    """sha256 hex of the hold request's canonical JSON (every field the caller sends)."""
    return _digest(
        "lastro.hold.v1",
        {
            "external_id": request.external_id,
            "account_id": request.account_id,
            "counterparty_id": request.counterparty_id,
            "amount": request.amount,
            "currency": request.currency,
            "expires_at": request.expires_at.astimezone(UTC).isoformat(),
            "description": request.description,
            "metadata": dict(request.metadata),
        },
    )


def replay_hold(existing: Hold, request: HoldRequest) -> Hold:
    """The existing hold when ``request`` has the same content; else ExternalIdConflict."""
    if existing.fingerprint != hold_fingerprint(request):
        raise ExternalIdConflict(
            f"external_id {request.external_id!r} was used for hold {existing.id}"
            " with different content",
            field="external_id",
        )
    return existing


def place_hold(
    accounts: Mapping[AccountId, AccountState], request: HoldRequest, hold_id: HoldId, now: datetime
) -> HoldTransition:
    """A new pending hold reserving ``amount`` on the account (pending += amount).

    Raises InvalidRequest (bad fields, expiry not in the future, account equals
    counterparty), InvalidAmount, UnknownCurrency, UnknownAccount,
    CurrencyMismatch, AccountClosed, AccountFrozen (held account only) or
    InsufficientFunds; a hold on a customer account obeys the same spend rule as
    a debit, so posting it later can never overdraw.
    """
    validate_caller_external_id(request.external_id)
    validate_description(request.description)
    validate_metadata(request.metadata)
    validate_amount(request.amount)
    validate_currency(request.currency)
    if request.expires_at.tzinfo is None or request.expires_at <= now:
        raise InvalidRequest("expires_at must be an aware time in the future", field="expires_at")
    if request.account_id == request.counterparty_id:
        raise InvalidRequest(
            "counterparty must differ from the held account", field="counterparty_id"
        )
    probe = PostingRequest(
        external_id=request.external_id,
        entries=(
            EntryRequest(request.account_id, Direction.DEBIT, request.amount, request.currency),
            EntryRequest(
                request.counterparty_id, Direction.CREDIT, request.amount, request.currency
            ),
        ),
    )
    try:
        validate_posting(probe, accounts)
    except LedgerError as error:
        error.field = _hold_field(error.field)
        raise
    deltas = {request.account_id: BalanceDelta(pending=request.amount)}
    _check_range(accounts, deltas)
    _check_funds(accounts, deltas)
    hold = Hold(
        id=hold_id,
        external_id=request.external_id,
        account_id=request.account_id,
        counterparty_id=request.counterparty_id,
        amount=request.amount,
        currency=request.currency,
        expires_at=request.expires_at,
        description=request.description,
        metadata=dict(request.metadata),
        created_at=now,
        fingerprint=hold_fingerprint(request),
    )
    return HoldTransition(hold=hold, deltas=deltas)


def _hold_field(entry_field: str | None) -> str | None:
    """Map a probe posting's ``entries[i].x`` field back to the hold request's field."""
    if entry_field is None or not entry_field.startswith("entries["):
        return entry_field
    name = "account_id" if entry_field.startswith("entries[0]") else "counterparty_id"
    return name if entry_field.endswith("account_id") else entry_field.rsplit(".", 1)[-1]


def _require_pending(hold: Hold, now: datetime) -> None:
    if hold.status is HoldStatus.POSTED:
        raise HoldAlreadyPosted(f"hold {hold.id} was already posted")
    if hold.status is HoldStatus.VOIDED:
        raise HoldAlreadyVoided(f"hold {hold.id} was voided")
    if hold.status is HoldStatus.EXPIRED or now >= hold.expires_at:
        raise HoldExpired(f"hold {hold.id} expired at {hold.expires_at.isoformat()}")


def post_hold(
    accounts: Mapping[AccountId, AccountState], hold: Hold, amount: int, now: datetime
) -> HoldTransition:
    """Post ``amount`` (≤ the held amount) and release the whole reservation.

    The hold becomes ``posted`` (final: a hold is posted at most once), the held
    account is debited ``amount`` and its pending reduced by the full held amount,
    the counterparty credited ``amount``. No funds check: the amount was reserved,
    so the held account's available balance can only rise. Raises HoldAlreadyPosted,
    HoldAlreadyVoided, HoldExpired (also when ``now`` ≥ expiry before the sweeper
    ran), InvalidAmount, HoldAmountExceeded, AccountFrozen (held account),
    AccountClosed (counterparty).
    """
    _require_pending(hold, now)
    validate_amount(amount)
    if amount > hold.amount:
        raise HoldAmountExceeded(
            f"hold {hold.id} holds {hold.amount}, asked {amount}", field="amount"
        )
    posting = PostingRequest(
        external_id=derived_external_id("hold", hold.id, "post"),
        entries=(
            EntryRequest(hold.account_id, Direction.DEBIT, amount, hold.currency),
            EntryRequest(hold.counterparty_id, Direction.CREDIT, amount, hold.currency),
        ),
        description=hold.description,
        metadata=dict(hold.metadata),
    )
    validate_posting(posting, accounts)
    deltas = _posting_deltas(posting)
    deltas[hold.account_id] += BalanceDelta(pending=-hold.amount)
    _check_range(accounts, deltas)
    posted = replace(hold, status=HoldStatus.POSTED, posted_amount=amount, resolved_at=now)
    return HoldTransition(hold=posted, deltas=deltas, posting=posting)


def void_hold(hold: Hold, now: datetime) -> HoldTransition:
    """Release a pending hold (pending -= amount); allowed on frozen accounts.
    Raises HoldAlreadyPosted, HoldAlreadyVoided or HoldExpired (let expiry release it)."""
    _require_pending(hold, now)
    return _release(hold, HoldStatus.VOIDED, now)


def expire_hold(hold: Hold, now: datetime) -> HoldTransition:
    """Release a pending hold whose expiry has passed (``now`` ≥ ``expires_at``).
    Raises HoldNotExpired before that, HoldAlreadyPosted / HoldAlreadyVoided /
    HoldExpired when it already left pending."""
    if hold.status is not HoldStatus.PENDING:
        _require_pending(hold, now)
    if now < hold.expires_at:
        raise HoldNotExpired(f"hold {hold.id} expires at {hold.expires_at.isoformat()}")
    return _release(hold, HoldStatus.EXPIRED, now)


def _release(hold: Hold, status: HoldStatus, now: datetime) -> HoldTransition:
    released = replace(hold, status=status, resolved_at=now)
    return HoldTransition(
        hold=released, deltas={hold.account_id: BalanceDelta(pending=-hold.amount)}
    )
