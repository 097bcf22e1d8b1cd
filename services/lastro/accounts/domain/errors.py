"""The account service's rule violations: one class per rule, each a
:class:`~lastro.core.errors.DomainError` that the app factory renders as
problem+json with the class's ``slug``, ``title`` and ``status``: unknown
resources 404, erased customers 410, conflicts with the state of an account,
hold or customer 409, everything else about the request 422."""

from __future__ import annotations

from lastro.core import money
from lastro.core.errors import DomainError


class LedgerError(DomainError):
    """A request broke a rule of the account service. ``slug`` is the stable
    problem+json type, ``title`` its fixed human summary, ``status`` its HTTP status
    (422 unless the class says otherwise), ``detail`` this occurrence, ``field`` the
    offending request field when there is one (``entries[1].amount``)."""

    slug = "ledger-error"
    title = "Ledger rule violated"


class InvalidRequest(LedgerError):
    slug = "invalid-request"
    title = "A request field is malformed"


class UnknownAccount(LedgerError):
    slug = "unknown-account"
    title = "Account does not exist"
    status = 404


class UnknownPosting(LedgerError):
    slug = "unknown-posting"
    title = "Posting does not exist"
    status = 404


class UnknownHold(LedgerError):
    slug = "unknown-hold"
    title = "Hold does not exist"
    status = 404


class PostingAlreadyReversed(LedgerError):
    slug = "posting-already-reversed"
    title = "Posting was already reversed"
    status = 409


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
    status = 409


class AccountFrozen(LedgerError):
    slug = "account-frozen"
    title = "Account is frozen"
    status = 409


class AccountClosed(LedgerError):
    slug = "account-closed"
    title = "Account is closed"
    status = 409


class AccountNotEmpty(LedgerError):
    slug = "account-not-empty"
    title = "Account still has a balance or pending holds"
    status = 409


class HoldNotPending(LedgerError):
    slug = "hold-not-pending"
    title = "Hold is no longer pending"
    status = 409


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


class ReservedExternalId(LedgerError):
    """A caller's external_id in the namespace of the ids the ledger derives itself
    (a hold's posting, a reversal), which callers may not write."""

    slug = "reserved-external-id"
    title = "external_id uses a reserved prefix"


class UnknownCustomer(LedgerError):
    slug = "unknown-customer"
    title = "Customer does not exist"
    status = 404


class CustomerErased(LedgerError):
    slug = "customer-erased"
    title = "Customer's personal data was erased"
    status = 410


class EmailTaken(LedgerError):
    slug = "email-taken"
    title = "Another customer uses this e-mail address"
    status = 409
