"""OWASP API Security Top 10 (2023), API1 to API5, proven against the real services.

Each service runs in-process over HTTPS with a dev-CA certificate, against a throwaway
schema of the real PostgreSQL, the real KMS and the real Redis. Where each item is proven:

* **API1 Broken Object Level Authorization** —
  ``test_accounts_api.py::test_another_customers_resources_answer_404_like_unknown_ones``.
* **API2 Broken Authentication** —
  password brute force:
  ``test_identity_oauth.py::test_repeated_wrong_passwords_lock_the_username_out``;
  TOTP guessing: :func:`test_wrong_totp_codes_lock_the_user_out_with_growing_back_off`
  and :func:`test_a_ticket_taken_before_the_lockout_cannot_finish_during_it`;
  credential flood on the token endpoint:
  :func:`test_a_wrong_code_flood_on_the_token_endpoint_is_throttled_per_ip`;
  turning the second factor off needs the password again:
  :func:`test_disabling_totp_needs_the_password_and_is_audited`.
  The flood and lockout tests run the identity app with its real configured auth
  policies (``policies_from_settings``), each on a fresh Redis prefix.
* **API3 Broken Object Property Level Authorization** —
  ``test_accounts_api.py::test_clients_cannot_set_server_owned_account_fields`` and
  ``test_accounts_api.py::test_clients_cannot_set_server_owned_customer_fields``.
* **API4 Unrestricted Resource Consumption** —
  :func:`test_a_flooding_client_gets_429_with_rate_limit_headers_and_others_do_not`
  and :func:`test_an_oversized_json_body_is_refused_with_413_not_a_500`
  (the limiter's mechanics on a toy app: ``test_ratelimit.py``).
* **API5 Broken Function Level Authorization** —
  ``test_accounts_api.py::test_customer_tokens_are_refused_on_internal_routes`` and
  ``test_identity_oauth.py::test_admin_routes_need_the_admin_scope``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pyotp
import pytest
from accounts_app import CUSTOMER_SCOPES, AccountsApi, running_accounts
from identity_flows import (
    REDIRECT_URI,
    Browser,
    Identity,
    admin_client,
    enrol_totp,
    hidden_fields,
    jwt_claims,
    module_identity,  # noqa: F401 - provides the `identity` fixture
    next_totp_code,
    serve_identity,
    sign_up,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.config import Settings
from lastro.core.problems import PROBLEM_CONTENT_TYPE, problem_type
from lastro.core.security.tls import client_context

ACCOUNTS_PER_MINUTE = 20


@pytest.fixture
async def strict_identity(
    settings: Settings, engine: AsyncEngine, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Identity]:
    """The identity app with its real auth policies; fresh limits and lockouts per test."""
    async with serve_identity(
        settings, engine, tmp_path_factory.mktemp("identity"), real_limits=True
    ) as served:
        yield served


@pytest.fixture(scope="module")
async def limited_accounts(settings: Settings, engine: AsyncEngine) -> AsyncIterator[AccountsApi]:
    """The account service allowing each client ``ACCOUNTS_PER_MINUTE`` requests."""
    small = dataclasses.replace(settings, rate_limit_per_minute=ACCOUNTS_PER_MINUTE)
    async with running_accounts(small, engine, "owasp_api4") as api:
        yield api


async def user_app(identity: Identity) -> str:
    """Register a public (PKCE) client for a user-facing app; its client id."""
    created = await admin_client(
        identity,
        name=f"wallet-{secrets.token_hex(3)}",
        confidential=False,
        grant_types=["authorization_code", "refresh_token"],
        scopes=["identity:self", "accounts:read"],
        audiences=["identity", "accounts"],
        redirect_uris=[REDIRECT_URI],
    )
    return str(created["client_id"])


async def totp_user(identity: Identity, client_id: str) -> tuple[str, str, pyotp.TOTP]:
    """A new user with TOTP enrolled: username, password and the authenticator."""
    username, password = await sign_up(identity)
    tokens = await Browser(identity, client_id).password_login(username, password)
    totp, _ = await enrol_totp(identity, tokens["access_token"])
    return username, password, totp


def wrong_code(totp: pyotp.TOTP) -> str:
    """A six-digit code that no step near now accepts."""
    near = {totp.at(time.time() + 30 * step) for step in (-2, -1, 0, 1, 2)}
    return next(
        c for c in ("000000", "111111", "222222", "333333", "444444", "555555") if c not in near
    )


async def password_step(
    browser: Browser, form: dict[str, str], username: str, password: str
) -> tuple[aiohttp.ClientResponse, str]:
    """Submit the login form's password step; the response and its body."""
    response = await browser.submit_password(form, username, password)
    return response, (await response.read()).decode()


