"""Retention through the privacy API, against the running stack, as the operator's
RetentionPolicy calls it: only what expired is purged, the count is reported (a dry
run counts the same and changes nothing), every run is audited with the run's
request id, and the ledger is not touched.

Age is made by moving a row's timestamp back in the database (the one thing a test
cannot wait for); everything else goes through the services' HTTPS APIs.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from privacykit import (
    Api,
    client_credentials,
    operator_token,
    sign_in,
)
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.config import Settings
from lastro.core.db import create_engine
from lastro.core.security.tls import client_context

REDIRECT_URI = "https://wallet.example/callback"
FIVE_YEARS = timedelta(days=1826)
THIRTY_DAYS = timedelta(days=30)


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings, pool_size=1, max_overflow=0, name="retention-test")
    yield engine
    await engine.dispose()


@pytest.fixture
async def stack(settings: Settings) -> AsyncIterator[dict[str, Any]]:
    """Clients of the running stack: the operator's privacy tokens, a payments
    service, and a wallet app people sign in to."""
    connector = aiohttp.TCPConnector(ssl=client_context(settings.ca_file))
    async with aiohttp.ClientSession(connector=connector) as http:
        identity = Api(http, settings.service_url("identity"))
        run = secrets.token_hex(4)
        admin = await operator_token(identity, settings)
        retention = await identity.call(
            "POST",
            "/v1/clients",
            token=admin,
            expect=201,
            json={
                "name": f"retention-{run}",
                "grant_types": ["client_credentials"],
                "scopes": ["privacy:admin", "accounts:admin"],
                "audiences": ["accounts", "identity", "transactions", "fraud"],
            },
        )

        async def token(scope: str, audience: str) -> str:
            return await client_credentials(
                identity, retention["client_id"], retention["client_secret"], scope, audience
            )

        wallet = await identity.call(
            "POST",
            "/v1/clients",
            token=admin,
            expect=201,
            json={
                "name": f"wallet-{run}",
                "confidential": False,
                "grant_types": ["authorization_code", "refresh_token"],
                "scopes": ["accounts:read", "accounts:write"],
                "audiences": ["accounts"],
                "redirect_uris": [REDIRECT_URI],
            },
        )
        yield {
            "run": run,
            "actor": retention["client_id"],
            "identity": identity,
            "accounts": Api(http, settings.service_url("accounts")),
            "accounts_privacy": await token("privacy:admin", "accounts"),
            "accounts_admin": await token("accounts:admin", "accounts"),
            "identity_privacy": await token("privacy:admin", "identity"),
            "transactions": Api(http, settings.service_url("transactions")),
            "transactions_privacy": await token("privacy:admin", "transactions"),
            "fraud": Api(http, settings.service_url("fraud")),
            "fraud_privacy": await token("privacy:admin", "fraud"),
            "wallet": wallet["client_id"],
        }


async def _person(stack: dict[str, Any], label: str) -> tuple[str, str]:
    """A signed-in user with a customer profile: (user id, user token)."""
    username, password = f"{label}-{stack['run']}", secrets.token_urlsafe(16)
    user = await stack["identity"].call(
        "POST", "/v1/users", expect=201, json={"username": username, "password": password}
    )
    token = await sign_in(
        stack["identity"], stack["wallet"], username, password, "accounts:read accounts:write"
    )
    return user["id"], token


async def _customer_with_account(
    stack: dict[str, Any], label: str, *, close: bool
) -> tuple[str, str]:
    _, token = await _person(stack, label)
    customer = await stack["accounts"].call(
        "POST",
        "/v1/customers",
        token=token,
        expect=201,
        json={
            "name": f"{label} {stack['run']}",
            "email": f"{label}.{stack['run']}@example.com",
            "document_number": f"{label}-{stack['run']}",
        },
    )
    account = await stack["accounts"].call(
        "POST",
        "/v1/accounts",
        token=token,
        expect=201,
        json={"customer_id": customer["id"], "currency": "EUR"},
    )
    if close:
        await stack["accounts"].call(
            "POST",
            f"/v1/accounts/{account['id']}/close",
            token=stack["accounts_admin"],
            expect=200,
        )
    return customer["id"], account["id"]


async def _purge(
    api: Api, token: str, body: dict[str, Any], request_id: str, expect: int = 200
) -> dict[str, Any]:
    return await api.call(
        "POST",
        "/internal/v1/privacy/purge",
        token=token,
        expect=expect,
        json=body,
        headers={"X-Request-Id": request_id},
    )


async def _audited(engine: AsyncEngine, schema: str, request_id: str) -> list[Any]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                f"SELECT actor, action, target, details FROM {schema}.audit_log"
                " WHERE details->>'request_id' = :id ORDER BY seq"
            ),
            {"id": request_id},
        )
        return list(rows.all())


async def _ledger_counts(engine: AsyncEngine) -> tuple[int, int, int]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM accounts.postings),"
                    " (SELECT count(*) FROM accounts.entries),"
                    " (SELECT coalesce(sum(posted), 0) FROM accounts.accounts)"
                )
            )
        ).one()
        return int(row[0]), int(row[1]), int(row[2])


async def test_closed_customers_past_retention_are_crypto_shredded_and_no_others(
    settings: Settings, stack: dict[str, Any], engine: AsyncEngine
) -> None:
    old_closed, old_account = await _customer_with_account(stack, "oldclosed", close=True)
    recent_closed, _ = await _customer_with_account(stack, "recentclosed", close=True)
    old_open, open_account = await _customer_with_account(stack, "oldopen", close=False)
    long_ago = datetime.now(UTC) - FIVE_YEARS - timedelta(days=10)
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE accounts.accounts SET updated_at = :t WHERE id = ANY(:ids)"),
            {"t": long_ago, "ids": [old_account, open_account]},
        )
    ledger_before = await _ledger_counts(engine)
    body = {
        "data_class": "accounts.closed_customers",
        "older_than": (datetime.now(UTC) - FIVE_YEARS).isoformat(),
        "action": "crypto-shred",
    }
    api, token = stack["accounts"], stack["accounts_privacy"]
    dry_id, run_id, again_id = (f"retention-{stack['run']}-{n}" for n in ("dry", "run", "again"))

    dry = await _purge(api, token, {**body, "dry_run": True}, dry_id)
    assert dry["affected"] >= 1
    statuses = await _statuses(engine, [old_closed, recent_closed, old_open])
    assert statuses == ["active", "active", "active"]

    purged = await _purge(api, token, body, run_id)
    assert purged == {
        "service": "accounts",
        "data_class": "accounts.closed_customers",
        "action": "crypto-shred",
        "cutoff": datetime.fromisoformat(body["older_than"]).isoformat(),
        "affected": dry["affected"],
    }
    statuses = await _statuses(engine, [old_closed, recent_closed, old_open])
    assert statuses == ["erased", "active", "active"]
    again = await _purge(api, token, body, again_id)
    assert again["affected"] == 0

    for request_id, affected in (
        (dry_id, dry["affected"]),
        (run_id, dry["affected"]),
        (again_id, 0),
    ):
        (record,) = [
            r
            for r in await _audited(engine, "accounts", request_id)
            if r.action == "privacy.purged"
        ]
        assert record.actor.endswith(stack["actor"]) and record.target == body["data_class"]
        assert record.details["affected"] == affected
    shredded = [
        r for r in await _audited(engine, "accounts", run_id) if r.action == "customer.erased"
    ]
    assert old_closed in [r.target for r in shredded]

    assert await _ledger_counts(engine) == ledger_before
    verified = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "lastro.cli", "accounts", "verify"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout


async def _statuses(engine: AsyncEngine, customer_ids: list[str]) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT id, status FROM accounts.customers WHERE id = ANY(:ids)"),
            {"ids": customer_ids},
        )
        by_id = dict(rows.all())
    return [by_id[c] for c in customer_ids]


async def test_sessions_expired_past_retention_are_purged_and_live_ones_kept(
    stack: dict[str, Any], engine: AsyncEngine
) -> None:
    stale_user, _ = await _person(stack, "stale")
    live_user, _ = await _person(stack, "live")
    long_ago = datetime.now(UTC) - THIRTY_DAYS - timedelta(days=5)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE identity.refresh_tokens SET expires_at = :t, issued_at = :t"
                " WHERE user_id = :u"
            ),
            {"t": long_ago, "u": stale_user},
        )
        await conn.execute(
            text("UPDATE identity.token_families SET created_at = :t WHERE user_id = :u"),
            {"t": long_ago, "u": stale_user},
        )
    before = await _session_rows(engine, [stale_user, live_user])
    assert before[stale_user] == (1, 1) and before[live_user] == (1, 1)
    body = {
        "data_class": "identity.sessions",
        "older_than": (datetime.now(UTC) - THIRTY_DAYS).isoformat(),
        "action": "purge",
    }
    api, token = stack["identity"], stack["identity_privacy"]
    request_id = f"retention-{stack['run']}-sessions"
    dry = await _purge(api, token, {**body, "dry_run": True}, request_id + "-dry")
    assert await _session_rows(engine, [stale_user, live_user]) == before
    purged = await _purge(api, token, body, request_id)
    assert purged["affected"] == dry["affected"] >= 2
    after = await _session_rows(engine, [stale_user, live_user])
    assert after == {stale_user: (0, 0), live_user: (1, 1)}
    (record,) = await _audited(engine, "identity", request_id)
    assert record.action == "privacy.purged" and record.details["affected"] == purged["affected"]

    refused = await _purge(
        api,
        token,
        {**body, "data_class": "identity.audit_records", "action": "anonymize"},
        request_id + "-audit",
        expect=422,
    )
    assert refused["type"].endswith("/unsupported-retention-action")


async def _session_rows(engine: AsyncEngine, users: list[str]) -> dict[str, tuple[int, int]]:
    """Per user: (refresh-token families, refresh tokens)."""
    async with engine.connect() as conn:
        found = {}
        for user in users:
            families = await conn.scalar(
                text("SELECT count(*) FROM identity.token_families WHERE user_id = :u"),
                {"u": user},
            )
            tokens = await conn.scalar(
                text("SELECT count(*) FROM identity.refresh_tokens WHERE user_id = :u"),
                {"u": user},
            )
            found[user] = (int(families or 0), int(tokens or 0))
    return found


@pytest.mark.parametrize("service", ["accounts", "transactions"])
async def test_audit_records_past_retention_are_purged_from_the_start_of_the_chain(
    settings: Settings, stack: dict[str, Any], engine: AsyncEngine, service: str
) -> None:
    """Audit records cannot be aged by SQL (the log refuses UPDATE), so the cutoff is
    now: everything recorded so far in the service's chain is expired, later records
    not. A first dry run (itself audited) makes sure the chain holds a record."""
    api, token = stack[service], stack[f"{service}_privacy"]
    body = {"data_class": f"{service}.audit_records", "action": "purge"}
    run = f"retention-{stack['run']}-{service}-audit"
    await _purge(
        api, token, {**body, "older_than": "2000-01-01T00:00:00Z", "dry_run": True}, run + "-0"
    )
    body["older_than"] = datetime.now(UTC).isoformat()
    ledger_before = await _ledger_counts(engine)
    first_before = await _first_audit_seq(engine, service)

    dry = await _purge(api, token, {**body, "dry_run": True}, run + "-dry")
    assert dry["affected"] >= 1
    assert await _first_audit_seq(engine, service) == first_before

    purged = await _purge(api, token, body, run)
    assert purged["affected"] == dry["affected"]
    anchor = await _audit_anchor(engine, service)
    assert anchor == first_before - 1 + purged["affected"]
    assert await _first_audit_seq(engine, service) == anchor + 1
    (record,) = [r for r in await _audit_rows(engine, service, run) if r.action == "privacy.purged"]
    assert record.seq > anchor and record.details["affected"] == purged["affected"]
    assert record.details["dry_run"] is False and record.target == body["data_class"]

    again = await _purge(api, token, body, run + "-again")
    assert again["affected"] == 0 and await _audit_anchor(engine, service) == anchor

    future = {**body, "older_than": (datetime.now(UTC) + THIRTY_DAYS).isoformat()}
    refused = await _purge(api, token, future, run + "-future", expect=422)
    assert refused["type"].endswith("/invalid-cutoff")
    with pytest.raises(DBAPIError, match="append-only"):
        async with engine.begin() as conn:
            await conn.execute(
                text(f"DELETE FROM {service}.audit_log WHERE seq = :s"), {"s": record.seq}
            )

    assert await _ledger_counts(engine) == ledger_before
    verified = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "lastro.cli", "audit", "verify", "--schema", service],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout
    assert f"anchor at seq {anchor})" in verified.stdout


RULES_TOPIC = "lastro.fraud.rules"


@pytest.mark.parametrize("service", ["transactions", "fraud"])
async def test_events_published_before_the_cutoff_leave_the_outbox_and_later_ones_stay(
    stack: dict[str, Any], engine: AsyncEngine, service: str
) -> None:
    """The outbox keeps every event Kafka acknowledged; ``<service>.published_events``
    deletes those published before the cutoff. Fraud keeps its rules log, however old:
    a starting replica reads it to know the shipped rules were seeded."""
    api, token = stack[service], stack[f"{service}_privacy"]
    run = f"retention-{stack['run']}-{service}-events"
    body = {
        "data_class": f"{service}.published_events",
        "action": "purge",
        "older_than": (datetime.now(UTC) - timedelta(days=7)).isoformat(),
    }
    # Each dry run is audited, and its audit record's stream event goes out through
    # the outbox: three published events of this run, at least.
    for n in range(3):
        await _purge(api, token, {**body, "dry_run": True}, f"{run}-{n}")
    published = await _published_events(engine, service, f"{run}-", 3)
    aged, recent = published[:2], published[2:]
    rules = await _published_events(engine, service, None, 1) if service == "fraud" else []
    await _age_events(engine, service, aged + rules)

    dry = await _purge(api, token, {**body, "dry_run": True}, f"{run}-dry")
    assert dry["affected"] >= len(aged)
    assert await _outbox_events(engine, service, aged + recent + rules) == {
        *aged,
        *recent,
        *rules,
    }
    purged = await _purge(api, token, body, run)
    assert purged == {
        "service": service,
        "data_class": body["data_class"],
        "action": "purge",
        "cutoff": purged["cutoff"],
        "affected": dry["affected"],
    }
    assert await _outbox_events(engine, service, aged + recent + rules) == {*recent, *rules}
    (record,) = await _audited(engine, service, run)
    assert record.action == "privacy.purged" and record.target == body["data_class"]
    assert record.details["affected"] == purged["affected"]

    refused = await _purge(api, token, {**body, "action": "anonymize"}, f"{run}-anon", 422)
    assert refused["type"].endswith("/unsupported-retention-action")


async def test_applied_events_past_the_redelivery_window_leave_the_inbox(
    stack: dict[str, Any], engine: AsyncEngine
) -> None:
    """The analyser's inbox records every event it applied; ``fraud.applied_events``
    forgets those applied before the cutoff, which must lie beyond Kafka's redelivery
    window (a week). Two rows of a consumer of this run are aged in the database."""
    api, token = stack["fraud"], stack["fraud_privacy"]
    run = f"retention-{stack['run']}-fraud-inbox"
    consumer = f"test-{run}"
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO fraud.inbox (consumer, event_id, event_type, applied_at)"
                " VALUES (:c, :a, 't', now() - interval '40 days'),"
                " (:c, :b, 't', now() - interval '40 days'), (:c, :n, 't', now())"
            ),
            {"c": consumer, "a": f"evt_{run}_a", "b": f"evt_{run}_b", "n": f"evt_{run}_n"},
        )
    body = {
        "data_class": "fraud.applied_events",
        "action": "purge",
        "older_than": (datetime.now(UTC) - THIRTY_DAYS).isoformat(),
    }
    too_recent = {**body, "older_than": (datetime.now(UTC) - timedelta(days=2)).isoformat()}
    refused = await _purge(api, token, too_recent, f"{run}-recent", 422)
    assert refused["type"].endswith("/invalid-cutoff")
    dry = await _purge(api, token, {**body, "dry_run": True}, f"{run}-dry")
    assert dry["affected"] >= 2
    purged = await _purge(api, token, body, run)
    assert purged["affected"] == dry["affected"]
    async with engine.connect() as conn:
        left = await conn.scalars(
            text("SELECT event_id FROM fraud.inbox WHERE consumer = :c"), {"c": consumer}
        )
        assert set(left.all()) == {f"evt_{run}_n"}
    (record,) = await _audited(engine, "fraud", run)
    assert record.target == "fraud.applied_events"
    assert record.details["affected"] == purged["affected"]


async def _published_events(
    engine: AsyncEngine, schema: str, request_prefix: str | None, count: int
) -> list[str]:
    """The ids of ``count`` published events: the audit stream's for requests whose
    id starts with ``request_prefix``, or (None) fraud's rules log."""
    if request_prefix is None:
        where = "topic = :rules"
    else:
        where = (
            "topic <> :rules AND envelope->'data'->'entries'->0->'details'->>'request_id'"
            " LIKE :prefix"
        )
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    f"SELECT event_id FROM {schema}.outbox"
                    f" WHERE published_at IS NOT NULL AND {where} ORDER BY id LIMIT :n"
                ),
                {"rules": RULES_TOPIC, "prefix": f"{request_prefix}%", "n": count},
            )
            found = list(rows.scalars().all())
        if len(found) == count:
            return found
        assert asyncio.get_running_loop().time() < deadline, f"{count} published in {schema}"
        await asyncio.sleep(0.2)


async def _age_events(engine: AsyncEngine, schema: str, event_ids: list[str]) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f"UPDATE {schema}.outbox SET published_at = now() - interval '30 days'"
                " WHERE event_id = ANY(:ids)"
            ),
            {"ids": event_ids},
        )


async def _outbox_events(engine: AsyncEngine, schema: str, event_ids: list[str]) -> set[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(f"SELECT event_id FROM {schema}.outbox WHERE event_id = ANY(:ids)"),
            {"ids": event_ids},
        )
        return set(rows.scalars().all())


async def _first_audit_seq(engine: AsyncEngine, schema: str) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text(f"SELECT min(seq) FROM {schema}.audit_log")) or 0)


async def _audit_anchor(engine: AsyncEngine, schema: str) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text(f"SELECT seq FROM {schema}.audit_anchor")) or 0)


async def _audit_rows(engine: AsyncEngine, schema: str, request_id: str) -> list[Any]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                f"SELECT seq, action, target, details FROM {schema}.audit_log"
                " WHERE details->>'request_id' = :id ORDER BY seq"
            ),
            {"id": request_id},
        )
        return list(rows.all())
