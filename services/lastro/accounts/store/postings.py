"""The posting hot path: one locking read and one write per batch of postings.

Queries a use case needs in one round trip live here as prepared text statements
(one lock statement, one writable-CTE write per batch); every use case locks
accounts in id order, so concurrent ones wait for each other instead of
deadlocking.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import select

from lastro.accounts.domain import (
    AccountId,
    AccountState,
    BalanceDelta,
    EntryRequest,
    Posting,
    PostingId,
)
from lastro.accounts.store.tables import LedgerTables, sql
from lastro.core.db import Tx, from_row, unique_violations

_APPLY_DELTAS: Final = (
    " UPDATE {s}.accounts a SET posted = a.posted + d.posted,"
    " pending = a.pending + d.pending, updated_at = CAST(:now AS timestamptz)"
    " FROM unnest(CAST(:d_accounts AS text[]), CAST(:d_posted AS bigint[]),"
    " CAST(:d_pending AS bigint[])) AS d(id, posted, pending) WHERE a.id = d.id"
)


_LOCK_ACCOUNTS: Final = (
    " FROM {s}.accounts a WHERE a.id = ANY(CAST(:ids AS text[])) ORDER BY a.id FOR UPDATE OF a"
)
"""Every use case locks accounts in this one order, so concurrent ones wait for each
other instead of deadlocking."""
_ACCOUNT_STATE: Final = "a.id, a.currency, a.kind, a.status, a.overdraft_limit, a.posted, a.pending"


def account_state(row: Any) -> AccountState:
    """The domain state of an account row (or of a row holding its columns)."""
    return from_row(AccountState, row)


class PostingQueries:
    """The hot-path statements of one schema, built once and prepared per connection.

    A batch of postings (one, or many group-committed) costs one locking read
    (:meth:`lock_for_batch`) and one write (:meth:`write_postings`): the posting
    rows, their entries and every balance change go in a single writable-CTE
    statement.
    """

    def __init__(self, tables: LedgerTables) -> None:
        self.tables = tables
        schema = tables.schema
        self._lock_accounts = sql(schema, "SELECT ", _ACCOUNT_STATE, _LOCK_ACCOUNTS)
        self._apply_deltas = sql(schema, _APPLY_DELTAS)
        self._lock_for_batch = sql(
            schema,
            "WITH existing AS MATERIALIZED (SELECT p.external_id, p.id FROM {s}.postings p"
            " WHERE p.external_id = ANY(CAST(:external_ids AS text[])))"
            " SELECT ",
            _ACCOUNT_STATE,
            ", (SELECT array_agg(x.external_id ORDER BY x.id) FROM existing x)"
            " AS existing_external,"
            " (SELECT array_agg(x.id ORDER BY x.id) FROM existing x) AS existing_ids",
            _LOCK_ACCOUNTS,
        )
        self._postings_by_external = sql(
            schema,
            "SELECT p.external_id, p.id FROM {s}.postings p"
            " WHERE p.external_id = ANY(CAST(:external_ids AS text[]))",
        )
        self._write_postings = sql(
            schema,
            "WITH posting AS (INSERT INTO {s}.postings"
            " (id, external_id, fingerprint, description, metadata, reverses, created_at)"
            " SELECT p.id, p.external_id, p.fingerprint, p.description,"
            " CAST(p.metadata AS jsonb), p.reverses, p.created_at"
            " FROM unnest(CAST(:p_ids AS text[]), CAST(:p_external_ids AS text[]),"
            " CAST(:p_fingerprints AS text[]), CAST(:p_descriptions AS text[]),"
            " CAST(:p_metadata AS text[]), CAST(:p_reverses AS text[]),"
            " CAST(:p_created AS timestamptz[])) WITH ORDINALITY"
            " AS p(id, external_id, fingerprint, description, metadata, reverses, created_at, n)"
            " ORDER BY p.n),"
            " entry AS (INSERT INTO {s}.entries"
            " (posting_id, account_id, direction, amount, currency, created_at)"
            " SELECT e.posting_id, e.account_id, e.direction, e.amount, e.currency, e.created_at"
            " FROM unnest(CAST(:e_postings AS text[]), CAST(:e_accounts AS text[]),"
            " CAST(:e_directions AS text[]), CAST(:e_amounts AS bigint[]),"
            " CAST(:e_currencies AS text[]), CAST(:e_created AS timestamptz[])) WITH ORDINALITY"
            " AS e(posting_id, account_id, direction, amount, currency, created_at, n)"
            " ORDER BY e.n)",
            _APPLY_DELTAS,
        )

    async def lock_accounts(self, conn: Tx, ids: Sequence[str]) -> dict[AccountId, AccountState]:
        """Lock ``ids`` (those that exist) in id order, FOR UPDATE."""
        rows = await conn.execute(self._lock_accounts, {"ids": sorted(set(ids))})
        return {AccountId(row.id): account_state(row) for row in rows}

    async def lock_for_batch(
        self, conn: Tx, ids: Sequence[str], external_ids: Sequence[str]
    ) -> tuple[dict[AccountId, AccountState], dict[str, PostingId]]:
        """Lock ``ids`` (those that exist) in id order, FOR UPDATE, like
        :meth:`lock_accounts`; also return the postings already recorded under any of
        ``external_ids`` (external_id → posting id), in the same round trip."""
        params = {"ids": sorted(set(ids)), "external_ids": sorted(set(external_ids))}
        rows = (await conn.execute(self._lock_for_batch, params)).all()
        pairs: Iterable[tuple[str, str]]
        if rows:
            pairs = zip(rows[0].existing_external or (), rows[0].existing_ids or (), strict=True)
        else:
            pairs = (await conn.execute(self._postings_by_external, params)).all()
        states = {AccountId(row.id): account_state(row) for row in rows}
        return states, {external: PostingId(posting) for external, posting in pairs}

    async def posting_id_for(self, conn: Tx, external_id: str) -> str | None:
        p = self.tables.postings
        found: str | None = await conn.scalar(select(p.c.id).where(p.c.external_id == external_id))
        return found

    async def write_postings(
        self,
        conn: Tx,
        postings: Sequence[Posting],
        deltas: Mapping[AccountId, BalanceDelta],
    ) -> None:
        """Insert ``postings`` (in order) with their entries and apply the summed
        ``deltas``, in one statement. Entry ids ascend in posting and entry order.
        Raises UniqueViolation (``postings_external_id_key``, ``postings_reverses_key``)
        when a concurrent transaction recorded the same external_id or reversal."""
        entries = [(p, e) for p in postings for e in p.entries]
        with unique_violations():
            await self._write(conn, postings, entries, deltas)

    async def _write(
        self,
        conn: Tx,
        postings: Sequence[Posting],
        entries: Sequence[tuple[Posting, EntryRequest]],
        deltas: Mapping[AccountId, BalanceDelta],
    ) -> None:
        await conn.execute(
            self._write_postings,
            {
                "p_ids": [p.id for p in postings],
                "p_external_ids": [p.external_id for p in postings],
                "p_fingerprints": [p.fingerprint for p in postings],
                "p_descriptions": [p.description for p in postings],
                "p_metadata": [json.dumps(dict(p.metadata)) for p in postings],
                "p_reverses": [p.reverses for p in postings],
                "p_created": [p.created_at for p in postings],
                "e_postings": [p.id for p, _ in entries],
                "e_accounts": [e.account_id for _, e in entries],
                "e_directions": [e.direction.value for _, e in entries],
                "e_amounts": [e.amount for _, e in entries],
                "e_currencies": [e.currency for _, e in entries],
                "e_created": [p.created_at for p, _ in entries],
                "now": max(p.created_at for p in postings),
                **_delta_params(deltas),
            },
        )

    async def apply_deltas(
        self, conn: Tx, deltas: Mapping[AccountId, BalanceDelta], now: datetime
    ) -> None:
        """Apply balance changes without a posting (placing or releasing a hold)."""
        await conn.execute(self._apply_deltas, {"now": now, **_delta_params(deltas)})

    async def load_posting(self, conn: Tx, posting_id: str) -> Posting | None:
        """The posting with its entries in entry order, or None."""
        p, e = self.tables.postings, self.tables.entries
        row = (await conn.execute(select(p).where(p.c.id == posting_id))).one_or_none()
        if row is None:
            return None
        entries = await conn.execute(select(e).where(e.c.posting_id == posting_id).order_by(e.c.id))
        return from_row(Posting, row, entries=tuple(from_row(EntryRequest, x) for x in entries))

    async def reversal_of(self, conn: Tx, posting_id: str) -> tuple[bool, PostingId | None]:
        """Whether ``posting_id`` exists, and the posting that reversed it (if any)."""
        p = self.tables.postings
        found = (await conn.execute(select(p.c.id).where(p.c.id == posting_id))).first()
        reversed_by = await conn.scalar(select(p.c.id).where(p.c.reverses == posting_id))
        return found is not None, reversed_by


def _delta_params(deltas: Mapping[AccountId, BalanceDelta]) -> dict[str, list[Any]]:
    ids = sorted(deltas)
    return {
        "d_accounts": list(ids),
        "d_posted": [deltas[i].posted for i in ids],
        "d_pending": [deltas[i].pending for i in ids],
    }
