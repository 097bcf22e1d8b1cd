"""What every simulated third party shares: API keys, state, idempotency, faults.

A provider is built with :func:`create_provider_app` on top of Lastro's HTTP app
factory (``core/http.py``: problem+json errors, request ids, metrics, contract
validation, ``/healthz``, ``/openapi.json``, ``/docs``), with these differences:

* **API keys**, not Lastro tokens: every route but the operational ones needs
  ``Authorization: Bearer <the provider's API key>`` (:class:`ApiKeys`; the key is
  ``settings.partner_api_keys[name]``, in dev the file ``.dev/secrets/<name>_api_key``
  the dev stack writes).
* **State** is one SQLite file, ``.dev/<name>/<name>.sqlite3`` (:class:`ProviderState`):
  a fake of another company's system keeps its own memory, and an acquirer restarted
  during a test must not forget its authorizations. It is not Lastro infrastructure.
* **Units of work**: every POST runs in one SQLite transaction, serialised by a lock,
  so a handler's checks and writes are atomic and two concurrent requests never
  interleave. Handlers do not suspend between their first write and their return,
  so reads (unlocked) never see half a request.
* **Idempotency keys** as a provider answers them: on a POST under ``/v1/`` an
  ``Idempotency-Key`` is honoured when sent and required (400 without) where the
  contract marks the operation ``x-idempotent: true``. The same key with the same
  request replays the stored answer (``Idempotent-Replayed: true``); with another
  method, path or body it is a 422. The key, the effect and the stored answer are
  committed in the same transaction, so a crash never leaves one without the other,
  and concurrent requests with one key have one effect (the others, serialised
  behind it, get the replay). A 5xx answer is not stored and its effects are rolled
  back; a refused request (4xx) is stored like a success. Keys are scoped per API
  key and kept 24 hours.
* **Unknown query parameters** are refused (422), not ignored.
* **Faults** (:mod:`lastro.external.faults`) for tests, on the provider's API (``/v1/``)
  only: ``POST /admin/faults`` replaces the faults in force, ``GET /admin/faults``
  shows them, ``POST /admin/reset`` clears them. ``latency_ms`` delays every
  request; ``error_rate`` (a decimal string, ``"0.25"``) answers that share of
  requests with a 500; ``outage`` answers every request with a 503 (``outage_mode``
  ``unavailable``) or drops the connection without an answer (``disconnect``, what
  a client sees of a dead host behind a load balancer); ``timeout`` holds every
  request unanswered (until the faults change, or 120 s, then a 504) so the caller's
  own timeout fires. Errors and timeouts strike before the provider acts unless
  ``after_effect`` is set: then the provider does the work, stores the idempotent
  answer, and the answer is lost on the way back: the case idempotency keys exist
  for. ``seed`` makes the ``error_rate`` draws repeatable.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from lastro.core.background import periodic
from lastro.core.config import Settings
from lastro.core.errors import DomainError
from lastro.core.http import PRINCIPAL_KEY, ReadinessCheck, create_app
from lastro.core.idempotency import (
    IDEMPOTENCY_HEADER,
    MAX_KEY_LENGTH,
    MIN_RETENTION,
    REPLAYED_HEADER,
    idempotent_operations,
    request_fingerprint,
)
from lastro.core.openapi import ApiContract
from lastro.core.problems import Problem, validation_problem
from lastro.core.security.tokens import InvalidToken, Principal
from lastro.external.faults import ADMIN_ROUTES, API_PREFIX, FAULTS_KEY, FaultInjector, Faults

log = logging.getLogger(__name__)


KEY_PURGE_INTERVAL_SECONDS: Final = 600.0
# Headers that describe one transmission, not the stored answer.
_NOT_STORED: Final = frozenset({"content-length", "date", "server", "transfer-encoding"})


class ApiKeys:
    """The provider's API key check (a :class:`~lastro.core.http.BearerVerifier`).

    Guarantee: only the configured key is accepted, compared in constant time; the
    caller is named by a digest of the key, never the key itself.
    """

    def __init__(self, provider: str, key: str) -> None:
        if not key:
            raise ValueError(
                f"{provider}: no API key configured (LASTRO_{provider.upper()}_API_KEY, "
                f"or .dev/secrets/{provider}_api_key written by `lastro dev up`)"
            )
        self._provider = provider
        self._key = key.encode()
        self._principal = Principal(
            subject="merchant",
            client_id=f"key_{hashlib.sha256(self._key).hexdigest()[:16]}",
            scopes=frozenset(),
            audience=(provider,),
        )

    async def verify(self, token: str) -> Principal:
        if not hmac.compare_digest(token.encode(errors="replace"), self._key):
            raise InvalidToken(f"unknown {self._provider} API key")
        return self._principal


# --------------------------------------------------------------------------- state

_IDEMPOTENCY_DDL: Final = """
CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created_at ON idempotency_keys (created_at);
"""


class ProviderState:
    """A provider's SQLite database (WAL, so a SIGKILLed process loses nothing it
    committed) and the lock that serialises its units of work."""

    def __init__(self, path: Path, schema: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(_IDEMPOTENCY_DDL + schema)
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[sqlite3.Connection]:
        """One transaction, alone: committed when the block ends, rolled back if it raises."""
        async with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()


STATE_KEY: Final = web.AppKey("provider_state", ProviderState)


def state_of(request: web.Request) -> sqlite3.Connection:
    """The provider's database, for a handler (inside the request's unit of work on a POST)."""
    return request.app[STATE_KEY].db


# --------------------------------------------------------------------- idempotency


class _Abandoned(Exception):
    """A 5xx answer: roll the unit of work back, then send the answer anyway."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__(response.status)
        self.response = response


