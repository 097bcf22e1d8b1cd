"""Timeouts, circuit breaking and retries for every call that leaves the process.

:class:`ResilientCall` wraps one dependency (the acquirer, the FX provider, a
sibling service). Each attempt runs under a timeout and through an aiobreaker
circuit breaker; transient failures (timeouts, connection errors, 5xx-like
answers) count towards opening the breaker and, only when the caller declares
the call idempotent, are retried with exponential backoff and full jitter.

Guarantees:
- a non-idempotent call is attempted at most once;
- while the breaker is open calls fail fast with :class:`CircuitOpen`, without
  touching the dependency, and no retry is attempted once the breaker has opened;
- errors that are not transient (a 4xx, a declined card) pass through untouched,
  are never retried and do not count against the dependency's health.

Metrics (in :func:`lastro.core.observability.metrics_registry`):
``lastro_circuit_breaker_state{name}`` (0 closed, 1 half-open, 2 open),
``lastro_dependency_retries_total{name}`` and
``lastro_dependency_calls_total{name,outcome}`` with outcome one of
``success``, ``error``, ``timeout``, ``circuit_open``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Final, TypeVar

import aiohttp
from aiobreaker import CircuitBreaker, CircuitBreakerError, CircuitBreakerState
from prometheus_client import Counter, Gauge

from lastro.core.backoff import full_jitter
from lastro.core.observability import metrics_registry

T = TypeVar("T")

log = logging.getLogger(__name__)

BREAKER_STATE: Final = Gauge(
    "lastro_circuit_breaker_state",
    "Circuit breaker state per dependency: 0 closed, 1 half-open, 2 open.",
    ["name"],
    registry=metrics_registry(),
)
RETRIES: Final = Counter(
    "lastro_dependency_retries",
    "Retries of idempotent calls to a dependency after a transient failure.",
    ["name"],
    registry=metrics_registry(),
)
CALLS: Final = Counter(
    "lastro_dependency_calls",
    "Calls to a dependency by final outcome (after retries).",
    ["name", "outcome"],
    registry=metrics_registry(),
)

_STATE_VALUES: Final = {
    CircuitBreakerState.CLOSED: 0,
    CircuitBreakerState.HALF_OPEN: 1,
    CircuitBreakerState.OPEN: 2,
}


class CircuitOpen(Exception):
    """The dependency's breaker is open: the call was rejected without being attempted."""

    def __init__(self, name: str) -> None:
        super().__init__(f"circuit breaker {name!r} is open; call not attempted")
        self.name = name


class TransientError(Exception):
    """Raise for a 5xx-like answer: the dependency may succeed if asked again later."""


def is_transient(exc: BaseException) -> bool:
    """Default retry/breaker predicate: timeouts, connection failures and 5xx answers."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.status >= 500
    return isinstance(
        exc, TimeoutError | ConnectionError | aiohttp.ClientConnectionError | TransientError
    )


class _BreakerStateGauge:
    """aiobreaker listener (duck-typed) that mirrors state changes into the gauge."""

    def __init__(self, name: str) -> None:
        self._name = name

    def before_call(self, breaker: Any, func: Any, *args: Any, **kwargs: Any) -> None:
        """No-op: only state changes are exported."""

    def success(self, breaker: Any) -> None:
        """No-op: outcomes are counted by ResilientCall."""

    def failure(self, breaker: Any, exception: BaseException) -> None:
        """No-op: outcomes are counted by ResilientCall."""

    def state_change(self, breaker: Any, old: Any, new: Any) -> None:
        BREAKER_STATE.labels(self._name).set(_STATE_VALUES[new.state])


class ResilientCall:
    """Timeout + circuit breaker + retries (idempotent calls only) for one dependency.

    ``breaker`` lets several ResilientCalls share one breaker (one per dependency,
    different timeouts per operation); it is then used as given, including its own
    ``exclude`` rules. Otherwise a breaker is created that opens after ``fail_max``
    consecutive transient failures and lets a trial call through after
    ``reset_timeout`` seconds. Retry ``n`` (from 0) sleeps
    ``uniform(0, min(max_delay, base_delay * 2**n))`` seconds. ``sleep`` and ``rng``
    are injectable for tests.
    """

    def __init__(
        self,
        name: str,
        *,
        timeout: float,
        breaker: CircuitBreaker | None = None,
        fail_max: int = 5,
        reset_timeout: float = 30.0,
        retries: int = 3,
        base_delay: float = 0.1,
        max_delay: float = 2.0,
        retry_on: Callable[[BaseException], bool] = is_transient,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if timeout <= 0 or reset_timeout <= 0 or fail_max < 1 or retries < 0:
            raise ValueError("timeout and reset_timeout must be > 0, fail_max >= 1, retries >= 0")
        if base_delay < 0 or max_delay < 0:
            raise ValueError("base_delay and max_delay must be >= 0")
        self.name = name
        self.timeout = timeout
        self.retries = retries
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._retry_on = retry_on
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.breaker = breaker or CircuitBreaker(
            fail_max=fail_max,
            timeout_duration=timedelta(seconds=reset_timeout),
            exclude=[lambda exc: not retry_on(exc)],
            name=name,
        )
        self.breaker.add_listener(_BreakerStateGauge(name))
        BREAKER_STATE.labels(name).set(_STATE_VALUES[self.breaker.current_state])

    @property
    def is_open(self) -> bool:
        return bool(self.breaker.current_state == CircuitBreakerState.OPEN)

    def backoff(self, retry: int) -> float:
        """Full-jitter delay before retry number ``retry`` (0-based)."""
        return full_jitter(retry, base=self.base_delay, cap=self.max_delay, rng=self._rng)

    async def call(self, fn: Callable[[], Awaitable[T]], *, idempotent: bool) -> T:
        """Run ``fn()`` under the timeout and breaker; retry only if ``idempotent``.

        Raises CircuitOpen when the breaker rejects the call, ``TimeoutError`` when
        the last attempt timed out, otherwise the last attempt's own exception.
        """
        attempts = 1 + (self.retries if idempotent else 0)
        attempt = 0
        while True:
            try:
                result: T = await self.breaker.call_async(self._attempt, fn)
            except CircuitBreakerError as exc:
                if exc.__cause__ is None:
                    CALLS.labels(self.name, "circuit_open").inc()
                    raise CircuitOpen(self.name) from None
                # aiobreaker wraps the failure that tripped it; report the failure itself.
                error: BaseException = exc.__cause__
            except Exception as exc:
                error = exc
            else:
                CALLS.labels(self.name, "success").inc()
                return result
            attempt += 1
            if attempt == attempts or self.is_open or not self._retry_on(error):
                outcome = "timeout" if isinstance(error, TimeoutError) else "error"
                CALLS.labels(self.name, outcome).inc()
                raise error
            RETRIES.labels(self.name).inc()
            delay = self.backoff(attempt - 1)
            log.warning(
                "retrying %s after %s (retry %d of %d, in %.3fs)",
                self.name,
                type(error).__name__,
                attempt,
                self.retries,
                delay,
            )
            await self._sleep(delay)

    async def _attempt(self, fn: Callable[[], Awaitable[T]]) -> T:
        async with asyncio.timeout(self.timeout):
            return await fn()
