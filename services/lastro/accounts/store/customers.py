"""Queries of customers (the ``customers`` table), on the caller's transaction.

Rows hold personal data only sealed (``lf1:`` tokens) with the data key wrapped
by the KMS; opening them is the use case's job (:mod:`lastro.accounts.customers`).
Ownership is part of every query that takes ``owner``: another owner's customer
is not found, exactly as an id that does not exist.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update

from lastro.accounts import domain
from lastro.accounts.domain import ERASED
from lastro.accounts.store.tables import EMAIL_INDEX_CONSTRAINT, SEALED_COLUMNS, LedgerTables
from lastro.core.db import Tx, UniqueViolation, from_row, unique_violations


@dataclass(frozen=True)
class SealedCustomer:
    """A customer row as stored: sealed fields and the wrapped data key (None once
    erased)."""

    id: str
    owner: str
    status: str
    data_key: str | None
    sealed: Mapping[str, str | None]
    created_at: datetime
    updated_at: datetime
    erased_at: datetime | None


def _sealed(row: Any) -> SealedCustomer:
    return from_row(SealedCustomer, row, sealed={c: getattr(row, c) for c in SEALED_COLUMNS})


class CustomerQueries:
    """The customers of one schema."""

    def __init__(self, tables: LedgerTables) -> None:
        self.table = tables.customers

    async def load(
        self, conn: Tx, customer_id: str, owner: str | None, *, lock: bool = False
    ) -> SealedCustomer:
        """The customer (FOR UPDATE with ``lock``); UnknownCustomer when it does not
        exist or, with ``owner``, belongs to someone else."""
        c = self.table
        query = select(c).where(c.c.id == customer_id)
        if owner is not None:
            query = query.where(c.c.owner == owner)
        row = (await conn.execute(query.with_for_update() if lock else query)).one_or_none()
        if row is None:
            raise domain.UnknownCustomer(
                f"customer {customer_id} does not exist", field="customer_id"
            )
        return _sealed(row)

    async def email_in_use(
        self, conn: Tx, candidates: Sequence[str], except_id: str | None = None
    ) -> bool:
        """True if a live customer (other than ``except_id``) has one of these
        e-mail blind indexes."""
        c = self.table
        query = select(c.c.id).where(c.c.email_bi.in_(candidates))
        if except_id is not None:
            query = query.where(c.c.id != except_id)
        return (await conn.execute(query.limit(1))).first() is not None

    async def insert(self, conn: Tx, values: Mapping[str, Any]) -> None:
        """Insert a customer row; EmailTaken when the e-mail index is taken."""
        with _email_taken():
            await conn.execute(insert(self.table).values(**values))

    async def update(self, conn: Tx, customer_id: str, values: Mapping[str, Any]) -> None:
        """Change columns of a customer row; EmailTaken when the e-mail index is taken."""
        c = self.table
        with _email_taken():
            await conn.execute(update(c).where(c.c.id == customer_id).values(**values))

    async def erase(self, conn: Tx, customer_id: str, now: datetime) -> None:
        """Wipe the wrapped data key and both blind indexes; the row stays a tombstone."""
        await self.update(
            conn,
            customer_id,
            {
                "status": ERASED,
                "data_key": None,
                "email_bi": None,
                "document_bi": None,
                "erased_at": now,
                "updated_at": now,
            },
        )

    async def ids_by_index(self, conn: Tx, column: str, candidates: Sequence[str]) -> list[str]:
        """Ids of customers whose blind index ``column`` is one of ``candidates``."""
        c = self.table
        rows = await conn.execute(select(c.c.id).where(c.c[column].in_(candidates)))
        return [row.id for row in rows]


@contextmanager
def _email_taken() -> Iterator[None]:
    try:
        with unique_violations():
            yield
    except UniqueViolation as violation:
        if violation.constraint != EMAIL_INDEX_CONSTRAINT:
            raise
        raise domain.EmailTaken(
            "another customer uses this e-mail address", field="email"
        ) from None
