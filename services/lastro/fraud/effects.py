"""Side effects an alert asks of other services, delivered at least once, audited.

An effect is recorded as ``pending`` on the alert in the same transaction that
decides it (the analyser's freeze request with the alert itself; the review
outcome with the resolution), so it is never lost. :meth:`Effects.run_due` then
claims due effects with a lease (``FOR UPDATE SKIP LOCKED``, so replicas share the
work and a worker that dies mid-call leaves it to the next one), calls the other
service outside any transaction, and records the outcome with its audit record:

- ``done``: the effect holds (the account is frozen; the outcome was accepted);
- ``failed``: the callee refused for good (unknown account, closed account, a
  transaction no longer in review), or it stayed unavailable for
  :data:`MAX_ATTEMPTS` tries;
- still ``pending`` with the next attempt after a full-jitter backoff otherwise.

The calls are idempotent at the callee, so a repeat after a crash is harmless.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core import audit
from lastro.core.background import report_failure, wait_for_wake
from lastro.core.backoff import full_jitter
from lastro.core.changes import Caller, ChangeRecorder
from lastro.core.db import Tx, in_transaction
from lastro.fraud.clients import Answer, Unavailable
from lastro.fraud.domain.alerts import AlertCase, Effect
from lastro.fraud.metrics import EFFECTS
from lastro.fraud.store import queries

log = logging.getLogger(__name__)

MAX_ATTEMPTS: Final = 12
LEASE: Final = timedelta(seconds=60)
BATCH: Final = 20


@dataclass(frozen=True)
class EffectKind:
    """One kind of side effect: its alert columns, the call, and how it is audited."""

    column: str
    """``freeze`` or ``review`` (the alert's ``<column>_state`` and friends)."""
    name: str
    """Its label in metrics and logs."""
    action: str
    """The audit action, ``<resource>.<past participle>``."""
    call: Callable[[AlertCase], Awaitable[Answer]]
    target: Callable[[AlertCase], str]


class Effects:
    """Delivers one kind of pending effect (see the module docstring)."""

    def __init__(
        self,
        engine: AsyncEngine,
        recorder: ChangeRecorder,
        kind: EffectKind,
        actor: str,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._recorder = recorder
        self._kind = kind
        self._caller = Caller(actor)
        self._clock = clock
        self.wake = asyncio.Event()

    async def run_due(self) -> int:
        """Attempt every due effect once; how many were attempted."""
        now = self._clock()

        async def claim(tx: Tx) -> list[queries.DueEffect]:
            return await queries.claim_due_effects(tx, self._kind.column, now, now + LEASE, BATCH)

        due = await in_transaction(self._engine, claim)
        for item in due:
            await self._attempt(item)
        return len(due)

    async def _attempt(self, item: queries.DueEffect) -> None:
        case, attempts = item.case, item.attempts + 1
        kind = self._kind
        next_at: datetime | None = None
        try:
            answer = await kind.call(case)
        except Unavailable as exc:
            detail = str(exc)[:500]
            if attempts >= MAX_ATTEMPTS:
                state, outcome = Effect.FAILED, audit.FAILURE
            else:
                state, outcome = Effect.PENDING, audit.FAILURE
                delay = full_jitter(attempts, base=1.0, cap=300.0)
                next_at = self._clock() + timedelta(seconds=max(delay, 0.5))
        else:
            detail = f"{answer.status} {answer.detail}".strip()[:500]
            state = Effect.DONE if answer.done else Effect.FAILED
            outcome = audit.SUCCESS if answer.done else audit.DENIED
        EFFECTS.labels(kind.name, state.value).inc()
        if state is not Effect.DONE:
            log.warning(
                "%s for alert %s: %s (%s, attempt %d)", kind.name, case.id, state, detail, attempts
            )

        async def record(tx: Tx) -> None:
            await queries.record_effect(tx, kind.column, case.id, state, detail, attempts, next_at)
            await self._recorder.audit(
                tx,
                self._caller,
                action=kind.action,
                target=kind.target(case),
                details={
                    "alert_id": case.id,
                    "transaction_id": case.alert.transaction_id,
                    "state": state.value,
                    "attempt": attempts,
                    "answer": detail,
                },
                outcome=outcome,
            )

        await in_transaction(self._engine, record)

    async def run(self, stop: asyncio.Event, interval: float = 1.0) -> None:
        """Deliver until ``stop``: every ``interval`` seconds, or at once when woken."""
        while not stop.is_set():
            self.wake.clear()
            try:
                await self.run_due()
            except Exception as error:
                report_failure(f"{self._kind.name} delivery round", error, "the next one retries")
            await wait_for_wake(stop, self.wake, interval)
