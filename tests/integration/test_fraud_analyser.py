"""The streaming analyser against real Kafka, Redis and PostgreSQL, and the real
account service: transaction events published signed to ``lastro.transactions``
raise alerts with their evidence, a high-severity alert freezes the account, and a
redelivered event (even after a crash between the Redis and the database writes)
changes the profiles once.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from fraud_stack import (
    Client,
    Contract,
    Http,
    Publisher,
    StackIdentity,
    drop_schema,
    eventually,
    https_session,
    publisher,
    require_services,
    running_analyser,
    running_fraud,
    transaction,
    transactions_stand_in,
)
from schemas import unique_schema
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.config import Settings
from lastro.core.db import UnitOfWork
from lastro.core.events import TOPICS, CloudEvent, EventSigner
from lastro.core.observability import metrics_registry
from lastro.fraud.analyser import ANALYSIS_KEY
from lastro.fraud.app import OPENAPI
from lastro.fraud.domain.profiles import CustomerProfile
from lastro.fraud.events import FRAUD_TOPIC
from lastro.fraud.store import tables
from lastro.fraud.store.profiles import ProfileStore

CONTRACT = Contract(OPENAPI)
RUN = secrets.token_hex(3)
PREFIX = f"lastro:fraud-test:{RUN}"
LISBON = {"lat": 38.72, "lon": -9.14}
NEW_YORK = {"lat": 40.71, "lon": -74.01}


@pytest.fixture(scope="module")
async def http(settings: Settings) -> AsyncIterator[aiohttp.ClientSession]:
    require_services(settings, "identity", "accounts")
    async with https_session(settings) as session:
        yield session


@pytest.fixture(scope="module")
async def identity(settings: Settings, http: aiohttp.ClientSession) -> StackIdentity:
    return await StackIdentity.connect(settings, http)


@pytest.fixture(scope="module")
async def analyst(identity: StackIdentity) -> Client:
    return await identity.client("analyst", ["fraud:read", "fraud:admin"], ["fraud"])


@pytest.fixture(scope="module")
async def screener(identity: StackIdentity) -> Client:
    return await identity.client("screener", ["fraud:screen"], ["fraud"])


@pytest.fixture(scope="module")
async def schema(engine: AsyncEngine) -> AsyncIterator[str]:
    name = unique_schema("fraud_analyser")
    yield name
    await drop_schema(engine, name)


@pytest.fixture(scope="module")
def stand_in(settings: Settings) -> Any:
    with transactions_stand_in(settings) as base:
        yield base


@pytest.fixture(scope="module")
async def api(
    settings: Settings,
    engine: AsyncEngine,
    http: aiohttp.ClientSession,
    schema: str,
    stand_in: str,
) -> AsyncIterator[Http]:
    async with running_fraud(
        settings, engine, http, schema=schema, prefix=PREFIX, transactions_url=stand_in
    ) as (served, _):
        yield served


@pytest.fixture(scope="module")
async def worker(settings: Settings, schema: str, api: Http) -> AsyncIterator[web.Application]:
    async with running_analyser(
        settings, schema=schema, prefix=PREFIX, group=f"fraud-analyser-test-{RUN}"
    ) as app:
        yield app


@pytest.fixture(scope="module")
async def events(settings: Settings, signer: EventSigner) -> AsyncIterator[Publisher]:
    async with publisher(settings, signer) as publish:
        yield publish


@pytest.fixture(scope="module")
async def profiles(settings: Settings) -> AsyncIterator[ProfileStore]:
    from redis.asyncio import Redis

    redis = Redis.from_url(settings.redis_url)
    yield ProfileStore(redis, prefix=PREFIX)
    await redis.aclose()


async def outgoing_total(profiles: ProfileStore, customer_id: str) -> int:
    profile = await profiles.customer(customer_id)
    return 0 if profile is None else profile.outgoing.total


async def alerts_of(
    api: Http, analyst: Client, customer_id: str, typology: str | None = None
) -> list[dict[str, Any]]:
    query = f"customer_id={customer_id}" + (f"&typology={typology}" if typology else "")
    listed = await api.call(
        "GET", f"/v1/alerts?{query}", await analyst.bearer("fraud:read"), expect=200
    )
    CONTRACT.check("GET", "/v1/alerts", 200, listed)
    return list(listed["data"])


def burst(customer_id: str, account_id: str, count: int, start: datetime) -> list[dict[str, Any]]:
    """Card-testing: small online card payments at new merchants, seconds apart."""
    return [
        transaction(
            customer_id,
            account_id,
            amount=700 + n,
            at=start + timedelta(seconds=8 * n),
            counterparty=f"mer_test_{RUN}_{n}",
            device_id=f"dev_fraud_{RUN}",
        )
        for n in range(count)
    ]


def duplicates(group: str) -> float:
    value = metrics_registry().get_sample_value(
        "lastro_events_duplicate_total", {"consumer": group}
    )
    return value or 0.0


async def published_alert(settings: Settings, alert_id: str) -> dict[str, Any] | None:
    """The ``alert_raised`` event for ``alert_id`` on ``lastro.fraud``, if published."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(FRAUD_TOPIC, p) for p in range(TOPICS[FRAUD_TOPIC])]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        while any([await consumer.position(tp) < ends[tp] for tp in partitions]):
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    envelope = json.loads(record.value or b"{}")
                    if envelope.get("data", {}).get("alert_id") == alert_id:
                        return dict(envelope)
        return None
    finally:
        await consumer.stop()


