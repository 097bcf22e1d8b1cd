"""The fraud service's privacy API over HTTPS with a privacy:admin service token:
export shows the profile (devices, IPs, places), the screening requests and the
alerts; erase deletes the profile and clears the requests but keeps the decisions
and the alerts; purge applies retention per data class and refuses what it cannot."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from fraud_stack import (
    Client,
    Contract,
    Http,
    StackIdentity,
    drop_schema,
    https_session,
    require_services,
    running_fraud,
    transaction,
    transactions_stand_in,
)
from redis.asyncio import Redis
from schemas import unique_schema
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.audit import verify_schema
from lastro.core.config import Settings
from lastro.core.security.transit import TransitClient
from lastro.fraud.app import OPENAPI
from lastro.fraud.domain.detectors import observe
from lastro.fraud.domain.transactions import Status, TransactionEvent, parse_transaction
from lastro.fraud.store import tables
from lastro.fraud.store.profiles import ProfileStore

CONTRACT = Contract(OPENAPI)
RUN = secrets.token_hex(3)
PREFIX = f"lastro:fraud-test:{RUN}"
CUSTOMER, ACCOUNT = f"cus_{RUN}_private", f"acc_{RUN}_private"


@pytest.fixture(scope="module")
async def http(settings: Settings) -> AsyncIterator[aiohttp.ClientSession]:
    require_services(settings, "identity")
    async with https_session(settings) as session:
        yield session


@pytest.fixture(scope="module")
async def identity(settings: Settings, http: aiohttp.ClientSession) -> StackIdentity:
    return await StackIdentity.connect(settings, http)


@pytest.fixture(scope="module")
async def privacy_officer(identity: StackIdentity) -> Client:
    return await identity.client("privacy", ["privacy:admin"], ["fraud"])


@pytest.fixture(scope="module")
async def schema(engine: AsyncEngine) -> AsyncIterator[str]:
    name = unique_schema("fraud_privacy")
    yield name
    await drop_schema(engine, name)


@pytest.fixture(scope="module")
async def api(
    settings: Settings, engine: AsyncEngine, http: aiohttp.ClientSession, schema: str
) -> AsyncIterator[Http]:
    with transactions_stand_in(settings) as stand_in:
        async with running_fraud(
            settings, engine, http, schema=schema, prefix=PREFIX, transactions_url=stand_in
        ) as (served, _):
            yield served


@pytest.fixture(scope="module")
async def profiles(settings: Settings) -> AsyncIterator[ProfileStore]:
    redis = Redis.from_url(settings.redis_url)
    yield ProfileStore(redis, prefix=PREFIX)
    await redis.aclose()


@pytest.fixture(scope="module")
async def history(
    api: Http, identity: StackIdentity, profiles: ProfileStore
) -> list[dict[str, Any]]:
    """Two screened and posted payments of the customer, from a phone in Lisbon."""
    screener = await identity.client("screener", ["fraud:screen"], ["fraud"])
    payments = [
        transaction(
            CUSTOMER,
            ACCOUNT,
            type="transfer",
            at=datetime.now(UTC) - timedelta(minutes=10 - n),
            location={"lat": 38.72, "lon": -9.14},
            device_id="dev_phone_private",
            ip="203.0.113.77",
        )
        for n in range(2)
    ]
    for n, payment in enumerate(payments):
        await api.screen(await screener.bearer("fraud:screen"), payment)
        event = TransactionEvent(Status.POSTED, parse_transaction(payment))

        def detect(payer: Any, receiver: Any, party: Any, event: Any = event) -> Any:
            return observe(event, payer, receiver, party)

        await profiles.apply_event(f"evt_{RUN}_{n}", event, detect)
    return payments


async def privacy(
    api: Http, officer: Client, action: str, body: dict[str, Any], expect: int = 200
) -> Any:
    answer = await api.call(
        "POST",
        f"/internal/v1/privacy/{action}",
        await officer.bearer("privacy:admin"),
        json=body,
        expect=expect,
    )
    CONTRACT.check("POST", f"/internal/v1/privacy/{action}", expect, answer)
    return answer


async def test_export_shows_the_profile_the_screening_requests_and_the_alerts(
    api: Http, privacy_officer: Client, history: list[dict[str, Any]]
) -> None:
    exported = await privacy(api, privacy_officer, "export", {"customer_id": CUSTOMER})
    assert exported["service"] == "fraud" and exported["customer_id"] == CUSTOMER
    records = exported["records"]
    (profile,) = records["fraud.profiles"]
    assert profile["payments_out"]["transactions"] == 2
    assert len(profile["devices"]) == 1 and len(profile["ips"]) == 1
    assert profile["last_place"]["lat"] == pytest.approx(38.72)
    assert [c["id"] for c in profile["countries"]] == ["PT"]
    screenings = records["fraud.screenings"]
    assert [s["transaction_id"] for s in screenings] == [p["transaction_id"] for p in history]
    assert screenings[0]["request"]["ip"] == "203.0.113.77"
    assert records["fraud.alerts"] == []


async def test_erase_deletes_the_profile_and_clears_requests_but_keeps_decisions(
    api: Http,
    privacy_officer: Client,
    history: list[dict[str, Any]],
    profiles: ProfileStore,
    engine: AsyncEngine,
    schema: str,
) -> None:
    body = {"customer_id": CUSTOMER, "reason": "customer request", "request_id": f"prq_{RUN}"}
    erased = await privacy(api, privacy_officer, "erase", body)
    assert erased["erased"] == {"fraud.profiles": 1, "fraud.screenings": 2, "fraud.alerts": 0}
    assert await profiles.customer(CUSTOMER) is None

    exported = await privacy(api, privacy_officer, "export", {"customer_id": CUSTOMER})
    assert exported["records"]["fraud.profiles"] == []
    kept = exported["records"]["fraud.screenings"]
    assert [s["request"] for s in kept] == [None, None]
    assert all(s["erased"] and s["decision"] == "approve" for s in kept)

    again = await privacy(api, privacy_officer, "erase", body)
    assert again["erased"] == {"fraud.profiles": 0, "fraud.screenings": 0, "fraud.alerts": 0}

    audit = tables.audit.log
    async with tables.bind_schema(engine, schema).connect() as conn:
        rows = (
            await conn.execute(
                select(audit.c.action, audit.c.details).where(audit.c.target == CUSTOMER)
            )
        ).all()
    actions = [row.action for row in rows]
    assert actions.count("privacy.erased") == 2 and "privacy.exported" in actions
    (first, _) = [row for row in rows if row.action == "privacy.erased"]
    assert first.details["privacy_request_id"] == f"prq_{RUN}"
    assert first.details["reason"] == "customer request"


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ({"data_class": "accounts.customers", "action": "purge"}, "unsupported-data-class"),
        (
            {"data_class": "fraud.profiles", "action": "crypto-shred"},
            "unsupported-retention-action",
        ),
        ({"data_class": "fraud.alerts", "action": "anonymize"}, "unsupported-retention-action"),
    ],
)
async def test_purge_refuses_a_class_or_action_it_does_not_hold(
    api: Http, privacy_officer: Client, body: dict[str, Any], kind: str
) -> None:
    problem = await privacy(
        api,
        privacy_officer,
        "purge",
        {**body, "older_than": "2026-01-01T00:00:00Z"},
        expect=422,
    )
    assert problem["type"].endswith(f"/{kind}")


async def test_purge_applies_retention_per_data_class(
    api: Http,
    privacy_officer: Client,
    identity: StackIdentity,
    profiles: ProfileStore,
) -> None:
    screener = await identity.client("screener", ["fraud:screen"], ["fraud"])
    other = f"cus_{RUN}_retained"
    payment = transaction(other, f"acc_{RUN}_retained", ip="192.0.2.1")
    await api.screen(await screener.bearer("fraud:screen"), payment)
    event = TransactionEvent(Status.POSTED, parse_transaction(payment))
    await profiles.apply_event(
        f"evt_{RUN}_retained", event, lambda p, r, c: observe(event, p, r, c)
    )
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    past = (datetime.now(UTC) - timedelta(days=365)).isoformat()

    nothing = await privacy(
        api,
        privacy_officer,
        "purge",
        {"data_class": "fraud.screenings", "action": "anonymize", "older_than": past},
    )
    assert nothing["affected"] == 0
    dry = await privacy(
        api,
        privacy_officer,
        "purge",
        {
            "data_class": "fraud.screenings",
            "action": "anonymize",
            "older_than": future,
            "dry_run": True,
        },
    )
    assert dry["affected"] == 1  # the other customer's screenings were erased already
    anonymized = await privacy(
        api,
        privacy_officer,
        "purge",
        {"data_class": "fraud.screenings", "action": "anonymize", "older_than": future},
    )
    assert anonymized["affected"] == 1
    removed = await privacy(
        api,
        privacy_officer,
        "purge",
        {"data_class": "fraud.screenings", "action": "purge", "older_than": future},
    )
    assert removed["affected"] == 3
    assert await profiles.customer(other) is not None
    gone = await privacy(
        api,
        privacy_officer,
        "purge",
        {"data_class": "fraud.profiles", "action": "purge", "older_than": future},
    )
    assert gone["affected"] == 1 and gone["cutoff"].startswith(future[:19])
    assert await profiles.customer(other) is None


async def test_purge_of_audit_records_drops_the_start_of_the_chain_and_anchors_it(
    api: Http, privacy_officer: Client, engine: AsyncEngine, schema: str, settings: Settings
) -> None:
    body = {
        "data_class": "fraud.audit_records",
        "action": "purge",
        "older_than": datetime.now(UTC).isoformat(),
    }
    async with engine.connect() as conn:
        first = await conn.scalar(text(f'SELECT min(seq) FROM "{schema}".audit_log'))

    dry = await privacy(api, privacy_officer, "purge", {**body, "dry_run": True})
    assert dry["affected"] >= 1
    purged = await privacy(api, privacy_officer, "purge", body)
    again = await privacy(api, privacy_officer, "purge", body)

    assert purged["affected"] == dry["affected"] and again["affected"] == 0
    async with engine.connect() as conn:
        anchor = await conn.scalar(text(f'SELECT seq FROM "{schema}".audit_anchor'))
        kept = await conn.scalar(text(f'SELECT min(seq) FROM "{schema}".audit_log'))
    assert anchor == first - 1 + purged["affected"] and kept == anchor + 1
    transit = TransitClient.from_settings(settings)
    try:
        key = await transit.local_hmac_key(settings.audit_key_name)
    finally:
        await transit.close()
    verified = await verify_schema(engine, schema, key)
    assert verified.ok and verified.anchor == anchor
    refused = await privacy(
        api, privacy_officer, "purge", {**body, "action": "anonymize"}, expect=422
    )
    assert refused["type"].endswith("/unsupported-retention-action")


async def test_the_privacy_api_needs_privacy_admin(api: Http, identity: StackIdentity) -> None:
    analyst = await identity.client("analyst", ["fraud:admin"], ["fraud"])
    await api.call(
        "POST",
        "/internal/v1/privacy/export",
        await analyst.bearer("fraud:admin"),
        json={"customer_id": CUSTOMER},
        expect=403,
    )
