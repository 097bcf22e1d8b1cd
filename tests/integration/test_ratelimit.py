"""Rate limits, lockout and concurrency limits against the dev stack's Redis."""

from __future__ import annotations

import asyncio
import math
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.typedefs import Middleware
from redis.asyncio import Redis

from issuerkit import TestIssuer
from lastro.core.config import Settings
from lastro.core.http import create_app, json_response
from lastro.core.observability import metrics_registry
from lastro.core.problems import Problem
from lastro.core.ratelimit import (
    AUTH,
    DEFAULT,
    ConcurrencyLimiter,
    FailureLockout,
    RateLimiter,
    RateLimitPolicy,
    concurrency_limit_middleware,
    rate_limit_middleware,
    route_classifier,
)

SPEC = """
openapi: 3.1.0
info: {title: rate limit tests, version: 1.0.0}
security: [{bearer: []}]
components:
  securitySchemes:
    bearer: {type: http, scheme: bearer}
paths:
  /oauth/token:
    post:
      security: []
      responses: {"200": {description: a token}}
  /v1/things:
    get:
      responses: {"200": {description: things}}
  /v1/slow:
    get:
      responses: {"200": {description: slow things}}
"""
PROBLEM_JSON = "application/problem+json"
CLASSES = {"/oauth/token": AUTH}
Client = TestClient[web.Request, web.Application]


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ratelimit") / "openapi.yaml"
    path.write_text(SPEC)
    return path


@pytest.fixture(scope="module")
def issuer() -> TestIssuer:
    return TestIssuer(audience="ratelimit-test")


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(redis: Redis) -> AsyncIterator[str]:
    """A key prefix no other test (or run) shares; its keys are removed afterwards."""
    value = f"test:{uuid.uuid4().hex}"
    yield value
    keys = [key async for key in redis.scan_iter(match=f"{value}:*")]
    if keys:
        await redis.delete(*keys)


class Gate:
    """Holds requests to /v1/slow inside the handler until opened."""

    def __init__(self, expected: int = 0) -> None:
        self.expected = expected
        self.inside = 0
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()


def build_app(
    settings: Settings,
    spec: Path,
    issuer: TestIssuer,
    middlewares: Sequence[Middleware],
    gate: Gate,
) -> web.Application:
    routes = web.RouteTableDef()

    @routes.post("/oauth/token")
    async def token(request: web.Request) -> web.Response:
        return json_response({"access_token": "x"})

    @routes.get("/v1/things")
    async def things(request: web.Request) -> web.Response:
        return json_response({"things": []})

    @routes.get("/v1/slow")
    async def slow(request: web.Request) -> web.Response:
        gate.inside += 1
        if gate.inside >= gate.expected:
            gate.entered.set()
        await gate.opened.wait()
        gate.inside -= 1
        return json_response({"slow": True})

    return create_app(
        name="ratelimit-test",
        settings=settings,
        openapi_path=spec,
        routes=routes,
        auth=issuer.verifier(),
        middlewares=middlewares,
    )


@pytest.fixture
async def clients(
    settings: Settings, spec: Path, issuer: TestIssuer
) -> AsyncIterator[Callable[..., Any]]:
    """Start test servers on demand; all are closed after the test."""
    made: list[Client] = []

    async def make(middlewares: Sequence[Middleware], gate: Gate | None = None) -> Client:
        app = build_app(settings, spec, issuer, middlewares, gate or Gate())
        client: Client = TestClient(TestServer(app))
        await client.start_server()
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


def bearer(issuer: TestIssuer, client_id: str = "cli_a", subject: str = "usr_a") -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.mint(client_id=client_id, subject=subject)}"}


def limits(
    redis: Redis, prefix: str, policies: Mapping[str, Sequence[RateLimitPolicy]]
) -> Middleware:
    return rate_limit_middleware(redis, policies, route_classifier(CLASSES), prefix=f"{prefix}:rl")


async def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM_JSON
    document: dict[str, Any] = await response.json(content_type=PROBLEM_JSON)
    assert document["status"] == status
    return document


async def test_flood_gets_429_with_retry_after_and_ratelimit_headers(
    redis: Redis, prefix: str, clients: Callable[..., Any], issuer: TestIssuer
) -> None:
    policies = {DEFAULT: (RateLimitPolicy("default", 5, 60),)}
    client: Client = await clients([limits(redis, prefix, policies)])
    headers = bearer(issuer)
    for remaining in (4, 3, 2, 1, 0):
        response = await client.get("/v1/things", headers=headers)
        assert response.status == 200
        assert response.headers["RateLimit-Policy"] == '"default";q=5;w=60'
        assert response.headers["RateLimit"].startswith(f'"default";r={remaining};t=')

    response = await client.get("/v1/things", headers=headers)
    document = await problem(response, 429)
    assert document["type"] == "https://lastro.dev/problems/rate-limited"
    # One request every 60/5 = 12 s once the burst of 5 is spent.
    assert response.headers["Retry-After"] in ("11", "12")
    assert response.headers["RateLimit-Policy"] == '"default";q=5;w=60'
    assert response.headers["RateLimit"] == (f'"default";r=0;t={response.headers["Retry-After"]}')


