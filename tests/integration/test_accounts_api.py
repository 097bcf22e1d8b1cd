"""The account service through its HTTP API only, against the real stack.

Served in-process over HTTPS (``accounts_app.running_accounts``) on a throwaway
schema; every main response is checked against ``openapi.yaml``.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from accounts_app import AccountsApi, running_accounts
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.accounts.store import verify_ledger
from lastro.core.config import Settings

PROBLEM = "https://lastro.dev/problems/"


@pytest.fixture(scope="module")
async def svc(settings: Settings, engine: AsyncEngine) -> AsyncIterator[AccountsApi]:
    async with running_accounts(settings, engine, "accounts_api") as api:
        yield api


def person(tag: str) -> dict[str, Any]:
    return {
        "name": f"Person {tag}",
        "email": f"{tag}@example.com",
        "document_number": f"DOC-{tag}",
    }


async def new_customer(svc: AccountsApi, subject: str) -> dict[str, Any]:
    tag = f"{subject}-{random.getrandbits(40):x}"
    return await svc.call(
        "POST",
        "/v1/customers",
        svc.customer(subject),
        expect=201,
        template="/v1/customers",
        json=person(tag),
    )


async def open_account(
    svc: AccountsApi, subject: str, currency: str = "USD", **extra: Any
) -> dict[str, Any]:
    customer = await new_customer(svc, subject)
    headers = svc.admin() if "overdraft_limit" in extra else svc.customer(subject)
    return await svc.call(
        "POST",
        "/v1/accounts",
        headers,
        expect=201,
        template="/v1/accounts",
        json={"customer_id": customer["id"], "currency": currency, **extra},
    )


async def system_account(svc: AccountsApi, currency: str = "USD") -> dict[str, Any]:
    return await svc.call(
        "POST",
        "/internal/v1/accounts",
        svc.service(),
        expect=201,
        template="/internal/v1/accounts",
        json={"currency": currency, "purpose": "settlement"},
    )


def transfer(
    external_id: str, source: str, target: str, amount: Any, currency: str = "USD"
) -> dict[str, Any]:
    return {
        "external_id": external_id,
        "entries": [
            {"account_id": source, "direction": "debit", "amount": amount, "currency": currency},
            {"account_id": target, "direction": "credit", "amount": amount, "currency": currency},
        ],
    }


def ext() -> str:
    return f"txn_{random.getrandbits(64):x}"


async def post(svc: AccountsApi, body: dict[str, Any], expect: int) -> dict[str, Any]:
    return await svc.call(
        "POST",
        "/internal/v1/postings",
        svc.service(),
        expect=expect,
        template="/internal/v1/postings",
        json=body,
    )


async def fund(svc: AccountsApi, settlement: str, account: str, amount: int) -> None:
    await post(svc, transfer(ext(), settlement, account, amount), 201)


async def balance(svc: AccountsApi, account: str) -> dict[str, Any]:
    return await svc.call(
        "GET",
        f"/v1/accounts/{account}/balance",
        svc.admin(),
        expect=200,
        template="/v1/accounts/{id}/balance",
    )


def zulu(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def problem_type(document: dict[str, Any]) -> str:
    return str(document["type"]).removeprefix(PROBLEM)


# ---------------------------------------------------------------- operational


async def test_service_is_ready_and_publishes_its_contract(svc: AccountsApi) -> None:
    ready = await svc.call("GET", "/readyz", {}, expect=200)
    assert ready["checks"] == {"database": "ok", "kms": "ok", "kafka": "ok"}
    spec = await svc.call("GET", "/openapi.json", {}, expect=200)
    assert "/internal/v1/postings" in spec["paths"]
    async with svc.client.get("/docs") as response:
        assert response.status == 200


# ---------------------------------------------------------------- API1, API3, API5


async def test_another_customers_resources_answer_404_like_unknown_ones(svc: AccountsApi) -> None:
    mine = await open_account(svc, "usr_api1_a")
    theirs = await open_account(svc, "usr_api1_b")
    their_customer = theirs["customer_id"]
    a = svc.customer("usr_api1_a")
    for path in (
        f"/v1/accounts/{theirs['id']}",
        f"/v1/accounts/{theirs['id']}/balance",
        f"/v1/accounts/{theirs['id']}/entries",
    ):
        stolen = await svc.call("GET", path, a, expect=404)
        unknown = await svc.call("GET", path.replace(theirs["id"], "acc_nope"), a, expect=404)
        assert problem_type(stolen) == problem_type(unknown) == "unknown-account"
    start, end = "2020-01-01T00:00:00Z", "2030-01-01T00:00:00Z"
    await svc.call(
        "GET", f"/v1/accounts/{theirs['id']}/statement?start={start}&end={end}", a, expect=404
    )
    await svc.call("POST", f"/v1/accounts/{theirs['id']}/close", a, expect=404)
    for method, path in (
        ("GET", f"/v1/customers/{their_customer}"),
        ("GET", f"/v1/customers/{their_customer}/export"),
        ("DELETE", f"/v1/customers/{their_customer}"),
    ):
        document = await svc.call(method, path, a, expect=404)
        assert problem_type(document) == "unknown-customer"
    await svc.call(
        "PATCH", f"/v1/customers/{their_customer}", a, expect=404, json={"phone": "+5511912345678"}
    )
    document = await svc.call(
        "POST",
        "/v1/accounts",
        a,
        expect=404,
        json={"customer_id": their_customer, "currency": "USD"},
    )
    assert problem_type(document) == "unknown-customer"
    listed = await svc.call("GET", "/v1/accounts", a, expect=200, template="/v1/accounts")
    assert [acc["id"] for acc in listed["data"]] == [mine["id"]]
    # Their data is intact: the erase attempt above did nothing.
    b = svc.customer("usr_api1_b")
    await svc.call("GET", f"/v1/customers/{their_customer}", b, expect=200)


@pytest.mark.parametrize(
    "field, value",
    [
        ("balance", 1_000_000),
        ("status", "active"),
        ("posted", 5),
        ("overdraft_limit", 100_000),
        ("kind", "system"),
        ("id", "acc_mine"),
    ],
)
async def test_clients_cannot_set_server_owned_account_fields(
    svc: AccountsApi, field: str, value: Any
) -> None:
    customer = await new_customer(svc, "usr_api3")
    headers = svc.customer("usr_api3")
    body = {"customer_id": customer["id"], "currency": "USD", field: value}
    document = await svc.call("POST", "/v1/accounts", headers, expect=422, json=body)
    assert problem_type(document) in ("validation-error", "invalid-request")
    assert [e["field"] for e in document["errors"]] == [field]
    listed = await svc.call("GET", "/v1/accounts", headers, expect=200)
    assert not [a for a in listed["data"] if a["customer_id"] == customer["id"]]
    del body[field]
    opened = await svc.call("POST", "/v1/accounts", headers, expect=201, json=body)
    assert opened["overdraft_limit"] == 0 and opened["balance"]["posted"] == 0


async def test_clients_cannot_set_server_owned_customer_fields(svc: AccountsApi) -> None:
    headers = svc.customer("usr_api3_c")
    for field, value in (("status", "erased"), ("balance", 10), ("id", "cus_x"), ("owner", "x")):
        document = await svc.call(
            "POST", "/v1/customers", headers, expect=422, json={**person("p3"), field: value}
        )
        assert document["errors"] == [{"field": field, "detail": "is not allowed"}]
    customer = await new_customer(svc, "usr_api3_c")
    path = f"/v1/customers/{customer['id']}"
    for changes in ({"status": "erased"}, {"name": "Someone Else"}, {"balance": 5}):
        await svc.call("PATCH", path, headers, expect=422, json=changes)
    after = await svc.call("GET", path, headers, expect=200, template="/v1/customers/{id}")
    assert after == customer


async def test_customer_tokens_are_refused_on_internal_routes(svc: AccountsApi) -> None:
    customer = svc.customer("usr_api5")
    calls = [
        ("POST", "/internal/v1/postings", transfer(ext(), "acc_a", "acc_b", 1)),
        ("GET", "/internal/v1/postings/pst_x", None),
        ("POST", "/internal/v1/postings/pst_x/reverse", None),
        ("POST", "/internal/v1/holds", {"external_id": "h"}),
        ("GET", "/internal/v1/holds/hold_x", None),
        ("POST", "/internal/v1/holds/hold_x/post", None),
        ("POST", "/internal/v1/holds/hold_x/void", None),
        ("POST", "/internal/v1/accounts", {"currency": "USD", "purpose": "fees"}),
        ("POST", "/v1/accounts/acc_x/freeze", None),
        ("POST", "/v1/accounts/acc_x/unfreeze", None),
    ]
    for method, path, body in calls:
        document = await svc.call(method, path, customer, expect=403, json=body)
        assert problem_type(document) == "insufficient-scope"
        await svc.call(method, path, {}, expect=401, json=body)
    wrong_audience = svc.bearer("ledger:write", "svc_x", audience="transactions")
    await svc.call("GET", "/internal/v1/postings/pst_x", wrong_audience, expect=401)


# ---------------------------------------------------------------- error types


async def test_every_ledger_error_is_a_typed_problem(svc: AccountsApi) -> None:
    settlement = (await system_account(svc))["id"]
    alice = (await open_account(svc, "usr_errors_a"))["id"]
    bob = (await open_account(svc, "usr_errors_b"))["id"]
    euro = (await open_account(svc, "usr_errors_e", "EUR"))["id"]
    await fund(svc, settlement, alice, 5_000)

    async def refused(body: Any, status: int, slug: str, **kwargs: Any) -> dict[str, Any]:
        document = await svc.call(
            "POST",
            "/internal/v1/postings",
            svc.service(),
            expect=status,
            template="/internal/v1/postings",
            json=body,
            **kwargs,
        )
        assert problem_type(document) == slug, document
        return document

    await refused(transfer(ext(), alice, "acc_missing", 10), 404, "unknown-account")
    await refused(transfer(ext(), alice, euro, 10), 422, "currency-mismatch")
    for amount in (0, -5, 2**63):  # the contract's Amount bounds
        await refused(transfer(ext(), alice, bob, amount), 422, "validation-error")
    await refused(transfer(ext(), alice, bob, 10.0), 422, "invalid-amount")
    document = await refused(transfer(ext(), alice, bob, 2.5), 422, "validation-error")
    assert {e["field"] for e in document["errors"]} == {"entries[0].amount", "entries[1].amount"}
    unbalanced = transfer(ext(), alice, bob, 10)
    unbalanced["entries"][1]["amount"] = 9
    await refused(unbalanced, 422, "unbalanced-posting")
    # ISO 4217 codes the platform supports are the contract's Currency enum (core/money.py)
    document = await refused(transfer(ext(), alice, bob, 10, "XXQ"), 422, "validation-error")
    fields = {e["field"] for e in document["errors"]}
    assert fields == {"entries[0].currency", "entries[1].currency"}
    lonely = transfer(ext(), alice, bob, 10)
    lonely["entries"] = lonely["entries"][:1]
    await refused(lonely, 422, "validation-error")  # the contract's minItems
    document = await refused(transfer(ext(), alice, bob, 5_001), 409, "insufficient-funds")
    assert "available" in document["detail"]
    await refused(transfer(ext(), alice, bob, 10, "usd"), 422, "validation-error")
    await refused({"external_id": ext(), "entries": [], "balance": 1}, 422, "validation-error")
    document = await svc.call(
        "POST",
        "/internal/v1/postings",
        {**svc.service(), "Content-Type": "application/json"},
        expect=400,
        data=b'{"external_id": ',
    )
    assert problem_type(document) == "malformed-json"

    # Idempotency on external_id: replay 200, different content 422.
    same = transfer(ext(), alice, bob, 100)
    first = await post(svc, same, 201)
    again = await post(svc, same, 200)
    assert again == first
    await refused({**same, "description": "changed"}, 422, "external-id-conflict")

    # Frozen: debits refused, credits still accepted; customers cannot unfreeze.
    frozen = await svc.call(
        "POST",
        f"/v1/accounts/{alice}/freeze",
        svc.admin(),
        expect=200,
        template="/v1/accounts/{id}/freeze",
    )
    assert frozen["status"] == "frozen"
    await refused(transfer(ext(), alice, bob, 10), 409, "account-frozen")
    await post(svc, transfer(ext(), settlement, alice, 10), 201)
    await svc.call(
        "POST", f"/v1/accounts/{alice}/unfreeze", svc.customer("usr_errors_a"), expect=403
    )
    await svc.call("POST", f"/v1/accounts/{alice}/unfreeze", svc.service(), expect=200)

    # Close: only at zero balance, by the owner; a closed account takes nothing.
    owner = svc.customer("usr_errors_e")
    document = await svc.call("POST", f"/v1/accounts/{alice}/close", svc.admin(), expect=409)
    assert problem_type(document) == "account-not-empty"
    closed = await svc.call(
        "POST", f"/v1/accounts/{euro}/close", owner, expect=200, template="/v1/accounts/{id}/close"
    )
    assert closed["status"] == "closed"
    euro_settlement = (await system_account(svc, "EUR"))["id"]
    await refused(transfer(ext(), euro_settlement, euro, 10, "EUR"), 409, "account-closed")

    # Unknown ids of every kind.
    for path, slug in (
        ("/internal/v1/postings/pst_missing", "unknown-posting"),
        ("/internal/v1/holds/hold_missing", "unknown-hold"),
    ):
        document = await svc.call("GET", path, svc.service(), expect=404)
        assert problem_type(document) == slug
    document = await svc.call("GET", "/v1/customers/cus_missing", owner, expect=404)
    assert problem_type(document) == "unknown-customer"

    # Reversal: once, then replayed; the original cannot be reversed differently.
    reversal = await svc.call(
        "POST",
        f"/internal/v1/postings/{first['id']}/reverse",
        svc.service(),
        expect=201,
        template="/internal/v1/postings/{id}/reverse",
    )
    assert reversal["reverses"] == first["id"]
    replayed = await svc.call(
        "POST", f"/internal/v1/postings/{first['id']}/reverse", svc.service(), expect=200
    )
    assert replayed["id"] == reversal["id"]
    fetched = await svc.call(
        "GET",
        f"/internal/v1/postings/{first['id']}",
        svc.service(),
        expect=200,
        template="/internal/v1/postings/{id}",
    )
    assert fetched == first


async def test_holds_post_once_and_never_after_void(svc: AccountsApi) -> None:
    settlement = (await system_account(svc))["id"]
    payer = (await open_account(svc, "usr_holds_a"))["id"]
    merchant = (await open_account(svc, "usr_holds_b"))["id"]
    await fund(svc, settlement, payer, 1_000)
    expires = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()

    async def place(amount: int, status: int = 201) -> dict[str, Any]:
        return await svc.call(
            "POST",
            "/internal/v1/holds",
            svc.service(),
            expect=status,
            template="/internal/v1/holds",
            json={
                "external_id": ext(),
                "account_id": payer,
                "counterparty_id": merchant,
                "amount": amount,
                "currency": "USD",
                "expires_at": expires,
            },
        )

    hold = await place(600)
    assert hold["status"] == "pending"
    assert (await balance(svc, payer))["available"] == 400
    document = await place(401, 409)
    assert problem_type(document) == "insufficient-funds"
    document = await svc.call(
        "POST",
        f"/internal/v1/holds/{hold['id']}/post",
        svc.service(),
        expect=422,
        json={"amount": 601},
    )
    assert problem_type(document) == "hold-amount-exceeded"
    posted = await svc.call(
        "POST",
        f"/internal/v1/holds/{hold['id']}/post",
        svc.service(),
        expect=200,
        template="/internal/v1/holds/{id}/post",
        json={"amount": 250},
    )
    assert (posted["status"], posted["posted_amount"]) == ("posted", 250)
    assert await balance(svc, payer) == {
        "object": "balance",
        "account_id": payer,
        "currency": "USD",
        "posted": 750,
        "pending": 0,
        "available": 750,
    }
    for action, slug in (("post", "hold-already-posted"), ("void", "hold-already-posted")):
        document = await svc.call(
            "POST", f"/internal/v1/holds/{hold['id']}/{action}", svc.service(), expect=409
        )
        assert problem_type(document) == slug
    second = await place(100)
    voided = await svc.call(
        "POST",
        f"/internal/v1/holds/{second['id']}/void",
        svc.service(),
        expect=200,
        template="/internal/v1/holds/{id}/void",
    )
    assert voided["status"] == "voided"
    document = await svc.call(
        "POST", f"/internal/v1/holds/{second['id']}/post", svc.service(), expect=409
    )
    assert problem_type(document) == "hold-voided"
    assert (await balance(svc, merchant))["posted"] == 250


async def test_no_caller_chosen_external_id_can_block_a_hold_capture(svc: AccountsApi) -> None:
    settlement = (await system_account(svc))["id"]
    payer = (await open_account(svc, "usr_block_hold_a"))["id"]
    merchant = (await open_account(svc, "usr_block_hold_b"))["id"]
    await fund(svc, settlement, payer, 1_000)
    hold = await svc.call(
        "POST",
        "/internal/v1/holds",
        svc.service(),
        expect=201,
        template="/internal/v1/holds",
        json={
            "external_id": ext(),
            "account_id": payer,
            "counterparty_id": merchant,
            "amount": 600,
            "currency": "USD",
            "expires_at": (datetime.now(UTC) + timedelta(minutes=5)).isoformat(),
        },
    )
    # The id the hold's posting is keyed by is refused; the form it had before is an
    # ordinary caller id now, and taking it blocks nothing.
    refused = await post(svc, transfer(f"lastro:hold:{hold['id']}:post", settlement, payer, 5), 422)
    assert problem_type(refused) == "validation-error"
    assert refused["errors"] == [
        {"field": "external_id", "detail": "must not match the pattern ^lastro:"}
    ]
    await post(svc, transfer(f"{hold['id']}:post", settlement, payer, 5), 201)

    posted = await svc.call(
        "POST",
        f"/internal/v1/holds/{hold['id']}/post",
        svc.service(),
        expect=200,
        template="/internal/v1/holds/{id}/post",
    )
    assert (posted["status"], posted["posted_amount"]) == ("posted", 600)
    assert (await balance(svc, payer))["posted"] == 1_000 + 5 - 600
    assert (await balance(svc, merchant))["posted"] == 600


async def test_no_caller_chosen_external_id_can_block_a_reversal(svc: AccountsApi) -> None:
    settlement = (await system_account(svc))["id"]
    account = (await open_account(svc, "usr_block_reversal"))["id"]
    original = await post(svc, transfer(ext(), settlement, account, 300), 201)
    refused = await post(
        svc, transfer(f"lastro:reversal:{original['id']}", settlement, account, 1), 422
    )
    assert refused["errors"] == [
        {"field": "external_id", "detail": "must not match the pattern ^lastro:"}
    ]
    await post(svc, transfer(f"reversal:{original['id']}", settlement, account, 1), 201)

    async def reverse(expect: int) -> dict[str, Any]:
        return await svc.call(
            "POST",
            f"/internal/v1/postings/{original['id']}/reverse",
            svc.service(),
            expect=expect,
            template="/internal/v1/postings/{id}/reverse",
        )

    reversal = await reverse(201)
    assert reversal["reverses"] == original["id"]
    assert reversal["external_id"] == f"lastro:reversal:{original['id']}"
    assert (await reverse(200))["id"] == reversal["id"]  # a second call replays
    assert (await balance(svc, account))["posted"] == 1


async def test_holds_refuse_the_ledgers_own_namespace_too(svc: AccountsApi) -> None:
    settlement = (await system_account(svc))["id"]
    payer = (await open_account(svc, "usr_reserved_hold"))["id"]
    await fund(svc, settlement, payer, 100)
    refused = await svc.call(
        "POST",
        "/internal/v1/holds",
        svc.service(),
        expect=422,
        json={
            "external_id": "lastro:mine",
            "account_id": payer,
            "counterparty_id": settlement,
            "amount": 10,
            "currency": "USD",
            "expires_at": (datetime.now(UTC) + timedelta(minutes=5)).isoformat(),
        },
    )
    assert refused["errors"] == [
        {"field": "external_id", "detail": "must not match the pattern ^lastro:"}
    ]
    assert (await balance(svc, payer))["pending"] == 0


async def test_hold_sweeper_releases_expired_holds(svc: AccountsApi) -> None:
    settlement = (await system_account(svc))["id"]
    payer = (await open_account(svc, "usr_sweep"))["id"]
    await fund(svc, settlement, payer, 500)
    hold = await svc.call(
        "POST",
        "/internal/v1/holds",
        svc.service(),
        expect=201,
        json={
            "external_id": ext(),
            "account_id": payer,
            "counterparty_id": settlement,
            "amount": 300,
            "currency": "USD",
            "expires_at": (datetime.now(UTC) + timedelta(seconds=1)).isoformat(),
        },
    )
    for _ in range(50):
        state = await svc.call(
            "GET",
            f"/internal/v1/holds/{hold['id']}",
            svc.service(),
            expect=200,
            template="/internal/v1/holds/{id}",
        )
        if state["status"] == "expired":
            break
        await asyncio.sleep(0.2)
    assert state["status"] == "expired"
    assert (await balance(svc, payer))["available"] == 500


# ---------------------------------------------------------------- history


async def test_entries_paginate_without_gaps_and_statement_adds_up(svc: AccountsApi) -> None:
    settlement = (await system_account(svc))["id"]
    account = await open_account(svc, "usr_history")
    acc = account["id"]
    owner = svc.customer("usr_history")
    start = datetime.now(UTC) - timedelta(seconds=1)
    for amount in (500, 300, 200, 100, 50):
        await fund(svc, settlement, acc, amount)
    await post(svc, transfer(ext(), acc, settlement, 120), 201)
    end = datetime.now(UTC) + timedelta(seconds=1)

    seen: list[int] = []
    cursor: str | None = None
    while True:
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await svc.call(
            "GET",
            f"/v1/accounts/{acc}/entries?{query}",
            owner,
            expect=200,
            template="/v1/accounts/{id}/entries",
        )
        seen += [e["id"] for e in page["data"]]
        cursor = page["next_cursor"]
        assert page["has_more"] is (cursor is not None)
        if cursor is None:
            break
    assert len(seen) == 6 and len(set(seen)) == 6 and seen == sorted(seen, reverse=True)
    debits = await svc.call("GET", f"/v1/accounts/{acc}/entries?direction=debit", owner, expect=200)
    assert [e["amount"] for e in debits["data"]] == [120]
    future = zulu(datetime.now(UTC) + timedelta(days=1))
    empty = await svc.call("GET", f"/v1/accounts/{acc}/entries?since={future}", owner, expect=200)
    assert empty["data"] == []

    params = f"start={zulu(start)}&end={zulu(end)}"
    statement = await svc.call(
        "GET",
        f"/v1/accounts/{acc}/statement?{params}",
        owner,
        expect=200,
        template="/v1/accounts/{id}/statement",
    )
    assert (statement["opening_balance"], statement["total_credits"]) == (0, 1150)
    assert (statement["total_debits"], statement["closing_balance"]) == (120, 1030)
    assert statement["entry_count"] == len(statement["entries"]) == 6

    for bad in ("cursor=not-a-cursor", "limit=0", "limit=abc", "since=yesterday"):
        document = await svc.call("GET", f"/v1/accounts/{acc}/entries?{bad}", owner, expect=422)
        assert problem_type(document) in ("invalid-request", "validation-error")
    await svc.call(
        "GET", f"/v1/accounts/{acc}/statement?start=2030-01-01T00:00:00Z", owner, expect=422
    )
    document = await svc.call(
        "GET",
        f"/v1/accounts/{acc}/statement?start=2030-01-02T00:00:00Z&end=2030-01-01T00:00:00Z",
        owner,
        expect=422,
    )
    assert problem_type(document) == "invalid-request"


# ---------------------------------------------------------------- concurrency


async def test_concurrent_http_transfers_never_lose_a_cent(
    svc: AccountsApi, engine: AsyncEngine
) -> None:
    rng = random.Random(20261125)
    settlement = (await system_account(svc))["id"]
    limits = [0] * 8 + [2_000, 5_000]
    accounts = [
        (await open_account(svc, f"usr_conc_{i}", **({"overdraft_limit": lim} if lim else {})))[
            "id"
        ]
        for i, lim in enumerate(limits)
    ]
    overdraft = dict(zip(accounts, limits, strict=True))
    for account in accounts:
        await fund(svc, settlement, account, 10_000)

    transfers = []
    for _ in range(1_000):
        source, target = rng.sample(accounts, 2)
        transfers.append(transfer(ext(), source, target, rng.randint(1, 4_000)))
    retried = {t["external_id"] for t in rng.sample(transfers, 150)}
    work = [*transfers, *(t for t in transfers if t["external_id"] in retried)]
    rng.shuffle(work)
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for body in work:
        queue.put_nowait(body)
    outcomes: list[tuple[str, int, dict[str, Any]]] = []
    headers = svc.service()

    async def client() -> None:
        while not queue.empty():
            body = queue.get_nowait()
            async with svc.client.post(
                "/internal/v1/postings", json=body, headers=headers
            ) as response:
                outcomes.append(
                    (body["external_id"], response.status, await response.json(content_type=None))
                )

    await asyncio.gather(*(client() for _ in range(20)))

    statuses = Counter(status for _, status, _ in outcomes)
    assert len(outcomes) == len(work)
    assert set(statuses) <= {200, 201, 409}, statuses
    assert statuses[201] > 300 and statuses[409] > 0, statuses
    for _, status, body in outcomes:
        if status == 409:
            assert problem_type(body) == "insufficient-funds"
    by_external: dict[str, set[str]] = {}
    for external_id, status, body in outcomes:
        if status in (200, 201):
            by_external.setdefault(external_id, set()).add(body["id"])
    assert all(len(ids) == 1 for ids in by_external.values())
    assert statuses[200] == sum(1 for e, s, _ in outcomes if s == 200 and e in retried), (
        "only retries replay"
    )

    postings = svc.ledger.tables.postings
    async with engine.connect() as conn:
        counts = dict(
            (
                await conn.execute(
                    select(postings.c.external_id, func.count())
                    .where(postings.c.external_id.in_(sorted(retried)))
                    .group_by(postings.c.external_id)
                )
            ).all()
        )
    assert all(count == 1 for count in counts.values())
    assert set(counts) == {e for e in retried if e in by_external}

    balances = {a: await balance(svc, a) for a in accounts}
    assert sum(b["posted"] for b in balances.values()) == 10_000 * len(accounts)
    for account, b in balances.items():
        assert b["available"] >= -overdraft[account], (account, b)
    assert (await balance(svc, settlement))["posted"] == -10_000 * len(accounts)

    async with engine.execution_options(isolation_level="REPEATABLE READ").connect() as conn:
        report = await verify_ledger(conn, svc.ledger.tables)
    assert report.ok, report
    async with engine.connect() as conn:
        recorded = await conn.scalar(
            select(func.count()).where(
                postings.c.external_id.in_([t["external_id"] for t in transfers])
            )
        )
    assert recorded == len(by_external) == statuses[201]
