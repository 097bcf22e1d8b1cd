"""Idempotency keys for money-moving requests (IETF httpapi ``Idempotency-Key`` draft).

An operation opts in with the OpenAPI extension ``x-idempotent: true`` in the
service's ``openapi.yaml`` (read by :func:`idempotent_operations`), so the contract
a client reads is the one enforced. For those operations
:func:`idempotency_middleware` guarantees:

* no ``Idempotency-Key`` header (or a malformed one) → 400, the handler never runs;
* the first request with a key claims it (an insert into PostgreSQL that loses
  cleanly on conflict), runs the handler, and stores the response (status,
  headers, body) for at least 24 hours;
* the same key with the same request (SHA-256 over method, path with query, and
  the canonical JSON body) → the stored response, byte for byte, with
  ``Idempotent-Replayed: true``; the handler does not run again;
* the same key with a different request → 422;
* the same key while the first request is still running → 409 with ``Retry-After``;
* a handler failure (5xx, or an exception other than a ``Problem``) releases the
  key so the client can retry; so does a 401 or 403 (a step-up challenge, a
  missing permission: about the credentials, not the request, so the client
  retries with a better token under the same key); other 4xx problems are stored
  and replayed like successes.

Keys are scoped per client *and* end user (``<client_id>:<sub>`` from the token,
``anonymous`` without one): two users of the same app can never replay each
other's responses. A claim is never taken over while it is in flight, even if the
process that made it died: re-running a payment that may have been half-done is
worse than a 409; such a key is freed when it expires. Expired keys are removed
by :func:`purge_expired_keys` (run it periodically); until then an expired key is
claimed afresh by the next request that uses it.

The middleware runs after authentication and before contract validation, so a
request that fails validation is answered, and remembered, as a 422.

Every money POST pays for the claim and the completion, so those two statements
(and a release) run on the driver (:func:`lastro.core.db.open_statement_pool`), each
self-committing: through SQLAlchemy a one-row statement cost about two and a half
times the CPU (``lastro bench statements``). A key already present takes the
locking path, a transaction on the engine that runs the same claim statement.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from multidict import CIMultiDict
from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Index,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
    delete,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lastro.core.db import StatementPool, driver_table_name, fetch_statement
from lastro.core.http import PRINCIPAL_KEY
from lastro.core.openapi import ApiContract
from lastro.core.problems import Problem

log = logging.getLogger(__name__)

IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
REPLAYED_HEADER: Final = "Idempotent-Replayed"
EXTENSION: Final = "x-idempotent"
MIN_RETENTION: Final = timedelta(hours=24)
MAX_KEY_LENGTH: Final = 255
IN_FLIGHT: Final = "in_flight"
COMPLETED: Final = "completed"
ANONYMOUS: Final = "anonymous"
_CLAIM_ATTEMPTS: Final = 3
# Answers about the caller's credentials, not the request: a step-up challenge (401)
# or a missing permission (403) is retried with a better token under the same key.
_NOT_THE_REQUESTS_OUTCOME: Final = frozenset({401, 403})
# Headers that describe one transmission, not the stored response.
_NOT_STORED: Final = frozenset({"content-length", "date", "server", "transfer-encoding"})


def idempotency_table(metadata: MetaData, name: str = "idempotency_keys") -> Table:
    """The table a service adds to its schema to hold its idempotency keys."""
    return Table(
        name,
        metadata,
        Column("scope", Text, primary_key=True),
        Column("key", Text, primary_key=True),
        Column("fingerprint", Text, nullable=False),
        Column("status", Text, nullable=False),
        Column("response_status", SmallInteger),
        Column("response_headers", JSONB),
        Column("response_body", LargeBinary),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("expires_at", DateTime(timezone=True), nullable=False),
        CheckConstraint(f"status IN ('{IN_FLIGHT}', '{COMPLETED}')", name=f"{name}_status"),
        CheckConstraint(
            f"status = '{IN_FLIGHT}' OR response_status IS NOT NULL", name=f"{name}_response"
        ),
        CheckConstraint("expires_at >= created_at + interval '24 hours'", name=f"{name}_retention"),
        Index(f"{name}_expires_at_idx", "expires_at"),
    )


def idempotent_operations(contract: ApiContract) -> frozenset[tuple[str, str]]:
    """``(METHOD, path template)`` of every operation marked ``x-idempotent: true``."""
    paths = contract.document.get("paths") or {}
    return frozenset(
        (method, path)
        for method, path in contract.operations
        if paths[path][method.lower()].get(EXTENSION) is True
    )


def _key_of(request: web.Request) -> str:
    raw = request.headers.get(IDEMPOTENCY_HEADER)
    if raw is None:
        raise Problem(
            400,
            "idempotency-key-missing",
            "Idempotency-Key required",
            f"This operation moves money: send an '{IDEMPOTENCY_HEADER}' header "
            "(a unique value, e.g. a UUID, reused only to retry the same request).",
        )
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]  # the draft's structured-field string form
    if not 0 < len(key) <= MAX_KEY_LENGTH or not all(" " <= c <= "~" for c in key):
        raise Problem(
            400,
            "idempotency-key-invalid",
            "Invalid Idempotency-Key",
            f"The key must be 1-{MAX_KEY_LENGTH} printable ASCII characters.",
        )
    return key


def _scope_of(request: web.Request) -> str:
    principal = request.get(PRINCIPAL_KEY)
    return ANONYMOUS if principal is None else f"{principal.client_id}:{principal.subject}"


def request_fingerprint(method: str, path_qs: str, body: bytes) -> str:
    """SHA-256 (hex) over method, path with query and the body; a JSON body is
    canonicalised first (sorted keys, no insignificant whitespace)."""
    try:
        canonical = json.dumps(
            json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    except (ValueError, UnicodeDecodeError):
        canonical = body
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path_qs.encode(), canonical):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Claim:
    table: Table
    scope: str
    key: str
    fingerprint: str

    def where(self) -> Any:
        return (self.table.c.scope == self.scope) & (self.table.c.key == self.key)


@dataclass(frozen=True)
class _Statements:
    """The driver's SQL for the common case, for one keys table (numbered
    parameters; the table named by :func:`~lastro.core.db.driver_table_name`)."""

    claim: str
    complete: str
    release: str

    @classmethod
    def for_table(cls, engine: AsyncEngine, table: Table) -> _Statements:
        name = driver_table_name(engine, table)
        return cls(
            claim=(
                f"INSERT INTO {name} (scope, key, fingerprint, status, created_at, expires_at)"  # noqa: S608
                f" VALUES ($1, $2, $3, '{IN_FLIGHT}', now(), now() + $4::interval)"
                " ON CONFLICT DO NOTHING RETURNING key"
            ),
            complete=(
                f"UPDATE {name} SET status = '{COMPLETED}', response_status = $3,"  # noqa: S608
                " response_headers = $4::jsonb, response_body = $5"
                f" WHERE scope = $1 AND key = $2 AND status = '{IN_FLIGHT}'"
            ),
            release=(
                f"DELETE FROM {name} WHERE scope = $1 AND key = $2"  # noqa: S608
                f" AND status = '{IN_FLIGHT}' AND fingerprint = $3"
            ),
        )


def _replay(row: Any) -> web.Response:
    headers = CIMultiDict[str]((str(k), str(v)) for k, v in row.response_headers)
    headers[REPLAYED_HEADER] = "true"
    return web.Response(status=row.response_status, body=row.response_body, headers=headers)


def _fresh(claim: _Claim, retention: timedelta) -> dict[str, Any]:
    return {
        "fingerprint": claim.fingerprint,
        "status": IN_FLIGHT,
        "response_status": None,
        "response_headers": None,
        "response_body": None,
        "created_at": func.now(),
        "expires_at": func.now() + retention,
    }


def _claim_args(claim: _Claim, retention: timedelta) -> tuple[Any, ...]:
    """The parameters of :attr:`_Statements.claim`."""
    return (claim.scope, claim.key, claim.fingerprint, retention)


async def _claim_once(
    conn: AsyncConnection, sql: _Statements, claim: _Claim, retention: timedelta
) -> web.Response | bool:
    """True: claimed; a Response: replay it; False: the row vanished, try again."""
    table = claim.table
    fresh = _fresh(claim, retention)
    if (await conn.exec_driver_sql(sql.claim, _claim_args(claim, retention))).first():
        return True
    row = (
        await conn.execute(
            select(table, (table.c.expires_at <= func.now()).label("expired"))
            .where(claim.where())
            .with_for_update()
        )
    ).first()
    if row is None:
        return False
    if row.expired:
        await conn.execute(update(table).where(claim.where()).values(**fresh))
        return True
    if row.fingerprint != claim.fingerprint:
        raise Problem(
            422,
            "idempotency-key-reused",
            "Idempotency-Key reused for a different request",
            "This key was already used with a different method, path or body; "
            "use a new key for a new request.",
        )
    if row.status == IN_FLIGHT:
        raise Problem(
            409,
            "idempotency-key-in-flight",
            "Request with this Idempotency-Key in progress",
            "The original request is still being processed; retry shortly.",
            headers={"Retry-After": "1"},
        )
    return _replay(row)


async def _claim(
    engine: AsyncEngine,
    keys: StatementPool,
    sql: _Statements,
    claim: _Claim,
    retention: timedelta,
) -> web.Response | None:
    # The common case, a new key, is one INSERT; only a key already present takes
    # the locking path (replay, 409, 422, or an expired key claimed afresh). Not run
    # again on a dropped connection: had it committed, the rerun would find this very
    # claim in flight and answer 409 until it expires.
    if await fetch_statement(keys, sql.claim, *_claim_args(claim, retention), rerun=False):
        return None
    for _ in range(_CLAIM_ATTEMPTS):
        async with engine.begin() as conn:
            outcome = await _claim_once(conn, sql, claim, retention)
        if isinstance(outcome, web.Response):
            return outcome
        if outcome:
            return None
    raise Problem(
        409,
        "idempotency-key-in-flight",
        "Request with this Idempotency-Key in progress",
        "The key is being claimed and released concurrently; retry shortly.",
        headers={"Retry-After": "1"},
    )


async def _release(keys: StatementPool, sql: _Statements, claim: _Claim) -> None:
    await fetch_statement(keys, sql.release, claim.scope, claim.key, claim.fingerprint)


async def _complete(
    keys: StatementPool, sql: _Statements, claim: _Claim, response: web.Response
) -> None:
    body = response.body
    assert isinstance(body, bytes)
    headers = [[k, v] for k, v in response.headers.items() if k.lower() not in _NOT_STORED]
    await fetch_statement(
        keys, sql.complete, claim.scope, claim.key, response.status, json.dumps(headers), body
    )


def idempotency_middleware(
    engine: AsyncEngine,
    keys: StatementPool,
    table: Table,
    operations: Collection[tuple[str, str]],
    *,
    retention: timedelta = MIN_RETENTION,
) -> Middleware:
    """Enforce idempotency keys on ``operations`` (``(METHOD, path template)`` pairs),
    stored in ``table``: the common case's statements on ``keys``, a driver pool on
    the same database as ``engine`` (module docstring).

    Guarantee: for one scope and key, the handler runs at most once to a stored
    outcome; every other request with that key gets that outcome replayed, a 409
    while it is running, or a 422 if it is a different request (module docstring).
    """
    if retention < MIN_RETENTION:
        raise ValueError("idempotency keys must be kept for at least 24 hours")
    marked = frozenset((method.upper(), path) for method, path in operations)
    sql = _Statements.for_table(engine, table)

    @web.middleware
    async def idempotency(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        if resource is None or (request.method, resource.canonical) not in marked:
            return await handler(request)
        key = _key_of(request)
        fingerprint = request_fingerprint(request.method, request.path_qs, await request.read())
        claim = _Claim(table, _scope_of(request), key, fingerprint)
        replay = await _claim(engine, keys, sql, claim, retention)
        if replay is not None:
            return replay
        try:
            try:
                response = await handler(request)
            except Problem as problem:
                response = problem.to_response(instance=request.path)
        except BaseException:
            await _release(keys, sql, claim)
            raise
        if (
            response.status >= 500
            or response.status in _NOT_THE_REQUESTS_OUTCOME
            or not isinstance(response, web.Response)
            or not isinstance(response.body, bytes)
        ):
            await _release(keys, sql, claim)
            return response
        await _complete(keys, sql, claim, response)
        return response

    return idempotency


async def purge_expired_keys(engine: AsyncEngine, table: Table, *, batch_size: int = 1000) -> int:
    """Delete expired keys in batches (short transactions); returns how many were removed."""
    removed = 0
    while True:
        expired = (
            select(table.c.scope, table.c.key)
            .where(table.c.expires_at < func.now())
            .limit(batch_size)
        )
        async with engine.begin() as conn:
            result = await conn.execute(
                delete(table).where(tuple_(table.c.scope, table.c.key).in_(expired))
            )
        removed += result.rowcount
        if result.rowcount < batch_size:
            return removed