async def test_retry_after_is_when_the_next_request_is_admitted(
    redis: Redis, prefix: str, clients: Callable[..., Any], issuer: TestIssuer
) -> None:
    policies = {DEFAULT: (RateLimitPolicy("default", 2, 2),)}
    client: Client = await clients([limits(redis, prefix, policies)])
    headers = bearer(issuer)
    assert (await client.get("/v1/things", headers=headers)).status == 200
    assert (await client.get("/v1/things", headers=headers)).status == 200
    refused = await client.get("/v1/things", headers=headers)
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "1"
    await asyncio.sleep(1.05)
    assert (await client.get("/v1/things", headers=headers)).status == 200


async def test_clients_are_limited_separately(
    redis: Redis, prefix: str, clients: Callable[..., Any], issuer: TestIssuer
) -> None:
    policies = {DEFAULT: (RateLimitPolicy("default", 3, 60),)}
    client: Client = await clients([limits(redis, prefix, policies)])
    greedy = bearer(issuer, client_id="cli_greedy")
    for _ in range(3):
        assert (await client.get("/v1/things", headers=greedy)).status == 200
    assert (await client.get("/v1/things", headers=greedy)).status == 429

    polite = await client.get("/v1/things", headers=bearer(issuer, client_id="cli_polite"))
    assert polite.status == 200
    assert polite.headers["RateLimit"].startswith('"default";r=2;')


async def test_auth_endpoint_is_limited_per_ip_without_a_token(
    redis: Redis, prefix: str, clients: Callable[..., Any]
) -> None:
    policies = {
        DEFAULT: (RateLimitPolicy("default", 100, 60),),
        AUTH: (
            RateLimitPolicy("auth-ip", 2, 60, "ip"),
            RateLimitPolicy("auth-user", 2, 60, "user"),
        ),
    }
    client: Client = await clients([limits(redis, prefix, policies)])
    assert (await client.post("/oauth/token")).status == 200
    assert (await client.post("/oauth/token")).status == 200
    refused = await client.post("/oauth/token")
    document = await problem(refused, 429)
    assert "auth-" in document["detail"]
    assert refused.headers["RateLimit-Policy"] == '"auth-ip";q=2;w=60, "auth-user";q=2;w=60'


async def test_limits_finer_than_the_clock_admit_and_keep_their_step(
    redis: Redis, prefix: str
) -> None:
    """A policy so generous that one request's step is below what a double holds at
    today's epoch in milliseconds (a billion a minute) admits every request: it used
    to make Redis refuse the key's zero expiry, so the limiter failed open and logged
    every request. Steps keep their fractions of a millisecond: after the first request
    of 7 a minute the arrival time is Redis's clock in whole milliseconds plus
    8571.4286, which the script used to store rounded to 0.1 (at a million a minute,
    a 0.06 ms step rounded to 0.1 or to nothing)."""
    limiter = RateLimiter(redis, prefix=prefix)
    huge = RateLimitPolicy("internal", 1_000_000_000, 60)
    for _ in range(5):
        decision = await limiter.hit([(huge, "cli_worker")])
        assert decision.allowed
    fine = RateLimitPolicy("fine", 7, 60)
    assert (await limiter.hit([(fine, "cli_worker")])).allowed
    (key,) = [key async for key in redis.scan_iter(match=f"{prefix}:fine:*", count=10_000)]
    arrival = float(await redis.get(key))
    assert arrival - math.floor(arrival) == pytest.approx(60_000 / 7 % 1, abs=1e-3)


async def test_lockout_grows_then_success_clears_it(redis: Redis, prefix: str) -> None:
    lockout = FailureLockout(
        redis, name="login", threshold=3, base_seconds=1, max_seconds=4, prefix=prefix
    )
    locks = [await lockout.record_failure("alice@example.com") for _ in range(6)]
    assert locks == [0.0, 0.0, 1.0, 2.0, 4.0, 4.0]
    assert 3.5 < await lockout.is_locked("alice@example.com") <= 4.0
    assert await lockout.is_locked("bob@example.com") == 0.0

    with pytest.raises(Problem) as caught:
        await lockout.ensure_unlocked("alice@example.com")
    assert caught.value.status == 429
    assert caught.value.headers["Retry-After"] == "4"

    await lockout.record_success("alice@example.com")
    assert await lockout.is_locked("alice@example.com") == 0.0
    assert await lockout.record_failure("alice@example.com") == 0.0


