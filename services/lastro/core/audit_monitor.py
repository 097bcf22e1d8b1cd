"""Every service's audit chain, verified periodically and exported as metrics.

``lastro serve <name>`` adds :func:`chain_verification` to every API service that
owns a schema (``core/registry.py``), so a service needs no wiring of its own. Each
round verifies the records appended since the last intact position and the signed
head; every ``full_every`` rounds (and after any failure) the whole chain is walked
again, so an edit of an old record is found too; a walk starts at the chain's signed
anchor when a retention purge dropped its oldest records. Metrics, by ``schema``:

* ``lastro_audit_chain_intact``: 1 when the last verification found the chain
  intact, 0 when it found tampering (the log names the first broken link);
* ``lastro_audit_chain_records``: the records verified intact (those kept after the
  signed anchor a retention purge left, ``core/audit.py``);
* ``lastro_audit_chain_verified_timestamp_seconds``: when a verification last
  completed (alerts catch a verifier that stopped).

A schema whose audit log does not exist yet (its migrations have not run) is skipped
until it does; a database or KMS outage skips the round (``core/background.periodic``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Final

from aiohttp import web
from prometheus_client import Gauge
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.audit import GENESIS, ChainPosition, VerifyResult, verify_schema
from lastro.core.background import periodic
from lastro.core.config import Settings
from lastro.core.observability import metrics_registry

log = logging.getLogger(__name__)

CHAIN_INTACT: Final = Gauge(
    "lastro_audit_chain_intact",
    "1 when the last verification found the schema's audit chain intact, 0 when tampered.",
    ["schema"],
    registry=metrics_registry(),
)
CHAIN_RECORDS: Final = Gauge(
    "lastro_audit_chain_records",
    "Audit records the last verification found intact, by schema.",
    ["schema"],
    registry=metrics_registry(),
)
CHAIN_VERIFIED_AT: Final = Gauge(
    "lastro_audit_chain_verified_timestamp_seconds",
    "When a verification of the schema's audit chain last completed (Unix time).",
    ["schema"],
    registry=metrics_registry(),
)

FULL_EVERY: Final = 12


class ChainMonitor:
    """Verifies one schema's chain incrementally and exports the outcome."""

    def __init__(
        self,
        engine: AsyncEngine,
        schema: str,
        key: bytes,
        *,
        full_every: int = FULL_EVERY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.schema = schema
        self._engine = engine
        self._key = key
        self._full_every = full_every
        self._clock = clock
        self._rounds = 0
        self._resume: ChainPosition = GENESIS

    async def verify_once(self) -> VerifyResult | None:
        """One round (module docstring); None when the schema has no audit log yet."""
        start = self._resume if self._rounds % self._full_every else GENESIS
        try:
            result = await verify_schema(self._engine, self.schema, self._key, start=start)
        except ProgrammingError as error:
            if "does not exist" not in str(error):
                raise
            log.debug("audit chain of %s not there yet (%s)", self.schema, error)
            return None
        self._rounds += 1
        CHAIN_INTACT.labels(self.schema).set(1 if result.ok else 0)
        CHAIN_RECORDS.labels(self.schema).set(result.checked - result.anchor)
        CHAIN_VERIFIED_AT.labels(self.schema).set(self._clock())
        if result.ok and result.verified is not None:
            self._resume = result.verified
        else:
            self._resume, self._rounds = GENESIS, 0  # the next round walks everything
            log.error(
                "audit chain of %s is broken at seq %s: %s",
                self.schema,
                result.first_bad_seq,
                result.reason,
                extra={"schema": self.schema, "first_bad_seq": result.first_bad_seq},
            )
        return result


def chain_verification(
    settings: Settings, schema: str, *, interval: float | None = None
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` verifying ``schema``'s audit chain every ``interval`` seconds
    (default ``settings.audit_verify_interval``) with its own one-connection pool and
    the audit key from the KMS; both are opened at the first round, not at start."""
    from lastro.core.db import create_engine
    from lastro.core.security.transit import TransitClient

    monitor: ChainMonitor | None = None
    engine: AsyncEngine | None = None

    async def verify(app: web.Application) -> None:
        nonlocal monitor, engine
        if monitor is None:
            transit = TransitClient.from_settings(settings)
            try:
                key = await transit.local_hmac_key(settings.audit_key_name)
            finally:
                await transit.close()
            engine = create_engine(settings, pool_size=1, max_overflow=0, name="lastro-audit")
            monitor = ChainMonitor(engine, schema, key)
        await monitor.verify_once()

    rounds = periodic(
        f"audit-verify-{schema}", verify, interval or float(settings.audit_verify_interval)
    )

    async def context(app: web.Application) -> AsyncIterator[None]:
        try:
            async for _ in rounds(app):
                yield
        finally:
            if engine is not None:
                await engine.dispose()

    return context
