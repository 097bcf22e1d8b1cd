"""Fault injection on the simulated third parties (the shared middleware, driven
through the SMS gateway, and wired into every provider): latency, error rates,
outages, timeouts, faults after the effect, and reset."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from external_kit import ProviderProcess, running

WEBHOOK_ENV = {"LASTRO_ACQUIRER_WEBHOOK_SECRET": "whsec_faults"}


@pytest.fixture(scope="module")
async def sms(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ProviderProcess]:
    async with running("sms", tmp_path_factory.mktemp("sms-faults")) as process:
        yield process


@pytest.fixture
async def http(sms: ProviderProcess) -> AsyncIterator[aiohttp.ClientSession]:
    async with sms.session() as session:
        yield session
        async with session.post("/admin/reset") as response:
            assert response.status == 200


async def faults(http: aiohttp.ClientSession, **plan: Any) -> dict[str, Any]:
    async with http.post("/admin/faults", json=plan) as response:
        body: dict[str, Any] = await response.json()
        assert response.status == 200, body
    return body


async def status_of(http: aiohttp.ClientSession, path: str = "/v1/messages") -> int:
    async with http.get(path) as response:
        await response.read()
        return response.status


async def send(
    http: aiohttp.ClientSession, key: str, reference: str, **kwargs: Any
) -> aiohttp.ClientResponse:
    body = {"to": "+351910000001", "body": "fault test", "reference": reference}
    async with http.post(
        "/v1/messages", json=body, headers={"Idempotency-Key": key}, **kwargs
    ) as response:
        await response.read()
        return response


async def sent(http: aiohttp.ClientSession, reference: str) -> list[dict[str, Any]]:
    async with http.get("/v1/messages", params={"reference": reference}) as response:
        messages: list[dict[str, Any]] = (await response.json())["messages"]
        return messages


async def test_latency_delays_api_requests(http: aiohttp.ClientSession) -> None:
    shown = await faults(http, latency_ms=400)
    assert shown["latency_ms"] == 400
    started = time.monotonic()
    assert await status_of(http) == 200
    assert time.monotonic() - started >= 0.4
    async with http.get("/admin/faults") as response:
        assert (await response.json())["latency_ms"] == 400


async def test_an_error_rate_of_one_fails_every_request_without_effect(
    http: aiohttp.ClientSession,
) -> None:
    await faults(http, error_rate="1")
    for _ in range(5):
        async with http.get("/v1/messages") as response:
            assert response.status == 500
            assert (await response.json())["type"].endswith("/provider-error")
    key, reference = uuid.uuid4().hex, uuid.uuid4().hex
    assert (await send(http, key, reference)).status == 500
    await faults(http, error_rate="0")
    retried = await send(http, key, reference)
    assert retried.status == 201 and "Idempotent-Replayed" not in retried.headers
    assert len(await sent(http, reference)) == 1


async def test_a_seeded_error_rate_fails_a_repeatable_share(http: aiohttp.ClientSession) -> None:
    async def run() -> list[int]:
        await faults(http, error_rate="0.5", seed=42)
        return [await status_of(http) for _ in range(20)]

    first = await run()
    assert first == await run()
    assert set(first) == {200, 500}


async def test_an_outage_answers_503_or_drops_the_connection(http: aiohttp.ClientSession) -> None:
    await faults(http, outage=True)
    async with http.get("/v1/messages") as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "5"
        assert (await response.json())["type"].endswith("/provider-unavailable")
    await faults(http, outage=True, outage_mode="disconnect")
    with pytest.raises(aiohttp.ClientConnectionError):
        await status_of(http)
    async with http.get("/admin/faults") as response:  # the control surface stays up
        assert (await response.json())["outage_mode"] == "disconnect"
    async with http.get("/healthz") as response:
        assert response.status == 200
    async with http.post("/admin/reset") as response:
        assert response.status == 200
    assert await status_of(http) == 200


async def test_a_timeout_holds_requests_past_the_callers_timeout_until_reset(
    http: aiohttp.ClientSession,
) -> None:
    await faults(http, timeout=True)
    with pytest.raises(asyncio.TimeoutError):
        await status_of_within(http, 0.5)
    held = asyncio.create_task(status_of_within(http, 30))
    await asyncio.sleep(0.5)
    assert not held.done()
    async with http.post("/admin/reset") as response:
        assert response.status == 200
    assert await held == 504
    assert await status_of(http) == 200


async def status_of_within(http: aiohttp.ClientSession, seconds: float) -> int:
    timeout = aiohttp.ClientTimeout(total=seconds)
    async with http.get("/v1/messages", timeout=timeout) as response:
        await response.read()
        return response.status


async def test_after_the_effect_the_answer_is_lost_but_the_key_replays_it(
    http: aiohttp.ClientSession,
) -> None:
    await faults(http, error_rate="1", after_effect=True)
    key, reference = uuid.uuid4().hex, uuid.uuid4().hex
    assert (await send(http, key, reference)).status == 500
    await faults(http, timeout=True, after_effect=True)
    with pytest.raises(asyncio.TimeoutError):
        await send(http, key, reference, timeout=aiohttp.ClientTimeout(total=0.5))
    async with http.post("/admin/reset") as response:
        assert response.status == 200
    replayed = await send(http, key, reference)
    assert replayed.status == 201
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert len(await sent(http, reference)) == 1


@pytest.mark.parametrize(
    "plan",
    [
        {"error_rate": "1.5"},
        {"error_rate": 0.5},
        {"latency_ms": -1},
        {"outage_mode": "sideways"},
        {"surprise": True},
    ],
)
async def test_bad_faults_are_refused_and_change_nothing(
    http: aiohttp.ClientSession, plan: dict[str, Any]
) -> None:
    await faults(http, latency_ms=5)
    async with http.post("/admin/faults", json=plan) as response:
        assert response.status == 422
    async with http.get("/admin/faults") as response:
        assert (await response.json())["latency_ms"] == 5


@pytest.mark.parametrize("name", ["fx", "acquirer"])
async def test_every_provider_takes_faults_and_resets(
    tmp_path_factory: pytest.TempPathFactory, name: str
) -> None:
    path = {"fx": "/v1/rates", "acquirer": "/v1/records"}[name]
    async with (
        running(name, tmp_path_factory.mktemp(name), WEBHOOK_ENV) as provider,
        provider.session() as http,
    ):
        await faults(http, outage=True)
        assert await status_of(http, path) == 503
        async with http.post("/admin/reset") as response:
            assert (await response.json())["outage"] is False
        assert await status_of(http, path) == 200
