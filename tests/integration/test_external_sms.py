"""The simulated SMS gateway as a process: what it keeps, idempotency keys, input
checks, and `lastro dev sms` reading the stack's gateway."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from external_kit import Contract, ProviderProcess, running

from lastro.cli.sms import received_messages, render
from lastro.core.config import Settings
from lastro.core.security.tls import client_context
from lastro.external import sms

CONTRACT = Contract(sms.OPENAPI)


@pytest.fixture(scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ProviderProcess]:
    async with running("sms", tmp_path_factory.mktemp("sms")) as process:
        yield process


@pytest.fixture
async def http(gateway: ProviderProcess) -> AsyncIterator[aiohttp.ClientSession]:
    async with gateway.session() as session:
        yield session


async def send(
    http: aiohttp.ClientSession, body: dict[str, Any], key: str | None = None
) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    headers = {"Idempotency-Key": key or uuid.uuid4().hex}
    async with http.post("/v1/messages", json=body, headers=headers) as response:
        return response.status, await response.json(), response


async def listed(http: aiohttp.ClientSession, **params: str) -> list[dict[str, Any]]:
    async with http.get("/v1/messages", params=params) as response:
        body = await response.json()
        assert response.status == 200, body
    CONTRACT.check("GET", "/v1/messages", 200, body)
    messages: list[dict[str, Any]] = body["messages"]
    return messages


async def test_a_message_is_queued_and_kept_as_received(http: aiohttp.ClientSession) -> None:
    reference = f"ntf_{uuid.uuid4().hex}"
    body = {"to": "+351912345678", "body": "Your code is 482913", "reference": reference}
    status, message, _ = await send(http, body)
    assert status == 201
    CONTRACT.check("POST", "/v1/messages", 201, message)
    assert (message["status"], message["to"], message["body"]) == (
        "queued",
        "+351912345678",
        "Your code is 482913",
    )
    assert await listed(http, reference=reference) == [message]
    assert message in await listed(http, to="+351912345678")
    assert message not in await listed(http, to="+351900000000")
    async with http.get(f"/v1/messages/{message['id']}") as response:
        assert await response.json() == message
    async with http.get("/v1/messages/sms_nope") as response:
        assert response.status == 404


async def test_newest_messages_come_first(http: aiohttp.ClientSession) -> None:
    to = "+4915112345678"
    for n in range(3):
        await send(http, {"to": to, "body": f"message {n}"})
    bodies = [m["body"] for m in await listed(http, to=to, limit="2")]
    assert bodies == ["message 2", "message 1"]


async def test_one_key_sends_one_message(http: aiohttp.ClientSession) -> None:
    reference = f"ntf_{uuid.uuid4().hex}"
    body = {"to": "+14155550100", "body": "Payment received", "reference": reference}
    key = uuid.uuid4().hex
    answers = await asyncio.gather(*(send(http, body, key) for _ in range(20)))
    assert {(status, m["id"]) for status, m, _ in answers} == {(201, answers[0][1]["id"])}
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for _, _, r in answers) == 19
    assert len(await listed(http, reference=reference)) == 1
    status, problem, _ = await send(http, {**body, "body": "Payment refunded"}, key)
    assert status == 422 and problem["type"].endswith("/idempotency-key-reused")
    async with http.post("/v1/messages", json=body) as response:
        assert response.status == 400
    assert len(await listed(http, reference=reference)) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"to": "912345678", "body": "x"}, "to"),
        ({"to": "+0123", "body": "x"}, "to"),
        ({"to": "+351912345678", "body": ""}, "body"),
        ({"to": "+351912345678", "body": "x" * 1601}, "body"),
        ({"to": "+351912345678"}, "body"),
    ],
)
async def test_bad_messages_are_refused_naming_the_field(
    http: aiohttp.ClientSession, body: dict[str, Any], field: str
) -> None:
    status, problem, _ = await send(http, body)
    assert status == 422
    assert field in {e["field"] for e in problem["errors"]}


async def test_the_cli_lists_what_the_gateway_received(
    gateway: ProviderProcess, http: aiohttp.ClientSession, settings: Settings
) -> None:
    reference = f"ntf_{uuid.uuid4().hex}"
    await send(
        http, {"to": "+351934567890", "body": "Login from a new device", "reference": reference}
    )
    pointed = dataclasses.replace(
        settings,
        ca_file=gateway.ca_file,
        service_ports={**settings.service_ports, "sms": gateway.port},
        partner_api_keys={**settings.partner_api_keys, "sms": gateway.api_key},
    )
    found = await asyncio.to_thread(received_messages, pointed, reference=reference)
    assert [m["body"] for m in found] == ["Login from a new device"]
    assert "+351934567890" in render(found) and reference in render(found)
    assert render([]) == "no messages"


async def test_lastro_dev_sms_reads_the_stacks_gateway(settings: Settings) -> None:
    reference = f"ntf_{uuid.uuid4().hex}"
    async with aiohttp.ClientSession(
        base_url=settings.service_url("sms"),
        headers={"Authorization": f"Bearer {settings.partner_api_keys['sms']}"},
        connector=aiohttp.TCPConnector(ssl=client_context(settings.ca_file)),
    ) as http:
        status, _, _ = await send(
            http, {"to": "+351911111111", "body": "Stack says hello", "reference": reference}
        )
        assert status == 201
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "lastro.cli", "dev", "sms", "--reference", reference],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Stack says hello" in result.stdout and "+351911111111" in result.stdout