async def totp_page(
    browser: Browser, form: dict[str, str], username: str, password: str
) -> dict[str, str]:
    """The TOTP page's form (the OAuth request and a single-use login ticket)."""
    response, page = await password_step(browser, form, username, password)
    assert response.status == 200, page
    fields = hidden_fields(page)
    assert fields["ticket"]
    return fields


async def guess(browser: Browser, totp_form: dict[str, str], code: str) -> aiohttp.ClientResponse:
    return await browser.submit({**totp_form, "step": "otp", "otp": code})


def locked_out_for(response: aiohttp.ClientResponse, body: str) -> int:
    """Assert a 429 ``locked-out`` problem that issues nothing; its Retry-After."""
    assert response.status == 429, body
    assert response.content_type == PROBLEM_CONTENT_TYPE
    assert json.loads(body)["type"] == problem_type("locked-out")
    assert "Location" not in response.headers
    assert "ticket" not in hidden_fields(body)
    return int(response.headers["Retry-After"])


# ---------------------------------------------------------------- API2: TOTP guessing


async def test_wrong_totp_codes_lock_the_user_out_with_growing_back_off(
    strict_identity: Identity,
) -> None:
    identity = strict_identity
    client_id = await user_app(identity)
    username, password, totp = await totp_user(identity, client_id)
    browser = Browser(identity, client_id)
    form = await browser.login_page()

    # Five wrong codes, each on a new ticket (a wrong code spends its ticket).
    for _ in range(5):
        response = await guess(
            browser, await totp_page(browser, form, username, password), wrong_code(totp)
        )
        assert response.status == 401
        assert "Location" not in response.headers

    # Locked: even the right password gets no ticket, so no code can be tried.
    waits = [locked_out_for(*await password_step(browser, form, username, password))]
    for _ in range(2):
        # When the lock lapses, one more wrong code locks again, for longer.
        await asyncio.sleep(waits[-1] + 0.2)
        response = await guess(
            browser, await totp_page(browser, form, username, password), wrong_code(totp)
        )
        assert response.status == 401
        waits.append(locked_out_for(*await password_step(browser, form, username, password)))
    assert waits[0] < waits[1] < waits[2] and waits[2] >= 3, waits

    # After the lock lapses, the password and a fresh correct code sign in.
    await asyncio.sleep(waits[-1] + 0.2)
    tokens = await Browser(identity, client_id).totp_login(username, password, next_totp_code(totp))
    assert jwt_claims(tokens["access_token"])["amr"] == ["pwd", "otp"]


async def test_a_ticket_taken_before_the_lockout_cannot_finish_during_it(
    strict_identity: Identity,
) -> None:
    """An attacker holding the password can open many tickets first and then spend
    them on guesses; the lockout must stop the correct code on any of them."""
    identity = strict_identity
    client_id = await user_app(identity)
    username, password, totp = await totp_user(identity, client_id)
    # The held ticket comes from a browser session of its own: a ticket is bound to the
    # login form session that opened it, and each new password step rebinds it (CSRF).
    holder = Browser(identity, client_id)
    held = await totp_page(holder, await holder.login_page(), username, password)
    browser = Browser(identity, client_id)
    form = await browser.login_page()
    for _ in range(5):
        response = await guess(
            browser, await totp_page(browser, form, username, password), wrong_code(totp)
        )
        assert response.status == 401
    locked_out_for(*await password_step(browser, form, username, password))

    response = await guess(holder, held, next_totp_code(totp))
    assert response.status in (401, 429), response.status
    assert "Location" not in response.headers


# ---------------------------------------------------------------- API2: token endpoint flood


async def _token_status(
    http: aiohttp.ClientSession, identity: Identity, data: dict[str, str], **kwargs: Any
) -> tuple[int, dict[str, str], str]:
    async with http.post(f"{identity.base}/oauth/token", data=data, **kwargs) as response:
        return response.status, dict(response.headers), await response.text()


