"""Domain errors: the one way a service says "this request broke a rule".

A use case raises a subclass of :class:`DomainError`; the HTTP app factory
(``core/http.py``) renders it as RFC 9457 problem+json with the class's stable
``slug`` (the problem ``type``), ``title`` and ``status``, this occurrence's
``detail`` and, when one request field is at fault, ``errors: [{field, detail}]``.
Domain modules define their errors as subclasses, one class per rule, with no
HTTP code of their own::

    class InsufficientFunds(LedgerError):
        slug = "insufficient-funds"
        title = "Insufficient funds"
        status = 409

:class:`DependencyUnavailable` is the one error for "a dependency is down, retry":
503 with ``Retry-After``, never a 500.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from lastro.core.problems import Problem


class DomainError(Exception):
    """A request broke a business rule. Subclasses set ``slug``, ``title`` and
    ``status``; ``detail`` describes this occurrence (never secrets or PII) and
    ``field`` names the offending request field (``entries[1].amount``)."""

    slug: ClassVar[str] = "domain-error"
    title: ClassVar[str] = "Business rule violated"
    status: ClassVar[int] = 422

    def __init__(self, detail: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.extra: dict[str, Any] = extra

    def headers(self) -> Mapping[str, str]:
        """Response headers this error adds (none by default)."""
        return {}

    def problem(self) -> Problem:
        """The problem+json this error is shown as."""
        extra = dict(self.extra)
        if self.field is not None:
            extra["errors"] = [{"field": self.field, "detail": self.detail}]
        return Problem(
            self.status, self.slug, self.title, self.detail, headers=self.headers(), **extra
        )


class NotFound(DomainError):
    """The resource does not exist, or the caller may not know it does."""

    slug = "not-found"
    title = "Not found"
    status = 404


class Conflict(DomainError):
    """The request conflicts with the resource's current state."""

    slug = "conflict"
    title = "Conflict with the current state"
    status = 409


class DependencyUnavailable(DomainError):
    """A dependency (database, KMS, broker, a partner API) cannot be reached right
    now: 503 with ``Retry-After``; the request changed nothing and may be retried."""

    slug = "dependency-unavailable"
    title = "Temporarily unavailable"
    status = 503

    def __init__(self, detail: str, *, retry_after: int = 5, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after = retry_after

    def headers(self) -> Mapping[str, str]:
        return {"Retry-After": str(self.retry_after)}
