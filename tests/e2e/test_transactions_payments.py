"""Card payments through the simulated acquirer, cross-currency transfers through the
simulated FX provider, and the acquirer's settlement: the transaction service's
real processes, the real fakes (``lastro dev up``), real tokens and the ledger."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from transactions_kit import (
    EventTap,
    FraudService,
    Party,
    Platform,
    Processes,
    TxApi,
    transaction_processes,
)

from lastro.core.config import Settings
from lastro.core.db import create_engine
from lastro.core.events import EventSigner
from lastro.core.security.transit import TransitClient
from lastro.external.acquirer_signing import sign_settlement

PROBLEM = "https://lastro.dev/problems/"
APPROVES, DECLINES = "4242424242424242", "4000000000000002"


@pytest.fixture(scope="module")
def fraud(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FraudService]:
    service = FraudService(settings, tmp_path_factory.mktemp("fraud"))
    yield service
    service.close()


@pytest.fixture(scope="module")
async def processes(
    settings: Settings, fraud: FraudService, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Processes]:
    workdir = tmp_path_factory.mktemp("transactions")
    rate = {"LASTRO_RATE_LIMIT_PER_MINUTE": "100000"}
    async with transaction_processes(settings, fraud, workdir, **rate) as procs:
        yield procs


@pytest.fixture(scope="module")
async def platform(settings: Settings) -> AsyncIterator[Platform]:
    async with Platform.open(settings) as p:
        yield p


@pytest.fixture(scope="module")
def api(platform: Platform, processes: Processes) -> TxApi:
    return TxApi(platform, processes.base)


@pytest.fixture
async def tap(settings: Settings) -> AsyncIterator[EventTap]:
    transit = TransitClient.from_settings(settings)
    events = EventTap(settings, await EventSigner.from_transit(transit, settings.events_key_name))
    await events.start()
    yield events
    await events.stop()
    await transit.close()


async def card(platform: Platform, number: str = APPROVES) -> dict[str, Any]:
    """Tokenise a card at the acquirer, as the payer's client does."""
    settings = platform.settings
    reply = await platform.call(
        "POST",
        f"{settings.service_url('acquirer')}/v1/tokens",
        settings.partner_api_keys["acquirer"],
        json={"number": number, "exp_month": 12, "exp_year": 2031, "cvc": "123"},
    )
    assert reply.status == 201, reply.body
    return {k: reply.body[k] for k in ("token", "fingerprint", "brand", "last4")}


def payment(merchant: Party, amount: int, token: dict[str, Any], capture: str) -> dict[str, Any]:
    return {
        "destination_account_id": merchant.accounts["EUR"],
        "amount": amount,
        "currency": "EUR",
        "card": token,
        "capture_method": capture,
        "description": "coffee and cake",
    }


async def acquirer_authorization(platform: Platform, authorization_id: str) -> dict[str, Any]:
    settings = platform.settings
    reply = await platform.call(
        "GET",
        f"{settings.service_url('acquirer')}/v1/authorizations/{authorization_id}",
        settings.partner_api_keys["acquirer"],
    )
    assert reply.status == 200, reply.body
    return dict(reply.body)


async def settle_now(platform: Platform, reference: str) -> dict[str, Any]:
    """Close the acquirer's batch now and return the one that pays ``reference``."""
    settings = platform.settings
    acquirer = settings.service_url("acquirer")
    key = settings.partner_api_keys["acquirer"]
    closed = await platform.call("POST", f"{acquirer}/admin/settle", key)
    assert closed.status == 200, closed.body
    listed = await platform.call("GET", f"{acquirer}/admin/settlements", key)
    batches = listed.body["settlements"] if isinstance(listed.body, dict) else listed.body
    for entry in batches:
        batch = entry.get("batch", entry)
        if any(item.get("reference") == reference for item in batch.get("items", [])):
            return dict(batch)
    raise AssertionError(f"no settlement batch pays {reference}: {listed.body}")


