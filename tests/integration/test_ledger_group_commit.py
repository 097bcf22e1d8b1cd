"""Group commit: concurrent postings share one transaction, never one fate."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from ledgerkit import AUDIT_KEY, CALLER, ledger_schema, transfer
from sqlalchemy import Text, cast, func, literal_column, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.accounts import domain as d
from lastro.accounts.domain import Account, AccountId, AccountKind
from lastro.accounts.postings import Recorded
from lastro.accounts.service import Ledger
from lastro.accounts.store import verify_ledger
from lastro.core.audit import verify_schema
from lastro.core.events import EventSigner


@pytest.fixture(scope="module")
async def ledger(engine: AsyncEngine, signer: EventSigner) -> AsyncIterator[Ledger]:
    async with ledger_schema(engine, signer, "ledger_group") as ledger:
        yield ledger


@pytest.fixture
async def settlement(ledger: Ledger) -> Account:
    return await ledger.open_account("USD", AccountKind.SYSTEM, CALLER)


async def customer(ledger: Ledger, settlement: Account, amount: int) -> Account:
    account = await ledger.open_account("USD", AccountKind.CUSTOMER, CALLER)
    if amount:
        await ledger.post_posting(transfer(ext(), settlement.id, account.id, amount), CALLER)
    return account


def ext() -> str:
    return f"ext-{uuid.uuid4().hex}"


async def posted(ledger: Ledger, account: Account) -> int:
    return (await ledger.get_balance(account.id)).posted


async def transaction_ids(engine: AsyncEngine, ledger: Ledger, *posting_ids: str) -> set[str]:
    """The PostgreSQL transaction (xmin) that wrote each posting row."""
    p = ledger.tables.postings
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(cast(literal_column("xmin"), Text)).where(p.c.id.in_(posting_ids))
        )
        return {row[0] for row in rows}


async def test_failing_requests_in_a_batch_leave_the_others_committed(
    engine: AsyncEngine, ledger: Ledger, settlement: Account
) -> None:
    alice = await customer(ledger, settlement, 100)
    bob = await customer(ledger, settlement, 0)
    taken = ext()
    await ledger.post_posting(transfer(taken, alice.id, bob.id, 1), CALLER)
    results = await asyncio.gather(
        ledger.post_posting(transfer(ext(), alice.id, bob.id, 30), CALLER),
        ledger.post_posting(transfer(ext(), alice.id, bob.id, 1_000), CALLER),
        ledger.post_posting(transfer(ext(), alice.id, AccountId("acc_missing"), 5), CALLER),
        ledger.post_posting(transfer(taken, alice.id, bob.id, 2), CALLER),
        ledger.post_posting(transfer(ext(), alice.id, bob.id, 60), CALLER),
        ledger.post_posting(transfer(ext(), alice.id, bob.id, 10), CALLER),
        return_exceptions=True,
    )
    first, too_much, unknown, conflict, second, overdraw = results
    assert isinstance(too_much, d.InsufficientFunds)
    assert isinstance(unknown, d.UnknownAccount)
    assert isinstance(conflict, d.ExternalIdConflict)
    # 100 - 1 - 30 - 60 leaves 9: the last one is judged on what the earlier ones left
    assert isinstance(overdraw, d.InsufficientFunds)
    assert isinstance(first, Recorded) and isinstance(second, Recorded)
    assert not first.replayed and not second.replayed
    assert len(await transaction_ids(engine, ledger, first.item.id, second.item.id)) == 1
    assert await posted(ledger, alice) == 9
    assert await posted(ledger, bob) == 91
    async with engine.connect() as conn:
        report = await verify_ledger(conn, ledger.tables)
    assert report.ok, report
    assert (await verify_schema(engine, ledger.tables.schema, AUDIT_KEY)).ok


async def test_same_external_id_twice_in_a_batch_posts_once(
    ledger: Ledger, settlement: Account
) -> None:
    alice = await customer(ledger, settlement, 0)
    key = ext()
    request = transfer(key, settlement.id, alice.id, 25)
    results = await asyncio.gather(
        ledger.post_posting(request, CALLER),
        ledger.post_posting(request, CALLER),
        ledger.post_posting(transfer(key, settlement.id, alice.id, 26), CALLER),
        return_exceptions=True,
    )
    original, again, different = results
    assert isinstance(original, Recorded) and isinstance(again, Recorded)
    assert (original.replayed, again.replayed) == (False, True)
    assert again.item == original.item
    assert isinstance(different, d.ExternalIdConflict)
    assert await posted(ledger, alice) == 25


async def test_request_the_database_refuses_fails_alone(
    engine: AsyncEngine, ledger: Ledger, settlement: Account
) -> None:
    """A constraint only the database knows (as a future migration might add) makes
    the batch transaction fail; every request is then settled on its own."""
    alice = await customer(ledger, settlement, 0)
    postings = f"{ledger.tables.schema}.postings"
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f"ALTER TABLE {postings} ADD CONSTRAINT refuse_poison"
                " CHECK (description <> 'poison')"
            )
        )
    refused = transfer(ext(), settlement.id, alice.id, 7, description="poison")
    try:
        results = await asyncio.gather(
            ledger.post_posting(transfer(ext(), settlement.id, alice.id, 3), CALLER),
            ledger.post_posting(refused, CALLER),
            ledger.post_posting(transfer(ext(), settlement.id, alice.id, 4), CALLER),
            return_exceptions=True,
        )
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"ALTER TABLE {postings} DROP CONSTRAINT refuse_poison"))
    before, failed, after = results
    assert isinstance(failed, DBAPIError)
    assert isinstance(before, Recorded) and isinstance(after, Recorded)
    assert await posted(ledger, alice) == 7
    async with engine.connect() as conn:
        p = ledger.tables.postings
        count = await conn.scalar(
            select(func.count()).where(p.c.external_id == refused.external_id)
        )
    assert count == 0


async def test_closed_ledger_waits_for_queued_postings_then_refuses(
    engine: AsyncEngine, signer: EventSigner
) -> None:
    async with ledger_schema(engine, signer, "ledger_close") as ledger:
        settlement = await ledger.open_account("USD", AccountKind.SYSTEM, CALLER)
        alice = await ledger.open_account("USD", AccountKind.CUSTOMER, CALLER)
        queued = [
            asyncio.ensure_future(
                ledger.post_posting(transfer(ext(), settlement.id, alice.id, 1), CALLER)
            )
            for _ in range(5)
        ]
        await asyncio.sleep(0)
        await ledger.aclose()
        assert all(task.done() and not task.exception() for task in queued)
        assert (await ledger.get_balance(alice.id)).posted == 5
        with pytest.raises(RuntimeError, match="closed"):
            await ledger.post_posting(transfer(ext(), settlement.id, alice.id, 1), CALLER)
