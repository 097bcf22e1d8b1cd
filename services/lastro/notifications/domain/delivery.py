"""Deliveries: one message to one destination, its attempts and its retry schedule.

A delivery is created once per (event, channel, destination) and keeps its id for
life: the id is the ``webhook-id`` of every attempt, the e-mail's ``Message-ID``
and the SMS gateway's ``Idempotency-Key``, so a repeated attempt (a retry, a crash
between sending and recording, a replay) is recognisable by its receiver.

States: ``pending`` (due at ``next_attempt_at``) → ``delivered`` | ``dead``
(dead-lettered after the last attempt of a round, or at once when the endpoint is
disabled or the target is refused); a replay puts a dead delivery back to
``pending`` with a fresh round of attempts.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from lastro.core.backoff import full_jitter
from lastro.notifications.domain.kinds import Channel, Kind


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


class Outcome(StrEnum):
    """How one attempt ended."""

    DELIVERED = "delivered"
    FAILED = "failed"  # the receiver answered, but not with success
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"  # connection, TLS or DNS failure, breaker open
    REFUSED = "refused"  # the target failed the address policy: never contacted
    INTERRUPTED = "interrupted"  # the sender stopped (crash) before recording a result


@dataclass(frozen=True)
class Attempt:
    number: int
    started_at: datetime
    finished_at: datetime | None
    outcome: Outcome | None
    status_code: int | None
    latency_ms: int | None
    error: str | None


@dataclass(frozen=True)
class Delivery:
    """One message to one destination (see the module docstring). ``destination`` is
    the endpoint id (webhooks) or the customer id (e-mail, SMS; the endpoint id for a
    notice to its owner); ``subject_id`` names the data key that sealed ``address``
    and ``content``; ``payload`` is a webhook's JSON body."""

    id: str
    event_id: str
    kind: Kind
    channel: Channel
    destination: str
    status: DeliveryStatus
    attempts: int
    round_attempts: int
    next_attempt_at: datetime
    created_at: datetime
    customer_id: str | None = None
    endpoint_id: str | None = None
    subject_id: str | None = None
    address: str | None = None
    content: str | None = None
    payload: Mapping[str, Any] | None = None
    delivered_at: datetime | None = None
    last_error: str | None = None
    traceparent: str | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: retry ``n`` (0-based) waits
    ``uniform(ceiling / 2, ceiling)`` with ``ceiling = min(cap, base * 2**n)``; a
    round has ``max_attempts`` attempts."""

    base: timedelta
    cap: timedelta
    max_attempts: int

    def __post_init__(self) -> None:
        if self.base <= timedelta(0) or self.cap < self.base or self.max_attempts < 1:
            raise ValueError("retry policy needs base > 0, cap >= base, max_attempts >= 1")

    def delay(self, retry: int, rng: random.Random | None = None) -> timedelta:
        base, cap = self.base.total_seconds(), self.cap.total_seconds()
        ceiling = min(cap, base * 2 ** min(retry, 62))
        jitter = full_jitter(retry, base=base / 2, cap=cap / 2, rng=rng)
        return timedelta(seconds=ceiling / 2 + min(jitter, ceiling / 2))


@dataclass(frozen=True)
class AttemptResult:
    outcome: Outcome
    status_code: int | None = None
    error: str | None = None
    # A failure no retry can fix (the SMS gateway refused the number, say).
    permanent: bool = False


@dataclass(frozen=True)
class Sent:
    """What a sender reports: the attempt's result and how long it took."""

    result: AttemptResult
    latency_ms: int


@dataclass(frozen=True)
class NextStep:
    """What follows an attempt: ``status`` and, while pending, when to try again;
    ``dead_reason`` when it goes to the dead-letter queue."""

    status: DeliveryStatus
    next_attempt_at: datetime | None = None
    dead_reason: str | None = None


def after_attempt(
    result: AttemptResult,
    attempts_this_round: int,
    policy: RetryPolicy,
    now: datetime,
    rng: random.Random | None = None,
) -> NextStep:
    """The delivery's next state after its ``attempts_this_round``-th attempt of the
    current round (1-based) ended with ``result``."""
    if result.outcome is Outcome.DELIVERED:
        return NextStep(DeliveryStatus.DELIVERED)
    if result.outcome is Outcome.REFUSED:
        return NextStep(DeliveryStatus.DEAD, dead_reason="target-refused")
    if result.permanent:
        return NextStep(DeliveryStatus.DEAD, dead_reason="rejected")
    if attempts_this_round >= policy.max_attempts:
        return NextStep(DeliveryStatus.DEAD, dead_reason="exhausted")
    delay = policy.delay(attempts_this_round - 1, rng)
    return NextStep(DeliveryStatus.PENDING, next_attempt_at=now + delay)
