"""Idempotency keys against the dev stack's PostgreSQL, through a real HTTP app."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from schemas import unique_schema
from sqlalchemy import MetaData, Table, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.schema import CreateSchema, DropSchema

from issuerkit import TestIssuer
from lastro.core.config import Settings
from lastro.core.db import open_statement_pool
from lastro.core.http import PRINCIPAL_KEY, create_app, json_body, json_response
from lastro.core.idempotency import (
    idempotency_middleware,
    idempotency_table,
    idempotent_operations,
    purge_expired_keys,
)
from lastro.core.openapi import ApiContract
from lastro.core.problems import Problem

SPEC = """
openapi: 3.1.0
info: {title: idempotency tests, version: 1.0.0}
security: [{bearer: [transfers:write]}]
components:
  securitySchemes:
    bearer: {type: http, scheme: bearer}
paths:
  /v1/transfers:
    post:
      x-idempotent: true
      requestBody:
        required: true
        content:
          application/json:
            schema:
              type: object
              required: [amount, currency]
              properties:
                amount: {type: integer, minimum: 1}
                currency: {type: string}
                fail: {type: boolean}
      responses: {"201": {description: accepted}}
  /v1/notes:
    post:
      responses: {"201": {description: not money, no key needed}}
"""
PROBLEM_JSON = "application/problem+json"
Client = TestClient[web.Request, web.Application]


@dataclass
class Ledger:
    """What the handler did: every transfer it executed, and a gate to hold it."""

    executed: list[dict[str, Any]] = field(default_factory=list)
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.opened.set()


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("idempotency") / "openapi.yaml"
    path.write_text(SPEC)
    return path


@pytest.fixture(scope="module")
def issuer() -> TestIssuer:
    return TestIssuer(audience="idempotency-test")


@pytest.fixture
async def table(engine: AsyncEngine) -> AsyncIterator[Table]:
    schema = unique_schema("idem")
    metadata = MetaData(schema=schema)
    keys = idempotency_table(metadata)
    async with engine.begin() as conn:
        await conn.execute(CreateSchema(schema))
        await conn.run_sync(metadata.create_all)
    yield keys
    async with engine.begin() as conn:
        await conn.execute(DropSchema(schema, cascade=True))


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


@pytest.fixture
async def client(
    settings: Settings,
    spec: Path,
    issuer: TestIssuer,
    engine: AsyncEngine,
    table: Table,
    ledger: Ledger,
) -> AsyncIterator[Client]:
    routes = web.RouteTableDef()

    @routes.post("/v1/transfers")
    async def create_transfer(request: web.Request) -> web.Response:
        body = await json_body(request)
        ledger.entered.set()
        await ledger.opened.wait()
        if body.get("fail"):
            raise RuntimeError("acquirer timed out")
        if body["amount"] > 1_000_000:
            raise Problem(422, "insufficient-funds", "Insufficient funds", "Balance too low.")
        if body["amount"] > 100_000 and "otp" not in request[PRINCIPAL_KEY].amr:
            raise Problem(401, "insufficient-user-authentication", "Step-up required")
        ledger.executed.append(body)
        transfer_id = f"txn_{uuid.uuid4().hex}"
        return json_response(
            {"id": transfer_id, **body}, 201, headers={"Location": f"/v1/transfers/{transfer_id}"}
        )

    @routes.post("/v1/notes")
    async def create_note(request: web.Request) -> web.Response:
        return json_response({"ok": True}, 201)

    operations = idempotent_operations(ApiContract.load(spec))
    keys = await open_statement_pool(settings, name="idempotency-test")
    app = create_app(
        name="idempotency-test",
        settings=settings,
        openapi_path=spec,
        routes=routes,
        auth=issuer.verifier(),
        middlewares=[idempotency_middleware(engine, keys, table, operations)],
    )
    try:
        async with TestClient(TestServer(app)) as test_client:
            yield test_client
    finally:
        await keys.close()


def headers(issuer: TestIssuer, key: str | None, client_id: str = "cli_a") -> dict[str, str]:
    token = issuer.mint(scope="transfers:write", client_id=client_id, subject="usr_a")
    out = {"Authorization": f"Bearer {token}"}
    if key is not None:
        out["Idempotency-Key"] = key
    return out


async def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM_JSON
    document: dict[str, Any] = await response.json(content_type=PROBLEM_JSON)
    return document


def test_only_marked_operations_need_a_key(spec: Path) -> None:
    assert idempotent_operations(ApiContract.load(spec)) == {("POST", "/v1/transfers")}


async def test_replay_returns_the_identical_response_and_runs_the_handler_once(
    client: Client, issuer: TestIssuer, ledger: Ledger
) -> None:
    key = str(uuid.uuid4())
    body = {"amount": 2500, "currency": "BRL"}
    first = await client.post("/v1/transfers", json=body, headers=headers(issuer, key))
    assert first.status == 201
    assert "Idempotent-Replayed" not in first.headers

    # Same request, members in another order: still the same request.
    again = await client.post(
        "/v1/transfers",
        data='{"currency": "BRL",  "amount": 2500}',
        headers={**headers(issuer, f'"{key}"'), "Content-Type": "application/json"},
    )
    assert again.status == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.read() == await first.read()
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Content-Type"] == first.headers["Content-Type"]
    assert len(ledger.executed) == 1


async def test_same_key_with_a_different_body_is_422(
    client: Client, issuer: TestIssuer, ledger: Ledger
) -> None:
    key = str(uuid.uuid4())
    body = {"amount": 2500, "currency": "BRL"}
    assert (
        await client.post("/v1/transfers", json=body, headers=headers(issuer, key))
    ).status == 201
    changed = await client.post(
        "/v1/transfers", json={**body, "amount": 9999}, headers=headers(issuer, key)
    )
    document = await problem(changed, 422)
    assert document["type"] == "https://lastro.dev/problems/idempotency-key-reused"
    assert len(ledger.executed) == 1


async def test_concurrent_requests_with_one_key_run_the_handler_once(
    client: Client, issuer: TestIssuer, ledger: Ledger
) -> None:
    key = str(uuid.uuid4())
    body = {"amount": 700, "currency": "EUR"}
    ledger.opened.clear()
    first = asyncio.create_task(
        client.post("/v1/transfers", json=body, headers=headers(issuer, key))
    )
    await asyncio.wait_for(ledger.entered.wait(), 5)
    racing = await asyncio.gather(
        *(client.post("/v1/transfers", json=body, headers=headers(issuer, key)) for _ in range(5))
    )
    for response in racing:
        document = await problem(response, 409)
        assert document["type"] == "https://lastro.dev/problems/idempotency-key-in-flight"
        assert response.headers["Retry-After"] == "1"
    ledger.opened.set()
    assert (await first).status == 201
    assert len(ledger.executed) == 1


async def test_simultaneous_first_requests_race_to_one_execution(
    client: Client, issuer: TestIssuer, ledger: Ledger
) -> None:
    key = str(uuid.uuid4())
    body = {"amount": 700, "currency": "EUR"}
    responses = await asyncio.gather(
        *(client.post("/v1/transfers", json=body, headers=headers(issuer, key)) for _ in range(8))
    )
    statuses = sorted(r.status for r in responses)
    assert statuses.count(201) >= 1
    assert set(statuses) <= {201, 409}
    created = [r for r in responses if r.status == 201]
    bodies = {await r.read() for r in created}
    assert len(bodies) == 1  # every 201 is the one execution, replayed
    assert len(ledger.executed) == 1


async def test_missing_key_is_400_and_the_handler_never_runs(
    client: Client, issuer: TestIssuer, ledger: Ledger
) -> None:
    response = await client.post(
        "/v1/transfers", json={"amount": 1, "currency": "EUR"}, headers=headers(issuer, None)
    )
    document = await problem(response, 400)
    assert document["type"] == "https://lastro.dev/problems/idempotency-key-missing"
    assert ledger.executed == []
    assert (await client.post("/v1/notes", headers=headers(issuer, None))).status == 201


async def test_malformed_key_is_400(client: Client, issuer: TestIssuer) -> None:
    response = await client.post(
        "/v1/transfers", json={"amount": 1, "currency": "EUR"}, headers=headers(issuer, "x" * 256)
    )
    document = await problem(response, 400)
    assert document["type"] == "https://lastro.dev/problems/idempotency-key-invalid"


async def test_keys_are_scoped_per_client(
    client: Client, issuer: TestIssuer, ledger: Ledger
) -> None:
    key = str(uuid.uuid4())
    body = {"amount": 10, "currency": "EUR"}
    one = await client.post("/v1/transfers", json=body, headers=headers(issuer, key, "cli_a"))
    two = await client.post("/v1/transfers", json=body, headers=headers(issuer, key, "cli_b"))
    assert (one.status, two.status) == (201, 201)
    assert "Idempotent-Replayed" not in two.headers
    assert len(ledger.executed) == 2


async def test_server_failure_releases_the_key_for_a_retry(
    client: Client, issuer: TestIssuer, ledger: Ledger
) -> None:
    key = str(uuid.uuid4())
    failing = await client.post(
        "/v1/transfers",
        json={"amount": 10, "currency": "EUR", "fail": True},
        headers=headers(issuer, key),
    )
    await problem(failing, 500)
    retried = await client.post(
        "/v1/transfers", json={"amount": 10, "currency": "EUR"}, headers=headers(issuer, key)
    )
    assert retried.status == 201
    assert "Idempotent-Replayed" not in retried.headers
    assert len(ledger.executed) == 1


async def test_client_errors_are_stored_and_replayed(
    client: Client, issuer: TestIssuer, ledger: Ledger
) -> None:
    key = str(uuid.uuid4())
    body = {"amount": 5_000_000, "currency": "EUR"}
    first = await client.post("/v1/transfers", json=body, headers=headers(issuer, key))
    document = await problem(first, 422)
    assert document["type"] == "https://lastro.dev/problems/insufficient-funds"
    again = await client.post("/v1/transfers", json=body, headers=headers(issuer, key))
    assert await problem(again, 422) == document
    assert again.headers["Idempotent-Replayed"] == "true"


async def test_expired_keys_are_purged_and_can_be_used_afresh(
    client: Client, issuer: TestIssuer, ledger: Ledger, engine: AsyncEngine, table: Table
) -> None:
    old, kept = str(uuid.uuid4()), str(uuid.uuid4())
    body = {"amount": 10, "currency": "EUR"}
    for key in (old, kept):
        response = await client.post("/v1/transfers", json=body, headers=headers(issuer, key))
        assert response.status == 201
    async with engine.begin() as conn:
        # Age one key past its retention, keeping the 24 h minimum between the stamps.
        await conn.execute(
            update(table)
            .where(table.c.key == old)
            .values(
                created_at=func.now() - func.make_interval(0, 0, 0, 2),
                expires_at=func.now() - func.make_interval(0, 0, 0, 1),
            )
        )
    assert await purge_expired_keys(engine, table, batch_size=1) == 1
    async with engine.connect() as conn:
        remaining = (await conn.execute(select(table.c.key))).scalars().all()
    assert remaining == [kept]

    fresh = await client.post("/v1/transfers", json=body, headers=headers(issuer, old))
    assert fresh.status == 201
    assert "Idempotent-Replayed" not in fresh.headers
    assert len(ledger.executed) == 3


async def test_a_step_up_challenge_is_not_remembered_so_the_same_key_retries_with_mfa(
    client: Client, issuer: TestIssuer, ledger: Ledger
) -> None:
    key = str(uuid.uuid4())
    body = {"amount": 250_000, "currency": "EUR"}
    await problem(await client.post("/v1/transfers", json=body, headers=headers(issuer, key)), 401)
    assert ledger.executed == []
    stepped_up = issuer.mint(
        scope="transfers:write", client_id="cli_a", subject="usr_a", amr=["pwd", "otp"]
    )
    retried = await client.post(
        "/v1/transfers",
        json=body,
        headers={"Authorization": f"Bearer {stepped_up}", "Idempotency-Key": key},
    )
    assert retried.status == 201 and "Idempotent-Replayed" not in retried.headers
    assert len(ledger.executed) == 1
