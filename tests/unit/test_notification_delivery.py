"""Deliveries: the retry schedule and what follows each attempt."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lastro.notifications.domain.delivery import (
    AttemptResult,
    DeliveryStatus,
    Outcome,
    RetryPolicy,
    after_attempt,
)
from lastro.notifications.domain.errors import InvalidCutoff
from lastro.notifications.privacy import parse_cutoff

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(timedelta(seconds=30), timedelta(hours=4), max_attempts=5)


@given(retry=st.integers(min_value=0, max_value=80), seed=st.integers())
def test_each_retry_waits_between_half_and_all_of_its_exponential_ceiling(
    retry: int, seed: int
) -> None:
    ceiling = min(4 * 3600.0, 30.0 * 2 ** min(retry, 62))
    delay = POLICY.delay(retry, random.Random(seed)).total_seconds()
    assert ceiling / 2 <= delay <= ceiling


def test_the_schedule_grows_until_the_cap() -> None:
    rng = random.Random(7)
    ceilings = [POLICY.delay(n, rng).total_seconds() for n in range(12)]
    assert ceilings[0] <= 30 and ceilings[3] >= 120 and max(ceilings) <= 4 * 3600


def test_a_policy_needs_sane_bounds() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(timedelta(0), timedelta(seconds=1), 3)
    with pytest.raises(ValueError):
        RetryPolicy(timedelta(seconds=2), timedelta(seconds=1), 3)
    with pytest.raises(ValueError):
        RetryPolicy(timedelta(seconds=1), timedelta(seconds=1), 0)


def test_success_ends_the_delivery() -> None:
    step = after_attempt(AttemptResult(Outcome.DELIVERED, 200), 3, POLICY, NOW)
    assert step.status is DeliveryStatus.DELIVERED and step.next_attempt_at is None


@pytest.mark.parametrize("outcome", [Outcome.FAILED, Outcome.TIMEOUT, Outcome.UNREACHABLE])
def test_a_failure_is_retried_until_the_last_attempt_then_dead_lettered(outcome: Outcome) -> None:
    failed = AttemptResult(outcome, 503)
    for attempt in range(1, POLICY.max_attempts):
        step = after_attempt(failed, attempt, POLICY, NOW, random.Random(attempt))
        assert step.status is DeliveryStatus.PENDING
        assert step.next_attempt_at is not None and step.next_attempt_at > NOW
    last = after_attempt(failed, POLICY.max_attempts, POLICY, NOW)
    assert (last.status, last.dead_reason) == (DeliveryStatus.DEAD, "exhausted")


def test_refused_targets_and_permanent_rejections_are_not_retried() -> None:
    refused = after_attempt(AttemptResult(Outcome.REFUSED), 1, POLICY, NOW)
    assert (refused.status, refused.dead_reason) == (DeliveryStatus.DEAD, "target-refused")
    rejected = after_attempt(AttemptResult(Outcome.FAILED, 400, permanent=True), 1, POLICY, NOW)
    assert (rejected.status, rejected.dead_reason) == (DeliveryStatus.DEAD, "rejected")


def test_a_retention_cutoff_needs_its_offset() -> None:
    assert parse_cutoff("2026-01-01T00:00:00Z") == datetime(2026, 1, 1, tzinfo=UTC)
    for text in ("2026-01-01T00:00:00", "yesterday"):
        with pytest.raises(InvalidCutoff):
            parse_cutoff(text)
