"""History and statements: pages of entries and period totals."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from lastro.accounts.domain.ids import AccountId
from lastro.accounts.domain.postings import Direction, Entry


class Movement(Protocol):
    """Anything with a direction and a positive amount (an entry row, an EntryRequest)."""

    @property
    def direction(self) -> Direction: ...

    @property
    def amount(self) -> int: ...


@dataclass(frozen=True)
class StatementTotals:
    """``closing == opening + total_credits - total_debits`` (credit-normal)."""

    opening: int
    total_debits: int
    total_credits: int
    closing: int
    entry_count: int


def summarize_statement(opening: int, entries: Iterable[Movement]) -> StatementTotals:
    """Totals of one account's entries over a period, starting from ``opening``
    (the posted balance just before the period's first entry)."""
    debits = credits = count = 0
    for entry in entries:
        count += 1
        if entry.direction is Direction.CREDIT:
            credits += entry.amount
        else:
            debits += entry.amount
    return StatementTotals(
        opening=opening,
        total_debits=debits,
        total_credits=credits,
        closing=opening + credits - debits,
        entry_count=count,
    )


@dataclass(frozen=True)
class EntryPage:
    """Entries newest first; ``next_cursor`` fetches the older ones (None at the end)."""

    entries: list[Entry]
    next_cursor: str | None


@dataclass(frozen=True)
class Statement:
    """An account's entries in ``[start, end)`` with ``closing = opening + credits - debits``."""

    account_id: AccountId
    currency: str
    start: datetime
    end: datetime
    entries: list[Entry]
    totals: StatementTotals
