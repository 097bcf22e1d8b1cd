"""The fraud service's rule violations, rendered by the app factory as problem+json."""

from __future__ import annotations

from lastro.core.errors import Conflict, DomainError, NotFound


class InvalidScreeningRequest(DomainError):
    """A screening request the contract's schema accepts but the domain does not
    (an unknown transaction type, a lowercase currency, a time without offset)."""

    slug = "invalid-screening-request"
    title = "Invalid screening request"


class ScreeningConflict(Conflict):
    """The transaction id was screened before with different content."""

    slug = "screening-conflict"
    title = "Transaction already screened with other content"


class RuleRejected(DomainError):
    """A rule that does not validate (shape, or the CEL parse or type error)."""

    slug = "invalid-rule"
    title = "Invalid fraud rule"


class UnknownRule(NotFound):
    slug = "unknown-rule"
    title = "Unknown fraud rule"


class UnknownAlert(NotFound):
    slug = "unknown-alert"
    title = "Unknown alert"


class AlertAlreadyResolved(Conflict):
    """The alert was resolved (the same resolution again is not an error)."""

    slug = "alert-resolved"
    title = "Alert already resolved"


class UnsupportedDataClass(DomainError):
    slug = "unsupported-data-class"
    title = "Data class not held by this service"


class UnsupportedAction(DomainError):
    slug = "unsupported-action"
    title = "Retention action not supported for this data class"


class InvalidCutoff(DomainError):
    slug = "invalid-cutoff"
    title = "Invalid retention cutoff"


class UnknownScreening(NotFound):
    slug = "unknown-screening"
    title = "No screening of this transaction"
