"""The simulated acquirer's books in its SQLite state: cards, authorizations,
captures, refunds and the records it reconciles against (settlement batches are
:mod:`lastro.external.acquirer_settlement`).

Every function takes the connection of the request's unit of work
(:mod:`lastro.external.provider`), so each use case is one atomic transaction.
The money rules hold twice, here and in the table constraints: the captures of an
authorization never exceed its amount, the refunds of a capture never exceed it,
and nothing is captured after a void.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from datetime import UTC, datetime
from typing import Any, Final

from lastro.core.errors import Conflict, DomainError, NotFound
from lastro.core.ids import new_id
from lastro.core.money import Currency, UnknownCurrency
from lastro.external.cards import Card, decline_code
from lastro.external.provider import timestamp

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS cards (
    token TEXT PRIMARY KEY,
    number TEXT NOT NULL,
    exp_month INTEGER NOT NULL CHECK (exp_month BETWEEN 1 AND 12),
    exp_year INTEGER NOT NULL,
    brand TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS authorizations (
    id TEXT PRIMARY KEY,
    token TEXT NOT NULL REFERENCES cards (token),
    amount INTEGER NOT NULL CHECK (amount > 0),
    currency TEXT NOT NULL,
    reference TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('approved', 'declined', 'voided')),
    decline_code TEXT CHECK ((status = 'declined') = (decline_code IS NOT NULL)),
    captured INTEGER NOT NULL DEFAULT 0 CHECK (captured BETWEEN 0 AND amount),
    refunded INTEGER NOT NULL DEFAULT 0 CHECK (refunded BETWEEN 0 AND captured),
    created_at TEXT NOT NULL,
    CHECK (status = 'approved' OR status = 'voided' OR captured = 0)
);
CREATE TABLE IF NOT EXISTS captures (
    id TEXT PRIMARY KEY,
    authorization_id TEXT NOT NULL REFERENCES authorizations (id),
    amount INTEGER NOT NULL CHECK (amount > 0),
    refunded INTEGER NOT NULL DEFAULT 0 CHECK (refunded BETWEEN 0 AND amount),
    created_at TEXT NOT NULL,
    settlement_id TEXT
);
CREATE INDEX IF NOT EXISTS captures_authorization ON captures (authorization_id);
CREATE TABLE IF NOT EXISTS refunds (
    id TEXT PRIMARY KEY,
    capture_id TEXT NOT NULL REFERENCES captures (id),
    amount INTEGER NOT NULL CHECK (amount > 0),
    created_at TEXT NOT NULL,
    settlement_id TEXT
);
CREATE INDEX IF NOT EXISTS refunds_capture ON refunds (capture_id);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    type TEXT NOT NULL CHECK (type IN ('authorization', 'capture', 'void', 'refund')),
    authorization_id TEXT NOT NULL,
    amount INTEGER NOT NULL,
    currency TEXT NOT NULL,
    reference TEXT NOT NULL,
    status TEXT NOT NULL,
    decline_code TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_created_at ON records (created_at);
CREATE TABLE IF NOT EXISTS settlements (
    id TEXT PRIMARY KEY,
    currency TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at TEXT NOT NULL,
    delivery TEXT NOT NULL CHECK (delivery IN ('pending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    delivered_at TEXT
);
"""


class UnknownCardToken(DomainError):
    slug = "unknown-card-token"
    title = "Unknown card token"
    status = 422


class UnsupportedCurrency(DomainError):
    slug = "unsupported-currency"
    title = "Unsupported currency"
    status = 422


class NotCapturable(Conflict):
    slug = "authorization-not-capturable"
    title = "Authorization cannot be captured"


class NotVoidable(Conflict):
    slug = "authorization-not-voidable"
    title = "Authorization cannot be voided"


class CaptureExceedsAuthorization(DomainError):
    slug = "capture-exceeds-authorization"
    title = "Capture exceeds the authorized amount"
    status = 422


class RefundExceedsCapture(DomainError):
    slug = "refund-exceeds-capture"
    title = "Refund exceeds the captured amount"
    status = 422


def _record(
    db: sqlite3.Connection,
    op_id: str,
    kind: str,
    auth: sqlite3.Row,
    amount: int,
    status: str,
    at: str,
) -> None:
    db.execute(
        "INSERT INTO records (id, type, authorization_id, amount, currency, reference, status, "
        "decline_code, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            op_id,
            kind,
            auth["id"],
            amount,
            auth["currency"],
            auth["reference"],
            status,
            auth["decline_code"] if kind == "authorization" else None,
            at,
        ),
    )


# ------------------------------------------------------------------------- cards


