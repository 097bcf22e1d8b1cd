"""Growing lockout after repeated failures (see :mod:`lastro.core.ratelimit`)."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

from lastro.core.problems import Problem
from lastro.core.ratelimit.policies import (
    AUTH,
    REDIS_TIMEOUT_SECONDS,
    _ints,
    _subject_hash,
    _unavailable,
)

log = logging.getLogger(__name__)


# KEYS[1]: failure counter, KEYS[2]: lock. ARGV: threshold, base ms, max ms, memory ms.
# Reply: failures so far, lock ms now in force (0 below the threshold).
_RECORD_FAILURE: Final = """
local failures = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local threshold = tonumber(ARGV[1])
if failures < threshold then return {failures, 0} end
local lock = math.min(tonumber(ARGV[2]) * 2 ^ (failures - threshold), tonumber(ARGV[3]))
lock = math.max(1, math.floor(lock))
redis.call('SET', KEYS[2], failures, 'PX', lock)
return {failures, lock}
"""


class FailureLockout:
    """Growing lockout after repeated failures (login passwords, TOTP codes).

    Fails closed: when Redis cannot answer, every method raises a 503 Problem, so a
    brute-force attempt is never let through unthrottled.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        name: str,
        threshold: int = 5,
        base_seconds: float = 1.0,
        max_seconds: float = 900.0,
        memory_seconds: int = 86_400,
        prefix: str = "lastro:lockout",
        timeout: float = REDIS_TIMEOUT_SECONDS,
    ) -> None:
        if threshold < 1 or base_seconds <= 0 or max_seconds < base_seconds:
            raise ValueError("need threshold >= 1 and 0 < base_seconds <= max_seconds")
        self._redis = redis
        self._script = redis.register_script(_RECORD_FAILURE)
        self._prefix = f"{prefix}:{name}"
        self._args = [threshold, round(base_seconds * 1000), round(max_seconds * 1000)]
        self._memory_ms = max(memory_seconds * 1000, self._args[2])
        self._timeout = timeout

    def _keys(self, subject: str) -> tuple[str, str]:
        digest = _subject_hash(subject)
        return f"{self._prefix}:failures:{digest}", f"{self._prefix}:lock:{digest}"

    @asynccontextmanager
    async def _redis_or_503(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._timeout):
                yield
        except (RedisError, OSError, TimeoutError):
            raise _unavailable(AUTH) from None

    async def record_failure(self, subject: str) -> float:
        """Count a failure; returns the lock (seconds) it put in force, 0.0 if none.

        The n-th consecutive failure with n >= threshold locks the subject for
        ``base_seconds * 2**(n - threshold)``, at most ``max_seconds``.
        """
        async with self._redis_or_503():
            reply = _ints(
                await self._script(keys=self._keys(subject), args=[*self._args, self._memory_ms])
            )
        return reply[1] / 1000

    async def record_success(self, subject: str) -> None:
        """Forget the subject's failures and lift any lock."""
        async with self._redis_or_503():
            await self._redis.delete(*self._keys(subject))

    async def is_locked(self, subject: str) -> float:
        """Seconds the subject stays locked (0.0 when it is not)."""
        async with self._redis_or_503():
            remaining_ms = int(await self._redis.pttl(self._keys(subject)[1]))
        return max(remaining_ms, 0) / 1000

    async def ensure_unlocked(self, subject: str) -> None:
        """Raise a 429 ``locked-out`` Problem with ``Retry-After`` while the subject is locked."""
        remaining = await self.is_locked(subject)
        if remaining > 0:
            raise Problem(
                429,
                "locked-out",
                "Too many failed attempts",
                "Further attempts are blocked for a while after repeated failures.",
                headers={"Retry-After": str(math.ceil(remaining))},
            )
