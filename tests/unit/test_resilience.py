from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from lastro.core.observability import metrics_registry
from lastro.core.resilience import CircuitOpen, ResilientCall, TransientError, is_transient

_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


class Recorder:
    """Fake sleep that records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class UpperBound(random.Random):
    """An RNG whose uniform(a, b) returns b and records the bounds it was asked for."""

    def __init__(self) -> None:
        super().__init__(0)
        self.bounds: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.bounds.append((a, b))
        return b


class Dependency:
    """An async callable that fails with the queued errors, then answers "ok"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def always(error: BaseException) -> Callable[[], Awaitable[str]]:
    async def fail() -> str:
        raise error

    return fail


def sample(metric: str, **labels: str) -> float:
    return metrics_registry().get_sample_value(metric, labels) or 0.0


def state(name: str) -> float | None:
    return metrics_registry().get_sample_value("lastro_circuit_breaker_state", {"name": name})


async def test_idempotent_call_is_retried_until_it_succeeds() -> None:
    name, sleep = unique("fx"), Recorder()
    resilient = ResilientCall(name, timeout=1, retries=3, sleep=sleep)
    dependency = Dependency(ConnectionError("reset"), TransientError("503"))

    assert await resilient.call(dependency, idempotent=True) == "ok"

    assert dependency.calls == 3
    assert len(sleep.delays) == 2
    assert sample("lastro_dependency_retries_total", name=name) == 2
    assert sample("lastro_dependency_calls_total", name=name, outcome="success") == 1


async def test_non_idempotent_call_is_attempted_once() -> None:
    name, sleep = unique("acquirer"), Recorder()
    resilient = ResilientCall(name, timeout=1, retries=3, sleep=sleep)
    dependency = Dependency(ConnectionError("reset"))

    with pytest.raises(ConnectionError):
        await resilient.call(dependency, idempotent=False)

    assert dependency.calls == 1
    assert sleep.delays == []
    assert sample("lastro_dependency_retries_total", name=name) == 0
    assert sample("lastro_dependency_calls_total", name=name, outcome="error") == 1


async def test_retries_stop_after_the_configured_number_of_attempts() -> None:
    resilient = ResilientCall(unique("fx"), timeout=1, retries=3, fail_max=10, sleep=Recorder())
    dependency = Dependency(*(TransientError(str(i)) for i in range(10)))

    with pytest.raises(TransientError, match="3"):
        await resilient.call(dependency, idempotent=True)

    assert dependency.calls == 4


async def test_non_transient_errors_are_neither_retried_nor_counted_by_the_breaker() -> None:
    name = unique("acquirer")
    resilient = ResilientCall(name, timeout=1, fail_max=2, retries=3, sleep=Recorder())
    dependency = Dependency(*(ValueError("card declined") for _ in range(5)))

    for _ in range(5):
        with pytest.raises(ValueError, match="declined"):
            await resilient.call(dependency, idempotent=True)

    assert dependency.calls == 5
    assert not resilient.is_open
    assert state(name) == 0


async def test_backoff_is_exponential_and_capped() -> None:
    rng, sleep = UpperBound(), Recorder()
    resilient = ResilientCall(
        unique("fx"),
        timeout=1,
        retries=5,
        fail_max=10,
        base_delay=0.5,
        max_delay=3.0,
        sleep=sleep,
        rng=rng,
    )
    with pytest.raises(ConnectionError):
        await resilient.call(always(ConnectionError()), idempotent=True)

    assert rng.bounds == [(0, 0.5), (0, 1.0), (0, 2.0), (0, 3.0), (0, 3.0)]
    assert sleep.delays == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_full_jitter_stays_within_zero_and_the_cap() -> None:
    resilient = ResilientCall(
        unique("fx"), timeout=1, base_delay=0.1, max_delay=2.0, rng=random.Random(7)
    )
    for retry in range(8):
        cap = min(2.0, 0.1 * 2**retry)
        delays = [resilient.backoff(retry) for _ in range(500)]
        assert all(0 <= d <= cap for d in delays)
        # full jitter spreads over the whole range, not just near the cap
        assert min(delays) < cap * 0.1 and max(delays) > cap * 0.9


