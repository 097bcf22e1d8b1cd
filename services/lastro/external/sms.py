"""The simulated SMS gateway: `lastro serve sms` (port 7103).

``POST /v1/messages`` accepts a message for an E.164 number under an
Idempotency-Key (a retry with the same key is the same message, never a second
one) and answers it ``queued``; nothing leaves the machine. ``GET /v1/messages``
lists what was received, newest first, filtered by ``to`` and ``reference``:
what tests and ``lastro dev sms`` read.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from lastro.core.config import Settings
from lastro.core.errors import NotFound
from lastro.core.http import PARAMS_KEY, json_body, json_response
from lastro.core.ids import new_id
from lastro.external.provider import create_provider_app, state_of, timestamp

NAME: Final = "sms"
OPENAPI: Final = Path(__file__).with_name("sms.openapi.yaml")

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    recipient TEXT NOT NULL,
    body TEXT NOT NULL,
    reference TEXT,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_recipient ON messages (recipient);
CREATE INDEX IF NOT EXISTS messages_reference ON messages (reference);
"""


def _message(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "status": row["status"],
        "to": row["recipient"],
        "body": row["body"],
        "reference": row["reference"],
        "created_at": row["created_at"],
    }


async def send_message(request: web.Request) -> web.Response:
    body = await json_body(request)
    message_id = new_id("sms")
    db = state_of(request)
    db.execute(
        "INSERT INTO messages (id, recipient, body, reference, status, created_at) "
        "VALUES (?, ?, ?, ?, 'queued', ?)",
        (message_id, body["to"], body["body"], body.get("reference"), timestamp()),
    )
    row = db.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
    return json_response(_message(row), status=201)


async def list_messages(request: web.Request) -> web.Response:
    params = request[PARAMS_KEY]
    to, reference = params.get("to"), params.get("reference")
    rows = state_of(request).execute(
        "SELECT * FROM messages WHERE (? IS NULL OR recipient = ?) "
        "AND (? IS NULL OR reference = ?) ORDER BY seq DESC LIMIT ?",
        (to, to, reference, reference, params.get("limit", 100)),
    )
    return json_response({"messages": [_message(r) for r in rows]})


async def get_message(request: web.Request) -> web.Response:
    row = (
        state_of(request)
        .execute("SELECT * FROM messages WHERE id = ?", (request[PARAMS_KEY]["id"],))
        .fetchone()
    )
    if row is None:
        raise NotFound("No such message.")
    return json_response(_message(row))


async def create_app(settings: Settings) -> web.Application:
    """The SMS gateway (module docstring)."""
    return create_provider_app(
        name=NAME,
        settings=settings,
        openapi_path=OPENAPI,
        routes=[
            web.post("/v1/messages", send_message),
            web.get("/v1/messages", list_messages),
            web.get("/v1/messages/{id}", get_message),
        ],
        schema=SCHEMA,
    )
