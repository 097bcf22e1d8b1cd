"""The simulated card acquirer as a process: tokenisation, declines, idempotency keys,
capture and refund limits, records, persistence across a crash, and signed settlement
callbacks that the transaction service's verification helper accepts."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from external_kit import Callback, Contract, ProviderProcess, SettlementReceiver, running

from lastro.external import acquirer
from lastro.external.acquirer_signing import (
    SIGNATURE_HEADER,
    InvalidSettlementSignature,
    verify_settlement_signature,
)
from lastro.external.cards import TEST_DECLINES

CONTRACT = Contract(acquirer.OPENAPI)
WEBHOOK_SECRET = "whsec_" + secrets.token_urlsafe(24)
VISA = "4242424242424242"
FRESH = "<a fresh key>"


@pytest.fixture(scope="module")
async def receiver(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SettlementReceiver]:
    async with SettlementReceiver(tmp_path_factory.mktemp("acquirer")).serving() as r:
        yield r


@pytest.fixture(scope="module")
async def provider(receiver: SettlementReceiver) -> AsyncIterator[ProviderProcess]:
    env = {
        "LASTRO_ACQUIRER_CALLBACK_URL": receiver.url,
        "LASTRO_ACQUIRER_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    async with running("acquirer", receiver.dev_dir, env) as process:
        yield process


@pytest.fixture
async def http(provider: ProviderProcess) -> AsyncIterator[aiohttp.ClientSession]:
    async with provider.session() as session:
        yield session


async def call(
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    key: str | None = FRESH,
    expect: int,
    template: str | None = None,
) -> Any:
    """One request; a POST carries a fresh Idempotency-Key unless ``key`` says otherwise."""
    headers = {}
    if method == "POST" and key is not None:
        headers["Idempotency-Key"] = uuid.uuid4().hex if key == FRESH else key
    async with http.request(method, path, json=body, headers=headers) as response:
        document = await response.json(content_type=None)
        assert response.status == expect, document
    if template is not None:
        CONTRACT.check(method, template, expect, document)
    return document


async def tokenize(http: aiohttp.ClientSession, number: str = VISA) -> dict[str, Any]:
    card = {"number": number, "exp_month": 12, "exp_year": datetime.now(UTC).year + 3, "cvc": "123"}
    token: dict[str, Any] = await call(
        http, "POST", "/v1/tokens", card, key=None, expect=201, template="/v1/tokens"
    )
    return token


async def authorize(http: aiohttp.ClientSession, amount: int = 10_000, **kw: Any) -> Any:
    token = kw.pop("token", None) or (await tokenize(http))["token"]
    body = {
        "token": token,
        "amount": amount,
        "currency": "EUR",
        "reference": f"txn_{uuid.uuid4().hex}",
    }
    return await call(
        http, "POST", "/v1/authorizations", body, expect=201, template="/v1/authorizations", **kw
    )


# ------------------------------------------------------------------ tokens, declines


async def test_a_token_carries_no_card_number_and_one_card_has_one_fingerprint(
    http: aiohttp.ClientSession,
) -> None:
    first, second, other = (
        await tokenize(http),
        await tokenize(http),
        await tokenize(http, "5555555555554444"),
    )
    assert first["token"] != second["token"]
    assert first["fingerprint"] == second["fingerprint"] != other["fingerprint"]
    assert (first["brand"], first["last4"], other["brand"]) == ("visa", "4242", "mastercard")
    assert VISA not in json.dumps(first) and "424242424242" not in json.dumps(first)


async def test_invalid_card_details_are_refused_naming_the_field(
    http: aiohttp.ClientSession,
) -> None:
    card = {"number": "4242424242424241", "exp_month": 12, "exp_year": 2099, "cvc": "123"}
    problem = await call(http, "POST", "/v1/tokens", card, key=None, expect=422)
    assert problem["type"].endswith("/invalid-card")
    assert problem["errors"] == [{"field": "number", "detail": "The card number is not valid."}]


@pytest.mark.parametrize(("number", "code"), sorted(TEST_DECLINES.items()))
async def test_test_cards_decline_with_their_code(
    http: aiohttp.ClientSession, number: str, code: str
) -> None:
    token = (await tokenize(http, number))["token"]
    auth = await authorize(http, token=token)
    assert (auth["status"], auth["decline_code"]) == ("declined", code)
    problem = await call(http, "POST", f"/v1/authorizations/{auth['id']}/captures", {}, expect=409)
    assert problem["type"].endswith("/authorization-not-capturable")


async def test_an_unknown_token_or_currency_is_refused(http: aiohttp.ClientSession) -> None:
    problem = await call(
        http,
        "POST",
        "/v1/authorizations",
        {"token": "tok_nope", "amount": 100, "currency": "EUR", "reference": "r"},
        expect=422,
    )
    assert problem["type"].endswith("/unknown-card-token")
    token = (await tokenize(http))["token"]
    problem = await call(
        http,
        "POST",
        "/v1/authorizations",
        {"token": token, "amount": 100, "currency": "XYZ", "reference": "r"},
        expect=422,
    )
    assert problem["type"].endswith("/unsupported-currency")


# --------------------------------------------------------------------- idempotency


async def test_same_key_same_request_replays_the_stored_answer(
    http: aiohttp.ClientSession,
) -> None:
    token = (await tokenize(http))["token"]
    body = {"token": token, "amount": 2500, "currency": "EUR", "reference": "txn_replay"}
    key = uuid.uuid4().hex
    async with http.post("/v1/authorizations", json=body, headers={"Idempotency-Key": key}) as r:
        first, first_raw = r.status, await r.read()
        assert "Idempotent-Replayed" not in r.headers
    async with http.post("/v1/authorizations", json=body, headers={"Idempotency-Key": key}) as r:
        assert (r.status, await r.read()) == (first, first_raw)
        assert r.headers["Idempotent-Replayed"] == "true"
    other = {**body, "amount": 2501}
    problem = await call(http, "POST", "/v1/authorizations", other, key=key, expect=422)
    assert problem["type"].endswith("/idempotency-key-reused")
    auth_id = json.loads(first_raw)["id"]
    path = f"/v1/authorizations/{auth_id}/captures"
    await call(http, "POST", path, {"amount": 100}, key="cap-key-" + key, expect=201)
    other_path = await call(
        http, "POST", f"{path}?x=1", {"amount": 100}, key="cap-key-" + key, expect=422
    )
    assert other_path["type"].endswith("/idempotency-key-reused")


async def test_money_moving_posts_require_a_key(http: aiohttp.ClientSession) -> None:
    auth = await authorize(http)
    for path in (
        "/v1/authorizations",
        f"/v1/authorizations/{auth['id']}/captures",
        f"/v1/authorizations/{auth['id']}/void",
    ):
        problem = await call(http, "POST", path, {}, key=None, expect=400)
        assert problem["type"].endswith("/idempotency-key-missing")
    assert (await call(http, "GET", f"/v1/authorizations/{auth['id']}", expect=200))[
        "captured"
    ] == 0


async def test_concurrent_requests_with_one_key_have_one_effect(
    http: aiohttp.ClientSession,
) -> None:
    token = (await tokenize(http))["token"]
    reference = f"txn_{uuid.uuid4().hex}"
    body = {"token": token, "amount": 777, "currency": "EUR", "reference": reference}
    key = uuid.uuid4().hex

    async def once() -> tuple[int, bytes]:
        headers = {"Idempotency-Key": key}
        async with http.post("/v1/authorizations", json=body, headers=headers) as r:
            return r.status, await r.read()

    answers = await asyncio.gather(*(once() for _ in range(25)))
    assert {status for status, _ in answers} == {201}
    assert len({raw for _, raw in answers}) == 1
    assert [r["reference"] for r in await all_records(http)].count(reference) == 1


# ---------------------------------------------------------- captures, voids, refunds


async def test_partial_captures_never_exceed_the_authorized_amount(
    http: aiohttp.ClientSession,
) -> None:
    auth = await authorize(http, 10_000)
    captures = f"/v1/authorizations/{auth['id']}/captures"
    template = "/v1/authorizations/{id}/captures"
    first = await call(http, "POST", captures, {"amount": 4000}, expect=201, template=template)
    assert (first["amount"], first["authorization"], first["settlement"]) == (
        4000,
        auth["id"],
        None,
    )
    problem = await call(http, "POST", captures, {"amount": 6001}, expect=422)
    assert problem["type"].endswith("/capture-exceeds-authorization")
    assert problem["errors"][0]["field"] == "amount"
    rest = await call(http, "POST", captures, None, expect=201)
    assert rest["amount"] == 6000
    problem = await call(http, "POST", captures, {"amount": 1}, expect=409)
    assert problem["type"].endswith("/authorization-not-capturable")
    now = await call(
        http, "GET", f"/v1/authorizations/{auth['id']}", expect=200,
        template="/v1/authorizations/{id}",
    )  # fmt: skip
    assert (now["status"], now["captured"]) == ("approved", 10_000)
    assert [c["amount"] for c in now["captures"]] == [4000, 6000]


async def test_concurrent_captures_with_their_own_keys_stop_at_the_authorized_amount(
    http: aiohttp.ClientSession,
) -> None:
    auth = await authorize(http, 1000)

    async def capture() -> int:
        path = f"/v1/authorizations/{auth['id']}/captures"
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        async with http.post(path, json={"amount": 300}, headers=headers) as response:
            return response.status

    statuses = await asyncio.gather(*(capture() for _ in range(10)))
    assert sorted(statuses) == [201] * 3 + [422] * 7
    now = await call(http, "GET", f"/v1/authorizations/{auth['id']}", expect=200)
    assert now["captured"] == 900


async def test_a_void_releases_the_rest_and_stops_further_captures(
    http: aiohttp.ClientSession,
) -> None:
    auth = await authorize(http, 5000)
    captures = f"/v1/authorizations/{auth['id']}/captures"
    await call(http, "POST", captures, {"amount": 2000}, expect=201)
    voided = await call(
        http, "POST", f"/v1/authorizations/{auth['id']}/void", expect=200,
        template="/v1/authorizations/{id}/void",
    )  # fmt: skip
    assert (voided["status"], voided["captured"]) == ("voided", 2000)
    problem = await call(http, "POST", captures, {"amount": 1}, expect=409)
    assert problem["type"].endswith("/authorization-not-capturable")
    problem = await call(http, "POST", f"/v1/authorizations/{auth['id']}/void", expect=409)
    assert problem["type"].endswith("/authorization-not-voidable")
    mine = [r for r in await all_records(http) if r["authorization"] == auth["id"]]
    assert [(r["type"], r["amount"]) for r in mine] == [
        ("authorization", 5000),
        ("capture", 2000),
        ("void", 3000),
    ]


async def test_a_fully_captured_authorization_cannot_be_voided(
    http: aiohttp.ClientSession,
) -> None:
    auth = await authorize(http, 800)
    await call(http, "POST", f"/v1/authorizations/{auth['id']}/captures", None, expect=201)
    problem = await call(http, "POST", f"/v1/authorizations/{auth['id']}/void", expect=409)
    assert problem["type"].endswith("/authorization-not-voidable")


async def test_partial_refunds_never_exceed_the_captured_amount(
    http: aiohttp.ClientSession,
) -> None:
    auth = await authorize(http, 10_000)
    cap = await call(
        http, "POST", f"/v1/authorizations/{auth['id']}/captures", {"amount": 6000}, expect=201
    )
    refunds, template = f"/v1/captures/{cap['id']}/refunds", "/v1/captures/{id}/refunds"
    first = await call(http, "POST", refunds, {"amount": 2500}, expect=201, template=template)
    assert (first["capture"], first["authorization"], first["amount"]) == (
        cap["id"],
        auth["id"],
        2500,
    )
    problem = await call(http, "POST", refunds, {"amount": 3501}, expect=422)
    assert problem["type"].endswith("/refund-exceeds-capture")
    assert (await call(http, "POST", refunds, None, expect=201))["amount"] == 3500
    await call(http, "POST", refunds, {"amount": 1}, expect=422)
    capture_now = await call(
        http, "GET", f"/v1/captures/{cap['id']}", expect=200, template="/v1/captures/{id}"
    )
    auth_now = await call(http, "GET", f"/v1/authorizations/{auth['id']}", expect=200)
    assert capture_now["refunded"] == auth_now["refunded"] == 6000
    await call(http, "POST", "/v1/captures/cap_nope/refunds", None, expect=404)


# ------------------------------------------------------------------------- records


async def all_records(http: aiohttp.ClientSession, **params: Any) -> list[dict[str, Any]]:
    """Every page of ``GET /v1/records``, following the cursor."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {k: str(v) for k, v in params.items()}
        if cursor is not None:
            query["cursor"] = cursor
        async with http.get("/v1/records", params=query) as response:
            body = await response.json()
            assert response.status == 200, body
        CONTRACT.check("GET", "/v1/records", 200, body)
        found += body["records"]
        cursor = body["next_cursor"]
        if cursor is None:
            return found


