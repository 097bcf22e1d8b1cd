"""Proof of the ledger's invariants over every row (``lastro accounts verify``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lastro.accounts.store.tables import LedgerTables, ledger_tables, sql
from lastro.core.db import Tx


@dataclass(frozen=True)
class BalanceMismatch:
    account_id: str
    stored: int
    recomputed: int


@dataclass(frozen=True)
class LedgerReport:
    """What :func:`verify_ledger` found; ``ok`` when every list is empty."""

    accounts: int
    postings: int
    entries: int
    unbalanced_postings: list[tuple[str, str, int]]
    """(posting id, currency, credits - debits) for every posting that does not net to 0."""
    currency_totals: dict[str, int]
    """Sum of posted balances per currency; every value must be 0."""
    posted_mismatches: list[BalanceMismatch]
    pending_mismatches: list[BalanceMismatch]

    @property
    def ok(self) -> bool:
        return (
            not self.unbalanced_postings
            and not any(self.currency_totals.values())
            and not self.posted_mismatches
            and not self.pending_mismatches
        )


async def verify_ledger(conn: Tx, tables: LedgerTables | None = None) -> LedgerReport:
    """Prove the ledger's invariants over every row, from the caller's snapshot.

    Checks that every posting sums to zero per currency, each currency's posted
    balances sum to zero across accounts, every stored ``posted`` equals the sum
    of the account's entries and every stored ``pending`` the total of its pending
    holds. Run it in a REPEATABLE READ transaction (``lastro accounts verify``
    does) so concurrent postings cannot look like a mismatch.
    """
    t = tables or ledger_tables()

    async def rows(template: str) -> list[Any]:
        return list((await conn.execute(sql(t.schema, template))).all())

    counts = (
        await rows(
            "SELECT (SELECT count(*) FROM {s}.accounts) AS accounts,"
            " (SELECT count(*) FROM {s}.postings) AS postings,"
            " (SELECT count(*) FROM {s}.entries) AS entries"
        )
    )[0]
    unbalanced = await rows(
        "SELECT e.posting_id, e.currency,"
        " sum(CASE e.direction WHEN 'credit' THEN e.amount ELSE -e.amount END) AS total"
        " FROM {s}.entries e GROUP BY e.posting_id, e.currency"
        " HAVING sum(CASE e.direction WHEN 'credit' THEN e.amount ELSE -e.amount END) <> 0"
        " ORDER BY e.posting_id, e.currency"
    )
    totals = await rows("SELECT currency, sum(posted) AS total FROM {s}.accounts GROUP BY currency")
    posted = await rows(
        "SELECT a.id, a.posted AS stored, coalesce(x.total, 0) AS recomputed"
        " FROM {s}.accounts a LEFT JOIN (SELECT e.account_id,"
        " sum(CASE e.direction WHEN 'credit' THEN e.amount ELSE -e.amount END) AS total"
        " FROM {s}.entries e GROUP BY e.account_id) x ON x.account_id = a.id"
        " WHERE a.posted <> coalesce(x.total, 0) ORDER BY a.id"
    )
    pending = await rows(
        "SELECT a.id, a.pending AS stored, coalesce(x.total, 0) AS recomputed"
        " FROM {s}.accounts a LEFT JOIN (SELECT account_id, sum(amount) AS total"
        " FROM {s}.holds WHERE status = 'pending' GROUP BY account_id) x"
        " ON x.account_id = a.id WHERE a.pending <> coalesce(x.total, 0) ORDER BY a.id"
    )
    return LedgerReport(
        accounts=counts.accounts,
        postings=counts.postings,
        entries=counts.entries,
        unbalanced_postings=[(r.posting_id, r.currency, int(r.total)) for r in unbalanced],
        currency_totals={r.currency: int(r.total) for r in totals},
        posted_mismatches=[BalanceMismatch(r.id, r.stored, int(r.recomputed)) for r in posted],
        pending_mismatches=[BalanceMismatch(r.id, r.stored, int(r.recomputed)) for r in pending],
    )
