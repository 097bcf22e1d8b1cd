"""The shared app factory, exercised through a small example service over real HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from issuerkit import TestIssuer
from lastro.core import http
from lastro.core.config import Settings
from lastro.core.errors import DependencyUnavailable, DomainError
from lastro.core.http import (
    PARAMS_KEY,
    PRINCIPAL_KEY,
    create_app,
    json_body,
    json_response,
    serve,
)
from lastro.core.openapi import with_platform_answers
from lastro.core.problems import Problem
from lastro.core.security.tls import client_context
from lastro.core.security.tokens import KeySetUnavailable, Principal
from lastro.devstack.ca import DevCA

SPEC = Path(__file__).parent / "data" / "example_openapi.yaml"
PROBLEM_JSON = "application/problem+json"

routes = web.RouteTableDef()


class Overdrawn(DomainError):
    slug = "overdrawn"
    title = "Account overdrawn"
    status = 409


@routes.get("/v1/accounts")
async def list_accounts(request: web.Request) -> web.Response:
    return json_response({"params": request[PARAMS_KEY]})


@routes.post("/v1/accounts")
async def open_account(request: web.Request) -> web.Response:
    body = await json_body(request)
    return json_response({"id": "acc_1", **body, "owner": request[PRINCIPAL_KEY].subject}, 201)


@routes.get("/v1/accounts/{id}")
async def get_account(request: web.Request) -> web.Response:
    if request.match_info["id"] == "acc_frozen":
        raise Problem(409, "account-frozen", "Account frozen", "acc_frozen is frozen", hint="x")
    if request.match_info["id"] == "acc_overdrawn":
        raise Overdrawn("acc_overdrawn needs 500 more", field="amount", shortfall=500)
    if request.match_info["id"] == "acc_unreachable":
        raise DependencyUnavailable("the ledger database is restarting", retry_after=3)
    if request.match_info["id"] == "acc_restarting":
        raise asyncpg.CannotConnectNowError("the database system is starting up")
    return json_response({"id": request.match_info["id"]})


@routes.post("/v1/forms")
async def post_form(request: web.Request) -> web.Response:
    return json_response(dict(await request.post()))


@routes.get("/v1/rates")
async def public_rates(request: web.Request) -> web.Response:
    return json_response({"EURUSD": "1.08"}, headers={"Cache-Control": "public, max-age=60"})


@routes.post("/v1/echo")
async def echo(request: web.Request) -> web.Response:
    return json_response(await json_body(request))


@routes.get("/v1/boom")
async def boom(request: web.Request) -> web.Response:
    raise RuntimeError("password=hunter2 at db.internal:5432")


@routes.get("/v1/undocumented")
async def undocumented(request: web.Request) -> web.Response:
    return json_response({"caller": request[PRINCIPAL_KEY].client_id})


@routes.get("/v1/me")
async def who_am_i(request: web.Request) -> web.Response:
    return json_response({"subject": request[PRINCIPAL_KEY].subject})


async def database_ok(app: web.Application) -> bool:
    return True


async def cache_down(app: web.Application) -> bool:
    return False


async def broker_raises(app: web.Application) -> bool:
    raise ConnectionRefusedError("broker")


def example_app(
    settings: Settings, issuer: TestIssuer, readiness: dict[str, http.ReadinessCheck] | None = None
) -> web.Application:
    return create_app(
        name="example",
        settings=settings,
        openapi_path=SPEC,
        routes=routes,
        readiness=readiness if readiness is not None else {"database": database_ok},
        auth=issuer.verifier(),
    )


@pytest.fixture
async def client(
    unit_settings: Settings, issuer: TestIssuer
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(example_app(unit_settings, issuer))) as test_client:
        yield test_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def problem(response: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM_JSON
    document: dict[str, Any] = await response.json(content_type=PROBLEM_JSON)
    assert document["status"] == status
    assert document["type"].startswith("https://lastro.dev/problems/")
    assert document["title"]
    return document


async def test_unknown_route_is_a_404_problem(client: TestClient[Any, Any]) -> None:
    response = await client.get("/v1/nowhere")
    document = await problem(response, 404)
    assert document["type"] == "https://lastro.dev/problems/not-found"
    assert document["instance"] == "/v1/nowhere"


async def test_wrong_method_is_a_405_problem_with_allow(client: TestClient[Any, Any]) -> None:
    response = await client.delete("/v1/accounts")
    await problem(response, 405)
    assert {"GET", "POST"} <= set(response.headers["Allow"].split(","))


async def test_malformed_json_is_400_never_500(
    client: TestClient[Any, Any], issuer: TestIssuer
) -> None:
    token = issuer.mint(scope="accounts:write")
    for path, headers in (("/v1/accounts", bearer(token)), ("/v1/echo", {})):
        response = await client.post(
            path, data=b'{"name": "x",', headers={**headers, "Content-Type": "application/json"}
        )
        document = await problem(response, 400)
        assert document["type"] == "https://lastro.dev/problems/malformed-json"


async def test_validation_lists_every_offending_field(
    client: TestClient[Any, Any], issuer: TestIssuer
) -> None:
    body = {"name": "", "limits": [{"amount": -1}, {}], "nickname": "4111111111111111"}
    response = await client.post(
        "/v1/accounts", json=body, headers=bearer(issuer.mint(scope="accounts:write"))
    )
    document = await problem(response, 422)
    assert document["type"] == "https://lastro.dev/problems/validation-error"
    fields = {e["field"]: e["detail"] for e in document["errors"]}
    assert fields == {
        "currency": "is required",
        "name": "must be at least 1 characters long",
        "limits[0].amount": "must be >= 0",
        "limits[1].amount": "is required",
        "nickname": "is not allowed",
    }
    assert "4111111111111111" not in await response.text()


async def test_referenced_schema_is_enforced(
    client: TestClient[Any, Any], issuer: TestIssuer
) -> None:
    response = await client.post(
        "/v1/accounts",
        json={"name": "Main", "currency": "euro"},
        headers=bearer(issuer.mint(scope="accounts:write")),
    )
    document = await problem(response, 422)
    assert document["errors"] == [
        {"field": "currency", "detail": "must match the pattern ^[A-Z]{3}$"}
    ]


async def test_valid_body_reaches_handler(client: TestClient[Any, Any], issuer: TestIssuer) -> None:
    response = await client.post(
        "/v1/accounts",
        json={"name": "Main", "currency": "EUR"},
        headers=bearer(issuer.mint(scope="accounts:write accounts:read", subject="usr_42")),
    )
    assert response.status == 201
    assert await response.json() == {
        "id": "acc_1",
        "name": "Main",
        "currency": "EUR",
        "owner": "usr_42",
    }


async def test_missing_required_body_is_422(
    client: TestClient[Any, Any], issuer: TestIssuer
) -> None:
    response = await client.post(
        "/v1/accounts", headers=bearer(issuer.mint(scope="accounts:write"))
    )
    document = await problem(response, 422)
    assert document["errors"] == [{"field": "body", "detail": "is required"}]


async def test_non_json_body_is_415(client: TestClient[Any, Any], issuer: TestIssuer) -> None:
    response = await client.post(
        "/v1/accounts", data="name=x", headers=bearer(issuer.mint(scope="accounts:write"))
    )
    await problem(response, 415)


async def test_query_parameters_are_coerced_and_validated(
    client: TestClient[Any, Any], issuer: TestIssuer
) -> None:
    headers = bearer(issuer.mint(scope="accounts:read"))
    ok = await client.get("/v1/accounts?limit=5&currency=EUR&currency=BRL", headers=headers)
    assert ok.status == 200
    assert await ok.json() == {"params": {"limit": 5, "currency": ["EUR", "BRL"]}}

    not_a_number = await client.get("/v1/accounts?limit=five", headers=headers)
    assert (await problem(not_a_number, 422))["errors"] == [
        {"field": "limit", "detail": "must be of type integer"}
    ]
    too_big = await client.get("/v1/accounts?limit=500", headers=headers)
    assert (await problem(too_big, 422))["errors"] == [
        {"field": "limit", "detail": "must be <= 100"}
    ]


async def test_path_parameters_are_validated(
    client: TestClient[Any, Any], issuer: TestIssuer
) -> None:
    headers = bearer(issuer.mint(scope="accounts:read"))
    assert (await client.get("/v1/accounts/acc_1", headers=headers)).status == 200
    response = await client.get("/v1/accounts/cus_1", headers=headers)
    assert (await problem(response, 422))["errors"][0]["field"] == "id"


async def test_raised_problem_is_rendered_with_extensions(
    client: TestClient[Any, Any], issuer: TestIssuer
) -> None:
    response = await client.get(
        "/v1/accounts/acc_frozen", headers=bearer(issuer.mint(scope="accounts:read"))
    )
    document = await problem(response, 409)
    assert document["type"] == "https://lastro.dev/problems/account-frozen"
    assert document["detail"] == "acc_frozen is frozen"
    assert document["hint"] == "x"


async def test_domain_error_is_rendered_with_its_own_type_status_and_field(
    client: TestClient[Any, Any], issuer: TestIssuer
) -> None:
    response = await client.get(
        "/v1/accounts/acc_overdrawn", headers=bearer(issuer.mint(scope="accounts:read"))
    )
    document = await problem(response, 409)
    assert document["type"] == "https://lastro.dev/problems/overdrawn"
    assert document["title"] == "Account overdrawn"
    assert document["detail"] == "acc_overdrawn needs 500 more"
    assert document["errors"] == [{"field": "amount", "detail": "acc_overdrawn needs 500 more"}]
    assert document["shortfall"] == 500


async def test_dependency_outage_is_503_with_retry_after(
    client: TestClient[Any, Any], issuer: TestIssuer
) -> None:
    response = await client.get(
        "/v1/accounts/acc_unreachable", headers=bearer(issuer.mint(scope="accounts:read"))
    )
    document = await problem(response, 503)
    assert document["type"] == "https://lastro.dev/problems/dependency-unavailable"
    assert response.headers["Retry-After"] == "3"


class _KeysUnreachable:
    """A verifier whose issuer's key set cannot be fetched."""

    async def verify(self, token: str) -> Principal:
        raise KeySetUnavailable("no key set could be fetched from https://identity.invalid")


