"""The simulated acquirer's settlement batches: each day's captures and refunds per
currency netted into one batch with its fees, and the batch's delivery to the
merchant's webhook (retried until it is acknowledged). Functions take the request's
unit-of-work connection (:mod:`lastro.external.provider`), like
:mod:`lastro.external.acquirer_book`."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lastro.core.ids import new_id
from lastro.external.cards import settlement_fee
from lastro.external.provider import timestamp


@dataclass(frozen=True)
class Delivery:
    settlement_id: str
    body: bytes
    attempts: int


def _batch_items(db: sqlite3.Connection, currency: str) -> list[dict[str, Any]]:
    captures = db.execute(
        "SELECT c.id, c.authorization_id, c.amount, a.reference FROM captures c "
        "JOIN authorizations a ON a.id = c.authorization_id "
        "WHERE c.settlement_id IS NULL AND a.currency = ? ORDER BY c.created_at, c.id",
        (currency,),
    ).fetchall()
    refunds = db.execute(
        "SELECT r.id, r.capture_id, c.authorization_id, r.amount, a.reference FROM refunds r "
        "JOIN captures c ON c.id = r.capture_id JOIN authorizations a ON a.id = c.authorization_id "
        "WHERE r.settlement_id IS NULL AND a.currency = ? ORDER BY r.created_at, r.id",
        (currency,),
    ).fetchall()
    items: list[dict[str, Any]] = [
        {
            "type": "capture",
            "id": c["id"],
            "authorization": c["authorization_id"],
            "reference": c["reference"],
            "amount": c["amount"],
            "fee": settlement_fee(c["amount"]),
        }
        for c in captures
    ]
    items += [
        {
            "type": "refund",
            "id": r["id"],
            "capture": r["capture_id"],
            "authorization": r["authorization_id"],
            "reference": r["reference"],
            "amount": r["amount"],
            "fee": 0,
        }
        for r in refunds
    ]
    return items


def _unsettled_currencies(db: sqlite3.Connection) -> Iterable[str]:
    rows = db.execute(
        "SELECT DISTINCT a.currency FROM captures c JOIN authorizations a "
        "ON a.id = c.authorization_id WHERE c.settlement_id IS NULL "
        "UNION SELECT DISTINCT a.currency FROM refunds r JOIN captures c ON c.id = r.capture_id "
        "JOIN authorizations a ON a.id = c.authorization_id WHERE r.settlement_id IS NULL "
        "ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def settle(db: sqlite3.Connection, now: float) -> list[dict[str, Any]]:
    """Close one batch per currency over every unsettled capture and refund, and
    queue each for delivery. ``gross`` is captures minus refunds, ``fees`` the
    acquirer's fees on the captures, ``net`` what is paid out (gross - fees)."""
    batches = []
    for currency in _unsettled_currencies(db):
        items = _batch_items(db, currency)
        gross = sum(i["amount"] if i["type"] == "capture" else -i["amount"] for i in items)
        fees = sum(i["fee"] for i in items)
        batch = {
            "id": new_id("stl"),
            "type": "settlement.batch",
            "currency": currency,
            "created_at": timestamp(),
            "gross": gross,
            "fees": fees,
            "net": gross - fees,
            "items": items,
        }
        for table, kind in (("captures", "capture"), ("refunds", "refund")):
            ids = [(batch["id"], i["id"]) for i in items if i["type"] == kind]
            db.executemany(f"UPDATE {table} SET settlement_id = ? WHERE id = ?", ids)  # noqa: S608
        db.execute(
            "INSERT INTO settlements (id, currency, body, created_at, delivery, next_attempt_at) "
            "VALUES (?, ?, ?, ?, 'pending', ?)",
            (batch["id"], currency, json.dumps(batch, separators=(",", ":")).encode(),
             batch["created_at"], now),
        )  # fmt: skip
        batches.append(batch)
    return batches


def due_deliveries(db: sqlite3.Connection, now: float) -> list[Delivery]:
    rows = db.execute(
        "SELECT id, body, attempts FROM settlements WHERE delivery = 'pending' "
        "AND next_attempt_at <= ? ORDER BY created_at",
        (now,),
    ).fetchall()
    return [Delivery(r["id"], bytes(r["body"]), r["attempts"]) for r in rows]


def delivered(db: sqlite3.Connection, settlement_id: str) -> None:
    db.execute(
        "UPDATE settlements SET delivery = 'delivered', attempts = attempts + 1, "
        "last_error = NULL, delivered_at = ? WHERE id = ?",
        (timestamp(), settlement_id),
    )


def delivery_failed(
    db: sqlite3.Connection, settlement_id: str, error: str, retry_at: float | None
) -> None:
    """One failed attempt: retry at ``retry_at``, or give up (None)."""
    db.execute(
        "UPDATE settlements SET attempts = attempts + 1, last_error = ?, "
        "delivery = CASE WHEN ? THEN 'pending' ELSE 'failed' END, "
        "next_attempt_at = COALESCE(?, next_attempt_at) WHERE id = ?",
        (error[:500], retry_at is not None, retry_at, settlement_id),
    )


def settlements(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every batch with its delivery state, newest first."""
    rows = db.execute("SELECT * FROM settlements ORDER BY created_at DESC, id DESC").fetchall()
    return [
        {
            **json.loads(r["body"]),
            "delivery": r["delivery"],
            "attempts": r["attempts"],
            "last_error": r["last_error"],
            "delivered_at": r["delivered_at"],
        }
        for r in rows
    ]