async def test_records_cover_a_period_page_by_page(http: aiohttp.ClientSession) -> None:
    start = datetime.now(UTC)
    auth = await authorize(http, 300)
    await call(http, "POST", f"/v1/authorizations/{auth['id']}/captures", None, expect=201)
    declined = await authorize(http, token=(await tokenize(http, "4000000000000002"))["token"])
    end = datetime.now(UTC) + timedelta(seconds=1)
    period = {"from": start.isoformat(), "to": end.isoformat()}
    whole = await all_records(http, **period)
    paged = await all_records(http, **period, limit=1)
    assert whole == paged
    mine = [
        (r["type"], r["status"])
        for r in whole
        if r["authorization"] in (auth["id"], declined["id"])
    ]
    assert mine == [
        ("authorization", "approved"),
        ("capture", "succeeded"),
        ("authorization", "declined"),
    ]
    codes = {r["decline_code"] for r in whole if r["authorization"] == declined["id"]}
    assert codes == {"card_declined"}
    before = await all_records(http, to=start.isoformat())
    assert auth["id"] not in {r["authorization"] for r in before}
    for bad in ("yesterday", "2026-01-01", "0001-01-01T00:00:00+14:00"):
        async with http.get("/v1/records", params={"from": bad}) as response:
            assert response.status == 422, bad


