"""In-flight request limits per client (see :mod:`lastro.core.ratelimit`)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Collection
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from redis.asyncio import Redis
from redis.exceptions import RedisError

from lastro.core.problems import Problem
from lastro.core.ratelimit.policies import (
    _REJECTED,
    AUTH,
    EXEMPT,
    REDIS_TIMEOUT_SECONDS,
    _limiter_unavailable,
    _subject_hash,
    subject_for,
)

log = logging.getLogger(__name__)


# KEYS[1]: sorted set of leases (member: lease id, score: expiry ms). ARGV: limit, lease ms, id.
_ACQUIRE: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


class ConcurrencyLimiter:
    """At most ``limit`` requests in flight per subject, each slot a lease that
    expires after ``lease_seconds`` even if it is never released."""

    def __init__(
        self,
        redis: Redis,
        *,
        limit: int,
        lease_seconds: int = 60,
        prefix: str = "lastro:inflight",
        timeout: float = REDIS_TIMEOUT_SECONDS,
    ) -> None:
        if limit < 1 or lease_seconds < 1:
            raise ValueError("limit and lease_seconds must be positive")
        self.limit = limit
        self._redis = redis
        self._script = redis.register_script(_ACQUIRE)
        self._lease_ms = lease_seconds * 1000
        self._prefix = prefix
        self._timeout = timeout

    def _key(self, subject: str) -> str:
        return f"{self._prefix}:{_subject_hash(subject)}"

    async def acquire(self, subject: str) -> str | None:
        """A lease id, or None when the subject already has ``limit`` in flight."""
        lease = uuid.uuid4().hex
        async with asyncio.timeout(self._timeout):
            reply = await self._script(
                keys=[self._key(subject)], args=[self.limit, self._lease_ms, lease]
            )
        return lease if int(reply) == 1 else None

    async def release(self, subject: str, lease: str) -> None:
        async with asyncio.timeout(self._timeout):
            await self._redis.zrem(self._key(subject), lease)


def concurrency_limit_middleware(
    limiter: ConcurrencyLimiter,
    classify: Callable[[web.Request], str],
    *,
    fail_closed: Collection[str] = frozenset({AUTH}),
) -> Middleware:
    """Cap in-flight requests per client (token ``client_id``, else IP).

    Guarantee: the slot is released in ``finally`` whatever the handler does; a
    release that cannot reach Redis is covered by the lease expiry. Requests of the
    :data:`EXEMPT` class are not counted. Redis unavailable: as for rate limits.
    """

    @web.middleware
    async def concurrency_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        route_class = classify(request)
        if route_class == EXEMPT:
            return await handler(request)
        subject = subject_for(request, "client")
        try:
            lease = await limiter.acquire(subject)
        except (RedisError, OSError, TimeoutError):
            _limiter_unavailable(route_class, fail_closed)
            return await handler(request)
        if lease is None:
            _REJECTED.labels(route_class, "concurrency").inc()
            raise Problem(
                429,
                "too-many-concurrent-requests",
                "Too many concurrent requests",
                f"At most {limiter.limit} requests may be in flight at once; retry shortly.",
                headers={"Retry-After": "1"},
            )
        try:
            return await handler(request)
        finally:
            try:
                await limiter.release(subject, lease)
            except (RedisError, OSError, TimeoutError):
                log.warning("could not release a concurrency slot; its lease will expire")

    return concurrency_limit
