"""``lastro reconcile``: the transactions of a period against the ledger's postings
and the acquirer's records (the comparison itself is ``domain/reconcile.py``).

Reads only: the transactions (and refunds) created in ``[since, until)`` from this
service's schema; every posting on the accounts they touched and on this
instance's system accounts from ``since`` until now (a transaction created in the
period may post later), through the account service with the service's own token
(``ledger:read``); the acquirer's records from ``since`` until now. Changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from redis.asyncio import Redis
from sqlalchemy import select

from lastro.core.config import Settings
from lastro.core.db import create_engine
from lastro.transactions.clients import dependencies
from lastro.transactions.domain.model import Refund
from lastro.transactions.domain.reconcile import (
    AcquirerRecord,
    LedgerPosting,
    Leg,
    Mismatch,
    reconcile,
)
from lastro.transactions.store import queries
from lastro.transactions.store.tables import tables

LOOKUPS: Final = 16


@dataclass(frozen=True)
class Report:
    since: datetime
    until: datetime
    transactions: int
    postings: int
    records: int
    mismatches: list[Mismatch]


def _posting(body: dict[str, Any]) -> LedgerPosting:
    return LedgerPosting(
        id=str(body["id"]),
        external_id=str(body["external_id"]),
        metadata=dict(body.get("metadata") or {}),
        reverses=body.get("reverses"),
        legs=tuple(
            Leg(e["account_id"], e["direction"], int(e["amount"]), e["currency"])
            for e in body["entries"]
        ),
    )


def _record(body: dict[str, Any]) -> AcquirerRecord:
    return AcquirerRecord(
        id=str(body.get("id")),
        type=str(body.get("type")),
        reference=body.get("reference"),
        amount=int(body.get("amount") or 0),
        status=body.get("status"),
        authorization=body.get("authorization"),
    )


async def run(settings: Settings, since: datetime, until: datetime) -> Report:
    """Reconcile the period ``[since, until)`` of ``settings.transactions.schema``."""
    t = tables(settings.transactions.schema)
    engine = create_engine(settings, pool_size=2, max_overflow=0, name="lastro-reconcile")
    redis = Redis.from_url(settings.redis_url)
    try:
        async with engine.connect() as conn:
            txns = await queries.in_period(conn, t, since, until)
            refunds: dict[str, list[Refund]] = {}
            for txn in txns:
                refunds[txn.id] = await queries.refunds_of(conn, t, txn.id)
            system = [row.account_id for row in await conn.execute(select(t.system_accounts))]
        async with dependencies(settings, redis) as deps:
            now = datetime.now(UTC).isoformat()
            touched = (a for x in txns for a in (x.source_account_id, x.destination_account_id))
            accounts = {a for a in touched if a is not None} | set(system)
            limit = asyncio.Semaphore(LOOKUPS)

            async def entries(account: str) -> list[dict[str, Any]]:
                async with limit:
                    return await deps.ledger.entries(account, since.isoformat(), now)

            found = await asyncio.gather(*(entries(a) for a in sorted(accounts)))
            posting_ids = sorted({e["posting_id"] for batch in found for e in batch})

            async def posting(posting_id: str) -> dict[str, Any] | None:
                async with limit:
                    return await deps.ledger.posting(posting_id)

            bodies = await asyncio.gather(*(posting(p) for p in posting_ids))
            postings = [_posting(b) for b in bodies if b is not None]
            records = [_record(r) for r in await deps.acquirer.records(since.isoformat(), now)]
        named = {p.metadata["transaction_id"] for p in postings if "transaction_id" in p.metadata}
        named |= {r.reference for r in records if r.reference}
        async with engine.connect() as conn:
            known = {x.id for x in await queries.get_transactions(conn, t, named)}
        known |= {x.id for x in txns}
        mismatches = reconcile(txns, refunds, postings, records, known_ids=known)
        return Report(since, until, len(txns), len(postings), len(records), mismatches)
    finally:
        await redis.aclose()
        await engine.dispose()


def render(report: Report) -> Sequence[str]:
    lines = [
        f"reconciled {report.since.isoformat()} .. {report.until.isoformat()}: "
        f"{report.transactions} transactions, {report.postings} ledger postings, "
        f"{report.records} acquirer records"
    ]
    if not report.mismatches:
        lines.append("no mismatch: transactions, ledger and acquirer agree")
    else:
        lines.append(f"{len(report.mismatches)} mismatches:")
        lines += [f"  {m}" for m in report.mismatches]
    return lines
