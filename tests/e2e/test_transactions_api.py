"""The transaction service end to end: its real API and worker processes over
HTTPS, real tokens from the identity service, the real account service's ledger,
PostgreSQL, Redis and Kafka; screening by the real fraud service, steered by rules."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from transactions_kit import (
    EventTap,
    FraudService,
    Platform,
    Processes,
    TxApi,
    enrol_totp,
    login,
    sign_up,
    transaction_processes,
    wallet_app,
)

from lastro.core.config import Settings
from lastro.core.events import EventSigner
from lastro.core.security.transit import TransitClient

REVIEW, CHALLENGE, DECLINE = 7_001, 7_002, 7_003
PROBLEM = "https://lastro.dev/problems/"


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


@pytest.fixture(scope="module")
async def signer(settings: Settings) -> AsyncIterator[EventSigner]:
    transit = TransitClient.from_settings(settings)
    yield await EventSigner.from_transit(transit, settings.events_key_name)
    await transit.close()


@pytest.fixture
async def tap(settings: Settings, signer: EventSigner) -> AsyncIterator[EventTap]:
    events = EventTap(settings, signer)
    await events.start()
    yield events
    await events.stop()


@pytest.fixture(autouse=True)
async def approve_by_default(fraud: FraudService, platform: Platform) -> None:
    await fraud.script(platform, {REVIEW: "review", CHALLENGE: "challenge", DECLINE: "decline"})


async def test_a_transfer_is_posted_once_with_each_event_once_and_balances_right(
    api: TxApi, platform: Platform, tap: EventTap
) -> None:
    ana = await platform.party("ana", {"EUR": 100_000})
    bruno = await platform.party("bruno")
    body = api.transfer(ana.accounts["EUR"], bruno.accounts["EUR"], 25_050, description="rent")
    reply = await api.post("/v1/transfers", ana.token, body, wait=10)
    assert reply.status == 201, reply.body
    assert reply.headers["Preference-Applied"] == "wait=10"
    transfer = reply.body
    assert reply.headers["Location"] == f"/v1/transfers/{transfer['id']}"
    assert transfer["status"] == "posted" and transfer["screening"]["decision"] == "approve"
    assert transfer["screening"]["fallback"] is False
    assert await platform.balance(ana.accounts["EUR"]) == {
        "posted": 74_950,
        "pending": 0,
        "available": 74_950,
    }
    assert (await platform.balance(bruno.accounts["EUR"]))["posted"] == 25_050

    await tap.wait_for(
        lambda events: any(e["event"].endswith(".posted") for e in tap.about(transfer["id"]))
    )
    mine = tap.about(transfer["id"])
    kinds = Counter(e["event"] for e in mine)
    for fact in ("received", "screened", "approved", "posted"):
        assert kinds[f"lastro.transaction.{fact}"] == 1, kinds
    assert len({e["event_id"] for e in mine}) == len(mine)
    posted = next(e for e in mine if e["event"] == "lastro.transaction.posted")
    for field in (
        "transaction_id",
        "type",
        "status",
        "amount",
        "currency",
        "customer_id",
        "source_account_id",
        "destination_account_id",
        "counterparty_customer_id",
        "reason",
        "device_id",
        "ip",
        "country",
        "location",
        "occurred_at",
        "screening",
    ):
        assert field in posted, field
    assert posted["counterparty_customer_id"] == bruno.customer_id
    assert posted["customer_id"] == ana.customer_id
    screening = posted["screening"]
    assert (screening["decision"], screening["fallback"]) == ("approve", False)
    assert isinstance(screening["ruleset_version"], int) and screening["ruleset_version"] > 0


async def test_without_a_wait_preference_the_answer_is_202_and_the_location_catches_up(
    api: TxApi, platform: Platform
) -> None:
    ana = await platform.party("ana", {"EUR": 10_000})
    bruno = await platform.party("bruno")
    reply = await api.post(
        "/v1/transfers", ana.token, api.transfer(ana.accounts["EUR"], bruno.accounts["EUR"], 100)
    )
    assert reply.status == 202 and reply.body["status"] == "received"
    assert "Preference-Applied" not in reply.headers
    final = await api.settle(reply.headers["Location"], ana.token, until={"posted"})
    assert final["id"] == reply.body["id"]
    visible_to_bruno = await api.get(reply.headers["Location"], bruno.token)
    assert visible_to_bruno.status == 200  # money arrived on his account
    stranger = await platform.party("carla")
    assert (await api.get(reply.headers["Location"], stranger.token)).status == 404


async def test_fifty_concurrent_requests_with_one_key_have_one_effect(
    api: TxApi, platform: Platform
) -> None:
    ana = await platform.party("ana", {"EUR": 100_000})
    bruno = await platform.party("bruno")
    body = api.transfer(ana.accounts["EUR"], bruno.accounts["EUR"], 1_000)
    replies = await asyncio.gather(
        *(api.post("/v1/transfers", ana.token, body, key="one-key") for _ in range(50))
    )
    statuses = Counter(r.status for r in replies)
    assert set(statuses) <= {202, 409}, statuses
    ids = {r.body["id"] for r in replies if r.status == 202}
    assert len(ids) == 1 and statuses[202] >= 1
    for reply in replies:
        if reply.status == 409:
            assert reply.body["type"] == PROBLEM + "idempotency-key-in-flight"
    (txn_id,) = ids
    await api.settle(f"/v1/transfers/{txn_id}", ana.token, until={"posted"})
    assert (await platform.balance(bruno.accounts["EUR"]))["posted"] == 1_000

    replay = await api.post("/v1/transfers", ana.token, body, key="one-key")
    assert replay.status == 202 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.body == next(r.body for r in replies if r.status == 202)
    other = await api.post("/v1/transfers", ana.token, {**body, "amount": 2_000}, key="one-key")
    assert other.status == 422 and other.body["type"] == PROBLEM + "idempotency-key-reused"
    missing = await api.post("/v1/transfers", ana.token, body, key=None)
    assert missing.status == 400 and missing.body["type"] == PROBLEM + "idempotency-key-missing"
    # Keys are per client and user: the same key from somebody else is a new request.
    bruno_pays = api.transfer(bruno.accounts["EUR"], ana.accounts["EUR"], 10)
    assert (await api.post("/v1/transfers", bruno.token, bruno_pays, key="one-key")).status == 202
    assert (await platform.balance(bruno.accounts["EUR"]))["posted"] in (990, 1_000)


async def test_bad_requests_are_refused_and_store_nothing(api: TxApi, platform: Platform) -> None:
    ana = await platform.party("ana", {"EUR": 1_000}, currencies=("EUR", "USD"))
    bruno = await platform.party("bruno")
    cases = [
        (api.transfer(bruno.accounts["EUR"], ana.accounts["EUR"], 10), "unknown-account"),
        (api.transfer(ana.accounts["EUR"], ana.accounts["EUR"], 10), "invalid-transaction"),
        (
            api.transfer(ana.accounts["USD"], bruno.accounts["EUR"], 10, currency="USD"),
            "quote-mismatch",
        ),
        (
            api.transfer(ana.accounts["EUR"], bruno.accounts["EUR"], 10, currency="USD"),
            "currency-mismatch",
        ),
        (
            {**api.transfer(ana.accounts["EUR"], bruno.accounts["EUR"], 10), "amount": 1.5},
            "validation-error",
        ),
        (
            {**api.transfer(ana.accounts["EUR"], bruno.accounts["EUR"], 10), "amount": "10"},
            "validation-error",
        ),
    ]
    for body, slug in cases:
        reply = await api.post("/v1/transfers", ana.token, body)
        assert reply.status == 422, (slug, reply.body)
        assert reply.body["type"] == PROBLEM + slug, reply.body
    listed = await api.get("/v1/transactions", ana.token)
    assert listed.status == 200 and listed.body["data"] == []


async def test_more_than_the_balance_is_declined_by_the_ledger(
    api: TxApi, platform: Platform
) -> None:
    ana = await platform.party("ana", {"EUR": 500})
    bruno = await platform.party("bruno")
    reply = await api.post(
        "/v1/transfers",
        ana.token,
        api.transfer(ana.accounts["EUR"], bruno.accounts["EUR"], 501),
        wait=10,
    )
    assert reply.status == 201
    assert (reply.body["status"], reply.body["reason"]) == ("declined", "insufficient_funds")
    assert (await platform.balance(ana.accounts["EUR"]))["posted"] == 500


async def test_history_shows_own_transactions_with_filters_and_a_cursor(
    api: TxApi, platform: Platform
) -> None:
    ana = await platform.party("ana", {"EUR": 10_000})
    bruno = await platform.party("bruno", {"EUR": 1_000})
    carla = await platform.party("carla")
    sent = []
    for amount in (101, 102, 103, 104, 105):
        body = api.transfer(ana.accounts["EUR"], bruno.accounts["EUR"], amount)
        sent.append((await api.post("/v1/transfers", ana.token, body, wait=10)).body["id"])
    back = api.transfer(bruno.accounts["EUR"], carla.accounts["EUR"], 9_999)
    declined = (await api.post("/v1/transfers", bruno.token, back, wait=10)).body
    assert declined["status"] == "declined"

    seen: list[str] = []
    cursor = ""
    while True:
        page = await api.get(f"/v1/transactions?limit=2{cursor}", ana.token)
        assert page.status == 200 and len(page.body["data"]) <= 2
        seen += [t["id"] for t in page.body["data"]]
        if not page.body["has_more"]:
            break
        cursor = f"&cursor={page.body['next_cursor']}"
    assert seen == list(reversed(sent))  # newest first, each once

    bruno_sees = await api.get("/v1/transactions", bruno.token)
    assert [t["id"] for t in bruno_sees.body["data"]] == [declined["id"], *reversed(sent)]
    only_declined = await api.get("/v1/transactions?status=declined", bruno.token)
    assert [t["id"] for t in only_declined.body["data"]] == [declined["id"]]
    filtered = await api.get(
        f"/v1/transactions?account_id={ana.accounts['EUR']}&type=transfer", bruno.token
    )
    assert filtered.status == 422 and filtered.body["type"] == PROBLEM + "unknown-account"
    assert (await api.get("/v1/transactions", carla.token)).body["data"] == []
    bad = await api.get("/v1/transactions?created_after=yesterday", ana.token)
    assert bad.status == 422


async def test_fraud_decline_moves_no_money(api: TxApi, platform: Platform) -> None:
    ana = await platform.party("ana", {"EUR": 10_000})
    bruno = await platform.party("bruno")
    body = api.transfer(ana.accounts["EUR"], bruno.accounts["EUR"], DECLINE)
    reply = await api.post("/v1/transfers", ana.token, body, wait=10)
    assert (reply.body["status"], reply.body["reason"]) == ("declined", "fraud_declined")
    assert reply.body["screening"]["decision"] == "decline"
    assert (await platform.balance(ana.accounts["EUR"]))["posted"] == 10_000


async def test_review_holds_the_money_until_the_fraud_service_resolves_it(
    api: TxApi, platform: Platform
) -> None:
    ana = await platform.party("ana", {"EUR": 20_000})
    bruno = await platform.party("bruno")
    fraud = await platform.register("fraud", ["transactions:review"], ["transactions"])
    fraud_token = await platform.client_token(
        fraud["client_id"], fraud["client_secret"], None, ["transactions"]
    )
    held = []
    for _ in range(2):
        body = api.transfer(ana.accounts["EUR"], bruno.accounts["EUR"], REVIEW)
        reply = await api.post("/v1/transfers", ana.token, body, wait=10)
        assert reply.status == 201 and reply.body["status"] == "in_review", reply.body
        held.append(reply.body["id"])
    assert await platform.balance(ana.accounts["EUR"]) == {
        "posted": 20_000,
        "pending": 2 * REVIEW,
        "available": 20_000 - 2 * REVIEW,
    }

    outcome = "/internal/v1/transactions/{}/review-outcome"
    customer_tries = await api.post(outcome.format(held[0]), ana.token, {"outcome": "legitimate"})
    assert customer_tries.status == 403
    legit = await api.post(outcome.format(held[0]), fraud_token, {"outcome": "legitimate"})
    assert legit.status == 200
    fraud_says = await api.post(outcome.format(held[1]), fraud_token, {"outcome": "fraud"})
    assert fraud_says.status == 200
    posted = await api.settle(f"/v1/transfers/{held[0]}", ana.token, until={"posted"})
    declined = await api.settle(f"/v1/transfers/{held[1]}", ana.token, until={"declined"})
    assert declined["reason"] == "fraud_confirmed" and posted["status"] == "posted"
    again = await api.post(outcome.format(held[1]), fraud_token, {"outcome": "fraud"})
    assert again.status == 200 and again.body["status"] == "declined"
    changed_mind = await api.post(outcome.format(held[1]), fraud_token, {"outcome": "legitimate"})
    assert changed_mind.status == 409
    assert await platform.balance(ana.accounts["EUR"]) == {
        "posted": 20_000 - REVIEW,
        "pending": 0,
        "available": 20_000 - REVIEW,
    }
    assert (await platform.balance(bruno.accounts["EUR"]))["posted"] == REVIEW


async def test_a_held_transfer_is_posted_or_released_when_the_analyst_resolves_its_alert(
    api: TxApi, platform: Platform, fraud: FraudService, tap: EventTap
) -> None:
    """The whole review loop through the real fraud service: its screening decides
    ``review``, it raises an alert; the analyst's resolution is reported back to the
    transaction service (``transactions:review``), which posts or releases the hold."""
    ana = await platform.party("ana", {"EUR": 20_000})
    bruno = await platform.party("bruno")
    held = []
    for _ in range(2):
        body = api.transfer(ana.accounts["EUR"], bruno.accounts["EUR"], REVIEW)
        reply = await api.post("/v1/transfers", ana.token, body, wait=10)
        assert reply.body["status"] == "in_review", reply.body
        assert reply.body["screening"]["fallback"] is False
        held.append(reply.body["id"])
    assert (await platform.balance(ana.accounts["EUR"]))["pending"] == 2 * REVIEW
    record = await fraud.screening(platform, held[0])
    assert record["decision"] == "review"
    assert [r["rule_id"] for r in record["reasons"]] == [f"e2e-review-{REVIEW}"]

    legitimate = await fraud.alert_for(platform, held[0])
    fraudulent = await fraud.alert_for(platform, held[1])
    await fraud.resolve(platform, legitimate["id"], "false_positive")
    await fraud.resolve(platform, fraudulent["id"], "true_positive")

    posted = await api.settle(f"/v1/transfers/{held[0]}", ana.token, until={"posted"})
    declined = await api.settle(f"/v1/transfers/{held[1]}", ana.token, until={"declined"})
    assert (posted["status"], declined["reason"]) == ("posted", "fraud_confirmed")
    assert await platform.balance(ana.accounts["EUR"]) == {
        "posted": 20_000 - REVIEW,
        "pending": 0,
        "available": 20_000 - REVIEW,
    }
    assert (await platform.balance(bruno.accounts["EUR"]))["posted"] == REVIEW
    await tap.wait_for(
        lambda _: any(e["event"] == "lastro.transaction.declined" for e in tap.about(held[1]))
    )
    declined_events = [e for e in tap.about(held[1]) if e["event"].endswith(".declined")]
    assert [e["reason"] for e in declined_events] == ["fraud_confirmed"]


async def test_step_up_large_transfers_and_fraud_challenges_need_a_fresh_totp_login(
    api: TxApi, platform: Platform
) -> None:
    client_id = await wallet_app(platform)
    user = await sign_up(platform, client_id)
    password_only = await login(platform, user)
    ana = await platform.customer("ana", password_only, {"EUR": 1_000_000})
    bruno = await platform.party("bruno")
    large = api.transfer(ana.accounts["EUR"], bruno.accounts["EUR"], 250_000)
    refused = await api.post("/v1/transfers", password_only, large)
    assert refused.status == 401
    assert refused.headers["WWW-Authenticate"].startswith(
        'Bearer error="insufficient_user_authentication"'
    )
    assert 'acr_values="urn:lastro:acr:mfa"' in refused.headers["WWW-Authenticate"]
    small = api.transfer(ana.accounts["EUR"], bruno.accounts["EUR"], CHALLENGE)
    challenged = await api.post("/v1/transfers", password_only, small, wait=10)
    assert challenged.body["status"] == "challenged", challenged.body
    action = challenged.body["next_action"]
    assert action["type"] == "step_up" and action["acr_values"] == "urn:lastro:acr:mfa"
    assert (await api.post(action["confirm_url"], password_only)).status == 401

    await enrol_totp(platform, user, password_only)
    stepped_up = await login(platform, user, otp=True)
    confirmed = await api.post(action["confirm_url"], stepped_up, wait=10)
    assert confirmed.status == 200 and confirmed.body["status"] == "posted", confirmed.body
    accepted = await api.post("/v1/transfers", stepped_up, large, wait=10)
    assert accepted.status == 201 and accepted.body["status"] == "posted"
    assert (await platform.balance(bruno.accounts["EUR"]))["posted"] == 250_000 + CHALLENGE
    not_challenged = await api.post(f"/v1/transfers/{accepted.body['id']}/confirm", stepped_up)
    assert not_challenged.status == 409


async def test_a_payout_leaves_through_the_bank_account_and_shows_only_the_last_digits(
    api: TxApi, platform: Platform, tap: EventTap
) -> None:
    ana = await platform.party("ana", {"EUR": 50_000})
    body = {
        "source_account_id": ana.accounts["EUR"],
        "amount": 12_345,
        "currency": "EUR",
        "destination": {"iban": "DE89 3704 0044 0532 0130 00", "holder_name": "Ana Souza"},
    }
    reply = await api.post("/v1/payouts", ana.token, body, wait=10)
    assert reply.status == 201 and reply.body["status"] == "settled", reply.body
    assert reply.body["destination"] == {"iban_last4": "3000", "country": "DE"}
    assert "Ana" not in str(reply.body) and "370400440532" not in str(reply.body)
    assert (await platform.balance(ana.accounts["EUR"]))["posted"] == 50_000 - 12_345
    await tap.wait_for(
        lambda events: any(e["event"] == "lastro.payout.sent" for e in tap.about(reply.body["id"]))
    )
    sent = [e for e in tap.about(reply.body["id"]) if e["event"] == "lastro.payout.sent"]
    assert len(sent) == 1 and "Ana" not in str(sent[0])
    bad = {**body, "destination": {"iban": "DE89370400440532013001", "holder_name": "x"}}
    assert (await api.post("/v1/payouts", ana.token, bad)).status == 422


async def test_transfer_batches_atomic_or_independent_and_idempotent_as_a_whole(
    api: TxApi, platform: Platform
) -> None:
    payer = await platform.party("payroll", {"EUR": 1_000})
    staff = [await platform.party(f"staff{i}") for i in range(3)]
    items = [
        {
            "destination_account_id": p.accounts["EUR"],
            "amount": 400,
            "currency": "EUR",
            "reference": f"salary-{n}",
        }
        for n, p in enumerate(staff)
    ]
    atomic = {"source_account_id": payer.accounts["EUR"], "atomic": True, "transfers": items}
    reply = await api.post("/v1/transfer-batches", payer.token, atomic, key="payroll-1", wait=15)
    assert reply.status == 201, reply.body
    assert reply.body["status"] == "completed" and reply.body["reason"] == "insufficient_funds"
    assert reply.body["counts"] == {"declined": 3}
    assert (await platform.balance(payer.accounts["EUR"]))["posted"] == 1_000

    replay = await api.post("/v1/transfer-batches", payer.token, atomic, key="payroll-1")
    assert replay.headers.get("Idempotent-Replayed") == "true" and replay.body == reply.body

    await platform.fund(payer.accounts["EUR"], 300, "EUR")
    again = await api.post("/v1/transfer-batches", payer.token, atomic, wait=15)
    assert again.body["counts"] == {"posted": 3}, again.body
    assert (await platform.balance(payer.accounts["EUR"]))["posted"] == 100
    debits = [
        e
        for e in await platform.account_entries(payer.accounts["EUR"])
        if e["direction"] == "debit"
    ]
    assert [e["amount"] for e in debits] == [1_200]  # one debit for the whole batch
    for person in staff:
        assert (await platform.balance(person.accounts["EUR"]))["posted"] == 400

    await platform.fund(payer.accounts["EUR"], 900, "EUR")  # 1,000: two of three fit
    independent = {**atomic, "atomic": False, "transfers": items}
    done = await api.post("/v1/transfer-batches", payer.token, independent, wait=15)
    assert done.status == 201 and done.body["status"] == "completed", done.body
    assert done.body["counts"] == {"posted": 2, "declined": 1}
    reasons = {t["reason"] for t in done.body["transfers"] if t["status"] == "declined"}
    assert reasons == {"insufficient_funds"}
    assert (await platform.balance(payer.accounts["EUR"]))["posted"] == 200

    too_many = {**independent, "transfers": items * 334}
    assert (await api.post("/v1/transfer-batches", payer.token, too_many)).status == 422


async def test_an_operator_reverses_a_posted_transfer(api: TxApi, platform: Platform) -> None:
    ana = await platform.party("ana", {"EUR": 1_000})
    bruno = await platform.party("bruno")
    posted = await api.post(
        "/v1/transfers",
        ana.token,
        api.transfer(ana.accounts["EUR"], bruno.accounts["EUR"], 300),
        wait=10,
    )
    operator = await platform.register("backoffice", ["transactions:admin"], ["transactions"])
    admin = await platform.client_token(
        operator["client_id"], operator["client_secret"], None, ["transactions"]
    )
    path = f"/v1/transfers/{posted.body['id']}/reverse"
    assert (await api.post(path, ana.token, {"reason": "mistake"})).status == 403
    reversed_ = await api.post(path, admin, {"reason": "customer complaint 42"}, wait=10)
    assert reversed_.status == 200 and reversed_.body["status"] == "reversed", reversed_.body
    assert (await platform.balance(ana.accounts["EUR"]))["posted"] == 1_000
    assert (await platform.balance(bruno.accounts["EUR"]))["posted"] == 0


def test_the_ledger_verifies_after_all_of_it(settings: Settings) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lastro.cli", "accounts", "verify"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every posting balances" in result.stdout


def _ids(replies: list[Any]) -> set[str]:
    return {r.body["id"] for r in replies}