def _idempotency_key(request: web.Request, required: bool) -> str | None:
    raw = request.headers.get(IDEMPOTENCY_HEADER)
    if raw is None:
        if required:
            raise Problem(
                400,
                "idempotency-key-missing",
                "Idempotency-Key required",
                f"Send an '{IDEMPOTENCY_HEADER}' header (a unique value, e.g. a UUID, "
                "reused only to retry the same request).",
            )
        return None
    key = raw.strip()
    if not 0 < len(key) <= MAX_KEY_LENGTH or not all(" " <= c <= "~" for c in key):
        raise Problem(
            400,
            "idempotency-key-invalid",
            "Invalid Idempotency-Key",
            f"The key must be 1-{MAX_KEY_LENGTH} printable ASCII characters.",
        )
    return key


def _stored_answer(
    db: sqlite3.Connection, scope: str, key: str, fingerprint: str
) -> web.Response | None:
    row = db.execute(
        "SELECT fingerprint, status, headers, body FROM idempotency_keys "
        "WHERE scope = ? AND key = ? AND created_at > ?",
        (scope, key, time.time() - MIN_RETENTION.total_seconds()),
    ).fetchone()
    if row is None:
        return None
    if row["fingerprint"] != fingerprint:
        raise Problem(
            422,
            "idempotency-key-reused",
            "Idempotency-Key reused for a different request",
            "This key was already used with a different method, path or body; "
            "use a new key for a new request.",
        )
    headers = {str(k): str(v) for k, v in json.loads(row["headers"])}
    headers[REPLAYED_HEADER] = "true"
    return web.Response(status=row["status"], body=row["body"], headers=headers)


def _store_answer(
    db: sqlite3.Connection, scope: str, key: str, fingerprint: str, response: web.Response
) -> None:
    body = response.body
    assert isinstance(body, bytes)
    headers = [[k, v] for k, v in response.headers.items() if k.lower() not in _NOT_STORED]
    db.execute(
        "INSERT OR REPLACE INTO idempotency_keys "
        "(scope, key, fingerprint, status, headers, body, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (scope, key, fingerprint, response.status, json.dumps(headers), body, time.time()),
    )