async def deliver(platform: Platform, processes: Processes, batch: dict[str, Any]) -> Any:
    """Deliver a batch to this instance's callback as the acquirer does (signed)."""
    body = json.dumps(batch).encode()
    header = sign_settlement(platform.settings.acquirer_webhook_secret, body)
    return await platform.call(
        "POST",
        f"{processes.base}/internal/v1/acquirer/settlements",
        data=body,
        headers={"Acquirer-Signature": header, "Content-Type": "application/json"},
    )


async def test_card_payment_partial_capture_partial_refund_then_settlement(
    api: TxApi, platform: Platform, processes: Processes, tap: EventTap
) -> None:
    merchant = await platform.party("cafe")
    body = payment(merchant, 5_000, await card(platform), "manual")
    authorized = await api.post("/v1/payments", merchant.token, body, wait=10)
    assert authorized.status == 201, authorized.body
    paid = authorized.body
    assert (paid["status"], paid["amount_capturable"]) == ("authorized", 5_000)
    assert paid["card"] == {"brand": "visa", "last4": "4242"}
    assert (await platform.balance(merchant.accounts["EUR"]))["posted"] == 0
    path = f"/v1/payments/{paid['id']}"

    too_much = await api.post(f"{path}/capture", merchant.token, {"amount": 5_001})
    assert too_much.status == 422 and too_much.body["type"] == PROBLEM + "amount-exceeded"
    captured = await api.post(f"{path}/capture", merchant.token, {"amount": 3_000}, wait=10)
    assert captured.status == 200 and captured.body["status"] == "posted", captured.body
    assert captured.body["captured_amount"] == 3_000
    assert (await platform.balance(merchant.accounts["EUR"]))["posted"] == 3_000
    again = await api.post(f"{path}/capture", merchant.token, {"amount": 1})
    assert again.status == 409

    over = await api.post(f"{path}/refunds", merchant.token, {"amount": 3_001})
    assert over.status == 422 and over.body["type"] == PROBLEM + "amount-exceeded"
    refund = await api.post(f"{path}/refunds", merchant.token, {"amount": 1_000}, wait=10)
    assert refund.status == 201 and refund.body["status"] == "succeeded", refund.body
    after = (await api.get(path, merchant.token)).body
    assert (after["status"], after["refunded_amount"]) == ("posted", 1_000)
    assert [r["amount"] for r in after["refunds"]] == [1_000]
    assert (await platform.balance(merchant.accounts["EUR"]))["posted"] == 2_000
    at_acquirer = await acquirer_authorization(platform, after["acquirer"]["authorization_id"])
    assert (at_acquirer["captured"], at_acquirer["refunded"]) == (3_000, 1_000)

    batch = await settle_now(platform, paid["id"])
    delivered = await deliver(platform, processes, batch)
    assert delivered.status == 202, delivered.body
    repeated = await deliver(platform, processes, batch)  # at least once: deduplicated
    assert repeated.body["id"] == delivered.body["id"]
    settled = await api.settle(path, merchant.token, until={"settled"})
    assert settled["refunded_amount"] == 1_000
    forged = await platform.call(
        "POST",
        f"{processes.base}/internal/v1/acquirer/settlements",
        json=batch,
        headers={"Acquirer-Signature": "t=1,v1=00"},
    )
    assert forged.status == 401

    await tap.wait_for(
        lambda _: any(e["event"].endswith(".settled") for e in tap.about(paid["id"]))
    )
    facts = Counter(e["event"] for e in {e["event_id"]: e for e in tap.about(paid["id"])}.values())
    for fact in ("received", "authorized", "posted", "refunded", "settled"):
        assert facts[f"lastro.transaction.{fact}"] == 1, facts


async def test_automatic_capture_then_a_full_refund(api: TxApi, platform: Platform) -> None:
    merchant = await platform.party("shop")
    reply = await api.post(
        "/v1/payments",
        merchant.token,
        payment(merchant, 2_500, await card(platform), "automatic"),
        wait=10,
    )
    assert reply.body["status"] == "posted" and reply.body["captured_amount"] == 2_500
    refund = await api.post(f"/v1/payments/{reply.body['id']}/refunds", merchant.token, wait=10)
    assert refund.body["amount"] == 2_500 and refund.body["status"] == "succeeded"
    final = (await api.get(f"/v1/payments/{reply.body['id']}", merchant.token)).body
    assert final["status"] == "refunded" and final["refunded_amount"] == 2_500
    assert (await platform.balance(merchant.accounts["EUR"]))["posted"] == 0
    nothing_left = await api.post(f"/v1/payments/{reply.body['id']}/refunds", merchant.token)
    assert nothing_left.status in (409, 422)