def fingerprint_key(db: sqlite3.Connection) -> bytes:
    """The acquirer's secret for card fingerprints, made once and kept, so a card's
    fingerprint stays the same across restarts."""
    row = db.execute("SELECT value FROM secrets WHERE name = 'fingerprint'").fetchone()
    if row is not None:
        return bytes(row["value"])
    key = secrets.token_bytes(32)
    db.execute("INSERT INTO secrets (name, value) VALUES ('fingerprint', ?)", (key,))
    return key


def tokenize(db: sqlite3.Connection, key: bytes, card: Card) -> dict[str, Any]:
    """Keep ``card`` and answer a token for it; the fingerprint is an HMAC of the
    number, the same for every token of one card."""
    fingerprint = hmac.new(key, card.number.encode(), hashlib.sha256).hexdigest()[:32]
    token = new_id("tok")
    db.execute(
        "INSERT INTO cards (token, number, exp_month, exp_year, brand, fingerprint, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (token, card.number, card.exp_month, card.exp_year, card.brand, fingerprint, timestamp()),
    )
    return {
        "token": token,
        "fingerprint": fingerprint,
        "brand": card.brand,
        "last4": card.last4,
        "exp_month": card.exp_month,
        "exp_year": card.exp_year,
    }


# ---------------------------------------------------------------- authorizations


def _card(db: sqlite3.Connection, token: str) -> sqlite3.Row:
    row: sqlite3.Row | None = db.execute("SELECT * FROM cards WHERE token = ?", (token,)).fetchone()
    if row is None:
        raise UnknownCardToken("No card was tokenised with this token.", field="token")
    return row


def _authorization(db: sqlite3.Connection, auth_id: str) -> sqlite3.Row:
    row: sqlite3.Row | None = db.execute(
        "SELECT * FROM authorizations WHERE id = ?", (auth_id,)
    ).fetchone()
    if row is None:
        raise NotFound("No such authorization.")
    return row


def _capture_row(db: sqlite3.Connection, capture_id: str) -> sqlite3.Row:
    row: sqlite3.Row | None = db.execute(
        "SELECT c.*, a.currency, a.reference FROM captures c "
        "JOIN authorizations a ON a.id = c.authorization_id WHERE c.id = ?",
        (capture_id,),
    ).fetchone()
    if row is None:
        raise NotFound("No such capture.")
    return row


def _capture_doc(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "authorization": row["authorization_id"],
        "amount": row["amount"],
        "currency": row["currency"],
        "refunded": row["refunded"],
        "created_at": row["created_at"],
        "settlement": row["settlement_id"],
    }


def authorization_doc(db: sqlite3.Connection, auth_id: str) -> dict[str, Any]:
    """The authorization as the API shows it, with its card and its captures."""
    auth = _authorization(db, auth_id)
    card = _card(db, auth["token"])
    captures = db.execute(
        "SELECT c.*, a.currency FROM captures c JOIN authorizations a "
        "ON a.id = c.authorization_id WHERE c.authorization_id = ? ORDER BY c.created_at, c.id",
        (auth_id,),
    ).fetchall()
    doc: dict[str, Any] = {
        "id": auth["id"],
        "status": auth["status"],
        "amount": auth["amount"],
        "currency": auth["currency"],
        "captured": auth["captured"],
        "refunded": auth["refunded"],
        "reference": auth["reference"],
        "card": {
            "brand": card["brand"],
            "last4": card["number"][-4:],
            "fingerprint": card["fingerprint"],
        },
        "created_at": auth["created_at"],
        "captures": [_capture_doc(c) for c in captures],
    }
    if auth["decline_code"] is not None:
        doc["decline_code"] = auth["decline_code"]
    return doc


def authorize(
    db: sqlite3.Connection, token: str, amount: int, currency: str, reference: str
) -> dict[str, Any]:
    """Ask the card's issuer (the test-card rules) to hold ``amount``; a decline is
    an authorization with status ``declined`` and a ``decline_code``, not an error."""
    try:
        Currency.of(currency)
    except UnknownCurrency:
        raise UnsupportedCurrency(
            f"{currency} is not an ISO 4217 code.", field="currency"
        ) from None
    row = _card(db, token)
    card = Card(row["number"], row["exp_month"], row["exp_year"], row["brand"])
    code = decline_code(card, datetime.now(UTC).date())
    auth_id, at = new_id("auth"), timestamp()
    db.execute(
        "INSERT INTO authorizations (id, token, amount, currency, reference, status, "
        "decline_code, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (auth_id, token, amount, currency, reference, "declined" if code else "approved", code, at),
    )
    auth = _authorization(db, auth_id)
    _record(db, auth_id, "authorization", auth, amount, auth["status"], at)
    return authorization_doc(db, auth_id)


