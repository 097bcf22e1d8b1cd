"""A worker SIGKILLed at each step of the state machine, then another started:
every transaction ends where it should, with one posting, and each fact once.

Each case starts a worker that kills itself at one stage (right after a change
was committed, or right after an effect answered and before its outcome was
stored, the window where a second effect would be the danger), submits work,
waits for the worker to die, starts a healthy one in the same consumer group and
checks the ledger: balances, one entry per transaction, no orphan holds, and the
events on Kafka.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from transactions_kit import (
    PATIENT_SCREENING,
    EventTap,
    FraudService,
    Platform,
    Processes,
    TxApi,
    drop_schemas,
)

from lastro.core.config import Settings
from lastro.core.events import EventSigner
from lastro.core.security.transit import TransitClient

REVIEW = 7_001
TRANSFER_STAGES = [
    "changed:screening",
    "effect:Screen",
    "changed:approved",
    "effect:PostLedger",
    "changed:posted",
]
REVIEW_STAGES = ["effect:PlaceHold", "changed:in_review", "effect:ResolveHold"]
PAYMENT_STAGES = [
    "effect:Authorize",
    "changed:authorized",
    "effect:Capture",
    "effect:PostLedger",
    "changed:posted",
    "effect:RefundCard",
]
BATCH_STAGES = ["batch:approved", "effect:BatchFunding", "batch:funded", "effect:BatchDistribution"]


@pytest.fixture(scope="module")
def fraud(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FraudService]:
    service = FraudService(settings, tmp_path_factory.mktemp("fraud"))
    yield service
    service.close()


@pytest.fixture(scope="module")
async def processes(
    settings: Settings, fraud: FraudService, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Processes]:
    procs = Processes(
        settings,
        tmp_path_factory.mktemp("transactions"),
        LASTRO_TRANSACTIONS_FRAUD_URL=fraud.url,
        **PATIENT_SCREENING,
        LASTRO_RATE_LIMIT_PER_MINUTE="100000",
    )
    fraud.start(procs.base)
    procs.start_api()
    yield procs
    procs.close()
    fraud.stop()
    await drop_schemas(settings, procs.schema, fraud.schema)


@pytest.fixture(scope="module")
async def platform(settings: Settings) -> AsyncIterator[Platform]:
    async with Platform.open(settings) as p:
        yield p


@pytest.fixture(scope="module")
async def tap(settings: Settings) -> AsyncIterator[EventTap]:
    transit = TransitClient.from_settings(settings)
    events = EventTap(settings, await EventSigner.from_transit(transit, settings.events_key_name))
    await events.start()
    yield events
    await events.stop()
    await transit.close()


async def crash_then_recover(processes: Processes, stage: str, work: object) -> None:
    """Run ``work`` against a worker that dies at ``stage``, then start a healthy one."""
    processes.start_worker("doomed", crash_at=stage)
    await work  # type: ignore[misc]
    code = await asyncio.to_thread(processes.exited, "doomed", 90)
    assert code == -signal.SIGKILL, processes.tail("doomed")
    assert f"crashing at {stage}" in processes.tail("doomed", 200)
    processes.procs.pop("doomed")
    processes.start_worker("survivor")


async def assert_each_fact_once(tap: EventTap, ids: list[str], final: str) -> None:
    await tap.wait_for(
        lambda _: all(
            any(e["event"] == f"lastro.transaction.{final}" for e in tap.about(i)) for i in ids
        ),
        within=60,
    )
    for txn_id in ids:
        facts = Counter(e["event"] for e in tap.about(txn_id))
        # Kafka may carry a row twice (the relay is at least once); the event id is the same.
        distinct = Counter(
            e["event"] for e in {e["event_id"]: e for e in tap.about(txn_id)}.values()
        )
        assert distinct[f"lastro.transaction.{final}"] == 1, facts
        assert distinct["lastro.transaction.received"] == 1, facts


@pytest.mark.parametrize("stage", TRANSFER_STAGES)
async def test_transfers_survive_a_worker_killed_at_each_step(
    processes: Processes, platform: Platform, tap: EventTap, fraud: FraudService, stage: str
) -> None:
    await fraud.script(platform, {})
    api = TxApi(platform, processes.base)
    payers = [await platform.party(f"payer{i}", {"EUR": 1_000}) for i in range(3)]
    payee = await platform.party("payee")
    ids: list[str] = []

    async def submit() -> None:
        for n, payer in enumerate(payers):
            body = api.transfer(payer.accounts["EUR"], payee.accounts["EUR"], 101 + n)
            reply = await api.post("/v1/transfers", payer.token, body)
            assert reply.status == 202, reply.body
            ids.append(reply.body["id"])

    await crash_then_recover(processes, stage, submit())
    for txn_id, payer in zip(ids, payers, strict=True):
        final = await api.settle(
            f"/v1/transfers/{txn_id}", payer.token, until={"posted"}, within=90
        )
        assert final["screening"]["decision"] == "approve"
    credits = [e for e in await platform.account_entries(payee.accounts["EUR"])]
    assert sorted(e["amount"] for e in credits) == [101, 102, 103]  # one posting each
    for n, payer in enumerate(payers):
        assert await platform.balance(payer.accounts["EUR"]) == {
            "posted": 1_000 - 101 - n,
            "pending": 0,
            "available": 1_000 - 101 - n,
        }
    await assert_each_fact_once(tap, ids, "posted")
    processes.stop("survivor")


@pytest.mark.parametrize("stage", REVIEW_STAGES)
async def test_held_transfers_survive_a_worker_killed_around_the_hold(
    processes: Processes, platform: Platform, tap: EventTap, fraud: FraudService, stage: str
) -> None:
    await fraud.script(platform, {REVIEW: "review"})
    api = TxApi(platform, processes.base)
    payer = await platform.party("payer", {"EUR": 10_000})
    payee = await platform.party("payee")
    fraud = await platform.register("fraud", ["transactions:review"], ["transactions"])
    fraud_token = await platform.client_token(
        fraud["client_id"], fraud["client_secret"], None, ["transactions"]
    )
    ids: list[str] = []

    async def resolve(txn_id: str) -> None:
        await api.settle(f"/v1/transfers/{txn_id}", payer.token, until={"in_review"}, within=60)
        reply = await api.post(
            f"/internal/v1/transactions/{txn_id}/review-outcome",
            fraud_token,
            {"outcome": "legitimate", "alert_id": f"alr_{txn_id}"},
        )
        assert reply.status == 200, reply.body

    async def submit() -> None:
        body = api.transfer(payer.accounts["EUR"], payee.accounts["EUR"], REVIEW)
        reply = await api.post("/v1/transfers", payer.token, body)
        ids.append(reply.body["id"])
        if stage == "effect:ResolveHold":
            await resolve(ids[0])

    await crash_then_recover(processes, stage, submit())
    if stage != "effect:ResolveHold":
        await resolve(ids[0])
    await api.settle(f"/v1/transfers/{ids[0]}", payer.token, until={"posted"}, within=90)
    assert await platform.balance(payer.accounts["EUR"]) == {
        "posted": 10_000 - REVIEW,
        "pending": 0,  # the one hold was posted, none left behind
        "available": 10_000 - REVIEW,
    }
    assert [e["amount"] for e in await platform.account_entries(payee.accounts["EUR"])] == [REVIEW]
    await assert_each_fact_once(tap, ids, "posted")
    processes.stop("survivor")


@pytest.mark.parametrize("stage", BATCH_STAGES)
async def test_an_atomic_batch_survives_a_worker_killed_between_its_postings(
    processes: Processes, platform: Platform, tap: EventTap, fraud: FraudService, stage: str
) -> None:
    await fraud.script(platform, {})
    api = TxApi(platform, processes.base)
    payer = await platform.party("payroll", {"EUR": 100_000})
    staff = [await platform.party(f"staff{i}") for i in range(3)]
    batch_id: list[str] = []

    async def submit() -> None:
        items = [
            {"destination_account_id": p.accounts["EUR"], "amount": 1_000 + i, "currency": "EUR"}
            for i, p in enumerate(staff)
        ]
        body = {"source_account_id": payer.accounts["EUR"], "atomic": True, "transfers": items}
        reply = await api.post("/v1/transfer-batches", payer.token, body)
        assert reply.status == 202, reply.body
        batch_id.append(reply.body["id"])

    await crash_then_recover(processes, stage, submit())
    batch = await api.settle(
        f"/v1/transfer-batches/{batch_id[0]}", payer.token, until={"completed"}, within=90
    )
    assert batch["counts"] == {"posted": 3}, batch
    debits = [e["amount"] for e in await platform.account_entries(payer.accounts["EUR"])]
    assert debits.count(3_003) == 1 and len(debits) == 2  # the funding once (+ the deposit)
    for i, person in enumerate(staff):
        assert (await platform.balance(person.accounts["EUR"]))["posted"] == 1_000 + i
    await assert_each_fact_once(tap, [t["id"] for t in batch["transfers"]], "posted")
    processes.stop("survivor")


async def acquirer_records(platform: Platform, reference: str) -> list[dict[str, Any]]:
    settings = platform.settings
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    params = {"from": since, "to": "2100-01-01T00:00:00Z", "limit": "1000"}
    url = f"{settings.service_url('acquirer')}/v1/records"
    found: list[dict[str, Any]] = []
    while True:
        page = await platform.call("GET", url, settings.partner_api_keys["acquirer"], params=params)
        assert page.status == 200, page.body
        found += [r for r in page.body["records"] if r.get("reference") == reference]
        if not page.body.get("next_cursor"):
            return found
        params["cursor"] = page.body["next_cursor"]


@pytest.mark.parametrize("stage", PAYMENT_STAGES)
async def test_card_payments_survive_a_worker_killed_at_each_step_without_a_second_charge(
    processes: Processes, platform: Platform, tap: EventTap, fraud: FraudService, stage: str
) -> None:
    await fraud.script(platform, {})
    settings = platform.settings
    api = TxApi(platform, processes.base)
    merchant = await platform.party("merchant")
    card = await platform.call(
        "POST",
        f"{settings.service_url('acquirer')}/v1/tokens",
        settings.partner_api_keys["acquirer"],
        json={"number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123"},
    )
    ids: list[str] = []

    async def submit() -> None:
        body = {
            "destination_account_id": merchant.accounts["EUR"],
            "amount": 8_000,
            "currency": "EUR",
            "card": {"token": card.body["token"]},
        }
        reply = await api.post("/v1/payments", merchant.token, body)
        ids.append(reply.body["id"])
        if stage == "effect:RefundCard":
            path = f"/v1/payments/{ids[0]}"
            await api.settle(path, merchant.token, until={"posted"}, within=60)
            refund = await api.post(f"{path}/refunds", merchant.token, {"amount": 3_000})
            assert refund.status == 202, refund.body

    await crash_then_recover(processes, stage, submit())
    path = f"/v1/payments/{ids[0]}"
    final = await api.settle(path, merchant.token, until={"posted"}, within=90)
    refunded = 3_000 if stage == "effect:RefundCard" else 0
    if refunded:
        while final["refunds"][0]["status"] == "pending":
            await asyncio.sleep(0.5)
            final = (await api.get(path, merchant.token)).body
        assert final["refunds"][0]["status"] == "succeeded"
    assert (final["captured_amount"], final["refunded_amount"]) == (8_000, refunded)
    records = Counter(r["type"] for r in await acquirer_records(platform, ids[0]))
    assert records["authorization"] == 1 and records["capture"] == 1, records  # charged once
    assert records["refund"] == (1 if refunded else 0), records
    entries = sorted(e["amount"] for e in await platform.account_entries(merchant.accounts["EUR"]))
    assert entries == sorted([8_000] + ([3_000] if refunded else []))
    assert (await platform.balance(merchant.accounts["EUR"]))["posted"] == 8_000 - refunded
    await assert_each_fact_once(tap, ids, "posted")
    processes.stop("survivor")


def test_the_ledger_verifies_after_every_crash(settings: Settings) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lastro.cli", "accounts", "verify"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stdout + result.stderr