async def test_unreachable_issuer_keys_are_the_one_outage_answer(
    unit_settings: Settings, issuer: TestIssuer
) -> None:
    app = create_app(
        name="example",
        settings=unit_settings,
        openapi_path=SPEC,
        routes=routes,
        auth=_KeysUnreachable(),
    )
    async with TestClient(TestServer(app)) as keyless:
        response = await keyless.get(
            "/v1/accounts", headers=bearer(issuer.mint(scope="accounts:read"))
        )
        document = await problem(response, 503)
    assert document["type"] == "https://lastro.dev/problems/dependency-unavailable"
    assert document["dependency"] == "identity"
    assert int(response.headers["Retry-After"]) > 0


async def test_unexpected_exception_is_opaque_500(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="lastro.core.http"):
        response = await client.get("/v1/boom")
    document = await problem(response, 500)
    text = await response.text()
    assert document["type"] == "https://lastro.dev/problems/internal-error"
    assert "hunter2" not in text and "RuntimeError" not in text and "db.internal" not in text
    assert any(r.exc_info and "hunter2" in str(r.exc_info[1]) for r in caplog.records)


async def test_missing_token_is_401_with_bearer_challenge(client: TestClient[Any, Any]) -> None:
    response = await client.get("/v1/accounts")
    await problem(response, 401)
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="example"'


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong_signature", "signature verification failed"),
        ("wrong_audience", "invalid or missing claim 'aud'"),
        ("expired", "token expired"),
        ("not_yet_valid", "invalid or missing claim 'nbf'"),
        ("unknown_key", "unknown signing key"),
        ("garbage", "malformed token"),
    ],
)
async def test_bad_tokens_are_401_invalid_token(
    client: TestClient[Any, Any], issuer: TestIssuer, case: str, reason: str
) -> None:
    import time

    good = issuer.mint(scope="accounts:read")
    header, _payload, signature = good.split(".")
    other = TestIssuer(issuer=issuer.issuer, audience=issuer.audience)
    forged_payload = issuer.mint(scope="accounts:read admin").split(".")[1]
    tokens = {
        "wrong_signature": f"{header}.{forged_payload}.{signature}",
        "wrong_audience": issuer.mint(scope="accounts:read", audience="transactions"),
        "expired": issuer.mint(scope="accounts:read", issued_at=int(time.time()) - 3600),
        "not_yet_valid": issuer.mint(scope="accounts:read", nbf=int(time.time()) + 3600),
        "unknown_key": other.mint(scope="accounts:read"),
        "garbage": "not-a-jwt",
    }
    response = await client.get("/v1/accounts", headers=bearer(tokens[case]))
    document = await problem(response, 401)
    assert document["type"] == "https://lastro.dev/problems/invalid-token"
    assert document["detail"] == reason
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="example", error="invalid_token"')
    assert f'error_description="{reason}"' in challenge