async def test_breaker_opens_after_fail_max_and_then_fails_fast() -> None:
    name = unique("acquirer")
    resilient = ResilientCall(name, timeout=1, fail_max=3, retries=0, reset_timeout=60)
    failing = Dependency(*(ConnectionError(str(i)) for i in range(3)))

    for i in range(3):
        # the failure that trips the breaker is reported as itself
        with pytest.raises(ConnectionError, match=str(i)):
            await resilient.call(failing, idempotent=False)
    assert resilient.is_open
    assert state(name) == 2

    healthy = Dependency()
    with pytest.raises(CircuitOpen):
        await resilient.call(healthy, idempotent=True)
    assert healthy.calls == 0
    assert sample("lastro_dependency_calls_total", name=name, outcome="circuit_open") == 1


async def test_retries_stop_once_the_breaker_opens() -> None:
    resilient = ResilientCall(unique("fx"), timeout=1, fail_max=2, retries=5, sleep=Recorder())
    dependency = Dependency(*(ConnectionError(str(i)) for i in range(10)))

    with pytest.raises(ConnectionError, match="1"):
        await resilient.call(dependency, idempotent=True)

    assert dependency.calls == 2
    assert resilient.is_open


async def test_breaker_half_opens_after_reset_timeout_and_closes_on_success() -> None:
    name = unique("fx")
    resilient = ResilientCall(name, timeout=1, fail_max=1, retries=0, reset_timeout=0.05)
    with pytest.raises(ConnectionError):
        await resilient.call(always(ConnectionError()), idempotent=False)
    assert state(name) == 2

    await asyncio.sleep(0.2)  # only needs to be at least reset_timeout
    seen: list[float | None] = []

    async def trial() -> str:
        seen.append(state(name))
        return "ok"

    assert await resilient.call(trial, idempotent=False) == "ok"
    assert seen == [1]  # the trial call ran while half-open
    assert state(name) == 0
    assert not resilient.is_open


async def test_failed_trial_call_reopens_the_breaker() -> None:
    name = unique("fx")
    resilient = ResilientCall(name, timeout=1, fail_max=1, retries=0, reset_timeout=0.05)
    with pytest.raises(ConnectionError):
        await resilient.call(always(ConnectionError()), idempotent=False)
    await asyncio.sleep(0.2)

    trial = Dependency(TransientError("still down"))
    with pytest.raises(TransientError):
        await resilient.call(trial, idempotent=True)
    assert trial.calls == 1
    assert state(name) == 2
    with pytest.raises(CircuitOpen):
        await resilient.call(Dependency(), idempotent=True)


async def test_slow_call_times_out_and_counts_as_a_failure() -> None:
    name = unique("sms")
    resilient = ResilientCall(name, timeout=0.01, fail_max=2, retries=1, sleep=Recorder())
    attempts = 0

    async def hang() -> str:
        nonlocal attempts
        attempts += 1
        await asyncio.Event().wait()
        return "never"

    with pytest.raises(TimeoutError):
        await resilient.call(hang, idempotent=True)

    assert attempts == 2
    assert resilient.is_open
    assert sample("lastro_dependency_calls_total", name=name, outcome="timeout") == 1


def _response_error(status: int) -> aiohttp.ClientResponseError:
    url = URL("https://acquirer.test/v1/authorizations")
    info = aiohttp.RequestInfo(url, "POST", CIMultiDictProxy(CIMultiDict()), url)
    return aiohttp.ClientResponseError(info, (), status=status)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (TimeoutError(), True),
        (ConnectionResetError(), True),
        (aiohttp.ServerDisconnectedError(), True),
        (TransientError(), True),
        (_response_error(503), True),
        (_response_error(500), True),
        (_response_error(404), False),
        (_response_error(422), False),
        (ValueError(), False),
        (CircuitOpen("x"), False),
    ],
)
def test_default_predicate_retries_only_transient_failures(
    error: BaseException, transient: bool
) -> None:
    assert is_transient(error) is transient


def test_invalid_configuration_is_rejected() -> None:
    with pytest.raises(ValueError):
        ResilientCall("x", timeout=0)
    with pytest.raises(ValueError):
        ResilientCall("x", timeout=1, reset_timeout=0)
    with pytest.raises(ValueError):
        ResilientCall("x", timeout=1, retries=-1)
