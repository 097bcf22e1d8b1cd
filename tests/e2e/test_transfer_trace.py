"""One transfer, one trace: the transaction API's HTTP span, the outbox relay's publish,
the worker's command, the fraud screening, the ledger posting in accounts, the
``posted`` event and the webhook delivery in notifications all carry the trace id of
the client's request, as one tree (every span's parent is in it). Against the running
dev stack (`lastro dev up`), over HTTPS, reading the spans each process writes under
``.dev/traces`` (``core/observability.py``) and drawing them with `lastro trace show`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from typing import Any

import aiohttp
from aiohttp import web
from standardwebhooks import Webhook

from lastro.core.config import Settings
from lastro.core.security.tls import client_context, server_context
from lastro.demo import REDIRECT_URI, Api, operator_token, register_service, sign_in
from lastro.devstack.ca import DevCA
from lastro.devstack.components import Service, traces_dir

SCOPES = ["accounts:read", "accounts:write", "transfers:read", "transfers:write"]
SCOPES += ["notifications:read", "notifications:write"]
CHAIN = ("identity", "accounts", "fraud", "transactions", "transactions-worker", "notifications")


def _spans_of(settings: Settings, trace_id: str) -> list[dict[str, Any]]:
    found = []
    for path in traces_dir(settings).glob("*.jsonl"):
        for line in path.read_text(errors="replace").splitlines():
            if f'"trace_id": "{trace_id}"' in line:
                found.append(json.loads(line))
    return found


def _one(spans: list[dict[str, Any]], service: str, kind: str, name: str) -> dict[str, Any]:
    matching = [
        s for s in spans if s["service"] == f"lastro-{service}" and s["kind"] == kind
        and s["name"] == name
    ]  # fmt: skip
    assert len(matching) >= 1, f"no {kind} span {name!r} of {service} in the trace"
    return matching[0]


async def _webhook_receiver(
    settings: Settings,
) -> tuple[web.AppRunner, int, list[Any], asyncio.Event]:
    received: list[tuple[dict[str, str], bytes]] = []
    arrived = asyncio.Event()

    async def receive(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        arrived.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hooks", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    cert = DevCA(settings.dev_dir / "ca").issue("e2e-trace-merchant")
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(cert.cert, cert.key))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port, received, arrived


async def _transfer_with_webhook(
    settings: Settings, http: aiohttp.ClientSession, port: int, traceparent: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A user with two funded accounts and a webhook endpoint makes one transfer,
    sending ``traceparent``; the transfer (posted) and the endpoint."""
    identity = Api(http, settings.service_url("identity"))
    accounts = Api(http, settings.service_url("accounts"))
    transactions = Api(http, settings.service_url("transactions"))
    notifications = Api(http, settings.service_url("notifications"))
    run = secrets.token_hex(3)
    admin = await operator_token(identity, settings)
    _, ledger = await register_service(
        identity, admin, f"e2e-trace-payments-{run}", ["ledger:write", "accounts:admin"], "accounts"
    )
    wallet = await identity.call(
        "POST",
        "/v1/clients",
        token=admin,
        expect=201,
        json={
            "name": f"e2e-trace-wallet-{run}",
            "confidential": False,
            "grant_types": ["authorization_code"],
            "scopes": SCOPES,
            "audiences": ["accounts", "transactions", "notifications"],
            "redirect_uris": [REDIRECT_URI],
        },
    )
    username, password = f"e2e-trace-{run}", secrets.token_urlsafe(16)
    await identity.call(
        "POST", "/v1/users", expect=201, json={"username": username, "password": password}
    )
    token = await sign_in(identity, wallet["client_id"], username, password, " ".join(SCOPES))
    customer = await accounts.call(
        "POST",
        "/v1/customers",
        token=token,
        expect=201,
        json={"name": "Tina Trace", "email": f"{username}@example.com", "document_number": run},
    )
    source, target = [
        (
            await accounts.call(
                "POST",
                "/v1/accounts",
                token=token,
                expect=201,
                json={"customer_id": customer["id"], "currency": "EUR"},
            )
        )["id"]
        for _ in range(2)
    ]
    settlement = await accounts.call(
        "POST",
        "/internal/v1/accounts",
        token=ledger,
        expect=201,
        json={"currency": "EUR", "purpose": "settlement"},
    )
    leg = {"amount": 10_000, "currency": "EUR"}
    await accounts.call(
        "POST",
        "/internal/v1/postings",
        token=ledger,
        expect=201,
        json={
            "external_id": f"e2e-trace-fund-{run}",
            "entries": [
                {"account_id": settlement["id"], "direction": "debit", **leg},
                {"account_id": source, "direction": "credit", **leg},
            ],
        },
    )
    endpoint = await notifications.call(
        "POST",
        "/v1/webhook-endpoints",
        token=token,
        expect=201,
        json={"url": f"https://127.0.0.1:{port}/hooks", "event_types": ["transaction.succeeded"]},
    )
    transfer = await transactions.call(
        "POST",
        "/v1/transfers",
        token=token,
        expect=201,
        headers={
            "Idempotency-Key": str(uuid.uuid4()),
            "Prefer": "wait=10",
            "traceparent": traceparent,
        },
        json={
            "source_account_id": source,
            "destination_account_id": target,
            "amount": 2_500,
            "currency": "EUR",
        },
    )
    assert transfer["status"] == "posted", transfer
    return transfer, endpoint


