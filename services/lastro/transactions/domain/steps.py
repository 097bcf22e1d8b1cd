"""The steps of the state machine and what each one is built from: the configured
:class:`Policy`, the step itself (:class:`Change`, :class:`Act`, :class:`Rest`) and
:func:`transition`, the only way a :class:`Change` is made (along ``TRANSITIONS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Final

from lastro.transactions.domain.effects import Effect
from lastro.transactions.domain.model import (
    TRANSITIONS,
    Decision,
    Refund,
    Screening,
    Status,
    Transaction,
)

# ---------------------------------------------------------------- policy


@dataclass(frozen=True)
class Policy:
    """The configured rules the machine applies (from ``TransactionSettings``)."""

    fraud_fallback_limits: Mapping[str, int] = field(default_factory=dict)
    fraud_fallback_limits_sca: Mapping[str, int] = field(default_factory=dict)
    review_timeout: timedelta = timedelta(hours=72)
    review_expiry_post: bool = False
    challenge_timeout: timedelta = timedelta(minutes=15)
    fraud_fallback_after: timedelta = timedelta(0)

    @property
    def review_hold(self) -> timedelta:
        """How long the ledger keeps a review hold: a day past the review timeout,
        so the configured expiry policy, not the ledger's expiry, decides."""
        return self.review_timeout + timedelta(days=1)


def fallback_screening(
    amount: int, currency: str, policy: Policy, strong_auth: bool = False
) -> Screening | None:
    """The documented fallback when the fraud service cannot answer in time:
    approve (marked ``fallback``) up to the currency's configured limit (a higher
    one for a request made with a recent second factor); above it, or in a currency
    without a limit, no decision (the transaction fails with
    ``screening_unavailable`` and moves no money)."""
    limits = policy.fraud_fallback_limits_sca if strong_auth else policy.fraud_fallback_limits
    limit = limits.get(currency)
    if limit is None or amount > limit:
        return None
    return Screening(Decision.APPROVE, fallback=True)


FIRST_SCREENING_RETRY: Final = 0.25


def screening_retry_in(since: datetime, now: datetime, policy: Policy) -> float | None:
    """Seconds to wait before asking the fraud service again after it did not
    answer, or None when the fallback applies now: ``policy.fraud_fallback_after``
    has passed since the transaction started screening (``since``). The waits grow
    with the time already waited (a quarter second first, then doubling), and the
    last question is asked at the deadline, so a busy second, a restart or a
    breaker's short reset ends in a real answer, not an unscreened approval."""
    waited = (now - since).total_seconds()
    left = policy.fraud_fallback_after.total_seconds() - waited
    if left <= 0:
        return None
    return min(max(FIRST_SCREENING_RETRY, waited), left)


# ---------------------------------------------------------------- steps


@dataclass(frozen=True)
class Change:
    """A new state to persist over ``txn.version - 1``; ``facts`` are the events it
    publishes (``posted`` → ``lastro.transaction.posted``), ``audit`` the audited
    action, if any; ``refund`` a refund row changed with it."""

    txn: Transaction
    facts: tuple[str, ...] = ()
    audit: str | None = None
    refund: Refund | None = None


@dataclass(frozen=True)
class Act:
    effect: Effect


@dataclass(frozen=True)
class Rest:
    """Nothing to do until something outside the worker happens."""

    why: str


@dataclass(frozen=True)
class Retry:
    """Perform the same effect again in ``seconds``: its receiver did not answer,
    and the policy still gives it time."""

    seconds: float
    why: str


Step = Change | Act | Rest


class IllegalTransition(RuntimeError):
    """A bug: the machine computed a status change TRANSITIONS does not allow."""


def transition(
    txn: Transaction,
    now: datetime,
    status: Status | None = None,
    *,
    facts: tuple[str, ...] = (),
    audit: str | None = None,
    refund: Refund | None = None,
    **changes: Any,
) -> Change:
    """``txn`` moved to ``status`` (or kept in its own, when None) with ``changes``,
    one version on; IllegalTransition if TRANSITIONS does not allow the move."""
    target = status or txn.status
    if target is not txn.status and target not in TRANSITIONS[txn.status]:
        raise IllegalTransition(f"{txn.id}: {txn.status} → {target} is not allowed")
    updated = replace(txn, status=target, version=txn.version + 1, updated_at=now, **changes)
    return Change(updated, facts, audit, refund)


def end(txn: Transaction, now: datetime, status: Status, reason: str, **changes: Any) -> Change:
    """A final refusal or failure, published and audited."""
    return transition(
        txn,
        now,
        status,
        facts=(status.value,),
        audit=f"transaction.{status.value}",
        reason=reason,
        **changes,
    )
