"""The rules a request to the transaction service can break, one class each.

Each is a :class:`~lastro.core.errors.DomainError`: the app factory renders it as
problem+json with the class's ``slug``, ``title`` and ``status``.
"""

from __future__ import annotations

from lastro.core.errors import Conflict, DomainError, NotFound


class InvalidTransaction(DomainError):
    """The request is well-formed JSON but breaks a rule of its own content."""

    slug = "invalid-transaction"
    title = "Invalid transaction"
    status = 422


class UnknownTransaction(NotFound):
    slug = "unknown-transaction"
    title = "Unknown transaction"


class UnknownAccount(DomainError):
    """An account named in the request does not exist or is not the caller's."""

    slug = "unknown-account"
    title = "Unknown account"
    status = 422


class CurrencyMismatch(DomainError):
    slug = "currency-mismatch"
    title = "Currency does not match the account"
    status = 422


class UnknownQuote(DomainError):
    """The quote does not exist, or it was given to somebody else."""

    slug = "unknown-quote"
    title = "Unknown FX quote"
    status = 422


class QuoteExpired(DomainError):
    slug = "quote-expired"
    title = "FX quote expired"
    status = 422


class QuoteMismatch(DomainError):
    """The transfer does not match the quote (currencies, amount)."""

    slug = "quote-mismatch"
    title = "Transfer does not match the FX quote"
    status = 422


class QuoteAlreadyUsed(Conflict):
    slug = "quote-already-used"
    title = "FX quote already used"


class UnsupportedCurrencyPair(DomainError):
    slug = "unsupported-currency-pair"
    title = "Currency pair not offered"
    status = 422


class InvalidState(Conflict):
    """The transaction is not in a state that allows this operation."""

    slug = "invalid-state"
    title = "Operation not allowed in the transaction's current state"


class AmountExceeded(DomainError):
    """A capture above the authorised amount, or a refund above what is left."""

    slug = "amount-exceeded"
    title = "Amount exceeds what is allowed"
    status = 422


class StepUpNotRequested(Conflict):
    slug = "step-up-not-requested"
    title = "Transaction does not await a step-up"


class InvalidSignature(DomainError):
    """A callback whose signature is missing, wrong or too old."""

    slug = "invalid-signature"
    title = "Invalid signature"
    status = 401