async def test_a_wrong_code_flood_on_the_token_endpoint_is_throttled_per_ip(
    strict_identity: Identity, settings: Settings
) -> None:
    identity = strict_identity
    client_id = await user_app(identity)
    quota = settings.auth_rate_limit_per_minute
    guess_form = {
        "grant_type": "authorization_code",
        "redirect_uri": REDIRECT_URI,
        "client_id": client_id,
        "code_verifier": secrets.token_urlsafe(48),
    }
    answers = [
        await _token_status(
            identity.http, identity, {**guess_form, "code": secrets.token_urlsafe(24)}
        )
        for _ in range(quota + 10)
    ]
    statuses = [status for status, _, _ in answers]
    admitted = statuses.index(429)
    # The bootstrap admin token spent one request of this IP's quota.
    assert quota - 1 <= admitted <= quota + 1, statuses
    assert set(statuses[:admitted]) == {400} and set(statuses[admitted:]) == {429}, statuses
    assert json.loads(answers[0][2])["error"] == "invalid_grant"
    assert f'"auth-ip";q={quota};w=60' in answers[0][1]["RateLimit-Policy"]

    _, headers, body = answers[-1]
    assert headers["Content-Type"].startswith(PROBLEM_CONTENT_TYPE)
    assert json.loads(body)["type"] == problem_type("rate-limited")
    assert int(headers["Retry-After"]) >= 1
    assert f'"auth-ip";q={quota};w=60' in headers["RateLimit-Policy"]
    assert '"auth-ip";r=0;' in headers["RateLimit"]

    # The throttle is on the IP, not the credential: valid client credentials from
    # the same IP are refused too, while another IP is served.
    admin = {"grant_type": "client_credentials", "scope": "identity:admin"}
    basic = {"Authorization": aiohttp.encode_basic_auth(identity.admin_id, identity.admin_secret)}
    status, _, _ = await _token_status(identity.http, identity, admin, headers=basic)
    assert status == 429
    other_ip = aiohttp.TCPConnector(
        ssl=client_context(settings.ca_file), local_addr=("127.0.0.2", 0)
    )
    async with aiohttp.ClientSession(connector=other_ip) as http:
        status, _, body = await _token_status(http, identity, admin, headers=basic)
    assert status == 200, body


# ---------------------------------------------------------------- API2: 2FA off needs re-auth


async def test_disabling_totp_needs_the_password_and_is_audited(
    identity: Identity, engine: AsyncEngine
) -> None:
    client_id = await user_app(identity)
    username, password, totp = await totp_user(identity, client_id)
    tokens = await Browser(identity, client_id).totp_login(username, password, next_totp_code(totp))
    user_id = jwt_claims(tokens["access_token"])["sub"]
    url = f"{identity.base}/v1/users/me/totp"
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}

    async with identity.http.delete(url, json={"password": password}) as response:
        assert response.status == 401  # no token, no re-authentication either
    async with identity.http.delete(url, headers=bearer, json={"password": "not-" + password}) as r:
        assert r.status == 403
        assert r.content_type == PROBLEM_CONTENT_TYPE
        assert (await r.json())["type"] == problem_type("reauthentication-failed")

    # Still enrolled: the password alone stops at the TOTP page.
    browser = Browser(identity, client_id)
    await totp_page(browser, await browser.login_page(), username, password)

    async with identity.http.delete(url, headers=bearer, json={"password": password}) as r:
        assert r.status == 200, await r.text()
        assert await r.json() == {"status": "disabled"}
    async with identity.http.delete(url, headers=bearer, json={"password": password}) as r:
        assert r.status == 409
        assert (await r.json())["type"] == problem_type("totp-not-enabled")

    again = await Browser(identity, client_id).password_login(username, password)
    assert jwt_claims(again["access_token"])["amr"] == ["pwd"]

    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                f'SELECT actor, outcome, source_ip FROM "{identity.schema}".audit_log'
                " WHERE action = 'totp.disabled' AND target = :user ORDER BY seq"
            ),
            {"user": user_id},
        )
        audited = [tuple(row) for row in rows]
    assert audited == [(user_id, "failure", "127.0.0.1"), (user_id, "success", "127.0.0.1")]


