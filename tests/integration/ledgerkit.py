"""Helpers for ledger integration tests: a throwaway ledger schema and request builders."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from schemas import unique_schema
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.accounts.domain import AccountId, Direction, EntryRequest, PostingRequest
from lastro.accounts.service import Ledger
from lastro.accounts.store import migrate_accounts
from lastro.core.changes import Caller
from lastro.core.events import EventSigner

AUDIT_KEY = b"ledger-integration-audit-key"
CALLER = Caller("service:ledger-tests", "203.0.113.7")


@dataclass
class MovableClock:
    """Real time plus an offset the test can advance (to pass hold expiries)."""

    offset: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


@asynccontextmanager
async def ledger_schema(
    engine: AsyncEngine, signer: EventSigner, prefix: str, clock: MovableClock | None = None
) -> AsyncIterator[Ledger]:
    """A migrated ledger in a fresh schema, dropped afterwards."""
    schema = unique_schema(prefix)
    await migrate_accounts(engine, schema)
    ledger = Ledger(engine, signer, AUDIT_KEY, schema=schema, clock=clock or MovableClock())
    try:
        yield ledger
    finally:
        await ledger.aclose()
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


def transfer(
    external_id: str,
    source: AccountId,
    target: AccountId,
    amount: int,
    currency: str = "USD",
    **fields: str,
) -> PostingRequest:
    return PostingRequest(
        external_id=external_id,
        entries=(
            EntryRequest(source, Direction.DEBIT, amount, currency),
            EntryRequest(target, Direction.CREDIT, amount, currency),
        ),
        **fields,  # type: ignore[arg-type]
    )