async def test_a_declined_card_and_a_voided_authorisation_move_no_money(
    api: TxApi, platform: Platform
) -> None:
    merchant = await platform.party("store")
    declined = await api.post(
        "/v1/payments",
        merchant.token,
        payment(merchant, 900, await card(platform, DECLINES), "automatic"),
        wait=10,
    )
    assert (declined.body["status"], declined.body["reason"]) == ("declined", "card_declined")
    held = await api.post(
        "/v1/payments",
        merchant.token,
        payment(merchant, 700, await card(platform), "manual"),
        wait=10,
    )
    voided = await api.post(f"/v1/payments/{held.body['id']}/void", merchant.token, wait=10)
    assert voided.status == 200 and voided.body["status"] == "reversed", voided.body
    assert (await api.post(f"/v1/payments/{held.body['id']}/capture", merchant.token)).status == 409
    assert (await platform.balance(merchant.accounts["EUR"]))["posted"] == 0


async def test_cross_currency_transfer_at_a_quote_keeps_each_currency_at_zero(
    api: TxApi, platform: Platform, settings: Settings, processes: Processes
) -> None:
    ana = await platform.party("ana", {"EUR": 100_000})
    bruno = await platform.party("bruno", currencies=("USD",))
    carla = await platform.party("carla")
    asked = {"sell_currency": "EUR", "buy_currency": "USD", "sell_amount": 10_000}
    quote = (await api.post("/v1/fx/quotes", ana.token, asked, key=None)).body
    assert quote["sell_amount"] == 10_000 and quote["buy_amount"] > 0
    assert quote["spread_bps"] == 50 and quote["rate"] != quote["provider_rate"]
    transfer = api.transfer(
        ana.accounts["EUR"], bruno.accounts["USD"], 10_000, quote_id=quote["id"]
    )
    foreign = await api.post(
        "/v1/transfers", carla.token, {**transfer, "source_account_id": carla.accounts["EUR"]}
    )
    assert foreign.status == 422 and foreign.body["type"] == PROBLEM + "unknown-quote"
    wrong = await api.post("/v1/transfers", ana.token, {**transfer, "amount": 9_999})
    assert wrong.status == 422 and wrong.body["type"] == PROBLEM + "quote-mismatch"
    done = await api.post("/v1/transfers", ana.token, transfer, wait=10)
    assert done.body["status"] == "posted", done.body
    assert done.body["type"] == "fx_transfer"
    assert done.body["fx"]["destination_amount"] == quote["buy_amount"]
    assert (await platform.balance(bruno.accounts["USD"]))["posted"] == quote["buy_amount"]
    assert (await platform.balance(ana.accounts["EUR"]))["posted"] == 90_000
    reused = await api.post("/v1/transfers", ana.token, transfer)
    assert reused.status == 409 and reused.body["type"] == PROBLEM + "quote-already-used"

    later = (await api.post("/v1/fx/quotes", ana.token, asked, key=None)).body
    engine = create_engine(settings, pool_size=1, max_overflow=0)
    try:
        async with engine.begin() as conn:  # let the quote's minute pass
            await conn.exec_driver_sql(
                f'UPDATE "{processes.schema}".fx_quotes '
                "SET expires_at = created_at + interval '1 millisecond' WHERE id = $1",
                (later["id"],),
            )
    finally:
        await engine.dispose()
    expired = await api.post("/v1/transfers", ana.token, {**transfer, "quote_id": later["id"]})
    assert expired.status == 422 and expired.body["type"] == PROBLEM + "quote-expired"
    unsupported = await api.post(
        "/v1/fx/quotes", ana.token, {**asked, "buy_currency": "MXN"}, key=None
    )
    assert unsupported.status == 422, unsupported.body


