"""The worker's fraud client over real HTTP on loopback: at most ``concurrency``
screenings in flight, the rest wait their turn before their budget starts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from lastro.core.resilience import ResilientCall
from lastro.transactions.clients.fraud import FraudClient
from lastro.transactions.clients.http import Endpoint
from lastro.transactions.domain.model import Decision, Kind, Screening, Status, Transaction

NOW = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


class SlowFraud:
    """Answers every screening ``approve`` after 50 ms; counts the most at once."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.served = 0

    async def screen(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(0.05)
        finally:
            self.now -= 1
        self.served += 1
        return web.json_response(
            {"decision": "approve", "transaction_id": body["transaction_id"], "reasons": []}
        )


@pytest.fixture
async def fraud() -> AsyncIterator[tuple[SlowFraud, str]]:
    service = SlowFraud()
    app = web.Application()
    app.router.add_post("/internal/v1/screenings", service.screen)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield service, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


def transfer(n: int) -> Transaction:
    return Transaction(
        id=f"txn_{n}",
        kind=Kind.TRANSFER,
        status=Status.SCREENING,
        client_id="cli",
        owner="usr",
        amount=1_000,
        currency="EUR",
        created_at=NOW,
        updated_at=NOW,
        source_account_id="acc_src",
        destination_account_id="acc_dst",
    )


async def test_a_burst_is_screened_a_few_at_a_time_and_none_runs_out_of_budget(
    fraud: tuple[SlowFraud, str],
) -> None:
    service, base = fraud
    # The budget fits four rounds of 50 ms, not the ten a burst of 40 would take at once
    # behind a limit of 4: each screening's budget starts when its turn comes.
    call = ResilientCall("fraud-test", timeout=0.25, retries=0, fail_max=5, reset_timeout=2)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:
        client = FraudClient(Endpoint("fraud", base, session, call), concurrency=4)
        answers = await asyncio.gather(*(client.screen(transfer(n)) for n in range(40)))

    assert all(
        isinstance(a, Screening) and a.decision is Decision.APPROVE and not a.fallback
        for a in answers
    )
    assert service.served == 40
    assert service.most == 4
