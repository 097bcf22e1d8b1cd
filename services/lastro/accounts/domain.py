"""Pure rules of the account service: accounts, the double-entry ledger and holds.

Nothing here does I/O, reads a clock or touches a database: time, randomness and
the current account states are passed in, and every function returns new values
(all types are frozen). ``service.py`` loads and locks the accounts, calls these
functions, and writes what they return in one transaction.

Sign convention (one rule for every account). A balance is ``credits - debits``:
every account is *credit-normal*. A customer account is a liability of the
platform, so a credit (money in) increases it and a debit decreases it. System
accounts (settlement, fees, FX positions) use the same sign, so the platform-wide
invariant is literally "the posted balances of one currency sum to zero". The
settlement account is therefore negative after money enters from outside (it is
the asset side, debit-normal in accounting terms); fee income shows as positive.

Balances. ``posted`` is the sum of posted entries; ``pending`` is the total of the
account's pending holds (reserved debits, never negative); ``available`` is
``posted - pending``. A customer account may spend while ``available`` stays at or
above ``-overdraft_limit``; a system account may go negative without limit,
because it is the other side of money entering or leaving the platform.

Status. ``frozen`` accounts reject debits and new holds but still accept credits
(incoming money is not refused while compliance looks at the account); releasing
a hold (void, expiry) is always allowed. ``closed`` accounts reject everything.
An account can be closed only with zero posted and zero pending balance.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import ClassVar, Final, NewType, Protocol

from lastro.core import ids, money

# --- identifiers -------------------------------------------------------------------

AccountId = NewType("AccountId", str)
PostingId = NewType("PostingId", str)
HoldId = NewType("HoldId", str)
CustomerId = NewType("CustomerId", str)


class IdPrefix(StrEnum):
    """Stripe-style prefixes of public identifiers."""

    ACCOUNT = "acc_"
    POSTING = "pst_"
    HOLD = "hold_"
    CUSTOMER = "cus_"


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

RandomBits = Callable[[int], int]
"""A source of ``k`` random bits, like :func:`secrets.randbits`; injectable for tests."""


def new_id(prefix: IdPrefix, now: datetime, randbits: RandomBits = secrets.randbits) -> str:
    """``prefix`` + a 26-character ULID: 48-bit Unix milliseconds, 80 random bits.

    Crockford base32, so ids sort lexicographically by creation millisecond (ids
    minted in the same millisecond sort in random order). ``now`` must be aware.
    """
    millis = (now - _EPOCH) // timedelta(milliseconds=1)
    return prefix.value + ids.encode(millis, randbits(80))


def is_valid_id(prefix: IdPrefix, value: str) -> bool:
    """True when ``value`` has the shape :func:`new_id` produces for ``prefix``."""
    return ids.has_prefix(value, prefix.value.removesuffix("_"))


def new_account_id(now: datetime, randbits: RandomBits = secrets.randbits) -> AccountId:
    return AccountId(new_id(IdPrefix.ACCOUNT, now, randbits))


def new_posting_id(now: datetime, randbits: RandomBits = secrets.randbits) -> PostingId:
    return PostingId(new_id(IdPrefix.POSTING, now, randbits))


def new_hold_id(now: datetime, randbits: RandomBits = secrets.randbits) -> HoldId:
    return HoldId(new_id(IdPrefix.HOLD, now, randbits))


def new_customer_id(now: datetime, randbits: RandomBits = secrets.randbits) -> CustomerId:
    return CustomerId(new_id(IdPrefix.CUSTOMER, now, randbits))


# --- errors ------------------------------------------------------------------------


class LedgerError(Exception):
    """A request broke a ledger rule. ``slug`` is the stable problem+json type slug,
    ``title`` its fixed human summary, ``detail`` this occurrence, ``field`` the
    offending request field when there is one (``entries[1].amount``)."""

    slug: ClassVar[str] = "ledger-error"
    title: ClassVar[str] = "Ledger rule violated"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class InvalidRequest(LedgerError):
    slug = "invalid-request"
    title = "A request field is malformed"


class UnknownAccount(LedgerError):
    slug = "unknown-account"
    title = "Account does not exist"


class UnknownPosting(LedgerError):
    slug = "unknown-posting"
    title = "Posting does not exist"


class UnknownHold(LedgerError):
    slug = "unknown-hold"
    title = "Hold does not exist"


class PostingAlreadyReversed(LedgerError):
    slug = "posting-already-reversed"
    title = "Posting was already reversed"


class UnknownCurrency(LedgerError, money.UnknownCurrency):
    slug = "unknown-currency"
    title = "Currency is not supported"


class CurrencyMismatch(LedgerError, money.CurrencyMismatch):
    slug = "currency-mismatch"
    title = "Entry currency differs from the account currency"


class InvalidAmount(LedgerError, money.InvalidAmount):
    slug = "invalid-amount"
    title = "Amount must be a positive integer of minor units"


class TooFewEntries(LedgerError):
    slug = "too-few-entries"
    title = "A posting needs at least two entries"


class UnbalancedPosting(LedgerError):
    slug = "unbalanced-posting"
    title = "Debits and credits differ"


class InsufficientFunds(LedgerError):
    slug = "insufficient-funds"
    title = "Insufficient funds"


class AccountFrozen(LedgerError):
    slug = "account-frozen"
    title = "Account is frozen"


class AccountClosed(LedgerError):
    slug = "account-closed"
    title = "Account is closed"


class AccountNotEmpty(LedgerError):
    slug = "account-not-empty"
    title = "Account still has a balance or pending holds"


class HoldNotPending(LedgerError):
    slug = "hold-not-pending"
    title = "Hold is no longer pending"


class HoldAlreadyPosted(HoldNotPending):
    slug = "hold-already-posted"
    title = "Hold was already posted"


class HoldAlreadyVoided(HoldNotPending):
    slug = "hold-voided"
    title = "Hold was voided"


class HoldExpired(HoldNotPending):
    slug = "hold-expired"
    title = "Hold has expired"


class HoldNotExpired(LedgerError):
    slug = "hold-not-expired"
    title = "Hold has not reached its expiry"


class HoldAmountExceeded(LedgerError):
    slug = "hold-amount-exceeded"
    title = "Amount exceeds the held amount"


class ExternalIdConflict(LedgerError):
    slug = "external-id-conflict"
    title = "external_id was already used for a different request"


# --- request field rules -------------------------------------------------------------

MAX_EXTERNAL_ID_LENGTH: Final = 255
MAX_DESCRIPTION_LENGTH: Final = 1000
MAX_METADATA_KEYS: Final = 50
MAX_METADATA_KEY_LENGTH: Final = 40
MAX_METADATA_VALUE_LENGTH: Final = 500
_PRINTABLE: Final = re.compile(r"[^\x00-\x1f\x7f]+")


def validate_external_id(external_id: str) -> None:
    """1..255 characters, no control characters; raises InvalidRequest."""
    if not isinstance(external_id, str) or not _PRINTABLE.fullmatch(external_id):
        raise InvalidRequest("external_id must be non-empty printable text", field="external_id")
    if len(external_id) > MAX_EXTERNAL_ID_LENGTH:
        raise InvalidRequest(
            f"external_id is longer than {MAX_EXTERNAL_ID_LENGTH}", field="external_id"
        )


def _storable(text: object) -> bool:
    """Text PostgreSQL can store: ``text`` and ``jsonb`` refuse the NUL character."""
    return isinstance(text, str) and "\x00" not in text


def validate_description(description: str) -> None:
    if not _storable(description) or len(description) > MAX_DESCRIPTION_LENGTH:
        raise InvalidRequest(
            f"description must be text (no NUL) of at most {MAX_DESCRIPTION_LENGTH} characters",
            field="description",
        )


def validate_metadata(metadata: Mapping[str, str]) -> None:
    """Stripe's limits: at most 50 string keys (1..40 chars) with string values (≤500)."""
    if not isinstance(metadata, Mapping) or len(metadata) > MAX_METADATA_KEYS:
        raise InvalidRequest(
            f"metadata must be a map of at most {MAX_METADATA_KEYS} keys", field="metadata"
        )
    for key, value in metadata.items():
        if not _storable(key) or not 0 < len(key) <= MAX_METADATA_KEY_LENGTH:
            raise InvalidRequest(
                f"metadata keys must be 1..{MAX_METADATA_KEY_LENGTH} characters, no NUL",
                field="metadata",
            )
        if not _storable(value) or len(value) > MAX_METADATA_VALUE_LENGTH:
            raise InvalidRequest(
                f"metadata values must be text (no NUL) of at most"
                f" {MAX_METADATA_VALUE_LENGTH} characters",
                field=f"metadata.{key}",
            )