async def test_a_burst_raises_a_velocity_alert_and_a_shadow_rule_earns_its_precision(
    api: Http,
    worker: web.Application,
    events: Publisher,
    profiles: ProfileStore,
    analyst: Client,
    screener: Client,
    settings: Settings,
    signer: EventSigner,
    stand_in: str,
) -> None:
    cus, acc = f"cus_{RUN}_burst", f"acc_{RUN}_burst"
    rule_id = f"t{RUN}-burst-shadow"
    await api.call(
        "PUT",
        f"/v1/rules/{rule_id}",
        await analyst.bearer("fraud:admin"),
        json={
            "expression": f'txn.customer_id == "{cus}" && features.count_1m >= 3',
            "action": "review",
            "severity": "high",
            "mode": "shadow",
        },
        expect=200,
    )
    payments = burst(cus, acc, 6, datetime.now(UTC) - timedelta(minutes=2))
    shadow_fired = []
    decisions = []
    for n, payment in enumerate(payments, start=1):
        decision = await api.screen(await screener.bearer("fraud:screen"), payment)
        shadow_fired.append(rule_id in [r["rule_id"] for r in decision["shadow"]])
        decisions.append(decision)
        await events.transaction("posted", payment)
        await eventually(lambda n=n: _at_least(profiles, cus, n))
    assert shadow_fired == [False, False, False, True, True, True]

    (alert,) = await eventually(lambda: alerts_of(api, analyst, cus, "velocity_burst"))
    assert alert["typology"] == "velocity_burst"
    assert alert["source"] == "analyser"
    assert alert["transaction_id"] == payments[4]["transaction_id"]
    assert alert["evidence"]["count_1m"] == 5 and alert["evidence"]["new_payees_1h"] == 5
    assert alert["freeze"]["state"] == "none"  # medium severity: no freeze

    raised = await eventually(lambda: published_alert(settings, alert["id"]))
    assert raised["type"] == "lastro.fraud.alert_raised"
    assert signer.verify(raised).data["typology"] == "velocity_burst"

    # The default rule velocity-burst-1m (enforce) put that same payment in review, so
    # the transaction service waits for this resolution: fraud, so the money goes back.
    assert decisions[4]["decision"] == "review"
    async with api.http.post(f"{stand_in}/admin/held", json=payments[4]) as held:
        assert held.status == 200
    admin = await analyst.bearer("fraud:admin")
    resolved = await api.call(
        "POST",
        f"/v1/alerts/{alert['id']}/resolve",
        admin,
        json={"resolution": "true_positive"},
        expect=200,
    )
    assert resolved["review_outcome"]["state"] in ("pending", "done")

    async def reported() -> Any:
        shown = await api.call("GET", f"/v1/alerts/{alert['id']}", admin, expect=200)
        return shown if shown["review_outcome"]["state"] == "done" else None

    await eventually(reported)
    async with api.http.get(f"{stand_in}/admin/outcomes") as response:
        outcomes = [o for o in await response.json() if o["key"] == alert["id"]]
    assert [o["body"]["outcome"] for o in outcomes] == ["fraud"]
    stats = await api.call("GET", "/v1/rules/stats", admin, expect=200)
    (row,) = [r for r in stats["rules"] if r["rule_id"] == rule_id]
    assert row["shadow_hits"] == 3 and row["enforced_hits"] == 0
    assert (row["true_positives"], row["false_positives"], row["precision"]) == (1, 0, 1.0)
    await api.call("DELETE", f"/v1/rules/{rule_id}", admin, expect=204)


async def _at_least(profiles: ProfileStore, customer_id: str, count: int) -> bool:
    return await outgoing_total(profiles, customer_id) >= count


async def open_account(identity: StackIdentity, settings: Settings) -> tuple[str, str, Client]:
    """A customer and a EUR account at the real account service."""
    bank = await identity.client("bank", ["accounts:write", "accounts:admin"], ["accounts"])
    accounts = Http(identity.http, settings.service_url("accounts"))
    headers = await bank.bearer("accounts:write accounts:admin", "accounts")
    person = await accounts.call(
        "POST",
        "/v1/customers",
        headers,
        json={
            "name": "Travelling Customer",
            "email": f"traveller-{RUN}@example.com",
            "document_number": f"DOC{RUN.upper()}",
        },
        expect=201,
    )
    account = await accounts.call(
        "POST",
        "/v1/accounts",
        headers,
        json={"customer_id": person["id"], "currency": "EUR"},
        expect=201,
    )
    return person["id"], account["id"], bank


