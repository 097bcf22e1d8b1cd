"""Every operation of the accounts and identity contracts, fuzzed with schemathesis.

Two kinds of runs: the per-operation runs below (the checks listed in
``contract_fuzz.py``, with requests steered at seeded resources and the ledger verified
after each), and one run per service of the schemathesis CLI with ``--checks all`` and
every phase, stateful included (links inferred from the contract and Location headers),
configured by ``schemathesis/<service>.toml``: its allow-list is justified entry by entry.

Each service runs in-process over HTTPS on a throwaway schema. For every operation
in its ``openapi.yaml``, schemathesis sends generated valid requests (path ids
pointing at seeded resources as often as at random ones) and generated invalid ones,
and checks each response: no 5xx, a documented status, the documented content type,
headers and body schema, and every invalid request refused with a 4xx. Error
responses must be problem+json (OAuth endpoints answer in the RFC 6749 format).
Valid requests must also be carried out, not only answered: every operation has at
least one generated valid request that succeeded (2xx; the authorization
endpoint's redirect), helped by steering half of them at fresh seeded resources and
real credentials (:data:`NEEDS_A_SECRET` lists the one exception and why). After
each accounts operation the ledger is verified: bad input changed nothing
inconsistently.

Tokens carry every scope an operation may ask for: a TestIssuer token for accounts;
for identity the bootstrap admin token on admin routes, a signed-in user's token on
``/v1/users/me`` routes and none on public routes. Rate limits are relaxed: the
fuzzer is one client sending hundreds of requests a minute.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import shutil
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
import pytest
import requests
from accounts_app import AccountsApi, running_accounts
from contract_fuzz import Steer, Target, load_contract, operation_labels, run_fuzz
from hypothesis import strategies as st
from identity_flows import (
    REDIRECT_URI,
    Browser,
    Identity,
    admin_client,
    client_credentials,
    hidden_fields,
    serve_https,
    sign_up,
)
from schemas import unique_schema
from schemathesis import Case
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.accounts import app as accounts_app
from lastro.accounts.store import verify_ledger
from lastro.core.config import Settings
from lastro.core.ratelimit import AUTH, DEFAULT, EXEMPT, INTERNAL, RateLimitPolicy
from lastro.core.security.tls import client_context
from lastro.identity import app as identity_app
from lastro.identity.login import CSRF_FIELD, LOGIN_COOKIE

ACCOUNTS = load_contract(accounts_app.OPENAPI)
IDENTITY = load_contract(identity_app.OPENAPI)
EVERY_ACCOUNTS_SCOPE = (
    "accounts:read accounts:write accounts:admin ledger:read ledger:write customers:contact"
    " privacy:admin"
)
RELAXED_PER_MINUTE = 1_000_000
ID_FIELDS = ("account_id", "counterparty_id", "customer_id")


# ---------------------------------------------------------------- accounts


@dataclasses.dataclass
class SeededAccounts:
    api: AccountsApi
    headers: dict[str, str]
    base_url: str


@dataclasses.dataclass(frozen=True)
class Seed:
    """Resources of one operation's run: a customer with three USD accounts (the
    first funded and holding a pending hold, the second credited a little, the
    third empty), a settlement account and two postings."""

    customer: str
    funded: str
    credited: str
    empty: str
    settlement: str
    postings: tuple[str, str]
    hold: str
    certificate: str

    def pools(self) -> dict[str, list[str]]:
        accounts = [self.funded, self.credited, self.empty, self.settlement]
        return {
            "/v1/customers/": [self.customer],
            "/internal/v1/customers/": [self.customer],
            "/v1/accounts/": accounts,
            "/internal/v1/postings/": list(self.postings),
            "/internal/v1/holds/": [self.hold],
            "/v1/privacy/erasures/": [self.certificate],
            "account": accounts,
            "customer": [self.customer],
        }


def _entries(source: str, target: str, amount: int) -> list[dict[str, Any]]:
    return [
        {"account_id": source, "direction": "debit", "amount": amount, "currency": "USD"},
        {"account_id": target, "direction": "credit", "amount": amount, "currency": "USD"},
    ]


async def _seed(api: AccountsApi, headers: dict[str, str]) -> Seed:
    """Fresh resources for generated requests to address: one operation's run may
    erase, close or post what it is given, and the next starts from new ones."""

    async def call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        expect = 201 if method == "POST" else 200
        return await api.call(method, path, headers, expect=expect, template=path, json=body)

    tag = secrets.token_hex(4)
    customer = await call(
        "POST",
        "/v1/customers",
        {"name": "Fuzz", "email": f"fuzz-{tag}@example.com", "document_number": tag},
    )
    funded, credited, empty = [
        (await call("POST", "/v1/accounts", {"customer_id": customer["id"], "currency": "USD"}))[
            "id"
        ]
        for _ in range(3)
    ]
    settlement = await call(
        "POST", "/internal/v1/accounts", {"currency": "USD", "purpose": "settlement"}
    )
    postings = [
        await call(
            "POST",
            "/internal/v1/postings",
            {"external_id": f"seed-{n}-{tag}", "entries": _entries(settlement["id"], to, amount)},
        )
        for n, (to, amount) in enumerate(((funded, 10_000), (credited, 100)))
    ]
    hold = await call(
        "POST",
        "/internal/v1/holds",
        {
            "external_id": f"seed-hold-{tag}",
            "account_id": funded,
            "counterparty_id": credited,
            "amount": 2_500,
            "currency": "USD",
            "expires_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        },
    )
    erased = await call(
        "POST",
        "/v1/customers",
        {"name": "Gone", "email": f"gone-{tag}@example.com", "document_number": f"g{tag}"},
    )
    certificate = await call(
        "POST", "/v1/privacy/erasures", {"customer_id": erased["id"], "reason": "seed"}
    )
    return Seed(
        customer["id"],
        funded,
        credited,
        empty,
        settlement["id"],
        (postings[0]["id"], postings[1]["id"]),
        hold["id"],
        certificate["id"],
    )


def _steer_accounts(seed: Seed) -> Any:
    """Half the time, point generated ids at seeded resources, use the seeded
    currency, set a future expiry, a holdable amount and turn a posting's entries
    into a balanced pair (keeping the generated amount): requests then get past
    lookups into the ledger's own rules and, when those allow, are carried out."""
    ids = seed.pools()

    def steer(data: st.DataObject, case: Case) -> None:
        body = case.body
        if not isinstance(body, dict):
            return
        for name in ID_FIELDS:
            if isinstance(body.get(name), str) and data.draw(st.booleans()):
                pool = ids["customer" if name == "customer_id" else "account"]
                body[name] = data.draw(st.sampled_from(pool))
        if "currency" in body and data.draw(st.booleans()):
            body["currency"] = "USD"
        if "expires_at" in body and data.draw(st.booleans()):
            minutes = data.draw(st.integers(min_value=1, max_value=10_000))
            body["expires_at"] = (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat()
        if "counterparty_id" in body and data.draw(st.booleans()):
            body["account_id"], body["counterparty_id"] = seed.funded, seed.credited
            body["amount"] = data.draw(st.integers(min_value=1, max_value=7_500))
        if "data_class" in body and data.draw(st.booleans()):
            body["data_class"], body["action"] = "accounts.closed_customers", "crypto-shred"
        entries = body.get("entries")
        if isinstance(entries, list) and data.draw(st.booleans()):
            amount = entries[0]["amount"] if entries else data.draw(st.integers(min_value=1))
            body["entries"] = _entries(seed.settlement, seed.credited, amount)

    return steer


@pytest.fixture(scope="module")
async def accounts(settings: Settings, engine: AsyncEngine) -> AsyncIterator[SeededAccounts]:
    relaxed = dataclasses.replace(settings, rate_limit_per_minute=RELAXED_PER_MINUTE)
    async with running_accounts(relaxed, engine, "contracts_accounts") as api:
        token = api.issuer.mint(  # an hour: the fuzz runs after the module's other tests
            scope=EVERY_ACCOUNTS_SCOPE, subject="usr_fuzz", client_id="cli_fuzz", expires_in=3600
        )
        base_url = str(api.client.make_url("")).rstrip("/")
        yield SeededAccounts(api, {"Authorization": f"Bearer {token}"}, base_url)


def _path_ids(ids: dict[str, list[str]], label: str) -> list[str]:
    path = label.split(" ", 1)[1]
    return next((pool for prefix, pool in ids.items() if path.startswith(prefix)), [])


@pytest.mark.parametrize("label", operation_labels(ACCOUNTS))
async def test_accounts_operation_honours_its_contract_and_valid_requests_succeed(
    label: str, accounts: SeededAccounts, engine: AsyncEngine, settings: Settings
) -> None:
    seed = await _seed(accounts.api, accounts.headers)
    target = Target(
        base_url=accounts.base_url,
        ca_file=settings.ca_file,
        headers=accounts.headers,
        path_ids=_path_ids(seed.pools(), label),
        steer=_steer_accounts(seed),
    )
    fuzzed = await run_fuzz(ACCOUNTS, label, target)
    assert fuzzed.succeeded(), f"{label}: no valid request succeeded: {Counter(fuzzed.valid)}"
    async with engine.connect() as conn:
        report = await verify_ledger(conn, accounts.api.ledger.tables)
    assert report.ok, f"after fuzzing {label}: {report}"


# ---------------------------------------------------------------- identity


@dataclasses.dataclass
class FuzzedIdentity:
    identity: Identity
    user_token: str
    wallet: str
    username: str
    password: str
    privacy_token: str


def _relaxed_limits() -> dict[str, tuple[RateLimitPolicy, ...]]:
    return {
        DEFAULT: (RateLimitPolicy("default", RELAXED_PER_MINUTE, 60, "client"),),
        INTERNAL: (RateLimitPolicy("internal", RELAXED_PER_MINUTE, 60, "client"),),
        AUTH: (RateLimitPolicy("auth-ip", RELAXED_PER_MINUTE, 60, "ip"),),
        EXEMPT: (),
    }


@pytest.fixture(scope="module")
async def identity(
    settings: Settings, engine: AsyncEngine, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FuzzedIdentity]:
    schema = unique_schema("contracts_identity")
    secret_file = Path(tmp_path_factory.mktemp("contracts")) / "identity_admin_secret"
    app = await identity_app.build_app(
        settings,
        schema=schema,
        bootstrap_secret_file=secret_file,
        rate_limits=_relaxed_limits(),
        redis_prefix=schema,
    )
    connector = aiohttp.TCPConnector(ssl=client_context(settings.ca_file))
    try:
        async with (
            serve_https(app, settings, "identity-contracts") as base,
            aiohttp.ClientSession(connector=connector) as http,
        ):
            admin_id, admin_secret = secret_file.read_text().strip().split(":")
            admin = await client_credentials(http, base, admin_id, admin_secret, "identity:admin")
            served = Identity(
                base, http, app, schema, admin["access_token"], admin_id, admin_secret
            )
            wallet = await admin_client(
                served,
                name="contracts-wallet",
                confidential=False,
                grant_types=["authorization_code"],
                scopes=["identity:self", "openid", "profile"],
                audiences=["identity"],
                redirect_uris=[REDIRECT_URI],
            )
            username, password = await sign_up(served)
            browser = Browser(served, wallet["client_id"], scope=USER_SCOPES)
            user = await browser.password_login(username, password)
            operator = await admin_client(
                served,
                name="contracts-privacy",
                grant_types=["client_credentials"],
                scopes=["privacy:admin"],
                audiences=["identity"],
            )
            privacy = await client_credentials(
                http,
                base,
                operator["client_id"],
                operator["client_secret"],
                "privacy:admin",
                audience="identity",
            )
            yield FuzzedIdentity(
                served,
                user["access_token"],
                wallet["client_id"],
                username,
                password,
                privacy["access_token"],
            )
    finally:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# The signed-in user's token: their own 2FA settings and OpenID Connect userinfo.
USER_SCOPES = "identity:self openid profile"


def _identity_headers(fuzzed: FuzzedIdentity, label: str) -> dict[str, str]:
    """The token an operation's ``security`` asks for; none on public routes."""
    operation = IDENTITY.find_operation_by_label(label)
    assert operation is not None
    scopes = {
        s
        for req in operation.definition.raw.get("security", [])
        for s in [*req.get("bearer", []), *req.get("oauth2", [])]
    }
    if "privacy:admin" in scopes:
        return {"Authorization": f"Bearer {fuzzed.privacy_token}"}
    if "identity:admin" in scopes:
        return {"Authorization": f"Bearer {fuzzed.identity.admin_token}"}
    if scopes & {"identity:self", "openid"}:
        return {"Authorization": f"Bearer {fuzzed.user_token}"}
    return {}


# Operations whose success needs a secret a generator cannot produce, and why the
# contract run cannot supply it; their success paths are tested in
# test_owasp_api_security.py and test_identity_oauth.py.
NEEDS_A_SECRET = {
    "DELETE /v1/users/me/totp": "the user's password: fuzzed guesses lock the user out",
}
PKCE_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
# A signed-in user is redirected back to the client with a code.
SUCCESS = {"POST /oauth/authorize": (302,)}


def _steer_identity(fuzzed: FuzzedIdentity, label: str, ca_file: Path) -> Steer | None:
    """Half the time, give a request the credentials of the module's clients and
    user (or a current TOTP code), so valid requests are carried out."""
    served = fuzzed.identity
    authorize = {
        "response_type": "code",
        "client_id": fuzzed.wallet,
        "redirect_uri": REDIRECT_URI,
        "scope": "identity:self",
        "state": "fuzz",
        "code_challenge": PKCE_CHALLENGE,
        "code_challenge_method": "S256",
    }
    admin = aiohttp.encode_basic_auth(served.admin_id, served.admin_secret)

    def token(data: st.DataObject, case: Case) -> None:
        if data.draw(st.booleans()):
            case.body = {"grant_type": "client_credentials", "scope": "identity:admin"}
            case.headers = {**(case.headers or {}), "Authorization": admin}

    def authorize_page(data: st.DataObject, case: Case) -> None:
        if data.draw(st.booleans()):
            case.query = dict(authorize)

    def sign_in(data: st.DataObject, case: Case) -> None:
        if not data.draw(st.booleans()):
            return
        # A browser's form session: the login page's cookie and synchroniser token.
        page = requests.get(
            f"{served.base}/oauth/authorize", params=authorize, verify=str(ca_file), timeout=30
        )
        case.cookies = {LOGIN_COOKIE: page.cookies[LOGIN_COOKIE]}
        case.body = {
            **authorize,
            "step": "password",
            "username": fuzzed.username,
            "password": fuzzed.password,
            CSRF_FIELD: hidden_fields(page.text)[CSRF_FIELD],
        }

    def revoke(data: st.DataObject, case: Case) -> None:
        if data.draw(st.booleans()):
            case.body = {"token": secrets.token_urlsafe(16), "client_id": fuzzed.wallet}

    def confirm(data: st.DataObject, case: Case) -> None:
        if not data.draw(st.booleans()):
            return
        started = requests.post(
            f"{served.base}/v1/users/me/totp",
            headers={"Authorization": f"Bearer {fuzzed.user_token}"},
            verify=str(ca_file),
            timeout=30,
        )
        if started.status_code == 201:  # enabled already once a code was accepted
            case.body = {"code": pyotp.TOTP(started.json()["secret"]).now()}

    def purge(data: st.DataObject, case: Case) -> None:
        if isinstance(case.body, dict) and data.draw(st.booleans()):
            case.body = {**case.body, "data_class": "identity.sessions", "action": "purge"}

    steers: dict[str, Steer] = {
        "POST /internal/v1/privacy/purge": purge,
        "POST /oauth/token": token,
        "GET /oauth/authorize": authorize_page,
        "POST /oauth/authorize": sign_in,
        "POST /oauth/revoke": revoke,
        "POST /v1/users/me/totp/confirm": confirm,
    }
    return steers.get(label)


@pytest.mark.parametrize("label", operation_labels(IDENTITY))
async def test_identity_operation_honours_its_contract_and_valid_requests_succeed(
    label: str, identity: FuzzedIdentity, settings: Settings
) -> None:
    target = Target(
        base_url=identity.identity.base,
        ca_file=settings.ca_file,
        headers=_identity_headers(identity, label),
        steer=_steer_identity(identity, label, settings.ca_file),
    )
    fuzzed = await run_fuzz(IDENTITY, label, target)
    assert fuzzed.valid, f"{label}: nothing was sent"
    if label not in NEEDS_A_SECRET:
        succeeded = fuzzed.succeeded(SUCCESS.get(label, range(200, 300)))
        assert succeeded, f"{label}: no valid request succeeded: {Counter(fuzzed.valid)}"


async def test_non_ascii_oauth_parameters_get_invalid_request_not_a_crash(
    identity: FuzzedIdentity,
) -> None:
    """RFC 6749 parameters are printable ASCII; authlib used to raise ValueError (a 500)
    while echoing anything else in an error description."""
    served = identity.identity
    query = {"response_type": "cödé", "client_id": "cli_x", "state": "ß"}
    async with served.http.get(f"{served.base}/oauth/authorize", params=query) as response:
        assert response.status == 400
        assert (await response.json())["error"] == "invalid_request"
    async with served.http.post(
        f"{served.base}/oauth/token",
        data={"grant_type": "client_credentials", "scope": "identity:admin é"},
        headers={"Authorization": aiohttp.encode_basic_auth(served.admin_id, served.admin_secret)},
    ) as response:
        assert response.status == 400
        assert (await response.json())["error"] == "invalid_request"


# ---------------------------------------------------------------- every check, every phase

SCHEMATHESIS_CONFIGS = Path(__file__).parent / "schemathesis"
# Bounded and reproducible: the same inputs on every run.
SCHEMATHESIS_RUN = (
    "--checks",
    "all",
    "--phases",
    "examples,coverage,fuzzing,stateful",
    "--max-examples",
    "15",
    "--seed",
    "8",
    "--generation-deterministic",
    "--workers",
    "1",
    "--no-shrink",
    "--request-timeout",
    "30",
)


async def run_schemathesis(
    service: str, base_url: str, ca_file: Path, token: str | None, env: dict[str, str]
) -> None:
    """The schemathesis CLI with every check and phase over ``base_url``'s served
    contract, with ``tests/integration/schemathesis/<service>.toml`` (its documented
    allow-list); fails with the CLI's report unless it found nothing."""
    cli = shutil.which("schemathesis", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    assert cli is not None, "schemathesis is a dev dependency (pip install -e '.[dev]')"
    headers = ("--header", f"Authorization: Bearer {token}") if token else ()
    process = await asyncio.create_subprocess_exec(
        cli,
        "--no-color",
        "--config-file",
        str(SCHEMATHESIS_CONFIGS / f"{service}.toml"),
        "run",
        f"{base_url}/openapi.json",
        "--url",
        base_url,
        "--tls-verify",
        str(ca_file),
        *headers,
        *SCHEMATHESIS_RUN,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **env},
    )
    output, _ = await process.communicate()
    report = output.decode(errors="replace")
    print(report)  # shown with -s, or with the failure
    assert process.returncode == 0, report
    assert "Stateful" in report and "API Links" in report, report


async def test_accounts_api_passes_every_schemathesis_check(
    accounts: SeededAccounts, settings: Settings
) -> None:
    token = accounts.headers["Authorization"].removeprefix("Bearer ")
    seed = await _seed(accounts.api, accounts.headers)
    await run_schemathesis(
        "accounts",
        accounts.base_url,
        settings.ca_file,
        token,
        {
            "LASTRO_FUZZ_CUSTOMER": seed.customer,
            "LASTRO_FUZZ_ACCOUNT": seed.funded,
            "LASTRO_FUZZ_POSTING": seed.postings[0],
            "LASTRO_FUZZ_HOLD": seed.hold,
        },
    )


async def test_identity_api_passes_every_schemathesis_check(
    identity: FuzzedIdentity, settings: Settings
) -> None:
    await run_schemathesis(
        "identity",
        identity.identity.base,
        settings.ca_file,
        identity.identity.admin_token,
        {
            "LASTRO_FUZZ_USER_TOKEN": identity.user_token,
            "LASTRO_FUZZ_CLIENT_BASIC": aiohttp.encode_basic_auth(
                identity.identity.admin_id, identity.identity.admin_secret
            ).removeprefix("Basic "),
        },
    )