async def test_reconcile_finds_every_mismatch_between_transactions_ledger_and_acquirer(
    api: TxApi, platform: Platform, processes: Processes, settings: Settings
) -> None:
    started = datetime.now(UTC) - timedelta(seconds=1)
    merchant = await platform.party("bakery")
    ana = await platform.party("ana", {"EUR": 1_000})
    paid = await api.post(
        "/v1/payments",
        merchant.token,
        payment(merchant, 1_500, await card(platform), "automatic"),
        wait=10,
    )
    assert paid.body["status"] == "posted"
    sent = await api.post(
        "/v1/transfers",
        ana.token,
        api.transfer(ana.accounts["EUR"], merchant.accounts["EUR"], 400),
        wait=10,
    )
    refused = await api.post(
        "/v1/transfers",
        ana.token,
        api.transfer(ana.accounts["EUR"], merchant.accounts["EUR"], 5_000),
        wait=10,
    )
    assert (sent.body["status"], refused.body["status"]) == ("posted", "declined")

    clean = await reconcile(processes, started)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "no mismatch" in clean.stdout

    # Money moves in the ledger for the declined transfer, and the payment's row lies.
    stray = await platform.call(
        "POST",
        f"{settings.service_url('accounts')}/internal/v1/postings",
        platform.funder,
        json={
            "external_id": f"stray-{refused.body['id']}",
            "metadata": {"transaction_id": refused.body["id"]},
            "entries": [
                {"account_id": ana.accounts["EUR"], "direction": "debit", "amount": 50,
                 "currency": "EUR"},
                {"account_id": merchant.accounts["EUR"], "direction": "credit", "amount": 50,
                 "currency": "EUR"},
            ],
        },
    )  # fmt: skip
    assert stray.status == 201, stray.body
    engine = create_engine(settings, pool_size=1, max_overflow=0)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(
                f'UPDATE "{processes.schema}".transactions SET captured_amount = 1400 '
                "WHERE id = $1",
                (paid.body["id"],),
            )
    finally:
        await engine.dispose()
    dirty = await reconcile(processes, started)
    assert dirty.returncode == 1, dirty.stdout
    lines = dirty.stdout.splitlines()
    assert any("unexpected-posting" in line and refused.body["id"] in line for line in lines), lines
    assert any("amount-differs" in line and paid.body["id"] in line for line in lines), lines
    assert any("acquirer-differs" in line and paid.body["id"] in line for line in lines), lines
    assert not any(sent.body["id"] in line for line in lines)


async def reconcile(processes: Processes, since: datetime) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "lastro.cli", "reconcile", "--schema", processes.schema,
         "--since", since.isoformat()],
        capture_output=True, text=True, timeout=300, check=False, env=processes.env,
    )  # fmt: skip