async def test_impossible_travel_raises_a_high_alert_and_freezes_the_account(
    api: Http,
    worker: web.Application,
    events: Publisher,
    profiles: ProfileStore,
    analyst: Client,
    identity: StackIdentity,
    settings: Settings,
    engine: AsyncEngine,
    schema: str,
) -> None:
    cus, acc, bank = await open_account(identity, settings)
    start = datetime.now(UTC) - timedelta(minutes=30)
    home = transaction(
        cus, acc, type="transfer", amount=4_000, at=start, location=LISBON, country="PT"
    )
    away = transaction(
        cus,
        acc,
        type="transfer",
        amount=9_000,
        at=start + timedelta(minutes=20),
        location=NEW_YORK,
        country="US",
    )
    await events.transaction("posted", home)
    await eventually(lambda: _at_least(profiles, cus, 1))
    await events.transaction("posted", away)

    (alert,) = await eventually(lambda: alerts_of(api, analyst, cus))
    assert alert["typology"] == "impossible_travel" and alert["severity"] == "high"
    assert alert["account_id"] == acc
    assert alert["related"] == [home["transaction_id"]]
    assert alert["evidence"]["from_country"] == "PT" and alert["evidence"]["to_country"] == "US"
    assert alert["evidence"]["distance_km"] > 5000

    async def frozen() -> dict[str, Any] | None:
        shown = (await alerts_of(api, analyst, cus))[0]
        return shown if shown["freeze"]["state"] == "done" else None

    done = await eventually(frozen, 30)
    assert done["freeze"]["detail"].startswith("200")
    accounts = Http(identity.http, settings.service_url("accounts"))
    account = await accounts.call(
        "GET",
        f"/v1/accounts/{acc}",
        await bank.bearer("accounts:write accounts:admin", "accounts"),
        expect=200,
    )
    assert account["status"] == "frozen"

    audit = tables.audit.log
    async with tables.bind_schema(engine, schema).connect() as conn:
        rows = (
            await conn.execute(
                select(audit.c.actor, audit.c.outcome, audit.c.details).where(
                    audit.c.action == "account.freeze_requested", audit.c.target == acc
                )
            )
        ).all()
    assert [(r.actor, r.outcome) for r in rows] == [("service:fraud-analyser/freezes", "success")]
    assert rows[0].details["alert_id"] == alert["id"]


async def test_a_redelivered_event_changes_the_profiles_once_even_after_a_crash(
    api: Http,
    worker: web.Application,
    events: Publisher,
    profiles: ProfileStore,
    analyst: Client,
    engine: AsyncEngine,
    schema: str,
) -> None:
    cus, acc = f"cus_{RUN}_again", f"acc_{RUN}_again"
    payments = burst(cus, acc, 5, datetime.now(UTC) - timedelta(minutes=5))
    for n, payment in enumerate(payments[:4], start=1):
        await events.transaction("posted", payment)
        await eventually(lambda n=n: _at_least(profiles, cus, n))
    assert await alerts_of(api, analyst, cus) == []

    fifth = CloudEvent(
        type="lastro.transaction.posted",
        source="/transactions",
        data={**payments[4], "status": "posted"},
        subject=payments[4]["transaction_id"],
    )
    # The analyser applies it, then "crashes" before its database commit: the profiles
    # in Redis took the event, the alert and the inbox row were rolled back.
    analysis = worker[ANALYSIS_KEY]
    async with UnitOfWork(tables.bind_schema(engine, schema)) as uow:
        await analysis.apply(uow.connection, fifth)
    assert await outgoing_total(profiles, cus) == 5
    assert await alerts_of(api, analyst, cus) == []

    group = f"fraud-analyser-test-{RUN}"
    before = duplicates(group)
    await events.send("lastro.transactions", acc, fifth)  # delivered after the crash
    (alert,) = await eventually(lambda: alerts_of(api, analyst, cus))
    assert alert["transaction_id"] == payments[4]["transaction_id"]
    assert alert["typology"] == "velocity_burst" and alert["evidence"]["count_1m"] == 5

    await events.send("lastro.transactions", acc, fifth)  # and once more
    await eventually(lambda: _gt(duplicates(group), before))
    assert await outgoing_total(profiles, cus) == 5
    assert len(await alerts_of(api, analyst, cus)) == 1
    profile = await profiles.customer(cus)
    assert isinstance(profile, CustomerProfile)
    assert (
        profile.outgoing.count(
            "1m", int(datetime.fromisoformat(payments[4]["occurred_at"]).timestamp())
        )
        == 5
    )


async def _gt(value: float, than: float) -> bool:
    return value > than
