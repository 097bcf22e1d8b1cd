"""Rate limiting, brute-force lockout and concurrency limits on Redis.

Three mechanisms, each one atomic Lua script run with EVALSHA, so concurrent
requests on any number of service instances can never race past a limit:

* :class:`RateLimiter` — GCRA (the generic cell rate algorithm, a smooth sliding
  window): a policy ``limit`` per ``window_seconds`` admits a burst of ``limit``
  and then one request every ``window_seconds / limit``. A request is checked
  against every policy of its route class at once (per client, per user, per IP)
  and charged to all of them only if all admit it. The clock is Redis' own
  ``TIME``, so instances with skewed clocks share one view.
* :class:`FailureLockout` — after ``threshold`` consecutive failures of a subject
  (a username, a user's TOTP), the subject is locked for
  ``base * 2**(failures - threshold)`` seconds, capped; a success clears it.
* :class:`ConcurrencyLimiter` — at most ``limit`` requests in flight per client;
  each slot is a lease with its own expiry, so a crashed instance that never
  released its slots cannot wedge a client for longer than the lease.

:func:`rate_limit_middleware` and :func:`concurrency_limit_middleware` plug into
``create_app(middlewares=...)``; they run after authentication, so a caller with a
token is limited by its ``client_id``/``sub``, and one without by its IP
(``request.remote``: behind a proxy, configure aiohttp's forwarded-header handling
so that it is the client's address). Over the limit: 429 problem+json with
``Retry-After``; every limited response carries the IETF draft
(draft-ietf-httpapi-ratelimit-headers) fields, e.g.
``RateLimit-Policy: "default";q=100;w=60`` and ``RateLimit: "default";r=0;t=12``.
``r`` is the remaining quota; ``t`` is the seconds until the next request will
be admitted when ``r`` is 0, otherwise until the whole quota is back.

Redis unavailable (error or timeout) — a deliberate choice per route class:

* route classes in ``fail_closed`` (by default :data:`AUTH`: token, login and
  TOTP endpoints) answer **503** problem+json: without the limiter, credential
  stuffing and TOTP guessing would be unthrottled, and refusing logins for the
  length of a Redis outage is the lesser harm;
* every other class **fails open**: the request is served unlimited, the
  ``lastro_rate_limit_fail_open_total`` counter is incremented and a warning is
  logged, so an outage of the limiter never becomes an outage of the API.

:class:`FailureLockout` only guards authentication, so it always fails closed.
Keys hold a SHA-256 of the subject, never the username or IP itself. All keys of
one request are touched by one script: use a single Redis primary (not Cluster).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, Literal

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from lastro.core.config import Settings
from lastro.core.http import PRINCIPAL_KEY
from lastro.core.observability import metrics_registry
from lastro.core.problems import Problem

log = logging.getLogger(__name__)

Scope = Literal["client", "user", "ip"]

DEFAULT: Final = "default"
AUTH: Final = "auth"
EXEMPT: Final = "exempt"
OPERATIONAL_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics"})
REDIS_TIMEOUT_SECONDS: Final = 0.5
UNAVAILABLE_RETRY_AFTER: Final = "5"
_NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


@dataclass(frozen=True)
class RateLimitPolicy:
    """``limit`` requests per ``window_seconds``, counted separately ``per`` subject."""

    name: str
    limit: int
    window_seconds: int
    per: Scope = "client"

    def __post_init__(self) -> None:
        if not self.name or not set(self.name) <= _NAME_CHARS:
            raise ValueError(f"policy name {self.name!r} must be lower-case [a-z0-9-_.]")
        if self.limit < 1 or self.window_seconds < 1:
            raise ValueError(f"policy {self.name}: limit and window must be positive")


#: Service-to-service routes (``/internal/...``): callers are our own services,
#: limited generously so a runaway worker is still stopped.
INTERNAL: Final = "internal"


def policy_table(per_client: int, auth: int) -> Mapping[str, tuple[RateLimitPolicy, ...]]:
    """Route class → policies, per minute: ``per_client`` requests per client (a
    thousand times that on :data:`INTERNAL` routes) and ``auth`` per IP and per user
    on :data:`AUTH` routes. A class mapped to ``()`` is not limited; a class the
    mapping does not know gets the :data:`DEFAULT` policies."""
    return {
        DEFAULT: (RateLimitPolicy("default", per_client, 60, "client"),),
        INTERNAL: (RateLimitPolicy("internal", per_client * 1000, 60, "client"),),
        AUTH: (
            RateLimitPolicy("auth-ip", auth, 60, "ip"),
            RateLimitPolicy("auth-user", auth, 60, "user"),
        ),
        EXEMPT: (),
    }


#: The table for callers without settings (tests start from it).
DEFAULT_POLICIES: Final = policy_table(per_client=100, auth=10)


def policies_from_settings(settings: Settings) -> Mapping[str, tuple[RateLimitPolicy, ...]]:
    """The policies in force, from ``LASTRO_RATE_LIMIT_PER_MINUTE`` (per client) and
    ``LASTRO_AUTH_RATE_LIMIT_PER_MINUTE`` (per IP and per user on auth routes)."""
    return policy_table(settings.rate_limit_per_minute, settings.auth_rate_limit_per_minute)


def route_classifier(
    classes: Mapping[str, str], default: str = DEFAULT
) -> Callable[[web.Request], str]:
    """Classify requests by route template (``/oauth/token`` → ``auth``).

    Operational routes (health, readiness, metrics) are :data:`EXEMPT` unless
    ``classes`` says otherwise, so probes and scrapes are never throttled;
    other ``/internal/`` routes are :data:`INTERNAL`.
    """
    table = {path: EXEMPT for path in OPERATIONAL_PATHS} | dict(classes)

    def classify(request: web.Request) -> str:
        resource = request.match_info.route.resource
        canonical = resource.canonical if resource is not None else ""
        if canonical in table:
            return table[canonical]
        return INTERNAL if canonical.startswith("/internal/") else default

    return classify


_FAIL_OPEN: Final = Counter(
    "lastro_rate_limit_fail_open_total",
    "Requests served without rate or concurrency limiting because Redis was unavailable.",
    ("route_class",),
    registry=metrics_registry(),
)
_REJECTED: Final = Counter(
    "lastro_rate_limit_rejections_total",
    "Requests rejected with 429, by route class and limiting policy.",
    ("route_class", "policy"),
    registry=metrics_registry(),
)


def _subject_hash(subject: str) -> str:
    return hashlib.sha256(subject.encode()).hexdigest()[:32]


def _ints(reply: Any) -> list[int]:
    return [int(v) for v in reply]


# GCRA over several policies at once: admit only if every policy admits, then charge all.
# KEYS[i]: theoretical arrival time (ms) of policy i; ARGV[2i-1], ARGV[2i]: limit, window ms.
# Reply: admitted, then per policy: remaining, ms until next admission, ms until full quota.
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
    redis.call('SET', KEYS[i], tostring(tat), 'PX', math.ceil(tat - now))
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


def _client_ip(request: web.Request) -> str:
    return request.remote or "unknown"


def subject_for(request: web.Request, scope: Scope) -> str:
    """Whom a ``scope`` policy counts: the token's client or user, else the client IP."""
    principal = request.get(PRINCIPAL_KEY)
    if scope == "client" and principal is not None:
        return f"client:{principal.client_id}"
    if scope == "user" and principal is not None:
        return f"user:{principal.subject}"
    return f"ip:{_client_ip(request)}"