def capture(db: sqlite3.Connection, auth_id: str, amount: int | None) -> dict[str, Any]:
    """Capture ``amount`` (default: all that is left) of an approved authorization;
    never more than authorized in total (CaptureExceedsAuthorization)."""
    auth = _authorization(db, auth_id)
    if auth["status"] != "approved":
        raise NotCapturable(f"The authorization is {auth['status']}.")
    remaining = auth["amount"] - auth["captured"]
    amount = remaining if amount is None else amount
    if remaining == 0:
        raise NotCapturable("The authorization is fully captured.")
    if amount > remaining:
        raise CaptureExceedsAuthorization(
            f"Only {remaining} of {auth['amount']} is left to capture.", field="amount"
        )
    capture_id, at = new_id("cap"), timestamp()
    db.execute(
        "INSERT INTO captures (id, authorization_id, amount, created_at) VALUES (?, ?, ?, ?)",
        (capture_id, auth_id, amount, at),
    )
    db.execute("UPDATE authorizations SET captured = captured + ? WHERE id = ?", (amount, auth_id))
    _record(db, capture_id, "capture", auth, amount, "succeeded", at)
    return _capture_doc(_capture_row(db, capture_id))


def void(db: sqlite3.Connection, auth_id: str) -> dict[str, Any]:
    """Release what is left of an approved authorization; nothing can be captured after."""
    auth = _authorization(db, auth_id)
    if auth["status"] != "approved":
        raise NotVoidable(f"The authorization is {auth['status']}.")
    released = auth["amount"] - auth["captured"]
    if released == 0:
        raise NotVoidable("The authorization is fully captured; refund the capture instead.")
    db.execute("UPDATE authorizations SET status = 'voided' WHERE id = ?", (auth_id,))
    _record(db, auth_id, "void", auth, released, "voided", timestamp())
    return authorization_doc(db, auth_id)


def capture_doc(db: sqlite3.Connection, capture_id: str) -> dict[str, Any]:
    return _capture_doc(_capture_row(db, capture_id))


def refund(db: sqlite3.Connection, capture_id: str, amount: int | None) -> dict[str, Any]:
    """Refund ``amount`` (default: all that is left) of a capture; never more than
    captured in total (RefundExceedsCapture)."""
    cap = _capture_row(db, capture_id)
    remaining = cap["amount"] - cap["refunded"]
    amount = remaining if amount is None else amount
    if remaining == 0 or amount > remaining:
        raise RefundExceedsCapture(
            f"Only {remaining} of {cap['amount']} is left to refund.", field="amount"
        )
    refund_id, at = new_id("rfd"), timestamp()
    db.execute(
        "INSERT INTO refunds (id, capture_id, amount, created_at) VALUES (?, ?, ?, ?)",
        (refund_id, capture_id, amount, at),
    )
    db.execute("UPDATE captures SET refunded = refunded + ? WHERE id = ?", (amount, capture_id))
    db.execute(
        "UPDATE authorizations SET refunded = refunded + ? WHERE id = ?",
        (amount, cap["authorization_id"]),
    )
    _record(db, refund_id, "refund", _authorization(db, cap["authorization_id"]), amount,
            "succeeded", at)  # fmt: skip
    return {
        "id": refund_id,
        "capture": capture_id,
        "authorization": cap["authorization_id"],
        "amount": amount,
        "currency": cap["currency"],
        "created_at": at,
        "settlement": None,
    }


# ----------------------------------------------------------------------- records


def records(
    db: sqlite3.Connection, start: str | None, end: str | None, limit: int, after: int
) -> tuple[list[dict[str, Any]], int | None]:
    """Every operation (authorization, capture, void, refund) created in
    ``[start, end)``, oldest first, ``limit`` at a time after sequence ``after``;
    returns the page and the cursor of the next one (None at the end)."""
    rows = db.execute(
        "SELECT * FROM records WHERE seq > ? AND created_at >= ? AND created_at < ? "
        "ORDER BY seq LIMIT ?",
        (after, start or "", end or "~", limit + 1),
    ).fetchall()
    page = [
        {
            "id": r["id"],
            "type": r["type"],
            "authorization": r["authorization_id"],
            "amount": r["amount"],
            "currency": r["currency"],
            "reference": r["reference"],
            "status": r["status"],
            "decline_code": r["decline_code"],
            "created_at": r["created_at"],
        }
        for r in rows[:limit]
    ]
    more = len(rows) > limit
    return page, (rows[limit - 1]["seq"] if more else None)
