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

Modules: ``policies`` (policies, route classes, subjects), ``limiter`` (GCRA),
``lockout`` (failure lockout), ``concurrency`` (in-flight limits).
"""

from lastro.core.ratelimit.concurrency import ConcurrencyLimiter, concurrency_limit_middleware
from lastro.core.ratelimit.limiter import (
    PolicyState,
    RateLimitDecision,
    RateLimiter,
    rate_limit_middleware,
)
from lastro.core.ratelimit.lockout import FailureLockout
from lastro.core.ratelimit.policies import (
    AUTH,
    DEFAULT,
    DEFAULT_POLICIES,
    EXEMPT,
    INTERNAL,
    OPERATIONAL_PATHS,
    REDIS_TIMEOUT_SECONDS,
    RateLimitPolicy,
    Scope,
    policies_from_settings,
    policy_table,
    route_classifier,
    subject_for,
)

__all__ = [
    "AUTH",
    "DEFAULT",
    "DEFAULT_POLICIES",
    "EXEMPT",
    "INTERNAL",
    "OPERATIONAL_PATHS",
    "REDIS_TIMEOUT_SECONDS",
    "ConcurrencyLimiter",
    "FailureLockout",
    "PolicyState",
    "RateLimitDecision",
    "RateLimitPolicy",
    "RateLimiter",
    "Scope",
    "concurrency_limit_middleware",
    "policies_from_settings",
    "policy_table",
    "rate_limit_middleware",
    "route_classifier",
    "subject_for",
]