def validate_currency(currency: str, *, field: str = "currency") -> None:
    try:
        money.Currency.of(currency)
    except money.UnknownCurrency:
        raise UnknownCurrency(f"unknown currency {currency!r}", field=field) from None


def validate_amount(amount: int, *, field: str = "amount") -> None:
    """A positive ``int`` (not bool, not float) that fits a BIGINT; raises InvalidAmount."""
    if type(amount) is not int or not 0 < amount <= money.MAX_MINOR_UNITS:
        raise InvalidAmount(f"{amount!r} is not a positive integer of minor units", field=field)


# --- accounts ------------------------------------------------------------------------


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


# --- postings ------------------------------------------------------------------------


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
    id, so reversing the same posting again replays the first reversal (or
    conflicts, if the description differs) instead of reversing twice."""
    return PostingRequest(
        external_id=f"reversal:{posting.id}",
        entries=tuple(replace(e, direction=e.direction.opposite) for e in posting.entries),
        description=f"Reversal of {posting.id}" if description is None else description,
        reverses=posting.id,
    )


# --- holds ---------------------------------------------------------------------------


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
    validate_external_id(request.external_id)
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
        external_id=f"{hold.id}:post",
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


# --- statements ----------------------------------------------------------------------


class Movement(Protocol):
    """Anything with a direction and a positive amount (an entry row, an EntryRequest)."""

    @property
    def direction(self) -> Direction: ...

    @property
    def amount(self) -> int: ...


@dataclass(frozen=True)
class StatementTotals:
    """``closing == opening + total_credits - total_debits`` (credit-normal)."""

    opening: int
    total_debits: int
    total_credits: int
    closing: int
    entry_count: int


def summarize_statement(opening: int, entries: Iterable[Movement]) -> StatementTotals:
    """Totals of one account's entries over a period, starting from ``opening``
    (the posted balance just before the period's first entry)."""
    debits = credits = count = 0
    for entry in entries:
        count += 1
        if entry.direction is Direction.CREDIT:
            credits += entry.amount
        else:
            debits += entry.amount
    return StatementTotals(
        opening=opening,
        total_debits=debits,
        total_credits=credits,
        closing=opening + credits - debits,
        entry_count=count,
    )