# ------------------------------------------------------------------ settlement


def _batches_with(callbacks: list[Callback], marker: str) -> list[Callback]:
    return [c for c in callbacks if marker.encode() in c.body]


async def test_settlement_callbacks_arrive_signed_and_verify(
    http: aiohttp.ClientSession, receiver: SettlementReceiver
) -> None:
    auth = await authorize(http, 5000)
    cap = await call(http, "POST", f"/v1/authorizations/{auth['id']}/captures", None, expect=201)
    refund = await call(
        http, "POST", f"/v1/captures/{cap['id']}/refunds", {"amount": 1000}, expect=201
    )
    async with http.post("/admin/settle") as response:
        assert response.status == 200
    (callback,) = _batches_with(
        await receiver.wait_for(lambda got: _batches_with(got, cap["id"])), cap["id"]
    )
    header = callback.headers[SIGNATURE_HEADER]
    verify_settlement_signature(WEBHOOK_SECRET, header, callback.body)
    batch = json.loads(callback.body)
    CONTRACT.check_schema("SettlementBatch", batch)
    items = {i["id"]: i for i in batch["items"]}
    assert (items[cap["id"]]["amount"], items[cap["id"]]["fee"]) == (5000, 60)
    assert (items[refund["id"]]["type"], items[refund["id"]]["amount"]) == ("refund", 1000)
    assert batch["gross"] == sum(
        i["amount"] if i["type"] == "capture" else -i["amount"] for i in batch["items"]
    )
    assert (
        batch["net"]
        == batch["gross"] - batch["fees"]
        == batch["gross"] - sum(i["fee"] for i in batch["items"])
    )
    settled = await call(http, "GET", f"/v1/captures/{cap['id']}", expect=200)
    assert settled["settlement"] == batch["id"]

    with pytest.raises(InvalidSettlementSignature):
        verify_settlement_signature(WEBHOOK_SECRET, header, callback.body.replace(b"5000", b"9000"))
    with pytest.raises(InvalidSettlementSignature):
        verify_settlement_signature("whsec_not_ours", header, callback.body)
    with pytest.raises(InvalidSettlementSignature):
        verify_settlement_signature(
            WEBHOOK_SECRET, header, callback.body, 60, now=time_of(header) + 61
        )