def _units_of_work(required: frozenset[tuple[str, str]]) -> Middleware:
    """Every POST in one unit of work; Idempotency-Key handling on ``/v1/`` POSTs
    (module docstring)."""

    @web.middleware
    async def unit_of_work(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "POST":
            return await handler(request)
        raw = await request.read()  # before the lock: reading may wait on the network
        key = None
        if request.path.startswith(API_PREFIX):
            resource = request.match_info.route.resource
            template = resource.canonical if resource is not None else ""
            key = _idempotency_key(request, ("POST", template) in required)
        scope = request[PRINCIPAL_KEY].client_id if PRINCIPAL_KEY in request else "anonymous"
        fingerprint = request_fingerprint(request.method, request.path_qs, raw)
        try:
            async with request.app[STATE_KEY].unit_of_work() as db:
                if key is not None:
                    replay = _stored_answer(db, scope, key, fingerprint)
                    if replay is not None:
                        return replay
                response = await _run_refusals_rolled_back(db, request, handler)
                if response.status >= 500 or not isinstance(response, web.Response):
                    raise _Abandoned(response)
                if key is not None:
                    _store_answer(db, scope, key, fingerprint, response)
                return response
        except _Abandoned as abandoned:
            return abandoned.response

    return unit_of_work


async def _run_refusals_rolled_back(
    db: sqlite3.Connection, request: web.Request, handler: Handler
) -> web.StreamResponse:
    """Run the handler; a refusal (Problem or DomainError) undoes whatever it wrote
    and becomes the answer."""
    db.execute("SAVEPOINT handler")
    try:
        response = await handler(request)
    except (Problem, DomainError) as refusal:
        db.execute("ROLLBACK TO handler")
        db.execute("RELEASE handler")
        problem = refusal if isinstance(refusal, Problem) else refusal.problem()
        return problem.to_response(instance=request.path)
    db.execute("RELEASE handler")
    return response


async def _purge_expired_keys(app: web.Application) -> None:
    state = app[STATE_KEY]
    async with state.unit_of_work() as db:
        cutoff = time.time() - MIN_RETENTION.total_seconds()
        db.execute("DELETE FROM idempotency_keys WHERE created_at <= ?", (cutoff,))


def _known_query_parameters_only(contract: ApiContract) -> Middleware:
    """A query parameter the operation does not declare is refused (422), as a
    provider's API does (Stripe: "Received unknown parameter"), not ignored."""

    @web.middleware
    async def known_query_parameters_only(
        request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        operation = contract.find(request)
        if operation is not None:
            known = {p.name for p in operation.parameters if p.location == "query"}
            unknown = sorted(set(request.query) - known)
            if unknown:
                raise validation_problem(
                    [{"field": name[:64], "detail": "unknown parameter"} for name in unknown]
                )
        return await handler(request)

    return known_query_parameters_only


# ----------------------------------------------------------------------------- app

CleanupContext = Callable[[web.Application], AsyncIterator[None]]


def timestamp(moment: datetime | None = None) -> str:
    """RFC 3339 UTC with microseconds, as the providers write times: sorts as text
    in time order."""
    moment = moment or datetime.now(UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def state_path(settings: Settings, name: str) -> Path:
    """Where provider ``name`` keeps its state: ``.dev/<name>/<name>.sqlite3``."""
    return settings.dev_dir / name / f"{name}.sqlite3"


def create_provider_app(
    *,
    name: str,
    settings: Settings,
    openapi_path: Path,
    routes: Iterable[web.AbstractRouteDef],
    schema: str = "",
    cleanup_ctx: Sequence[CleanupContext] = (),
    readiness: Mapping[str, ReadinessCheck] | None = None,
) -> web.Application:
    """A simulated provider's application (behaviour in the module docstring).

    ``schema`` is the provider's own SQLite DDL (``CREATE TABLE IF NOT EXISTS``...);
    ``cleanup_ctx`` run after the state is open, so they may use ``STATE_KEY``.
    """
    contract = ApiContract.load(openapi_path)
    required = frozenset((m.upper(), p) for m, p in idempotent_operations(contract))
    faults = FaultInjector()

    async def state(app: web.Application) -> AsyncIterator[None]:
        provider_state = ProviderState(state_path(settings, name), schema)
        app[STATE_KEY] = provider_state
        try:
            yield
        finally:
            provider_state.close()

    async def database_ready(app: web.Application) -> bool:
        app[STATE_KEY].db.execute("SELECT 1").fetchone()
        return True

    app = create_app(
        name=name,
        settings=settings,
        openapi_path=openapi_path,
        routes=(*ADMIN_ROUTES, *routes),
        readiness={"state": database_ready, **(readiness or {})},
        auth=ApiKeys(name, settings.partner_api_keys.get(name, "")),
        cleanup_ctx=[
            state,
            periodic(f"{name}-idempotency-purge", _purge_expired_keys, KEY_PURGE_INTERVAL_SECONDS),
            *cleanup_ctx,
        ],
        middlewares=[
            faults.middleware,
            _units_of_work(required),
            _known_query_parameters_only(contract),
        ],
    )
    app[FAULTS_KEY] = faults

    async def release_held_requests(app: web.Application) -> None:
        faults.replace(Faults())  # a held request would otherwise delay shutdown

    app.on_shutdown.append(release_held_requests)
    return app
