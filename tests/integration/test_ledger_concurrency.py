"""10,000 random transfers from 50 concurrent clients against real PostgreSQL,
through two ``Ledger`` instances over the same schema, each with its own engine
and group committer: two replicas of the account service racing on the same
accounts.

A share of the transfers is sent twice with the same external_id (half of those
concurrently, through the other replica), some would overdraw. Afterwards the
ledger must be exactly as consistent as if the transfers had run one by one.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from dataclasses import dataclass

import pytest
from ledgerkit import AUDIT_KEY, CALLER, ledger_schema, transfer
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.accounts import domain as d
from lastro.accounts.domain import AccountKind, PostingRequest
from lastro.accounts.service import Ledger
from lastro.accounts.store import verify_ledger
from lastro.core.config import Settings
from lastro.core.db import create_engine
from lastro.core.events import EventSigner

TRANSFERS = 10_000
CLIENTS = 50
RETRIED_SHARE = 0.10
OPENING = 2_000


@dataclass(frozen=True)
class Job:
    request: PostingRequest
    retried: bool


async def open_accounts(ledger: Ledger) -> dict[str, list[d.AccountState]]:
    """Per currency: the settlement account first, then funded customer accounts,
    every third one with an overdraft limit."""
    by_currency: dict[str, list[d.AccountState]] = {}
    for currency, customers in (("USD", 16), ("EUR", 8)):
        settlement = await ledger.open_account(currency, AccountKind.SYSTEM, CALLER)
        accounts = [settlement.state]
        for i in range(customers):
            limit = 500 if i % 3 == 0 else 0
            account = await ledger.open_account(
                currency, AccountKind.CUSTOMER, CALLER, overdraft_limit=limit
            )
            await ledger.post_posting(
                transfer(f"open-{account.id}", settlement.id, account.id, OPENING, currency),
                CALLER,
            )
            accounts.append(account.state)
        by_currency[currency] = accounts
    return by_currency


def plan(accounts: dict[str, list[d.AccountState]], rng: random.Random) -> list[Job]:
    """Random transfers between customers (sometimes to or from settlement); the
    amounts are large enough that a fair share would overdraw."""
    jobs: list[Job] = []
    for n in range(TRANSFERS):
        currency = rng.choice(["USD", "USD", "EUR"])
        pool = accounts[currency]
        source, target = rng.sample(pool if rng.random() < 0.1 else pool[1:], 2)
        request = transfer(f"t-{n}", source.id, target.id, rng.randint(1, 1_200), currency)
        jobs.append(Job(request, retried=rng.random() < RETRIED_SHARE))
    return jobs


@pytest.mark.slow
async def test_concurrent_transfers_on_two_replicas_never_overdraw_or_double_post(
    settings: Settings, engine: AsyncEngine, signer: EventSigner
) -> None:
    rng = random.Random(20240501)
    other_engine = create_engine(settings, pool_size=10, max_overflow=10, name="ledger-replica-b")
    async with ledger_schema(engine, signer, "ledger_conc") as ledger:
        replica = Ledger(other_engine, signer, AUDIT_KEY, schema=ledger.tables.schema)
        replicas = (ledger, replica)
        try:
            await _race(rng, engine, ledger, replicas)
        finally:
            await replica.aclose()
            await other_engine.dispose()


async def _race(
    rng: random.Random, engine: AsyncEngine, ledger: Ledger, replicas: tuple[Ledger, Ledger]
) -> None:
    """Race the plan through both replicas, then check the ledger is exact."""
    accounts = await open_accounts(ledger)
    jobs = plan(accounts, rng)
    queue: asyncio.Queue[tuple[Job, bool]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait((job, False))
        if job.retried and rng.random() < 0.5:
            queue.put_nowait((job, True))  # the duplicate races the original
    outcomes: Counter[str] = Counter()
    unexpected: list[BaseException] = []
    posted_ids: defaultdict[str, set[str]] = defaultdict(set)
    served: Counter[int] = Counter()

    async def send(job: Job, replica: int) -> None:
        served[replica] += 1
        try:
            result = await replicas[replica].post_posting(job.request, CALLER)
        except d.InsufficientFunds:
            outcomes["insufficient-funds"] += 1
            return
        except Exception as error:  # every other failure fails the test below
            unexpected.append(error)
            return
        outcomes["replayed" if result.replayed else "ok"] += 1
        posted_ids[job.request.external_id].add(result.item.id)

    async def client(n: int) -> None:
        while not queue.empty():
            job, is_duplicate = queue.get_nowait()
            # The duplicate of a job goes to the other replica than its original.
            replica = (n + is_duplicate) % 2
            await send(job, replica)
            if job.retried and not is_duplicate and rng.random() < 0.5:
                await send(job, 1 - replica)  # the client retries on the other replica

    await asyncio.wait_for(asyncio.gather(*(client(n) for n in range(CLIENTS))), 240)
    assert min(served.values()) > TRANSFERS // 3, served

    assert unexpected == [], unexpected[:5]
    calls = sum(outcomes.values())
    assert calls > TRANSFERS
    assert outcomes["ok"] > TRANSFERS // 2, outcomes
    assert outcomes["insufficient-funds"] > 50, outcomes
    assert outcomes["replayed"] > 100, outcomes

    async with engine.connect() as conn:
        report = await verify_ledger(conn, ledger.tables)
        p, a = ledger.tables.postings, ledger.tables.accounts
        stored = dict(
            (
                await conn.execute(
                    select(p.c.external_id, p.c.id).where(p.c.external_id.like("t-%"))
                )
            ).all()
        )
        rows = (await conn.execute(select(a))).all()
        duplicated = await conn.scalar(
            select(func.count()).select_from(
                select(p.c.external_id)
                .group_by(p.c.external_id)
                .having(func.count() > 1)
                .subquery()
            )
        )
    assert report.ok, report
    assert set(report.currency_totals) == {"USD", "EUR"}
    assert all(total == 0 for total in report.currency_totals.values())
    assert duplicated == 0
    assert len(stored) == outcomes["ok"]
    for external_id, ids in posted_ids.items():
        assert ids == {stored[external_id]}, external_id
    for row in rows:
        if row.kind == AccountKind.CUSTOMER.value:
            assert row.posted - row.pending >= -row.overdraft_limit, row
