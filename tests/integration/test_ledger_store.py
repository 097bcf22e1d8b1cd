"""The ledger's tables and use cases against the dev stack's PostgreSQL."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from ledgerkit import AUDIT_KEY, CALLER, MovableClock, ledger_schema, transfer
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.accounts import domain as d
from lastro.accounts.domain import Account, AccountKind, Direction, HoldRequest, HoldStatus
from lastro.accounts.service import Ledger
from lastro.accounts.store import verify_ledger
from lastro.core.audit import verify_schema
from lastro.core.db import constraint_name, sqlstate
from lastro.core.events import EventSigner

CLOCK = MovableClock()


@pytest.fixture(scope="module")
async def ledger(engine: AsyncEngine, signer: EventSigner) -> AsyncIterator[Ledger]:
    async with ledger_schema(engine, signer, "ledger_store", CLOCK) as ledger:
        yield ledger


@pytest.fixture
async def settlement(ledger: Ledger) -> Account:
    return await ledger.open_account("USD", AccountKind.SYSTEM, CALLER)


async def funded(ledger: Ledger, settlement: Account, amount: int, **kw: int) -> Account:
    account = await ledger.open_account("USD", AccountKind.CUSTOMER, CALLER, **kw)
    if amount:
        await ledger.post_posting(transfer(ext(), settlement.id, account.id, amount), CALLER)
    return account


def ext() -> str:
    return f"ext-{uuid.uuid4().hex}"


async def balance(ledger: Ledger, account: Account) -> tuple[int, int]:
    b = await ledger.get_balance(account.id)
    return b.posted, b.pending


async def raw_sql_error(engine: AsyncEngine, ledger: Ledger, *statements: str) -> str | None:
    """Run ``statements`` in one committed transaction; the SQLSTATE it failed with."""
    schema = ledger.tables.schema
    try:
        async with engine.begin() as conn:
            for statement in statements:
                await conn.execute(text(statement.replace("{s}", schema)))
    except DBAPIError as error:
        return sqlstate(error)
    return None


# ---------------------------------------------------------------- database invariants


async def test_unbalanced_posting_written_with_raw_sql_is_rejected_at_commit(
    engine: AsyncEngine, ledger: Ledger, settlement: Account
) -> None:
    alice = await funded(ledger, settlement, 0)
    code = await raw_sql_error(
        engine,
        ledger,
        "INSERT INTO {s}.postings (id, external_id, fingerprint, created_at)"
        " VALUES ('pst_raw1', 'raw-1', 'x', now())",
        "INSERT INTO {s}.entries (posting_id, account_id, direction, amount, currency, created_at)"
        f" VALUES ('pst_raw1', '{settlement.id}', 'debit', 100, 'USD', now()),"
        f" ('pst_raw1', '{alice.id}', 'credit', 99, 'USD', now())",
        f"UPDATE {{s}}.accounts SET posted = posted + 99 WHERE id = '{alice.id}'",
        f"UPDATE {{s}}.accounts SET posted = posted - 100 WHERE id = '{settlement.id}'",
    )
    assert code == "23514"
    assert await balance(ledger, alice) == (0, 0)


async def test_posting_balanced_overall_but_not_per_currency_is_rejected_at_commit(
    engine: AsyncEngine, ledger: Ledger, settlement: Account
) -> None:
    """100 USD out, 100 EUR in: the sum over the posting is zero, each currency's is
    not. The trigger sums per currency, so this never commits."""
    alice_eur = await ledger.open_account("EUR", AccountKind.CUSTOMER, CALLER)
    schema = ledger.tables.schema
    async with engine.connect() as conn:
        with pytest.raises(DBAPIError) as refused:
            await conn.execute(
                text(
                    f'INSERT INTO "{schema}".postings (id, external_id, fingerprint, created_at)'
                    " VALUES ('pst_fx1', 'raw-fx-1', 'x', now())"
                )
            )
            await conn.execute(
                text(
                    f'INSERT INTO "{schema}".entries'
                    " (posting_id, account_id, direction, amount, currency, created_at)"
                    f" VALUES ('pst_fx1', '{settlement.id}', 'debit', 100, 'USD', now()),"
                    f" ('pst_fx1', '{alice_eur.id}', 'credit', 100, 'EUR', now())"
                )
            )
            await conn.commit()
    assert sqlstate(refused.value) == "23514"
    assert constraint_name(refused.value) == "entries_zero_sum"
    assert re.search(r"does not sum to zero in (USD|EUR)", str(refused.value))
    async with engine.connect() as conn:
        stored = await conn.scalar(
            text(f"SELECT count(*) FROM \"{schema}\".postings WHERE id = 'pst_fx1'")
        )
    assert stored == 0


async def test_balanced_posting_written_with_raw_sql_commits(
    engine: AsyncEngine, ledger: Ledger, settlement: Account
) -> None:
    alice = await funded(ledger, settlement, 0)
    code = await raw_sql_error(
        engine,
        ledger,
        "INSERT INTO {s}.postings (id, external_id, fingerprint, created_at)"
        " VALUES ('pst_raw2', 'raw-2', 'x', now())",
        "INSERT INTO {s}.entries (posting_id, account_id, direction, amount, currency, created_at)"
        f" VALUES ('pst_raw2', '{settlement.id}', 'debit', 5, 'USD', now()),"
        f" ('pst_raw2', '{alice.id}', 'credit', 5, 'USD', now())",
        f"UPDATE {{s}}.accounts SET posted = posted + 5 WHERE id = '{alice.id}'",
        f"UPDATE {{s}}.accounts SET posted = posted - 5 WHERE id = '{settlement.id}'",
    )
    assert code is None
    assert await balance(ledger, alice) == (5, 0)


@pytest.mark.parametrize(
    ("direction", "amount", "expected"),
    [("debit", 0, "23514"), ("credit", -5, "23514"), ("refund", 5, "23514")],
)
async def test_check_constraints_reject_bad_entries(
    engine: AsyncEngine,
    ledger: Ledger,
    settlement: Account,
    direction: str,
    amount: int,
    expected: str,
) -> None:
    pid = f"pst_bad_{uuid.uuid4().hex[:8]}"
    code = await raw_sql_error(
        engine,
        ledger,
        "INSERT INTO {s}.postings (id, external_id, fingerprint, created_at)"
        f" VALUES ('{pid}', '{pid}', 'x', now())",
        "INSERT INTO {s}.entries (posting_id, account_id, direction, amount, currency, created_at)"
        f" VALUES ('{pid}', '{settlement.id}', '{direction}', {amount}, 'USD', now())",
    )
    assert code == expected


async def test_entry_in_another_currency_than_its_account_is_rejected(
    engine: AsyncEngine, ledger: Ledger, settlement: Account
) -> None:
    code = await raw_sql_error(
        engine,
        ledger,
        "INSERT INTO {s}.postings (id, external_id, fingerprint, created_at)"
        " VALUES ('pst_eur', 'raw-eur', 'x', now())",
        "INSERT INTO {s}.entries (posting_id, account_id, direction, amount, currency, created_at)"
        f" VALUES ('pst_eur', '{settlement.id}', 'debit', 5, 'EUR', now())",
    )
    assert code == "23503"


async def test_overdraw_written_with_raw_sql_is_rejected(
    engine: AsyncEngine, ledger: Ledger, settlement: Account
) -> None:
    alice = await funded(ledger, settlement, 100, overdraft_limit=50)
    over = f"UPDATE {{s}}.accounts SET posted = -51 WHERE id = '{alice.id}'"
    assert await raw_sql_error(engine, ledger, over) == "23514"
    held = f"UPDATE {{s}}.accounts SET pending = 151 WHERE id = '{alice.id}'"
    assert await raw_sql_error(engine, ledger, held) == "23514"
    negative_hold = f"UPDATE {{s}}.accounts SET pending = -1 WHERE id = '{alice.id}'"
    assert await raw_sql_error(engine, ledger, negative_hold) == "23514"
    assert await balance(ledger, alice) == (100, 0)


async def test_entries_cannot_be_edited_or_deleted(
    engine: AsyncEngine, ledger: Ledger, settlement: Account
) -> None:
    await funded(ledger, settlement, 10)
    assert await raw_sql_error(engine, ledger, "UPDATE {s}.entries SET amount = 1") == "23001"
    assert await raw_sql_error(engine, ledger, "DELETE FROM {s}.entries") == "23001"


# ---------------------------------------------------------------- postings


async def test_same_external_id_replays_and_different_content_conflicts(
    ledger: Ledger, settlement: Account
) -> None:
    alice = await funded(ledger, settlement, 0)
    key = ext()
    first = await ledger.post_posting(transfer(key, settlement.id, alice.id, 70), CALLER)
    again = await ledger.post_posting(transfer(key, settlement.id, alice.id, 70), CALLER)
    assert (first.replayed, again.replayed) == (False, True)
    assert again.item == first.item
    with pytest.raises(d.ExternalIdConflict):
        await ledger.post_posting(transfer(key, settlement.id, alice.id, 71), CALLER)
    assert await balance(ledger, alice) == (70, 0)


async def test_insufficient_funds_writes_nothing(
    engine: AsyncEngine, ledger: Ledger, settlement: Account
) -> None:
    alice = await funded(ledger, settlement, 100, overdraft_limit=20)
    bob = await funded(ledger, settlement, 0)
    key = ext()
    with pytest.raises(d.InsufficientFunds):
        await ledger.post_posting(transfer(key, alice.id, bob.id, 121), CALLER)
    async with engine.connect() as conn:
        p = ledger.tables.postings
        assert await conn.scalar(select(func.count()).where(p.c.external_id == key)) == 0
    done = await ledger.post_posting(transfer(key, alice.id, bob.id, 120), CALLER)
    assert not done.replayed
    assert await balance(ledger, alice) == (-20, 0)


async def test_frozen_account_rejects_debits_but_accepts_credits(
    ledger: Ledger, settlement: Account
) -> None:
    alice = await funded(ledger, settlement, 100)
    await ledger.freeze(alice.id, CALLER)
    with pytest.raises(d.AccountFrozen):
        await ledger.post_posting(transfer(ext(), alice.id, settlement.id, 1), CALLER)
    await ledger.post_posting(transfer(ext(), settlement.id, alice.id, 5), CALLER)
    await ledger.unfreeze(alice.id, CALLER)
    await ledger.post_posting(transfer(ext(), alice.id, settlement.id, 105), CALLER)
    assert await balance(ledger, alice) == (0, 0)


async def test_account_closes_only_at_zero_and_then_rejects_everything(
    ledger: Ledger, settlement: Account
) -> None:
    alice = await funded(ledger, settlement, 10)
    with pytest.raises(d.AccountNotEmpty):
        await ledger.close(alice.id, CALLER)
    await ledger.post_posting(transfer(ext(), alice.id, settlement.id, 10), CALLER)
    closed = await ledger.close(alice.id, CALLER)
    assert closed.state.status is d.AccountStatus.CLOSED
    with pytest.raises(d.AccountClosed):
        await ledger.post_posting(transfer(ext(), settlement.id, alice.id, 1), CALLER)


async def test_reversal_restores_balances_once(ledger: Ledger, settlement: Account) -> None:
    alice = await funded(ledger, settlement, 0)
    original = await ledger.post_posting(transfer(ext(), settlement.id, alice.id, 40), CALLER)
    reversal = await ledger.reverse_posting(original.item.id, CALLER)
    assert reversal.item.reverses == original.item.id
    assert (await ledger.reverse_posting(original.item.id, CALLER)).replayed
    assert await balance(ledger, alice) == (0, 0)


async def test_posting_writes_signed_outbox_event_and_chained_audit_record(
    engine: AsyncEngine, ledger: Ledger, settlement: Account, signer: EventSigner
) -> None:
    alice = await funded(ledger, settlement, 0)
    posted = (await ledger.post_posting(transfer(ext(), settlement.id, alice.id, 9), CALLER)).item
    o, a = ledger.tables.outbox, ledger.tables.audit.log
    async with engine.connect() as conn:
        envelope = (
            await conn.execute(
                select(o.c.envelope).where(o.c.envelope["subject"].astext == posted.id)
            )
        ).scalar_one()
        audit_row = (await conn.execute(select(a).where(a.c.target == posted.id))).one()
    event = signer.verify(envelope)
    assert event.type == "lastro.ledger.posting_created"
    assert event.data["external_id"] == posted.external_id
    assert [e["amount"] for e in event.data["entries"]] == [9, 9]
    assert (audit_row.actor, audit_row.source_ip) == (CALLER.actor, CALLER.source_ip)
    assert audit_row.action == "posting.created"
    result = await verify_schema(engine, ledger.tables.schema, AUDIT_KEY)
    assert result.ok, result.reason


# ---------------------------------------------------------------- holds


def hold_request(
    account: Account, counterparty: Account, amount: int, minutes: int = 5
) -> HoldRequest:
    return HoldRequest(
        external_id=ext(),
        account_id=account.id,
        counterparty_id=counterparty.id,
        amount=amount,
        currency="USD",
        expires_at=CLOCK() + timedelta(minutes=minutes),
    )


async def test_hold_reserves_then_posts_partially_once(ledger: Ledger, settlement: Account) -> None:
    alice = await funded(ledger, settlement, 100)
    merchant = await funded(ledger, settlement, 0)
    hold = (await ledger.place_hold(hold_request(alice, merchant, 80), CALLER)).item
    assert await balance(ledger, alice) == (100, 80)
    with pytest.raises(d.InsufficientFunds):
        await ledger.place_hold(hold_request(alice, merchant, 21), CALLER)
    posted = await ledger.post_hold(hold.id, CALLER, amount=60)
    assert (posted.status, posted.posted_amount) == (HoldStatus.POSTED, 60)
    assert await balance(ledger, alice) == (40, 0)
    assert await balance(ledger, merchant) == (60, 0)
    with pytest.raises(d.HoldAlreadyPosted):
        await ledger.post_hold(hold.id, CALLER)
    with pytest.raises(d.HoldAlreadyPosted):
        await ledger.void_hold(hold.id, CALLER)


async def test_voided_hold_cannot_be_posted(ledger: Ledger, settlement: Account) -> None:
    alice = await funded(ledger, settlement, 100)
    hold = (await ledger.place_hold(hold_request(alice, settlement, 30), CALLER)).item
    await ledger.void_hold(hold.id, CALLER)
    assert await balance(ledger, alice) == (100, 0)
    with pytest.raises(d.HoldAlreadyVoided):
        await ledger.post_hold(hold.id, CALLER)


async def test_sweeper_releases_expired_holds_which_then_cannot_be_posted(
    ledger: Ledger, settlement: Account
) -> None:
    alice = await funded(ledger, settlement, 100)
    short = (await ledger.place_hold(hold_request(alice, settlement, 30, minutes=1), CALLER)).item
    long = (await ledger.place_hold(hold_request(alice, settlement, 20, minutes=60), CALLER)).item
    CLOCK.advance(timedelta(minutes=2))
    with pytest.raises(d.HoldExpired):
        await ledger.post_hold(short.id, CALLER)
    expired = await ledger.expire_due_holds()
    assert short.id in {h.id for h in expired}
    assert long.id not in {h.id for h in expired}
    assert await balance(ledger, alice) == (100, 20)
    assert (await ledger.get_hold(short.id)).status is HoldStatus.EXPIRED
    with pytest.raises(d.HoldExpired):
        await ledger.post_hold(short.id, CALLER)
    assert await ledger.expire_due_holds() == []


async def test_same_hold_external_id_replays(ledger: Ledger, settlement: Account) -> None:
    alice = await funded(ledger, settlement, 100)
    request = hold_request(alice, settlement, 10)
    first = await ledger.place_hold(request, CALLER)
    again = await ledger.place_hold(request, CALLER)
    assert again.replayed and again.item.id == first.item.id
    assert await balance(ledger, alice) == (100, 10)


# ---------------------------------------------------------------- history


async def test_history_pages_cover_every_entry_once_newest_first(
    ledger: Ledger, settlement: Account
) -> None:
    alice = await funded(ledger, settlement, 0)
    for amount in range(1, 8):
        await ledger.post_posting(transfer(ext(), settlement.id, alice.id, amount), CALLER)
    await ledger.post_posting(transfer(ext(), alice.id, settlement.id, 3), CALLER)
    seen, cursor = [], None
    while True:
        page = await ledger.history(alice.id, limit=3, cursor=cursor)
        seen.extend(page.entries)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert [e.amount for e in seen] == [3, 7, 6, 5, 4, 3, 2, 1]
    assert [e.id for e in seen] == sorted((e.id for e in seen), reverse=True)
    debits = await ledger.history(alice.id, direction=Direction.DEBIT)
    assert [e.amount for e in debits.entries] == [3]
    assert (await ledger.history(alice.id, since=CLOCK() + timedelta(hours=1))).entries == []
    with pytest.raises(d.InvalidRequest):
        await ledger.history(alice.id, cursor="not-a-cursor")


async def test_statement_opening_plus_movements_equals_closing(
    ledger: Ledger, settlement: Account
) -> None:
    alice = await funded(ledger, settlement, 500)
    start = CLOCK()
    await ledger.post_posting(transfer(ext(), settlement.id, alice.id, 25), CALLER)
    await ledger.post_posting(transfer(ext(), alice.id, settlement.id, 100), CALLER)
    end = CLOCK()
    await ledger.post_posting(transfer(ext(), settlement.id, alice.id, 1), CALLER)
    statement = await ledger.statement(alice.id, start, end)
    totals = statement.totals
    assert (totals.opening, totals.total_credits, totals.total_debits) == (500, 25, 100)
    assert totals.closing == 425 and totals.entry_count == 2
    with pytest.raises(d.InvalidRequest):
        await ledger.statement(alice.id, end, start)


async def test_verification_passes_over_the_whole_ledger(
    engine: AsyncEngine, ledger: Ledger
) -> None:
    async with engine.connect() as conn:
        report = await verify_ledger(conn, ledger.tables)
    assert report.ok, report
    assert report.postings > 10
