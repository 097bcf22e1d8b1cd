"""Rate-limit policies, route classes, whom a policy counts, and the fail-open /
fail-closed rule shared by every limiter (see :mod:`lastro.core.ratelimit`)."""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from aiohttp import web
from prometheus_client import Counter

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
# How long a limiter decision may wait for Redis before the route fails open (or closed).
# 0.5 s ran out on a loaded two-core host during a 35-request burst and let it all through;
# a refused or reset connection still fails at once, only a slow Redis waits this long.
REDIS_TIMEOUT_SECONDS: Final = 2.0
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
    log.warning(
        "rate limiter unavailable (%r); serving %s request unlimited",
        sys.exc_info()[1],
        route_class,
    )


def _with_headers(exc: Exception, headers: Mapping[str, str]) -> None:
    if isinstance(exc, Problem):
        exc.headers = {**exc.headers, **headers}
    elif isinstance(exc, web.HTTPException):
        exc.headers.update(headers)
