"""The privacy API's queries: a customer's records, erasure and retention.

Every statement touches personal fields only (payout holder names and sealed IBANs,
card fingerprints, the request context); amounts, states, ledger references and
postings are never changed or deleted here.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import ColumnElement, and_, delete, func, literal, or_, select, update
from sqlalchemy.dialects.postgresql import JSONB

from lastro.core.db import Tx
from lastro.transactions.store.tables import Tables

_EMPTY: Final = literal({}, JSONB)

RESTING: Final = ("posted", "settled", "declined", "failed", "reversed", "refunded")
"""States after which nothing needs the request context or the payout destination."""

EXPORTED: Final = (
    "id",
    "kind",
    "status",
    "amount",
    "currency",
    "customer_id",
    "source_account_id",
    "destination_account_id",
    "counterparty_customer_id",
    "counterparty",
    "description",
    "metadata",
    "context",
    "batch_id",
    "fx",
    "card",
    "screening",
    "reason",
    "captured_amount",
    "refunded_amount",
    "created_at",
    "updated_at",
)


def _mine(t: Tables, customer_id: str) -> ColumnElement[bool]:
    return t.transactions.c.customer_id == customer_id


async def transactions_of(conn: Tx, t: Tables, customer_id: str) -> list[dict[str, Any]]:
    """The customer's transactions (sent, and received from other customers), oldest
    first, with the role the customer had in each."""
    x = t.transactions
    rows = await conn.execute(
        select(*(x.c[name] for name in EXPORTED))
        .where(or_(x.c.customer_id == customer_id, x.c.counterparty_customer_id == customer_id))
        .order_by(x.c.created_at, x.c.id)
    )
    return [
        {
            **dict(row._mapping),
            "role": "payer" if row.customer_id == customer_id else "payee",
        }
        for row in rows
    ]


async def payout_destinations_of(conn: Tx, t: Tables, customer_id: str) -> Sequence[Any]:
    d, x = t.payout_destinations, t.transactions
    rows = await conn.execute(
        select(d, x.c.created_at)
        .join(x, x.c.id == d.c.transaction_id)
        .where(_mine(t, customer_id))
        .order_by(x.c.created_at)
    )
    return list(rows)


async def erase_payout_destinations(conn: Tx, t: Tables, customer_id: str) -> int:
    """Forget the holder names and IBANs of the customer's payouts (the sealed values
    and their data key); the last four digits and the country stay."""
    d, x = t.payout_destinations, t.transactions
    result = await conn.execute(
        update(d)
        .where(
            d.c.transaction_id.in_(select(x.c.id).where(_mine(t, customer_id))),
            or_(d.c.holder_name.is_not(None), d.c.iban.is_not(None), d.c.wrapped_key.is_not(None)),
        )
        .values(holder_name=None, iban=None, wrapped_key=None)
    )
    return int(result.rowcount)


def _card_fingerprint_cleared(t: Tables) -> dict[str, Any]:
    x = t.transactions
    return {"card": x.c.card.op("-")("fingerprint"), "counterparty": None}


def _has_fingerprint(t: Tables) -> ColumnElement[bool]:
    x = t.transactions
    return and_(x.c.kind == "card_payment", x.c.card.has_key("fingerprint"))


async def erase_card_fingerprints(conn: Tx, t: Tables, customer_id: str) -> int:
    """Drop the card fingerprint (and its use as the counterparty) from the card
    payments the customer accepted; brand and last four digits stay."""
    x = t.transactions
    result = await conn.execute(
        update(x)
        .where(_mine(t, customer_id), _has_fingerprint(t))
        .values(**_card_fingerprint_cleared(t))
    )
    return int(result.rowcount)


def _has_context(t: Tables) -> ColumnElement[bool]:
    return t.transactions.c.context != _EMPTY


async def erase_request_context(conn: Tx, t: Tables, customer_id: str) -> int:
    """Forget the device, IP address, country and place the customer's requests came from."""
    x = t.transactions
    result = await conn.execute(
        update(x).where(_mine(t, customer_id), _has_context(t)).values(context=_EMPTY)
    )
    return int(result.rowcount)


async def _count_or_update(conn: Tx, t: Tables, where: ColumnElement[bool], dry_run: bool,
                           values: dict[str, Any]) -> int:  # fmt: skip
    x = t.transactions
    if dry_run:
        return int(await conn.scalar(select(func.count()).select_from(x).where(where)) or 0)
    result = await conn.execute(update(x).where(where).values(**values))
    return int(result.rowcount)


def _rested_before(t: Tables, cutoff: datetime) -> ColumnElement[bool]:
    x = t.transactions
    return and_(x.c.created_at < cutoff, x.c.status.in_(RESTING))


async def age_out_request_context(conn: Tx, t: Tables, cutoff: datetime, dry_run: bool) -> int:
    where = and_(_rested_before(t, cutoff), _has_context(t))
    return await _count_or_update(conn, t, where, dry_run, {"context": _EMPTY})


async def age_out_card_fingerprints(conn: Tx, t: Tables, cutoff: datetime, dry_run: bool) -> int:
    where = and_(_rested_before(t, cutoff), _has_fingerprint(t))
    return await _count_or_update(conn, t, where, dry_run, _card_fingerprint_cleared(t))


async def age_out_payout_destinations(
    conn: Tx, t: Tables, cutoff: datetime, *, shred_only: bool, dry_run: bool
) -> int:
    """``shred_only``: drop the data keys (the sealed values become unreadable);
    otherwise clear the sealed values and the keys."""
    d, x = t.payout_destinations, t.transactions
    where = and_(
        d.c.transaction_id.in_(select(x.c.id).where(_rested_before(t, cutoff))),
        d.c.wrapped_key.is_not(None) if shred_only else or_(
            d.c.holder_name.is_not(None), d.c.iban.is_not(None), d.c.wrapped_key.is_not(None)
        ),
    )  # fmt: skip
    if dry_run:
        return int(await conn.scalar(select(func.count()).select_from(d).where(where)) or 0)
    values: dict[str, Any] = {"wrapped_key": None}
    if not shred_only:
        values.update(holder_name=None, iban=None)
    result = await conn.execute(update(d).where(where).values(**values))
    return int(result.rowcount)


async def age_out_idempotency_keys(
    conn: Tx, t: Tables, cutoff: datetime, now: datetime, dry_run: bool
) -> int:
    """Stored responses created before the cutoff whose 24 h guarantee has passed."""
    k = t.idempotency
    where = and_(k.c.created_at < cutoff, k.c.expires_at < now)
    if dry_run:
        return int(await conn.scalar(select(func.count()).select_from(k).where(where)) or 0)
    result = await conn.execute(delete(k).where(where))
    return int(result.rowcount)