async def test_missing_scope_is_403_insufficient_scope(
    client: TestClient[Any, Any], issuer: TestIssuer
) -> None:
    response = await client.post(
        "/v1/accounts",
        json={"name": "Main", "currency": "EUR"},
        headers=bearer(issuer.mint(scope="accounts:read")),
    )
    document = await problem(response, 403)
    assert document["type"] == "https://lastro.dev/problems/insufficient-scope"
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="example", error="insufficient_scope", scope="accounts:write"'
    )


async def test_document_default_security_applies(
    client: TestClient[Any, Any], issuer: TestIssuer
) -> None:
    response = await client.get("/v1/accounts/acc_1", headers=bearer(issuer.mint(scope="other")))
    await problem(response, 403)


async def test_requirement_without_scopes_still_needs_a_token(
    client: TestClient[Any, Any], issuer: TestIssuer
) -> None:
    await problem(await client.get("/v1/me"), 401)
    response = await client.get("/v1/me", headers=bearer(issuer.mint(subject="usr_me")))
    assert await response.json() == {"subject": "usr_me"}


async def test_route_missing_from_contract_still_needs_a_token(
    client: TestClient[Any, Any], issuer: TestIssuer
) -> None:
    await problem(await client.get("/v1/undocumented"), 401)
    response = await client.get("/v1/undocumented", headers=bearer(issuer.mint(client_id="cli_9")))
    assert await response.json() == {"caller": "cli_9"}


