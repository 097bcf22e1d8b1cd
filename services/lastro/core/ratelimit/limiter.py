"""GCRA rate limiting over Redis and its middleware (see :mod:`lastro.core.ratelimit`)."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from redis.asyncio import Redis
from redis.exceptions import RedisError

from lastro.core.problems import Problem
from lastro.core.ratelimit.policies import (
    _REJECTED,
    AUTH,
    DEFAULT,
    REDIS_TIMEOUT_SECONDS,
    RateLimitPolicy,
    _ints,
    _limiter_unavailable,
    _subject_hash,
    _with_headers,
    subject_for,
)

log = logging.getLogger(__name__)


# GCRA over several policies at once: admit only if every policy admits, then charge all.
# KEYS[i]: theoretical arrival time (ms) of policy i; ARGV[2i-1], ARGV[2i]: limit, window ms.
# Reply: admitted, then per policy: remaining, ms until next admission, ms until full quota.
# The arrival time is stored with every digit ('%.17g': tostring keeps 14, which dropped
# sub-millisecond steps). A step below a double's resolution at today's epoch in ms
# (about 0.2 us, i.e. limits above ~3e8 a minute) leaves the time unchanged: such a
# policy admits everything, and its key still gets an expiry of at least 1 ms (PX 0 is
# an error, which made the limiter fail open and log every request).
_GCRA: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local tats, admitted = {}, 1
for i = 1, #KEYS do
  local limit, window = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  tats[i] = tat
  if tat + window / limit - window > now then admitted = 0 end
end
local out = {admitted}
for i = 1, #KEYS do
  local limit, window = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local interval = window / limit
  local tat = tats[i]
  if admitted == 1 then
    tat = tat + interval
    redis.call('SET', KEYS[i], string.format('%.17g', tat), 'PX', math.max(1, math.ceil(tat - now)))
  end
  out[#out + 1] = math.max(0, math.floor((window - (tat - now)) / interval))
  out[#out + 1] = math.max(0, math.ceil(tat + interval - window - now))
  out[#out + 1] = math.ceil(tat - now)
end
return out
"""


@dataclass(frozen=True)
class PolicyState:
    """Where one policy stands after a check."""

    policy: RateLimitPolicy
    remaining: int
    next_ms: int
    full_ms: int

    @property
    def reset_seconds(self) -> int:
        return math.ceil((self.next_ms if self.remaining == 0 else self.full_ms) / 1000)


@dataclass(frozen=True)
class RateLimitDecision:
    allowed: bool
    states: tuple[PolicyState, ...]

    @property
    def retry_after(self) -> int:
        """Seconds until the request would be admitted (0 when it was)."""
        if self.allowed:
            return 0
        return max(1, max(math.ceil(s.next_ms / 1000) for s in self.states))

    @property
    def limiting_policy(self) -> RateLimitPolicy | None:
        if self.allowed:
            return None
        return max(self.states, key=lambda s: s.next_ms).policy

    def headers(self) -> dict[str, str]:
        """``RateLimit-Policy`` and ``RateLimit`` fields for every checked policy."""
        if not self.states:
            return {}
        return {
            "RateLimit-Policy": ", ".join(
                f'"{s.policy.name}";q={s.policy.limit};w={s.policy.window_seconds}'
                for s in self.states
            ),
            "RateLimit": ", ".join(
                f'"{s.policy.name}";r={s.remaining};t={s.reset_seconds}' for s in self.states
            ),
        }


class RateLimiter:
    """GCRA rate limiting over one Redis (see module docstring)."""

    def __init__(
        self, redis: Redis, *, prefix: str = "lastro:rl", timeout: float = REDIS_TIMEOUT_SECONDS
    ) -> None:
        self._script = redis.register_script(_GCRA)
        self._prefix = prefix
        self._timeout = timeout

    async def hit(self, checks: Sequence[tuple[RateLimitPolicy, str]]) -> RateLimitDecision:
        """Charge one request to each ``(policy, subject)``, atomically and only if all admit.

        Raises RedisError or TimeoutError when Redis cannot answer in time.
        """
        if not checks:
            return RateLimitDecision(True, ())
        keys = [f"{self._prefix}:{p.name}:{p.per}:{_subject_hash(s)}" for p, s in checks]
        args: list[int] = []
        for policy, _ in checks:
            args += [policy.limit, policy.window_seconds * 1000]
        async with asyncio.timeout(self._timeout):
            reply = _ints(await self._script(keys=keys, args=args))
        states = tuple(
            PolicyState(policy, *reply[1 + 3 * i : 4 + 3 * i])
            for i, (policy, _) in enumerate(checks)
        )
        return RateLimitDecision(reply[0] == 1, states)


def rate_limit_middleware(
    redis: Redis | web.AppKey[Redis],
    policies: Mapping[str, Sequence[RateLimitPolicy]],
    classify: Callable[[web.Request], str],
    *,
    fail_closed: Collection[str] = frozenset({AUTH}),
    prefix: str = "lastro:rl",
) -> Middleware:
    """Limit each request by the policies of its route class (see module docstring).

    Guarantee: a request over any of its policies never reaches the handler (429
    with ``Retry-After``); a fail-closed class is never served unlimited.
    ``redis`` may be the app key under which a ``cleanup_ctx`` stores the client it
    opened (the client is then looked up per app, once).
    """
    limiters: dict[int, RateLimiter] = {}
    default = tuple(policies.get(DEFAULT, ()))

    def limiter_for(app: web.Application) -> RateLimiter:
        client = app[redis] if isinstance(redis, web.AppKey) else redis
        limiter = limiters.get(id(client))
        if limiter is None:
            limiter = limiters[id(client)] = RateLimiter(client, prefix=prefix)
        return limiter

    @web.middleware
    async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        route_class = classify(request)
        selected = policies.get(route_class, default)
        if not selected:
            return await handler(request)
        try:
            checks = [(p, subject_for(request, p.per)) for p in selected]
            decision = await limiter_for(request.app).hit(checks)
        except (RedisError, OSError, TimeoutError):
            _limiter_unavailable(route_class, fail_closed)
            return await handler(request)
        headers = decision.headers()
        limiting = decision.limiting_policy
        if limiting is not None:
            _REJECTED.labels(route_class, limiting.name).inc()
            raise Problem(
                429,
                "rate-limited",
                "Too many requests",
                f"Rate limit '{limiting.name}' exceeded; retry in {decision.retry_after} s.",
                headers={**headers, "Retry-After": str(decision.retry_after)},
            )
        try:
            response = await handler(request)
        except Exception as exc:
            _with_headers(exc, headers)
            raise
        if not response.prepared:
            response.headers.update(headers)
        return response

    return rate_limit
