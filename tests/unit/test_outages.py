"""The one classifier of dependency outages, on the exceptions the libraries really raise."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import aiohttp
import asyncpg
import pytest
import redis.exceptions
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    TopicAuthorizationFailedError,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi

from lastro.core.db import discard_dead_connections
from lastro.core.outages import connection_is_dead, dependency_outage
from lastro.core.resilience import CircuitOpen, TransientError
from lastro.core.security.transit import TransitError, TransitUnavailable

DBAPI = AsyncAdapt_asyncpg_dbapi(asyncpg)


def _wrapped(error: Exception) -> sa_exc.DBAPIError:
    """``error`` as SQLAlchemy's asyncpg dialect hands it to the caller: translated to
    the dialect's DBAPI class (caused by the asyncpg error), then wrapped."""
    translate = DBAPI._asyncpg_error_translate
    adapted_class = next(translate[c] for c in type(error).__mro__ if c in translate)
    try:
        try:
            raise error
        except Exception as original:
            raise adapted_class(str(original), original) from original
    except Exception as adapted:
        return sa_exc.DBAPIError.instance("SELECT 1", {}, adapted, DBAPI.Error)


def _dependency(error: BaseException) -> str | None:
    outage = dependency_outage(error)
    return None if outage is None else outage.extra["dependency"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.CrashShutdownError("terminating connection because of crash"),
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
        asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed"),
        asyncpg.InternalClientError(
            "cannot switch to state 15; another operation (2) is in progress"
        ),
    ],
)
def test_postgresql_going_away_is_a_database_outage_raw_or_wrapped(error: Exception) -> None:
    assert _dependency(error) == "database"
    assert _dependency(_wrapped(error)) == "database"
    outage = dependency_outage(_wrapped(error))
    assert outage is not None and outage.status == 503
    assert int(outage.headers()["Retry-After"]) > 0


def test_a_connection_sqlalchemy_invalidated_and_a_pool_timeout_are_database_outages() -> None:
    invalidated = sa_exc.DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True)
    assert _dependency(invalidated) == "database"
    pool = sa_exc.TimeoutError("QueuePool limit of size 10 overflow 10 reached")
    outage = dependency_outage(pool)
    assert outage is not None and outage.extra["dependency"] == "database"


async def test_a_refused_connection_is_named_after_the_client_that_made_it() -> None:
    with pytest.raises(OSError) as refused:
        await asyncpg.connect(host="127.0.0.1", port=_closed_port(), timeout=5)
    assert _dependency(refused.value) == "database"
    assert _dependency(ConnectionRefusedError(111, "Connect call failed")) == "upstream"


@pytest.mark.parametrize(
    ("error", "dependency"),
    [
        (TransitUnavailable("KMS unavailable: connection refused"), "kms"),
        (KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 19092)]"), "kafka"),
        (KafkaTimeoutError("Failed to update metadata after 60.0 secs."), "kafka"),
        (NodeNotReadyError("node 1 not ready"), "kafka"),
        (redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:16379"), "redis"),
        (redis.exceptions.TimeoutError("Timeout reading from socket"), "redis"),
        (CircuitOpen("fx"), "upstream"),
        (TransientError("acquirer answered 502"), "upstream"),
        (aiohttp.ServerDisconnectedError(), "upstream"),
        (TimeoutError(), "upstream"),
    ],
)
def test_other_dependencies_going_away_are_outages(error: Exception, dependency: str) -> None:
    assert _dependency(error) == dependency


def test_an_outage_behind_an_explicit_cause_is_still_an_outage() -> None:
    try:
        try:
            raise asyncpg.CannotConnectNowError("the database system is shutting down")
        except asyncpg.PostgresError as error:
            raise RuntimeError("could not load the account") from error
    except RuntimeError as wrapped:
        assert _dependency(wrapped) == "database"


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.UniqueViolationError("duplicate key value violates unique constraint"),
        asyncpg.UndefinedTableError('relation "accounts" does not exist'),
        asyncpg.InterfaceError("the number of query arguments cannot exceed 32767"),
        asyncpg.InternalClientError("unexpected codec"),
        TransitError("KMS refused the request: key not found"),
        TopicAuthorizationFailedError(),
        ValueError("bad value"),
        KeyError("missing"),
        PermissionError(13, "Permission denied"),
    ],
)
def test_bugs_and_refusals_are_not_outages(error: Exception) -> None:
    assert dependency_outage(error) is None
    if isinstance(error, asyncpg.PostgresError | asyncpg.InterfaceError):
        assert dependency_outage(_wrapped(error)) is None


@pytest.mark.parametrize(
    ("error", "dead"),
    [
        (
            asyncpg.InternalClientError(
                "cannot switch to state 12; another operation (2) is in progress"
            ),
            True,
        ),
        (asyncpg.AdminShutdownError("terminating connection due to administrator command"), True),
        (
            asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
            True,
        ),
        (asyncpg.TooManyConnectionsError("sorry, too many clients already"), False),
        (asyncpg.UniqueViolationError("duplicate key value violates unique constraint"), False),
        (asyncpg.InterfaceError("the number of query arguments cannot exceed 32767"), False),
    ],
)
def test_sqlalchemy_is_told_which_errors_leave_a_connection_dead(
    error: Exception, dead: bool
) -> None:
    """``core.db``'s handle_error hook marks exactly these as disconnects, at pre-ping
    too, so the pool discards the connection instead of handing it out again."""
    wrapped = _wrapped(error)
    assert connection_is_dead(wrapped) is dead
    context = SimpleNamespace(original_exception=wrapped.orig, is_disconnect=False)
    discard_dead_connections(context)  # type: ignore[arg-type]
    assert context.is_disconnect is dead
