"""Two account-service processes over one ledger schema, raced through HTTPS.

The stack's accounts process and a second one started here (same database, KMS,
Redis and broker; another port) take the same transfers from one funded account at
once, some of them sent to both with the same external_id. The ledger must come out
as if the transfers had run one by one: nothing overdrawn, nothing posted twice.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lastro.core.config import Settings
from lastro.core.security.tls import client_context
from lastro.demo import Api, operator_token, register_service

FUNDS = 10_000
AMOUNT = 300
TRANSFERS = 60
DUPLICATED = 12


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def second_accounts(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """A second accounts process on a free port; its base URL."""
    port = _free_port()
    log = (tmp_path / "accounts-replica.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "lastro.cli", "serve", "accounts"],
        env={**os.environ, "LASTRO_ACCOUNTS_PORT": str(port)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"https://{settings.host}:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


async def _ready(http: aiohttp.ClientSession, base: str) -> None:
    for _ in range(120):
        try:
            async with http.get(f"{base}/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.5)
    raise AssertionError(f"{base} never became ready")


async def test_two_accounts_processes_never_overdraw_or_double_post(
    settings: Settings, second_accounts: str
) -> None:
    connector = aiohttp.TCPConnector(ssl=client_context(settings.ca_file), limit=100)
    async with aiohttp.ClientSession(connector=connector) as http:
        await _ready(http, second_accounts)
        identity = Api(http, settings.service_url("identity"))
        replicas = (Api(http, settings.service_url("accounts")), Api(http, second_accounts))
        run = secrets.token_hex(4)
        admin = await operator_token(identity, settings)
        _, token = await register_service(
            identity,
            admin,
            f"replica-race-{run}",
            ["ledger:read", "ledger:write", "accounts:read", "accounts:write", "accounts:admin"],
            "accounts",
        )
        first = replicas[0]
        customer = await first.call(
            "POST",
            "/v1/customers",
            token=token,
            expect=201,
            json={"name": "Race", "email": f"race-{run}@example.com", "document_number": run},
        )
        alice, bob = [
            (
                await first.call(
                    "POST",
                    "/v1/accounts",
                    token=token,
                    expect=201,
                    json={"customer_id": customer["id"], "currency": "EUR"},
                )
            )["id"]
            for _ in range(2)
        ]
        settlement = await first.call(
            "POST",
            "/internal/v1/accounts",
            token=token,
            expect=201,
            json={"currency": "EUR", "purpose": "settlement"},
        )
        await first.call(
            "POST",
            "/internal/v1/postings",
            token=token,
            expect=201,
            json=_transfer(f"fund-{run}", settlement["id"], alice, FUNDS),
        )

        async def send(replica: int, n: int) -> tuple[int, int, dict[str, Any]]:
            url = f"{replicas[replica].base}/internal/v1/postings"
            async with http.post(
                url,
                json=_transfer(f"race-{run}-{n}", alice, bob, AMOUNT),
                headers={"Authorization": f"Bearer {token}"},
            ) as response:
                return n, response.status, await response.json(content_type=None)

        sends = [send(n % 2, n) for n in range(TRANSFERS)]
        sends += [send((n + 1) % 2, n) for n in range(DUPLICATED)]  # same id, other replica
        results = await asyncio.gather(*sends)

        statuses = Counter(status for _, status, _ in results)
        assert set(statuses) <= {200, 201, 409}, results
        posted: dict[int, set[str]] = {}
        for n, status, body in results:
            if status in (200, 201):
                posted.setdefault(n, set()).add(body["id"])
            else:
                assert body["type"].endswith("/insufficient-funds"), body
        assert all(len(ids) == 1 for ids in posted.values()), "one posting per external_id"
        assert len(posted) == FUNDS // AMOUNT, statuses
        assert statuses[201] == FUNDS // AMOUNT

        for replica in replicas:
            balance = await replica.call(
                "GET", f"/v1/accounts/{alice}/balance", token=token, expect=200
            )
            assert balance["posted"] == FUNDS % AMOUNT
            other = await replica.call(
                "GET", f"/v1/accounts/{bob}/balance", token=token, expect=200
            )
            assert other["posted"] == FUNDS - FUNDS % AMOUNT


def _transfer(external_id: str, source: str, target: str, amount: int) -> dict[str, Any]:
    return {
        "external_id": external_id,
        "entries": [
            {"account_id": source, "direction": "debit", "amount": amount, "currency": "EUR"},
            {"account_id": target, "direction": "credit", "amount": amount, "currency": "EUR"},
        ],
    }