def time_of(header: str) -> int:
    return int(header.split(",")[0].removeprefix("t="))


async def test_a_refused_delivery_is_retried_with_a_fresh_signature_until_taken(
    http: aiohttp.ClientSession, receiver: SettlementReceiver
) -> None:
    auth = await authorize(http, 1200)
    cap = await call(http, "POST", f"/v1/authorizations/{auth['id']}/captures", None, expect=201)
    receiver.refuse(cap["id"], times=2)
    async with http.post("/admin/settle") as response:
        assert response.status == 200
    got = await receiver.wait_for(lambda got: len(_batches_with(got, cap["id"])) >= 3, within=30)
    attempts = _batches_with(got, cap["id"])
    assert [c.headers["Acquirer-Delivery-Attempt"] for c in attempts] == ["1", "2", "3"]
    assert len({c.body for c in attempts}) == 1  # the same batch each time
    for c in attempts:
        verify_settlement_signature(WEBHOOK_SECRET, c.headers[SIGNATURE_HEADER], c.body)
    batch_id = json.loads(attempts[0].body)["id"]

    async def delivered() -> dict[str, Any]:
        async with http.get("/admin/settlements") as response:
            body = await response.json()
        CONTRACT.check("GET", "/admin/settlements", 200, body)
        (mine,) = [s for s in body["settlements"] if s["id"] == batch_id]
        return mine

    for _ in range(20):
        state = await delivered()
        if state["delivery"] == "delivered":
            break
        await asyncio.sleep(0.2)
    assert (state["delivery"], state["attempts"], state["last_error"]) == ("delivered", 3, None)