async def test_password_guesses_through_a_stolen_token_are_locked_out(identity: Identity) -> None:
    """Re-authentication (turning TOTP off) is a password check: with a stolen access
    token an attacker gets a handful of guesses, then 429 even for the right password."""
    client_id = await user_app(identity)
    username, password, totp = await totp_user(identity, client_id)
    tokens = await Browser(identity, client_id).totp_login(username, password, next_totp_code(totp))
    url = f"{identity.base}/v1/users/me/totp"
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    statuses = []
    for n in range(6):
        async with identity.http.delete(url, headers=bearer, json={"password": f"guess-{n}"}) as r:
            statuses.append(r.status)
    assert statuses[:5] == [403] * 5 and statuses[5] == 429, statuses
    async with identity.http.delete(url, headers=bearer, json={"password": password}) as r:
        assert r.status == 429
        assert int(r.headers["Retry-After"]) >= 1
        assert (await r.json())["type"] == problem_type("locked-out")
    # Still enrolled: the lock did not let anything through.
    browser = Browser(identity, client_id)
    await totp_page(browser, await browser.login_page(), username, password)


# ---------------------------------------------------------------- API4: resource consumption


async def test_a_flooding_client_gets_429_with_rate_limit_headers_and_others_do_not(
    limited_accounts: AccountsApi,
) -> None:
    svc = limited_accounts
    flooder = svc.bearer(CUSTOMER_SCOPES, "usr_flood", client_id="cli_flooder")
    neighbour = svc.bearer(CUSTOMER_SCOPES, "usr_calm", client_id="cli_neighbour")

    async def list_accounts(headers: dict[str, str]) -> tuple[int, dict[str, str], str]:
        async with svc.client.get("/v1/accounts", headers=headers) as response:
            return response.status, dict(response.headers), await response.text()

    flood = await asyncio.gather(*(list_accounts(flooder) for _ in range(ACCOUNTS_PER_MINUTE + 15)))
    statuses = Counter(status for status, _, _ in flood)
    # GCRA admits the burst, then one every 3 s; a slow machine may earn one more.
    assert statuses[200] in (ACCOUNTS_PER_MINUTE, ACCOUNTS_PER_MINUTE + 1), statuses
    assert statuses[200] + statuses[429] == len(flood), statuses

    policy = f'"default";q={ACCOUNTS_PER_MINUTE};w=60'
    for status, headers, body in flood:
        assert headers["RateLimit-Policy"] == policy
        assert headers["RateLimit"].startswith('"default";r=')
        if status == 429:
            assert headers["Content-Type"].startswith(PROBLEM_CONTENT_TYPE)
            assert json.loads(body)["type"] == problem_type("rate-limited")
            assert 1 <= int(headers["Retry-After"]) <= 60 // ACCOUNTS_PER_MINUTE + 1
            assert headers["RateLimit"].startswith('"default";r=0;t=')

    status, headers, _ = await list_accounts(neighbour)
    assert status == 200
    assert headers["RateLimit"].startswith(f'"default";r={ACCOUNTS_PER_MINUTE - 1};')
    assert (await list_accounts(flooder))[0] == 429

    for _ in range(ACCOUNTS_PER_MINUTE + 5):
        async with svc.client.get("/healthz", headers=flooder) as response:
            assert response.status == 200
            assert "RateLimit" not in response.headers


async def test_an_oversized_json_body_is_refused_with_413_not_a_500(
    limited_accounts: AccountsApi,
) -> None:
    """aiohttp's ``client_max_size`` (1 MiB) caps every body, declared or chunked."""
    svc = limited_accounts
    customer = svc.bearer(CUSTOMER_SCOPES, "usr_big", client_id="cli_big_bodies")
    name = "x" * (4 * 1024 * 1024)
    document = {"name": name, "email": "big@example.com", "document_number": "DOC-1"}

    async def chunked() -> AsyncIterator[bytes]:
        payload = json.dumps(document).encode()
        for start in range(0, len(payload), 64 * 1024):
            yield payload[start : start + 64 * 1024]

    for body in ({"json": document}, {"data": chunked()}):
        async with svc.client.post(
            "/v1/customers", headers={**customer, "Content-Type": "application/json"}, **body
        ) as response:
            problem = await response.json(content_type=None)
            assert response.status == 413, problem
            assert response.content_type == PROBLEM_CONTENT_TYPE
            assert problem["type"] == problem_type("request-entity-too-large")
    async with svc.client.get("/v1/accounts", headers=customer) as response:
        assert response.status == 200
