"""PostgreSQL and the KMS restarted under load: the running services answer 503, never 500.

These tests stop and start components of the dev stack under ``.dev/`` (marker
``disruptive``) and always leave them running again. While a dependency is down, a
few clients keep calling the accounts, identity and fraud services over HTTPS; every
answer must be a success or a 503 ``dependency-unavailable`` problem (the one outage
type, ``core/outages.py``; the KMS included) with ``Retry-After``. Once the dependency
is ready again, the very first request of each kind must succeed: the services' pools
hand out no dead connection (``core.db.in_transaction`` and ``read`` run the work again
on a fresh one, as the services on the money path keep no pre-ping; the fraud decision
log's driver-level pool drops it, or reruns the statement once).
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from lastro.core.config import Settings
from lastro.core.security.tls import client_context
from lastro.demo import Api, operator_token, register_service
from lastro.devstack.base import Component
from lastro.devstack.components import Service
from lastro.devstack.stack import component

pytestmark = pytest.mark.disruptive

OUTAGE_SECONDS = 3.0
# Seconds between two calls of one kind: a light load, and few enough token requests
# to stay far below identity's per-address limit on credential routes.
PACE = {
    "screening": 0.05,
    "balance": 0.05,
    "customer": 0.05,
    "new-customer": 0.1,
    "posting": 0.05,
    "jwks": 0.1,
    "token": 1.0,
}
OUTAGE_TYPES = {"https://lastro.dev/problems/dependency-unavailable"}
LEDGER_SCOPES = ["ledger:read", "ledger:write", "accounts:admin", "accounts:read", "accounts:write"]

Call = Callable[[], Awaitable[tuple[int, dict[str, Any], str | None]]]


@dataclass
class Platform:
    """Clients of the running identity and accounts services, with a customer and an
    account to address."""

    http: aiohttp.ClientSession
    identity: Api
    accounts: Api
    service_id: str
    service_secret: str
    token: str
    customer: str
    account: str
    settlement: str
    fraud: str
    screening_token: str
    calls: dict[str, Call] = field(default_factory=dict)


async def _answer(response: aiohttp.ClientResponse) -> tuple[int, dict[str, Any], str | None]:
    body = await response.json(content_type=None) if response.content_length != 0 else {}
    return response.status, dict(body or {}), response.headers.get("Retry-After")


@pytest.fixture
async def platform(settings: Settings) -> AsyncIterator[Platform]:
    for name in ("identity", "accounts"):
        assert Service(settings, name).healthy(), f"{name} is not running: `lastro dev up`"
    connector = aiohttp.TCPConnector(ssl=client_context(settings.ca_file))
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        identity = Api(http, settings.service_url("identity"))
        accounts = Api(http, settings.service_url("accounts"))
        admin = await operator_token(identity, settings)
        client, token = await register_service(
            identity, admin, f"outage-{secrets.token_hex(3)}", LEDGER_SCOPES, "accounts"
        )
        _, screening_token = await register_service(
            identity, admin, f"outage-screen-{secrets.token_hex(3)}", ["fraud:screen"], "fraud"
        )
        auth = {"token": token}
        customer = await accounts.call(
            "POST",
            "/v1/customers",
            expect=201,
            json={
                "name": "Olga Outage",
                "email": f"olga-{secrets.token_hex(4)}@example.com",
                "document_number": f"DOC{secrets.token_hex(4).upper()}",
            },
            **auth,
        )
        account = await accounts.call(
            "POST",
            "/v1/accounts",
            expect=201,
            json={"customer_id": customer["id"], "currency": "EUR"},
            **auth,
        )
        settlement = await accounts.call(
            "POST",
            "/internal/v1/accounts",
            expect=201,
            json={"currency": "EUR", "purpose": "settlement"},
            **auth,
        )
        yield Platform(
            http,
            identity,
            accounts,
            client["client_id"],
            client["client_secret"],
            token,
            customer["id"],
            account["id"],
            settlement["id"],
            settings.service_url("fraud"),
            screening_token,
        )


def _calls(p: Platform) -> dict[str, Call]:
    """One request of each kind the load sends: reads and writes on accounts (a new
    customer needs a fresh data key from the KMS; reading one may use a cached key),
    the signing keys and a token from identity, and a screening by the fraud service
    (its decision log is a driver-level pool of its own, ``core.db.fetch_statement``)."""
    bearer = {"Authorization": f"Bearer {p.token}"}

    async def screening() -> tuple[int, dict[str, Any], str | None]:
        body = {
            "transaction_id": f"txn_{secrets.token_hex(8)}",
            "type": "transfer",
            "amount": 1_000,
            "currency": "EUR",
            "customer_id": p.customer,
            "source_account_id": p.account,
            "counterparty": p.settlement,
            "occurred_at": datetime.now(UTC).isoformat(),
        }
        headers = {"Authorization": f"Bearer {p.screening_token}"}
        url = f"{p.fraud}/internal/v1/screenings"
        async with p.http.post(url, json=body, headers=headers) as response:
            return await _answer(response)

    async def balance() -> tuple[int, dict[str, Any], str | None]:
        url = f"{p.accounts.base}/v1/accounts/{p.account}/balance"
        async with p.http.get(url, headers=bearer) as response:
            return await _answer(response)

    async def customer() -> tuple[int, dict[str, Any], str | None]:
        async with p.http.get(f"{p.accounts.base}/v1/customers/{p.customer}", headers=bearer) as r:
            return await _answer(r)

    async def new_customer() -> tuple[int, dict[str, Any], str | None]:
        tag = secrets.token_hex(6)
        body = {"name": "Nina", "email": f"nina-{tag}@example.com", "document_number": tag}
        async with p.http.post(f"{p.accounts.base}/v1/customers", json=body, headers=bearer) as r:
            return await _answer(r)

    async def posting() -> tuple[int, dict[str, Any], str | None]:
        entries = [
            {"account_id": p.settlement, "direction": "debit", "amount": 1, "currency": "EUR"},
            {"account_id": p.account, "direction": "credit", "amount": 1, "currency": "EUR"},
        ]
        body = {"external_id": f"outage-{secrets.token_hex(8)}", "entries": entries}
        url = f"{p.accounts.base}/internal/v1/postings"
        async with p.http.post(url, json=body, headers=bearer) as response:
            return await _answer(response)

    async def jwks() -> tuple[int, dict[str, Any], str | None]:
        async with p.http.get(f"{p.identity.base}/.well-known/jwks.json") as response:
            return await _answer(response)

    async def token() -> tuple[int, dict[str, Any], str | None]:
        form = {"grant_type": "client_credentials", "scope": "ledger:read", "audience": "accounts"}
        basic = aiohttp.encode_basic_auth(p.service_id, p.service_secret)
        url = f"{p.identity.base}/oauth/token"
        async with p.http.post(url, data=form, headers={"Authorization": basic}) as response:
            return await _answer(response)

    return {
        "screening": screening,
        "balance": balance,
        "customer": customer,
        "new-customer": new_customer,
        "posting": posting,
        "jwks": jwks,
        "token": token,
    }


@dataclass
class Load:
    """One client per kind of request, each calling at its own pace until stopped."""

    calls: dict[str, Call]
    answers: list[tuple[str, int, dict[str, Any], str | None]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def worker(self, name: str) -> None:
        while not self.stop.is_set():
            try:
                status, body, retry_after = await self.calls[name]()
            except aiohttp.ClientError as error:  # the service itself must stay up
                pytest.fail(f"{name}: the service did not answer: {error!r}")
            self.answers.append((name, status, body, retry_after))
            await asyncio.sleep(PACE[name])


def _assert_only_successes_and_503s(
    answers: list[tuple[str, int, dict[str, Any], str | None]],
) -> Counter[tuple[str, int]]:
    statuses = Counter((name, status) for name, status, _, _ in answers)
    for name, status, body, retry_after in answers:
        if status < 300:
            continue
        assert status == 503, f"{name}: {status} {body} (all: {statuses})"
        assert body.get("type") in OUTAGE_TYPES, body
        assert retry_after is not None and int(retry_after) > 0
    return statuses


async def _restart_under_load(
    p: Platform, target: Component, outage_seconds: float = OUTAGE_SECONDS
) -> Counter[tuple[str, int]]:
    """Stop ``target`` under load, keep calling while it is down, stop the load, start
    ``target`` again; returns the statuses seen while it was going and gone."""
    load = Load(_calls(p))
    workers = [asyncio.create_task(load.worker(name)) for name in load.calls]
    try:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(target.stop)
        await asyncio.sleep(outage_seconds)
    finally:
        load.stop.set()
        await asyncio.gather(*workers)
        await asyncio.to_thread(target.up)
    statuses = _assert_only_successes_and_503s(load.answers)
    print(f"{target.name} restart under load, answers by kind and status: {dict(statuses)}")
    assert any(status == 503 for _, status in statuses), f"no outage was seen: {statuses}"
    return statuses


@pytest.fixture
def restore(settings: Settings) -> Iterator[Callable[[str], Component]]:
    """The named stack component; whatever happens, it is running again afterwards."""
    touched: list[Component] = []

    def get(name: str) -> Component:
        touched.append(component(settings, name))
        return touched[-1]

    yield get
    for target in touched:
        target.up()


async def test_postgresql_restart_under_load_answers_503_never_500_and_recovers_at_once(
    platform: Platform, restore: Callable[[str], Component]
) -> None:
    postgres = restore("postgres")
    statuses = await _restart_under_load(platform, postgres)
    assert {name for name, status in statuses if status == 503} >= {
        "balance",
        "posting",
        "token",
        "screening",
    }
    published = await _ledger_events_published(platform)
    # Every pooled connection died with the server: the first request of each kind
    # after it is back must still succeed.
    for name, call in _calls(platform).items():
        status, body, _ = await call()
        assert status in (200, 201), f"first {name} after the restart: {status} {body}"
    # The outbox relay survived the restart: the posting just made reaches Kafka.
    for _ in range(100):
        if await _ledger_events_published(platform) > published:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the accounts outbox relay published nothing after the restart")


async def _ledger_events_published(p: Platform) -> float:
    async with p.http.get(f"{p.accounts.base}/metrics") as response:
        text = await response.text()
    found = re.search(r'^lastro_events_published_total\{topic="lastro.ledger"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_kms_restart_under_load_answers_503_never_500_and_recovers_at_once(
    platform: Platform, restore: Callable[[str], Component]
) -> None:
    kms = restore("kms")
    statuses = await _restart_under_load(platform, kms)
    assert ("new-customer", 503) in statuses
    for name, call in _calls(platform).items():
        status, body, _ = await call()
        assert status in (200, 201), f"first {name} after the restart: {status} {body}"