async def test_contract_with_scopes_refuses_to_run_without_verifier(
    unit_settings: Settings,
) -> None:
    with pytest.raises(ValueError, match="no verifier"):
        create_app(name="example", settings=unit_settings, openapi_path=SPEC, routes=routes)


async def test_operational_routes_need_no_token(client: TestClient[Any, Any]) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert (await client.get(path)).status == 200, path


async def test_openapi_json_is_the_yaml_contract_with_the_platform_answers(
    client: TestClient[Any, Any],
) -> None:
    response = await client.get("/openapi.json")
    assert response.content_type == "application/json"
    served = await response.json()
    assert served == with_platform_answers(yaml.safe_load(SPEC.read_text()))
    for item in served["paths"].values():
        for method, operation in item.items():
            if method != "parameters":
                assert {"429", "503"} <= operation["responses"].keys()


async def test_docs_serve_swagger_ui_from_local_assets(client: TestClient[Any, Any]) -> None:
    response = await client.get("/docs")
    html = await response.text()
    assert response.content_type == "text/html"
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert "/docs/assets/swagger-ui-bundle.js" in assets
    assert "/docs/assets/swagger-ui.css" in assets
    assert all(a.startswith("/") and not a.startswith("//") for a in assets)
    for asset in assets:
        loaded = await client.get(asset)
        assert loaded.status == 200, asset
        assert len(await loaded.read()) > 0
    init = await (await client.get("/docs/init.js")).text()
    assert '"/openapi.json"' in init


async def test_metrics_count_requests_by_route(
    client: TestClient[Any, Any], issuer: TestIssuer
) -> None:
    await client.get("/v1/accounts/acc_7", headers=bearer(issuer.mint(scope="accounts:read")))
    text = await (await client.get("/metrics")).text()
    counted = re.search(
        r'lastro_http_requests_total\{method="GET",route="/v1/accounts/\{id\}",status="200"\} '
        r"(\d+\.\d+)",
        text,
    )
    assert counted is not None and float(counted.group(1)) >= 1
    assert 'lastro_http_request_duration_seconds_bucket{le="0.005",method="GET"' in text


