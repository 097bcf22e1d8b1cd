"""The simulated FX provider as a process: API keys, moving decimal rates, the
contract, and the stack's own instance answering with the stack's key."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from decimal import Decimal

import aiohttp
import pytest
from external_kit import Contract, ProviderProcess, running

from lastro.core.config import Settings
from lastro.core.security.tls import client_context
from lastro.external import fx

CONTRACT = Contract(fx.OPENAPI)
DECIMAL = re.compile(r"^[0-9]+\.[0-9]+$")


@pytest.fixture(scope="module")
async def provider(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ProviderProcess]:
    async with running("fx", tmp_path_factory.mktemp("fx")) as process:
        yield process


async def _rate(http: aiohttp.ClientSession, base: str, quote: str) -> dict[str, str]:
    async with http.get("/v1/rates", params={"base": base, "quote": quote}) as response:
        assert response.status == 200, await response.text()
        body: dict[str, str] = await response.json()
    CONTRACT.check("GET", "/v1/rates", 200, body)
    return body


async def test_a_rate_is_a_decimal_string_with_its_time(provider: ProviderProcess) -> None:
    async with provider.session() as http:
        body = await _rate(http, "EUR", "USD")
    assert (body["base"], body["quote"]) == ("EUR", "USD")
    assert isinstance(body["rate"], str) and DECIMAL.match(body["rate"])
    assert Decimal("0.9") < Decimal(body["rate"]) < Decimal("1.5")
    assert body["as_of"].endswith("Z")


async def test_rates_move_over_time(provider: ProviderProcess) -> None:
    seen: dict[str, str] = {}
    async with provider.session() as http:
        for _ in range(12):
            body = await _rate(http, "EUR", "GBP")
            seen[body["as_of"]] = body["rate"]
            if len(set(seen.values())) >= 3:
                break
            await asyncio.sleep(0.5)
    assert len(set(seen.values())) >= 3, seen
    rates = [Decimal(r) for r in seen.values()]
    assert max(rates) / min(rates) < Decimal("1.01")  # moves, but like a real market


async def test_every_pair_is_listed_and_pairs_are_consistent(provider: ProviderProcess) -> None:
    async with provider.session() as http:
        async with http.get("/v1/rates") as response:
            body = await response.json()
        CONTRACT.check("GET", "/v1/rates", 200, body)
        async with http.get("/v1/rates", params={"base": "BRL"}) as response:
            brl = await response.json()
    currencies = set(fx.MID_RATES)
    pairs = {(r["base"], r["quote"]) for r in body["rates"]}
    assert pairs == {(b, q) for b in currencies for q in currencies if b != q}
    assert {r["as_of"] for r in body["rates"]} == {body["as_of"]}
    assert {r["base"] for r in brl["rates"]} == {"BRL"} and len(brl["rates"]) == 9
    rate = {(r["base"], r["quote"]): Decimal(r["rate"]) for r in body["rates"]}
    assert abs(rate[("EUR", "USD")] * rate[("USD", "EUR")] - 1) < Decimal("0.00001")


async def test_an_unquoted_currency_is_a_422_and_a_pair_with_itself_is_one(
    provider: ProviderProcess,
) -> None:
    async with provider.session() as http:
        async with http.get("/v1/rates", params={"base": "XXX", "quote": "USD"}) as response:
            assert response.status == 422
            problem = await response.json()
        assert problem["errors"][0]["field"] == "base"
        assert (await _rate(http, "JPY", "JPY"))["rate"] == "1"


@pytest.mark.parametrize("key", [None, "not-the-key"])
async def test_the_api_refuses_callers_without_the_providers_key(
    provider: ProviderProcess, key: str | None
) -> None:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_context(provider.ca_file))
        ) as http,
        http.get(f"{provider.base}/v1/rates", headers=headers) as response,
    ):
        assert response.status == 401
        assert response.content_type == "application/problem+json"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_key_that_is_not_utf8_is_refused_not_crashed_on(provider: ProviderProcess) -> None:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", provider.port, ssl=client_context(provider.ca_file)
    )
    writer.write(
        b"GET /v1/rates HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n"
    )
    status_line = await reader.readline()
    writer.close()
    assert status_line.split()[1] == b"401"


async def test_operational_routes_need_no_key(provider: ProviderProcess) -> None:
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_context(provider.ca_file))
        ) as http,
    ):
        for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
            async with http.get(f"{provider.base}{path}") as response:
                assert response.status == 200, path


def test_the_stack_wrote_each_providers_key_for_its_owner_only(settings: Settings) -> None:
    for name in ("fx", "acquirer", "sms"):
        assert settings.partner_api_keys[name].startswith(f"{name}_test_")
        key_file = settings.dev_dir / "secrets" / f"{name}_api_key"
        assert key_file.stat().st_mode & 0o077 == 0
    assert settings.acquirer_webhook_secret.startswith("whsec_")


@pytest.mark.parametrize("name", ["fx", "acquirer", "sms"])
async def test_the_stack_runs_each_provider_behind_the_key_it_wrote(
    settings: Settings, name: str
) -> None:
    key = settings.partner_api_keys[name]
    path = {"fx": "/v1/rates", "acquirer": "/v1/records", "sms": "/v1/messages"}[name]
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=client_context(settings.ca_file))
    ) as http:
        url = settings.service_url(name) + path
        async with http.get(url, headers={"Authorization": f"Bearer {key}"}) as response:
            assert response.status == 200, await response.text()
        async with http.get(url, headers={"Authorization": "Bearer wrong"}) as response:
            assert response.status == 401
