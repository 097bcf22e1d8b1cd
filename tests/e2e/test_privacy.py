"""Data-subject requests end to end, against the running stack (`lastro dev up`).

A person signs up (identity: login name, TOTP, a device, a session), opens a customer
profile and an account that receives money and carries a hold (accounts), sends a
transfer to a shop and a payout to their own bank account (transactions: the payout's
holder name and IBAN, the context of each request), is screened and profiled by fraud,
and is told about a freeze by e-mail (notifications). Then
`lastro gdpr export` gathers everything into one bundle the KMS signed, and
`lastro gdpr erase` erases the person everywhere. Afterwards their name, e-mail,
phone, document number, IBAN and login name are in no schema, no service log and no Kafka
topic in plaintext, no service can open what it kept sealed, the ledger still
balances, every audit chain verifies, and the certificate names each service.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from privacykit import (
    Api,
    client_credentials,
    operator_token,
    register_client,
    service_token,
    sign_in,
)
from redis.asyncio import Redis
from sqlalchemy import text

from lastro.accounts.app import privacy_credentials
from lastro.accounts.customers import Customers
from lastro.accounts.domain.subject_requests import signed_content
from lastro.accounts.privacy import Privacy
from lastro.accounts.service import Ledger
from lastro.accounts.subject_requests import SubjectRequests
from lastro.core import registry
from lastro.core.changes import Caller
from lastro.core.config import Settings
from lastro.core.db import create_engine
from lastro.core.events import EventSigner, new_event
from lastro.core.privacy_client import PrivacyClient
from lastro.core.security.fields import PII_KEY, BlindIndex, SubjectKeys
from lastro.core.security.tls import client_context
from lastro.core.security.transit import TransitClient
from lastro.devstack.smtp_sink import read_mail
from lastro.fraud.store.profiles import ProfileStore

REDIRECT_URI = "https://wallet.example/callback"
PRIVACY_SERVICES = [s.name for s in registry.privacy_services()]


def _lastro(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lastro.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env=os.environ,
    )


async def _until(check: Callable[[], Awaitable[Any]], what: str, seconds: float = 30.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.25)
    raise AssertionError(f"{what} did not happen within {seconds:.0f}s")


def _iban(bban: str) -> str:
    """A Portuguese IBAN with the right check digits (ISO 7064 mod 97-10)."""
    check = 98 - int(f"{bban}252900") % 97  # "PT00" moved to the end, letters as numbers
    return f"PT{check:02d}{bban}"


async def _person_with_activity(settings: Settings, http: aiohttp.ClientSession) -> dict[str, Any]:
    """A person known to identity, accounts, transactions, fraud and notifications."""
    identity = Api(http, settings.service_url("identity"))
    accounts = Api(http, settings.service_url("accounts"))
    transactions = Api(http, settings.service_url("transactions"))
    notifications = Api(http, settings.service_url("notifications"))
    fraud = Api(http, settings.service_url("fraud"))
    run = secrets.token_hex(4)
    person = {
        "username": f"zelia-{run}",
        "name": f"Zelia Quintanilha {run}",
        "email": f"zelia.{run}@example.com",
        "phone": f"+35191{secrets.randbelow(10**7):07d}",
        "document_number": f"PT-DOC-{run.upper()}",
        "iban": _iban(f"00020123{secrets.randbelow(10**13):013d}"),
    }
    admin = await operator_token(identity, settings)
    payments = await service_token(
        identity,
        admin,
        f"payments-{run}",
        ["ledger:write", "ledger:read", "accounts:admin"],
        "accounts",
    )
    screener = await service_token(identity, admin, f"screening-{run}", ["fraud:screen"], "fraud")
    wallet = await identity.call(
        "POST",
        "/v1/clients",
        token=admin,
        expect=201,
        json={
            "name": f"wallet-{run}",
            "confidential": False,
            "grant_types": ["authorization_code", "refresh_token"],
            "scopes": [
                "accounts:read",
                "accounts:write",
                "notifications:read",
                "notifications:write",
                "identity:self",
                "transfers:read",
                "transfers:write",
                "payouts:write",
            ],
            "audiences": ["accounts", "notifications", "identity", "transactions"],
            "redirect_uris": [REDIRECT_URI],
        },
    )
    password = secrets.token_urlsafe(16)
    created = await identity.call(
        "POST",
        "/v1/users",
        expect=201,
        json={"username": person["username"], "password": password},
    )
    person["user_id"] = created["id"]
    scope = (
        "accounts:read accounts:write notifications:read notifications:write"
        " transfers:read transfers:write payouts:write"
    )
    token = await sign_in(identity, wallet["client_id"], person["username"], password, scope)
    self_token = await sign_in(
        identity, wallet["client_id"], person["username"], password, "identity:self"
    )
    enrolment = await identity.call("POST", "/v1/users/me/totp", token=self_token, expect=201)
    await identity.call(
        "POST",
        "/v1/users/me/totp/confirm",
        token=self_token,
        expect=200,
        json={"code": pyotp.TOTP(enrolment["secret"]).now()},
    )

    customer = await accounts.call(
        "POST",
        "/v1/customers",
        token=token,
        expect=201,
        json={key: person[key] for key in ("name", "email", "phone", "document_number")},
    )
    account = await accounts.call(
        "POST",
        "/v1/accounts",
        token=token,
        expect=201,
        json={"customer_id": customer["id"], "currency": "EUR"},
    )
    settlement = await accounts.call(
        "POST",
        "/internal/v1/accounts",
        token=payments,
        expect=201,
        json={"currency": "EUR", "purpose": "settlement"},
    )
    await accounts.call(
        "POST",
        "/internal/v1/postings",
        token=payments,
        expect=201,
        json={
            "external_id": f"txn_privacy_{run}",
            "description": f"deposit {run}",
            "metadata": {"channel": "sepa"},
            "entries": [
                {
                    "account_id": settlement["id"],
                    "direction": "debit",
                    "amount": 50_000,
                    "currency": "EUR",
                },
                {
                    "account_id": account["id"],
                    "direction": "credit",
                    "amount": 50_000,
                    "currency": "EUR",
                },
            ],
        },
    )
    await accounts.call(
        "POST",
        "/internal/v1/holds",
        token=payments,
        expect=201,
        json={
            "external_id": f"hold_privacy_{run}",
            "account_id": account["id"],
            "counterparty_id": settlement["id"],
            "amount": 1_000,
            "currency": "EUR",
            "expires_at": datetime.fromtimestamp(time.time() + 3600, UTC).isoformat(),
        },
    )

    shop_client = await register_client(
        identity, admin, f"shop-{run}", ["accounts:read", "accounts:write"], ["accounts"]
    )
    shop = await client_credentials(
        identity,
        shop_client["client_id"],
        shop_client["client_secret"],
        "accounts:read accounts:write",
        "accounts",
    )
    shop_customer = await accounts.call(
        "POST",
        "/v1/customers",
        token=shop,
        expect=201,
        json={"name": f"Loja {run}", "email": f"loja.{run}@example.com", "document_number": run},
    )
    shop_account = await accounts.call(
        "POST",
        "/v1/accounts",
        token=shop,
        expect=201,
        json={"customer_id": shop_customer["id"], "currency": "EUR"},
    )
    context = {"device_id": f"dev_wallet_{run}", "ip": "198.51.100.78", "country": "PT"}
    moved = [
        await transactions.call(
            "POST",
            path,
            token=token,
            expect=201,
            headers={"Idempotency-Key": secrets.token_hex(16), "Prefer": "wait=10"},
            json={
                "source_account_id": account["id"],
                "currency": "EUR",
                **body,
                "context": context,
            },
        )
        for path, body in (
            ("/v1/transfers", {"destination_account_id": shop_account["id"], "amount": 4_000}),
            (
                "/v1/payouts",
                {
                    "amount": 3_000,
                    "destination": {"iban": person["iban"], "holder_name": person["name"]},
                },
            ),
        )
    ]
    assert [m["status"] for m in moved] == ["posted", "settled"], moved

    payment = {
        "transaction_id": f"txn_privacy_{run}",
        "type": "transfer",
        "amount": 2_500,
        "currency": "EUR",
        "customer_id": customer["id"],
        "source_account_id": account["id"],
        "counterparty": f"iban_privacy_{run}",
        "occurred_at": datetime.now(UTC).isoformat(),
        "device_id": f"dev_privacy_{run}",
        "ip": "198.51.100.77",
        "country": "PT",
        "location": {"lat": 38.72, "lon": -9.14},
    }
    await fraud.call("POST", "/internal/v1/screenings", token=screener, expect=200, json=payment)
    await _publish_posted(settings, payment)
    redis = Redis.from_url(settings.redis_url)
    try:
        profiles = ProfileStore(redis)
        await _until(lambda: profiles.customer(customer["id"]), "the fraud profile")
    finally:
        await redis.aclose()

    await notifications.call(
        "PUT",
        "/v1/preferences",
        token=token,
        expect=200,
        json={"customer_id": customer["id"], "locale": "pt-BR", "timezone": "Europe/Lisbon"},
    )
    await accounts.call("POST", f"/v1/accounts/{account['id']}/freeze", token=payments, expect=200)

    async def mailed() -> list[Any]:
        return read_mail(settings.dev_dir / "mail", to=person["email"])

    await _until(mailed, "the freeze e-mail")
    await accounts.call(
        "POST", f"/v1/accounts/{account['id']}/unfreeze", token=payments, expect=200
    )
    return {
        **person,
        "customer_id": customer["id"],
        "account_id": account["id"],
        "token": token,
        "payments": payments,
        "transfer_id": moved[0]["id"],
        "payout_id": moved[1]["id"],
    }


async def _publish_posted(settings: Settings, payment: dict[str, Any]) -> None:
    """The transaction service's ``posted`` event (not in this build: played here)."""
    transit = TransitClient.from_settings(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        signer = await EventSigner.from_transit(transit, settings.events_key_name)
        event = new_event(
            "lastro.transaction.posted",
            "/transactions",
            {**payment, "status": "posted"},
            subject=payment["transaction_id"],
        )
        await producer.send_and_wait(
            "lastro.transactions",
            json.dumps(signer.sign(event.envelope())).encode(),
            key=payment["source_account_id"].encode(),
        )
    finally:
        await producer.stop()
        await transit.close()


async def _signed_by_kms(settings: Settings, document: dict[str, Any]) -> bool:
    transit = TransitClient.from_settings(settings)
    try:
        return await transit.verify_hmac(
            settings.privacy_key_name, signed_content(document), document["signature"]["hmac"]
        )
    finally:
        await transit.close()


async def _rows_mentioning(settings: Settings, needles: list[str]) -> list[str]:
    """``schema.table`` of every row, in every service schema, whose text holds a needle."""
    engine = create_engine(settings, pool_size=1, max_overflow=0, name="privacy-test")
    found: list[str] = []
    try:
        async with engine.connect() as conn:
            tables = await conn.execute(
                text(
                    "SELECT table_schema, table_name FROM information_schema.tables"
                    " WHERE table_schema = ANY(:schemas) AND table_type = 'BASE TABLE'"
                ),
                {"schemas": list(registry.schemas())},
            )
            for schema, table in tables.all():
                count = await conn.scalar(
                    text(
                        f'SELECT count(*) FROM "{schema}"."{table}" t'
                        " WHERE t::text ILIKE ANY(:patterns)"
                    ),
                    {"patterns": [f"%{n}%" for n in needles]},
                )
                if count:
                    found.append(f"{schema}.{table}: {count}")
    finally:
        await engine.dispose()
    return found


async def _kafka_mentioning(settings: Settings, needles: list[bytes]) -> list[str]:
    """``topic/partition@offset`` of every record on every topic holding a needle."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(await admin.list_topics())
    finally:
        await admin.close()
    partitions = [
        TopicPartition(topic["topic"], p["partition"])
        for topic in described
        for p in topic["partitions"]
    ]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    found: list[str] = []
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(timeout_ms=2000)
            if not batch:
                remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
                if remaining:
                    continue
            for tp, records in batch.items():
                for record in records:
                    blob = (record.key or b"") + (record.value or b"")
                    if any(n in blob for n in needles):
                        found.append(f"{tp.topic}/{tp.partition}@{record.offset}")
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return found


def _logs_mentioning(settings: Settings, needles: list[str]) -> list[str]:
    """Service log files under ``.dev/logs`` holding a needle."""
    found = []
    for spec in registry.SERVICES:
        log = settings.dev_dir / "logs" / f"{spec.name}.log"
        if log.exists():
            content = log.read_text(errors="replace")
            found += [f"{log.name}: {n}" for n in needles if n in content]
    return found


async def test_export_then_erasure_leaves_no_personal_data_anywhere(
    settings: Settings, tmp_path: Path
) -> None:
    connector = aiohttp.TCPConnector(ssl=client_context(settings.ca_file))
    async with aiohttp.ClientSession(connector=connector) as http:
        person = await _person_with_activity(settings, http)
        accounts = Api(http, settings.service_url("accounts"))
        balance_before = await accounts.call(
            "GET",
            f"/v1/accounts/{person['account_id']}/balance",
            token=person["token"],
            expect=200,
        )
    customer_id = person["customer_id"]
    needles = [person[k] for k in ("name", "email", "phone", "document_number", "username", "iban")]
    # The scans see what is there: the login name is plaintext before erasure, the
    # payment's counterparty travelled on lastro.transactions, the id is in the logs;
    # the transaction service's rows and events carry the transfer.
    assert "identity.users: 1" in await _rows_mentioning(settings, [person["username"]])
    counterparty = f"iban_privacy_{person['username'].split('-')[1]}"
    assert await _kafka_mentioning(settings, [counterparty.encode()])
    assert _logs_mentioning(settings, [customer_id])
    assert "transactions.transactions: 1" in await _rows_mentioning(
        settings, [person["transfer_id"]]
    )
    assert await _kafka_mentioning(settings, [person["payout_id"].encode()])

    bundle_file = tmp_path / "bundle.json"
    exported = _lastro("gdpr", "export", customer_id, "--out", str(bundle_file))
    assert exported.returncode == 0, exported.stdout + exported.stderr
    bundle = json.loads(bundle_file.read_text())
    sections = bundle["sections"]
    assert sorted(bundle["manifest"]["services"]) == sorted(PRIVACY_SERVICES)
    (customer,) = sections["accounts"]["accounts.customers"]
    assert {customer[k] for k in ("name", "email", "phone", "document_number")} == {
        person[k] for k in ("name", "email", "phone", "document_number")
    }
    assert [a["id"] for a in sections["accounts"]["accounts.accounts"]] == [person["account_id"]]
    assert len(sections["accounts"]["accounts.holds"]) == 1
    assert sections["accounts"]["accounts.postings"][0]["metadata"] == {"channel": "sepa"}
    (user,) = sections["identity"]["identity.users"]
    assert user["login_name"] == person["username"] and user["totp_enabled"] is True
    assert sections["identity"]["identity.devices"] and sections["identity"]["identity.sessions"]
    assert len(sections["fraud"]["fraud.profiles"]) == 1
    screened = sections["fraud"]["fraud.screenings"]
    assert {s["request"]["ip"] for s in screened} == {"198.51.100.77", "198.51.100.78"}
    held = sections["transactions"]
    assert {t["id"] for t in held["transactions.transactions"]} == {
        person["transfer_id"],
        person["payout_id"],
    }
    (destination,) = held["transactions.payout_destinations"]
    assert (destination["holder_name"], destination["iban"]) == (person["name"], person["iban"])
    assert {c["transaction_id"] for c in held["transactions.request_context"]} == {
        person["transfer_id"],
        person["payout_id"],
    }
    deliveries = sections["notifications"]["notifications.deliveries"]
    assert person["email"] in [d["address"] for d in deliveries]
    assert sections["notifications"]["notifications.preferences"][0]["locale"] == "pt-BR"
    for name, entry in bundle["manifest"]["services"].items():
        assert entry["total"] == sum(len(v) for v in sections[name].values())

    verified = _lastro("gdpr", "verify", str(bundle_file))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    tampered = {**bundle, "sections": {**sections, "fraud": {"fraud.profiles": []}}}
    bundle_file.write_text(json.dumps(tampered))
    refused = _lastro("gdpr", "verify", str(bundle_file))
    assert refused.returncode == 1 and "fraud: sha256" in refused.stderr
    tampered["manifest"] = {**bundle["manifest"], "user_id": "usr_somebody_else"}
    tampered["sections"] = sections
    bundle_file.write_text(json.dumps(tampered))
    refused = _lastro("gdpr", "verify", str(bundle_file))
    assert refused.returncode == 1 and "KMS does not confirm" in refused.stderr

    erased = _lastro("gdpr", "erase", customer_id, "--reason", "data subject request (art. 17)")
    assert erased.returncode == 0, erased.stdout + erased.stderr
    certificate = json.loads(erased.stdout)
    assert certificate["status"] == "complete"
    assert sorted(certificate["completed_services"]) == sorted(PRIVACY_SERVICES)
    assert certificate["services"]["accounts"]["erased"]["accounts.customers"] == 1
    assert certificate["services"]["identity"]["erased"]["identity.login_names"] == 1
    assert certificate["services"]["identity"]["erased"]["identity.totp_secrets"] == 1
    assert certificate["services"]["fraud"]["erased"]["fraud.profiles"] == 1
    assert certificate["services"]["transactions"]["erased"] == {
        "transactions.transactions": 0,
        "transactions.payout_destinations": 1,
        "transactions.card_fingerprints": 0,
        "transactions.request_context": 2,
    }
    assert certificate["reason"] == "data subject request (art. 17)"
    shown = _lastro("gdpr", "certificate", certificate["id"])
    assert shown.returncode == 0 and json.loads(shown.stdout) == certificate
    assert await _signed_by_kms(settings, certificate)

    again = _lastro("gdpr", "export", customer_id, "--out", str(bundle_file))
    assert again.returncode == 0, again.stderr
    after = json.loads(bundle_file.read_text())["sections"]
    (customer,) = after["accounts"]["accounts.customers"]
    assert customer["status"] == "erased" and customer["email"] is None
    assert after["identity"]["identity.users"][0]["login_name"] is None
    assert after["identity"]["identity.sessions"] == []
    assert after["fraud"]["fraud.profiles"] == []
    assert all(s["request"] is None for s in after["fraud"]["fraud.screenings"])
    assert all(d["address"] is None for d in after["notifications"]["notifications.deliveries"])
    assert after["notifications"]["notifications.preferences"] == []
    kept = after["transactions"]
    assert len(kept["transactions.transactions"]) == 2  # financial records stay
    assert [(d["holder_name"], d["iban"]) for d in kept["transactions.payout_destinations"]] == [
        (None, None)
    ]
    assert kept["transactions.request_context"] == []
    assert person["email"] not in bundle_file.read_text()

    assert await _rows_mentioning(settings, needles) == []
    assert await _kafka_mentioning(settings, [n.encode() for n in needles]) == []
    assert _logs_mentioning(settings, needles) == []

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=client_context(settings.ca_file))
    ) as http:
        accounts = Api(http, settings.service_url("accounts"))
        balance_after = await accounts.call(
            "GET",
            f"/v1/accounts/{person['account_id']}/balance",
            token=person["payments"],
            expect=200,
        )
    assert {k: balance_after[k] for k in ("posted", "pending", "available")} == {
        k: balance_before[k] for k in ("posted", "pending", "available")
    }
    ledger = _lastro("accounts", "verify")
    assert ledger.returncode == 0, ledger.stdout
    chains = _lastro("audit", "verify", "--all")
    assert chains.returncode == 0, chains.stdout + chains.stderr


async def test_erasure_with_a_service_down_is_partial_and_a_retry_completes_it(
    settings: Settings,
) -> None:
    """The fan-out meets a notifications service it cannot reach (a closed port): the
    certificate is stored ``partial`` with the others erased; `lastro gdpr retry`
    (through the running account service) asks notifications only and completes it."""
    connector = aiohttp.TCPConnector(ssl=client_context(settings.ca_file))
    async with aiohttp.ClientSession(connector=connector) as http:
        identity = Api(http, settings.service_url("identity"))
        accounts = Api(http, settings.service_url("accounts"))
        run = secrets.token_hex(4)
        admin = await operator_token(identity, settings)
        wallet = await identity.call(
            "POST",
            "/v1/clients",
            token=admin,
            expect=201,
            json={
                "name": f"wallet-retry-{run}",
                "confidential": False,
                "grant_types": ["authorization_code"],
                "scopes": ["accounts:read", "accounts:write"],
                "audiences": ["accounts"],
                "redirect_uris": [REDIRECT_URI],
            },
        )
        password = secrets.token_urlsafe(16)
        username = f"retry-{run}"
        await identity.call(
            "POST", "/v1/users", expect=201, json={"username": username, "password": password}
        )
        token = await sign_in(
            identity, wallet["client_id"], username, password, "accounts:read accounts:write"
        )
        customer = await accounts.call(
            "POST",
            "/v1/customers",
            token=token,
            expect=201,
            json={
                "name": f"Rui Retry {run}",
                "email": f"rui.{run}@example.com",
                "document_number": f"RT-{run}",
            },
        )

    unreachable = replace(
        settings,
        service_urls={**settings.service_urls, "notifications": "https://127.0.0.1:9"},
    )
    transit = TransitClient.from_settings(settings)
    engine = create_engine(settings, pool_size=2, max_overflow=0, name="privacy-retry-test")
    client = PrivacyClient(unreachable, lambda: privacy_credentials(settings), retries=1)
    try:
        signer = await EventSigner.from_transit(transit, settings.events_key_name)
        ledger = Ledger(engine, signer, await transit.local_hmac_key(settings.audit_key_name))
        index = await BlindIndex.from_transit(transit)
        customers = Customers(engine, ledger, SubjectKeys(transit, PII_KEY), index)
        requests = SubjectRequests(
            engine,
            ledger,
            customers,
            transit,
            client,
            registry.privacy_services(),
            local=Privacy(engine, ledger, customers),
            key_name=settings.privacy_key_name,
        )
        partial = await requests.erase(
            customer["id"], "data subject request (art. 17)", Caller("test:privacy-retry")
        )
        await ledger.aclose()
    finally:
        await client.close()
        await engine.dispose()
        await transit.close()
    assert partial["status"] == "partial"
    assert partial["completed_services"] == sorted(set(PRIVACY_SERVICES) - {"notifications"})
    failed = partial["services"]["notifications"]
    assert failed["status"] == "failed" and "unreachable" in failed["error"]
    assert failed["attempts"] == 1

    shown = _lastro("gdpr", "certificate", partial["id"])
    assert json.loads(shown.stdout)["status"] == "partial"
    retried = _lastro("gdpr", "retry", partial["id"])
    assert retried.returncode == 0, retried.stdout + retried.stderr
    complete = json.loads(retried.stdout)
    assert complete["status"] == "complete"
    assert complete["completed_services"] == sorted(PRIVACY_SERVICES)
    assert complete["services"]["notifications"]["attempts"] == 2
    for name in set(PRIVACY_SERVICES) - {"notifications"}:
        assert complete["services"][name] == partial["services"][name], name
    assert await _signed_by_kms(settings, complete)