async def test_readyz_reports_every_check(unit_settings: Settings, issuer: TestIssuer) -> None:
    app = example_app(unit_settings, issuer, {"database": database_ok})
    async with TestClient(TestServer(app)) as ready_client:
        response = await ready_client.get("/readyz")
        assert response.status == 200
        assert await response.json() == {"status": "ready", "checks": {"database": "ok"}}


async def test_readyz_is_503_naming_failing_dependencies(
    unit_settings: Settings, issuer: TestIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def hangs(app: web.Application) -> bool:
        await asyncio.sleep(60)
        return True

    monkeypatch.setattr(http, "READINESS_TIMEOUT_SECONDS", 0.05)
    checks = {"database": database_ok, "cache": cache_down, "kafka": broker_raises, "kms": hangs}
    async with TestClient(TestServer(example_app(unit_settings, issuer, checks))) as c:
        document = await problem(await c.get("/readyz"), 503)
    assert document["checks"] == {
        "database": "ok",
        "cache": "failing",
        "kafka": "failing",
        "kms": "failing",
    }
    assert document["detail"] == "Failing dependencies: cache, kafka, kms."


async def test_request_id_is_echoed_or_generated(client: TestClient[Any, Any]) -> None:
    given = await client.get("/healthz", headers={"X-Request-Id": "req-123"})
    assert given.headers["X-Request-Id"] == "req-123"
    hostile = await client.get("/nowhere", headers={"X-Request-Id": "a b\tc"})
    assert re.fullmatch(r"[0-9a-f]{32}", hostile.headers["X-Request-Id"])


async def test_access_log_records_each_request_with_trace_ids(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with caplog.at_level(logging.INFO, logger="lastro.http.access"):
        await client.get(
            "/v1/nowhere", headers={"X-Request-Id": "req-log", "traceparent": traceparent}
        )
    (record,) = [r for r in caplog.records if r.name == "lastro.http.access"]
    assert record.__dict__["method"] == "GET"
    assert record.__dict__["path"] == "/v1/nowhere"
    assert record.__dict__["status"] == 404
    assert record.__dict__["request_id"] == "req-log"
    assert record.__dict__["duration_ms"] >= 0
    assert record.__dict__["trace_id"] == "0af7651916cd43dd8448eb211c80319c"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_serve_speaks_verified_https_and_stops_gracefully(
    unit_settings: Settings, issuer: TestIssuer, dev_ca: DevCA
) -> None:
    cert = dev_ca.issue("example")
    port = _free_port()
    stop = asyncio.Event()
    server = asyncio.create_task(
        serve(
            example_app(unit_settings, issuer), unit_settings, cert.cert, cert.key, port, stop=stop
        )
    )
    try:
        connector = aiohttp.TCPConnector(ssl=client_context(dev_ca.cert_path))
        async with aiohttp.ClientSession(connector=connector) as session:
            for _ in range(100):
                try:
                    async with session.get(f"https://localhost:{port}/healthz") as response:
                        assert response.status == 200
                        assert json.loads(await response.text()) == {"status": "alive"}
                        break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.02)
            else:
                pytest.fail("server did not start")
            with pytest.raises(aiohttp.ClientError):
                await session.get(f"http://localhost:{port}/healthz")
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


# ---------------------------------------------------------------- security headers


def assert_hardened(response: aiohttp.ClientResponse) -> None:
    headers = response.headers
    max_age = re.search(r"max-age=(\d+)", headers["Strict-Transport-Security"])
    assert max_age is not None and int(max_age.group(1)) >= 365 * 24 * 3600
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Server"] == "lastro"
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]


