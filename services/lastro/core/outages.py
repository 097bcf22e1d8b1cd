"""Which failures mean "a dependency is down, retry later": the one classifier.

The HTTP app factory (``core/http.py``) asks :func:`dependency_outage` about every
exception a handler lets escape; an outage becomes a 503
:class:`~lastro.core.errors.DependencyUnavailable` with ``Retry-After`` (the request
changed nothing: a transaction that lost its server is rolled back by PostgreSQL),
anything else stays a 500. A use case therefore never catches infrastructure errors
just to translate them.

Outages recognised, looking through SQLAlchemy's wrapper (``DBAPIError.orig``) and
explicit causes (``raise ... from``):

* **database**: PostgreSQL refusing or dropping connections (SQLSTATE classes 08
  connection exception and 53 insufficient resources, 57P01 admin shutdown, 57P02
  crash shutdown, 57P03 cannot connect now), a connection the server closed
  (asyncpg ``connection is closed``, ``another operation is in progress``,
  ``cannot switch to state``, which a dropped connection leaves behind), a
  connection SQLAlchemy invalidated, and a pool checkout that timed out;
* **kms**: :class:`~lastro.core.security.transit.TransitUnavailable`;
* **kafka**: aiokafka errors that aiokafka itself marks retriable, and metadata or
  send timeouts;
* **redis**: connection errors and timeouts;
* **upstream**: an open circuit breaker and the transient failures of
  :func:`~lastro.core.resilience.is_transient` (timeouts, refused or reset
  connections, 5xx answers of another service); a bare socket error is named
  after the client library it came through (asyncpg or SQLAlchemy: database).
"""

from __future__ import annotations

import errno
from typing import Final

import asyncpg
import redis.exceptions
from aiokafka.errors import KafkaError, KafkaTimeoutError
from sqlalchemy import exc as sa_exc

from lastro.core.errors import DependencyUnavailable
from lastro.core.resilience import CircuitOpen, is_transient
from lastro.core.security.transit import TransitUnavailable

RETRY_AFTER_SECONDS: Final = 5
POOL_RETRY_AFTER_SECONDS: Final = 2

# SQLSTATEs meaning this connection is gone: class 08 (connection exception) and the
# server shutting down, crashing or still starting (57P01, 57P02, 57P03).
_DEAD_CONNECTION_SQLSTATE_CLASS: Final = "08"
_DEAD_CONNECTION_SQLSTATES: Final = frozenset({"57P01", "57P02", "57P03"})
# Class 53 (insufficient resources: too many connections, disk full): the server is up
# but cannot serve now.
_OVERLOADED_SQLSTATE_CLASS: Final = "53"
# asyncpg client-side errors left by a connection its server dropped.
_DEAD_CONNECTION_MESSAGES: Final = (
    "connection is closed",
    "another operation is in progress",
    "cannot switch to state",
    "connection was closed",
    "pool is closing",
)
_NETWORK_ERRNOS: Final = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ETIMEDOUT,
    }
)
_DETAILS: Final = {
    "database": "The database is unavailable or restarting; retry later.",
    "kms": "The key service is unavailable; retry later.",
    "kafka": "The event broker is unavailable; retry later.",
    "redis": "The cache is unavailable; retry later.",
    "upstream": "A service this request depends on is unavailable; retry later.",
}
_MAX_CHAIN: Final = 8


def dependency_outage(error: BaseException) -> DependencyUnavailable | None:
    """The 503 to answer when ``error`` (or what it wraps) is a dependency outage,
    else None. Never raises."""
    for current in _chain(error):
        found = _classify(current)
        if found is not None:
            dependency, retry_after = found
            return DependencyUnavailable(
                _DETAILS[dependency], retry_after=retry_after, dependency=dependency
            )
    return None


def _classify(error: BaseException) -> tuple[str, int] | None:
    if isinstance(error, sa_exc.TimeoutError):
        return "database", POOL_RETRY_AFTER_SECONDS  # pool checkout timed out
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return "database", RETRY_AFTER_SECONDS
    if _is_database_outage(error):
        return "database", RETRY_AFTER_SECONDS
    if isinstance(error, TransitUnavailable):
        return "kms", RETRY_AFTER_SECONDS
    if isinstance(error, KafkaTimeoutError) or (isinstance(error, KafkaError) and error.retriable):
        return "kafka", RETRY_AFTER_SECONDS
    if isinstance(error, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return "redis", RETRY_AFTER_SECONDS
    if isinstance(error, CircuitOpen) or is_transient(error) or _is_network_error(error):
        # A bare socket error says nothing of its peer; the code it came from does.
        return _raised_by(error), RETRY_AFTER_SECONDS
    return None


_CLIENT_MODULES: Final = (
    ("asyncpg", "database"),
    ("sqlalchemy", "database"),
    ("redis", "redis"),
    ("aiokafka", "kafka"),
    ("hvac", "kms"),
)


def _raised_by(error: BaseException) -> str:
    """The dependency whose client library raised ``error`` (its innermost such
    frame), else ``upstream``."""
    found = "upstream"
    traceback = error.__traceback__
    while traceback is not None:
        module = str(traceback.tb_frame.f_globals.get("__name__", ""))
        for prefix, dependency in _CLIENT_MODULES:
            if module == prefix or module.startswith(prefix + "."):
                found = dependency
        traceback = traceback.tb_next
    return found


def connection_is_dead(error: BaseException) -> bool:
    """True when ``error`` (or what it wraps) says its PostgreSQL connection can never
    be used again: the server closed it, is shutting down or restarting, or asyncpg's
    protocol was left mid-operation by a dropped connection. ``core/db.py`` tells
    SQLAlchemy so, which then discards the connection (and, at pre-ping, replaces it)."""
    return any(_dead(e) for e in _chain(error))


def _chain(error: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    pending: list[BaseException] = [error]
    while pending and len(found) < _MAX_CHAIN:
        current = pending.pop()
        if any(current is seen for seen in found):
            continue
        found.append(current)
        orig = getattr(current, "orig", None)
        for wrapped in (orig, current.__cause__):
            if isinstance(wrapped, BaseException):
                pending.append(wrapped)
    return found


def _sqlstate(error: BaseException) -> str | None:
    if not isinstance(error, asyncpg.PostgresError | sa_exc.DBAPIError) and not hasattr(
        error, "sqlstate"
    ):
        return None
    code = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    return code if isinstance(code, str) else None


def _dead(error: BaseException) -> bool:
    code = _sqlstate(error)
    if code is not None and (
        code in _DEAD_CONNECTION_SQLSTATES or code.startswith(_DEAD_CONNECTION_SQLSTATE_CLASS)
    ):
        return True
    if isinstance(error, asyncpg.InterfaceError | asyncpg.InternalClientError):
        text = str(error)
        return any(message in text for message in _DEAD_CONNECTION_MESSAGES)
    return False


def _is_database_outage(error: BaseException) -> bool:
    code = _sqlstate(error)
    return _dead(error) or (code is not None and code.startswith(_OVERLOADED_SQLSTATE_CLASS))


def _is_network_error(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in _NETWORK_ERRNOS