async def test_one_transfer_is_one_trace_from_the_api_to_the_webhook(settings: Settings) -> None:
    for name in CHAIN:
        assert Service(settings, name).healthy(), f"{name} is not running: `lastro dev up`"
    trace_id, caller_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    runner, port, received, arrived = await _webhook_receiver(settings)
    connector = aiohttp.TCPConnector(ssl=client_context(settings.ca_file))
    try:
        async with aiohttp.ClientSession(connector=connector) as http:
            transfer, endpoint = await _transfer_with_webhook(
                settings, http, port, f"00-{trace_id}-{caller_span}-01"
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrived.wait(), 30)
    finally:
        await runner.cleanup()
    assert len(received) == 1, "the webhook never arrived"
    headers, body = received[0]
    assert (
        Webhook(endpoint["secret"]).verify(body, headers)["data"]["transaction_id"]
        == (transfer["id"])
    )

    # Every process exports its spans in batches (a few seconds).
    spans: list[dict[str, Any]] = []
    wanted = {
        ("transactions", "SERVER", "POST /v1/transfers"),
        ("transactions", "PRODUCER", "publish lastro.transactions.commands"),
        ("transactions-worker", "CONSUMER", "consume lastro.transactions.commands"),
        ("accounts", "SERVER", "POST /internal/v1/postings"),
        ("transactions-worker", "PRODUCER", "publish lastro.transactions"),
        ("notifications", "CONSUMER", "consume lastro.transactions"),
        ("notifications", "INTERNAL", "deliver webhook"),
    }

    def orphans() -> list[tuple[str, str]]:
        ids = {s["span_id"] for s in spans} | {caller_span}
        return [(s["service"], s["name"]) for s in spans if s["parent_span_id"] not in ids]

    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        spans = _spans_of(settings, trace_id)
        seen = {(s["service"].removeprefix("lastro-"), s["kind"], s["name"]) for s in spans}
        if wanted <= seen and not orphans():
            break
        await asyncio.sleep(0.5)
    seen = {(s["service"].removeprefix("lastro-"), s["kind"], s["name"]) for s in spans}
    assert wanted <= seen, f"missing from the trace: {sorted(wanted - seen)}"
    # One tree: every span hangs under another span of the trace, the API's under ours.
    assert orphans() == []

    server = _one(spans, "transactions", "SERVER", "POST /v1/transfers")
    assert server["parent_span_id"] == caller_span
    posting = _one(spans, "accounts", "SERVER", "POST /internal/v1/postings")
    assert posting["attributes"]["http.route"] == "/internal/v1/postings"
    delivery = _one(spans, "notifications", "INTERNAL", "deliver webhook")
    assert delivery["attributes"]["lastro.delivery.outcome"] == "delivered"
    assert delivery["attributes"]["lastro.notification.kind"] == "transaction.succeeded"

    def ancestors(span: dict[str, Any]) -> list[str]:
        by_id = {s["span_id"]: s for s in spans}
        chain = []
        while span["parent_span_id"] in by_id:
            span = by_id[span["parent_span_id"]]
            chain.append(span["name"])
        return chain

    assert "consume lastro.transactions.commands" in ancestors(posting)
    assert "POST /v1/transfers" in ancestors(delivery)

    shown = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "lastro.cli", "trace", "show", trace_id],
        capture_output=True, text=True, timeout=60, check=False, env=os.environ,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    for name in ("POST /v1/transfers", "POST /internal/v1/postings", "deliver webhook"):
        assert name in shown.stdout, shown.stdout