async def test_privacy_export_erase_and_purge_touch_personal_fields_only(
    api: TxApi, platform: Platform, processes: Processes
) -> None:
    officer = await platform.register("privacy-officer", ["privacy:admin"], ["transactions"])
    token = await platform.client_token(
        officer["client_id"], officer["client_secret"], None, ["transactions"]
    )
    shop = await platform.party("shop", {"EUR": 50_000})
    paid = await api.post(
        "/v1/payments",
        shop.token,
        {**payment(shop, 2_000, await card(platform), "automatic"),
         "context": {"device_id": "dev_till_7", "country": "PT"}},
        wait=10,
    )  # fmt: skip
    assert paid.status == 201 and paid.body["status"] == "posted", paid.body
    payout = await api.post(
        "/v1/payouts",
        shop.token,
        {"source_account_id": shop.accounts["EUR"], "amount": 7_000, "currency": "EUR",
         "destination": {"iban": "DE89 3704 0044 0532 0130 00", "holder_name": "Maria Quitéria"},
         "context": {"device_id": "dev_office_pc", "ip": "203.0.113.9", "country": "PT"}},
        wait=10,
    )  # fmt: skip
    assert payout.status == 201 and payout.body["status"] == "settled", payout.body
    balance = await platform.balance(shop.accounts["EUR"])

    async def privacy(path: str, body: dict[str, Any], bearer: str = token) -> Any:
        return await platform.call("POST", f"{processes.base}/internal/v1/privacy/{path}", bearer,
                                   json=body)  # fmt: skip

    exported = await privacy("export", {"customer_id": shop.customer_id})
    assert exported.status == 200, exported.body
    records = exported.body["records"]
    ids = {t["id"]: t for t in records["transactions.transactions"]}
    assert set(ids) == {paid.body["id"], payout.body["id"]}
    assert ids[payout.body["id"]]["amount"] == 7_000
    assert [(d["holder_name"], d["iban"]) for d in records["transactions.payout_destinations"]] == [
        ("Maria Quitéria", "DE89370400440532013000")
    ]
    fingerprints = records["transactions.card_fingerprints"]
    assert [f["transaction_id"] for f in fingerprints] == [paid.body["id"]]
    assert fingerprints[0]["fingerprint"]
    devices = {c["device_id"] for c in records["transactions.request_context"]}
    assert devices == {"dev_till_7", "dev_office_pc"}

    customer_tries = await privacy("export", {"customer_id": shop.customer_id}, shop.token)
    assert customer_tries.status == 403
    erase = {"customer_id": shop.customer_id, "reason": "art. 17 request", "request_id": "dsr-1"}
    erased = await privacy("erase", erase)
    assert erased.status == 200, erased.body
    assert erased.body["erased"] == {
        "transactions.transactions": 0,
        "transactions.payout_destinations": 1,
        "transactions.card_fingerprints": 1,
        "transactions.request_context": 2,
    }
    again = await privacy("erase", erase)
    assert set(again.body["erased"].values()) == {0}

    after = (await privacy("export", {"customer_id": shop.customer_id})).body["records"]
    destinations = after["transactions.payout_destinations"]
    assert [(d["holder_name"], d["iban"], d["iban_last4"]) for d in destinations] == [
        (None, None, "3000")
    ]
    assert after["transactions.card_fingerprints"] == []
    assert after["transactions.request_context"] == []
    kept = {t["id"]: (t["amount"], t["status"]) for t in after["transactions.transactions"]}
    assert kept == {paid.body["id"]: (2_000, "posted"), payout.body["id"]: (7_000, "settled")}
    assert "Maria" not in str(after)
    assert await platform.balance(shop.accounts["EUR"]) == balance
    still = await api.get(f"/v1/payments/{paid.body['id']}", shop.token)
    assert still.status == 200 and still.body["card"]["last4"] == "4242"

    other = await platform.party("other", {"EUR": 10_000})
    sent = await api.post(
        "/v1/transfers",
        other.token,
        api.transfer(other.accounts["EUR"], shop.accounts["EUR"], 100,
                     context={"device_id": "dev_other", "country": "PT"}),
        wait=10,
    )  # fmt: skip
    assert sent.body["status"] == "posted", sent.body
    later = "2999-01-01T00:00:00Z"
    purge = {"data_class": "transactions.request_context", "older_than": later, "action": "purge"}
    counted = await privacy("purge", {**purge, "dry_run": True})
    assert counted.status == 200 and counted.body["affected"] >= 1, counted.body
    done = await privacy("purge", purge)
    assert done.body["affected"] == counted.body["affected"]
    assert (await privacy("purge", {**purge, "dry_run": True})).body["affected"] == 0
    gone = await privacy("export", {"customer_id": other.customer_id})
    assert gone.body["records"]["transactions.request_context"] == []
    keys = {"data_class": "transactions.idempotency_keys", "older_than": later, "action": "purge"}
    assert (await privacy("purge", {**keys, "dry_run": True})).body["affected"] == 0  # within 24 h

    for refused in (
        {**purge, "data_class": "transactions.transactions"},
        {**purge, "data_class": "accounts.postings"},
        {**purge, "data_class": "transactions.card_fingerprints"},
        {**purge, "older_than": "yesterday"},
    ):
        reply = await privacy("purge", refused)
        assert reply.status == 422, (refused, reply.body)