async def test_every_answer_carries_the_security_headers(
    client: TestClient[Any, Any], issuer: TestIssuer
) -> None:
    token = bearer(issuer.mint(scope="accounts:read"))
    answers = [
        await client.get("/healthz"),
        await client.get("/metrics"),
        await client.get("/v1/nowhere"),
        await client.delete("/v1/accounts"),
        await client.get("/v1/accounts"),
        await client.get("/v1/accounts", headers=token),
        await client.get("/v1/accounts/not-an-id", headers=token),
        await client.get("/v1/accounts/acc_unreachable", headers=token),
        await client.get("/v1/boom"),
        await client.post("/v1/echo", data=b"{not json", headers={"Content-Type": "text/plain"}),
        await client.get("/docs/assets/swagger-ui.css"),
    ]
    assert {a.status for a in answers} == {200, 401, 404, 405, 422, 503, 500, 400}
    for answer in answers:
        assert_hardened(answer)
        assert answer.headers["Cache-Control"] == "no-store", answer.url


async def test_a_request_the_parser_rejects_names_no_server_version(
    client: TestClient[Any, Any],
) -> None:
    """aiohttp answers these before any middleware runs (aio-libs/aiohttp#8870)."""
    for raw in (
        b"HZ / HTTP/1.1\r\nHost: x\r\n\r\n",  # an invalid method
        b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",  # a malformed header
    ):
        reader, writer = await asyncio.open_connection(client.host, client.port)
        try:
            writer.write(raw)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
        head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
        assert head.startswith("http/1.") and " 400 " in head.splitlines()[0], head
        assert "server: lastro" in head.splitlines(), head
        assert "python/" not in head and "aiohttp/" not in head, head


async def test_html_pages_get_a_page_policy_swagger_ui_works_under(
    client: TestClient[Any, Any],
) -> None:
    page = await client.get("/docs")
    assert page.content_type == "text/html"
    assert page.headers["Content-Security-Policy"] == http.PAGE_CSP
    assert "script-src 'self'" in http.PAGE_CSP and "unsafe-eval" not in http.PAGE_CSP
    assert page.headers["X-Frame-Options"] == "DENY"
    document = await client.get("/openapi.json")
    assert document.headers["Content-Security-Policy"] == http.API_CSP


async def test_a_handler_may_cache_public_answers_but_never_credentialed_ones(
    client: TestClient[Any, Any], issuer: TestIssuer
) -> None:
    anonymous = await client.get("/v1/rates")
    assert anonymous.headers["Cache-Control"] == "public, max-age=60"
    assert_hardened(anonymous)
    for credentials in (
        bearer(issuer.mint(scope="accounts:read")),
        {"Authorization": "Basic Y2xpZW50OnNlY3JldA=="},
        {"Cookie": "session=abc"},
    ):
        answer = await client.get("/v1/rates", headers=credentials)
        assert answer.status == 200
        assert answer.headers["Cache-Control"] == "no-store", credentials


async def test_a_database_restart_is_a_503_with_retry_after_and_no_traceback(
    client: TestClient[Any, Any], issuer: TestIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="lastro.core.http"):
        response = await client.get(
            "/v1/accounts/acc_restarting", headers=bearer(issuer.mint(scope="accounts:read"))
        )
    document = await problem(response, 503)
    assert document["type"] == "https://lastro.dev/problems/dependency-unavailable"
    assert document["dependency"] == "database"
    assert int(response.headers["Retry-After"]) > 0
    assert "starting up" not in await response.text()
    (record,) = [r for r in caplog.records if r.name == "lastro.core.http"]
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "CannotConnectNowError" in record.getMessage()


async def test_a_body_of_an_undeclared_media_type_is_415_before_any_parser_sees_it(
    client: TestClient[Any, Any],
) -> None:
    form = await client.post("/v1/forms", data={"grant_type": "client_credentials"})
    assert form.status == 200
    assert await form.json() == {"grant_type": "client_credentials"}
    for content_type, body in (
        ("multipart/form-data", b"--x\r\n"),  # no boundary: the form parser would raise
        ("application/json", b'{"grant_type": "client_credentials"}'),
        ("text/plain", b"grant_type=client_credentials"),
    ):
        response = await client.post("/v1/forms", data=body, headers={"Content-Type": content_type})
        document = await problem(response, 415)
        assert document["type"] == "https://lastro.dev/problems/unsupported-media-type"
        assert "application/x-www-form-urlencoded" in document["detail"]