# ------------------------------------------------------------------- persistence


async def test_a_crashed_acquirer_forgets_nothing_it_answered(
    provider: ProviderProcess,
) -> None:
    async with provider.session() as http:
        token = await tokenize(http)
        auth = await authorize(http, 9000, token=token["token"])
        key = uuid.uuid4().hex
        path = f"/v1/authorizations/{auth['id']}/captures"
        cap = await call(http, "POST", path, {"amount": 4000}, key=key, expect=201)
    await asyncio.to_thread(provider.restart, signal.SIGKILL)
    async with provider.session() as http:
        now = await call(http, "GET", f"/v1/authorizations/{auth['id']}", expect=200)
        assert (now["status"], now["captured"], now["captures"][0]["id"]) == (
            "approved",
            4000,
            cap["id"],
        )
        async with http.post(path, json={"amount": 4000}, headers={"Idempotency-Key": key}) as r:
            assert r.status == 201 and r.headers["Idempotent-Replayed"] == "true"
            assert (await r.json())["id"] == cap["id"]
        await call(http, "POST", path, {"amount": 5001}, expect=422)
        again = await authorize(http, 100, token=token["token"])
        assert again["card"]["fingerprint"] == token["fingerprint"]
        assert (await call(http, "POST", path, None, expect=201))["amount"] == 5000