async def test_lock_expires_on_its_own(redis: Redis, prefix: str) -> None:
    lockout = FailureLockout(redis, name="totp", threshold=1, base_seconds=0.2, prefix=prefix)
    assert await lockout.record_failure("usr_1") == 0.2
    assert await lockout.is_locked("usr_1") > 0
    await asyncio.sleep(0.3)
    assert await lockout.is_locked("usr_1") == 0.0
    await lockout.ensure_unlocked("usr_1")


async def test_lockout_keys_never_hold_the_subject(redis: Redis, prefix: str) -> None:
    lockout = FailureLockout(redis, name="login", threshold=1, prefix=prefix)
    await lockout.record_failure("carol@example.com")
    # Large scan steps: the lock lives 1 s, and a dev Redis full of benchmark keys
    # took longer than that to walk ten keys at a time.
    keys = [key.decode() async for key in redis.scan_iter(match=f"{prefix}:*", count=10_000)]
    assert len(keys) == 2
    assert not any("carol" in key for key in keys)


async def test_concurrency_limiter_caps_in_flight_requests_and_releases_slots(
    redis: Redis, prefix: str, clients: Callable[..., Any], issuer: TestIssuer
) -> None:
    limiter = ConcurrencyLimiter(redis, limit=2, prefix=prefix)
    gate = Gate(expected=2)
    client: Client = await clients(
        [concurrency_limit_middleware(limiter, route_classifier(CLASSES))], gate
    )
    headers = bearer(issuer)
    held = [asyncio.create_task(client.get("/v1/slow", headers=headers)) for _ in range(2)]
    await asyncio.wait_for(gate.entered.wait(), 5)

    refused = await client.get("/v1/things", headers=headers)
    document = await problem(refused, 429)
    assert document["type"] == "https://lastro.dev/problems/too-many-concurrent-requests"
    other = await client.get("/v1/things", headers=bearer(issuer, client_id="cli_b"))
    assert other.status == 200

    gate.opened.set()
    assert [r.status for r in await asyncio.gather(*held)] == [200, 200]
    assert (await client.get("/v1/things", headers=headers)).status == 200
    # Every lease was released: Redis drops a sorted set once it is empty.
    assert [key async for key in redis.scan_iter(match=f"{prefix}:*")] == []


async def test_expired_lease_frees_its_slot(redis: Redis, prefix: str) -> None:
    limiter = ConcurrencyLimiter(redis, limit=1, lease_seconds=1, prefix=prefix)
    assert await limiter.acquire("client:crashed") is not None
    assert await limiter.acquire("client:crashed") is None
    await asyncio.sleep(1.05)
    assert await limiter.acquire("client:crashed") is not None


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def fail_open_count(route_class: str) -> float:
    value = metrics_registry().get_sample_value(
        "lastro_rate_limit_fail_open_total", {"route_class": route_class}
    )
    return value or 0.0


async def test_redis_down_fails_closed_for_auth_and_open_for_the_rest(
    clients: Callable[..., Any], issuer: TestIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    unreachable = Redis(host="127.0.0.1", port=closed_port(), socket_connect_timeout=0.2)
    limiter = ConcurrencyLimiter(unreachable, limit=1)
    classify = route_classifier(CLASSES)
    client: Client = await clients(
        [
            rate_limit_middleware(
                unreachable,
                {
                    DEFAULT: (RateLimitPolicy("default", 1, 60),),
                    AUTH: (RateLimitPolicy("a", 1, 60),),
                },
                classify,
            ),
            concurrency_limit_middleware(limiter, classify),
        ]
    )
    try:
        token = await client.post("/oauth/token")
        document = await problem(token, 503)
        assert document["type"] == "https://lastro.dev/problems/rate-limit-unavailable"
        assert token.headers["Retry-After"] == "5"

        before = fail_open_count(DEFAULT)
        for _ in range(3):  # above the limit of 1: nothing is counted while Redis is down
            assert (await client.get("/v1/things", headers=bearer(issuer))).status == 200
        assert fail_open_count(DEFAULT) == before + 6  # rate limit and concurrency, 3 times
        assert "serving default request unlimited" in caplog.text
    finally:
        await unreachable.aclose()


async def test_lockout_fails_closed_when_redis_is_down() -> None:
    unreachable = Redis(host="127.0.0.1", port=closed_port(), socket_connect_timeout=0.2)
    lockout = FailureLockout(unreachable, name="login")
    try:
        with pytest.raises(Problem) as caught:
            await lockout.ensure_unlocked("alice@example.com")
        assert caught.value.status == 503
    finally:
        await unreachable.aclose()