def _unavailable(route_class: str) -> Problem:
    log.error("rate limiter unavailable; refusing %s request (fail closed)", route_class)
    return Problem(
        503,
        "rate-limit-unavailable",
        "Service temporarily unavailable",
        "Requests to this endpoint cannot be admitted right now; retry later.",
        headers={"Retry-After": UNAVAILABLE_RETRY_AFTER},
    )


def _limiter_unavailable(route_class: str, fail_closed: Collection[str]) -> None:
    """Raise the fail-closed 503, or record a fail-open and return."""
    if route_class in fail_closed:
        raise _unavailable(route_class) from None
    _FAIL_OPEN.labels(route_class).inc()
    log.warning("rate limiter unavailable; serving %s request unlimited", route_class)


def _with_headers(exc: Exception, headers: Mapping[str, str]) -> None:
    if isinstance(exc, Problem):
        exc.headers = {**exc.headers, **headers}
    elif isinstance(exc, web.HTTPException):
        exc.headers.update(headers)


def rate_limit_middleware(
    redis: Redis,
    policies: Mapping[str, Sequence[RateLimitPolicy]],
    classify: Callable[[web.Request], str],
    *,
    fail_closed: Collection[str] = frozenset({AUTH}),
    prefix: str = "lastro:rl",
) -> Middleware:
    """Limit each request by the policies of its route class (see module docstring).

    Guarantee: a request over any of its policies never reaches the handler (429
    with ``Retry-After``); a fail-closed class is never served unlimited.
    """
    limiter = RateLimiter(redis, prefix=prefix)
    default = tuple(policies.get(DEFAULT, ()))

    @web.middleware
    async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        route_class = classify(request)
        selected = policies.get(route_class, default)
        if not selected:
            return await handler(request)
        try:
            decision = await limiter.hit([(p, subject_for(request, p.per)) for p in selected])
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
