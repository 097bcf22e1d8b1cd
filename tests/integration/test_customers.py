"""Customers' personal data through the HTTP API: sealed at rest, owner-only, erasable.

The database is read as an attacker with a backup would: a real ``pg_dump`` of the
service's schema must never hold personal data in clear, and after the product's
erasure (``DELETE /v1/customers/{id}``) nothing in it opens the sealed fields.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from accounts_app import AccountsApi, running_accounts
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.accounts.customers import TABLE
from lastro.accounts.store import SEALED_COLUMNS, verify_ledger
from lastro.core.config import Settings
from lastro.core.security.fields import FieldCipher, FieldDecryptionError, SubjectKeys
from lastro.core.security.transit import TransitClient


@pytest.fixture(scope="module")
async def svc(settings: Settings, engine: AsyncEngine) -> AsyncIterator[AccountsApi]:
    async with running_accounts(settings, engine, "customers_api") as api:
        yield api


def maria(tag: str) -> dict[str, Any]:
    return {
        "name": "Maria Aparecida da Silva",
        "email": f"Maria.Silva.{tag}@Example.com",
        "phone": "+55 11 91234-5678",
        "document_number": f"123.456.{tag[:3]}-09",
        "address": {
            "line1": "Rua Augusta 1500",
            "city": "Sao Paulo",
            "postal_code": "01304-001",
            "country": "BR",
        },
    }


def tag() -> str:
    return f"{random.getrandbits(48):012x}"


def clear_forms(person: dict[str, Any]) -> list[str]:
    """The personal values (and their words) that must never appear in the database."""
    values = [v for k, v in person.items() if isinstance(v, str)]
    values += [v for v in person.get("address", {}).values() if len(v) > 2]
    words = [w for v in values for w in v.replace("@", " ").replace(".", " ").split()]
    return [v.lower() for v in values + [w for w in words if len(w) >= 5]]


PG_DUMP = "/usr/lib/postgresql/15/bin/pg_dump"


async def schema_dump(settings: Settings, schema: str) -> str:
    """``pg_dump`` of the schema (every row, as a backup holds it), lower-cased."""
    dump = await asyncio.create_subprocess_exec(
        PG_DUMP,
        "--data-only",
        f"--schema={schema}",
        f"--host={settings.pg_host}",
        f"--port={settings.pg_port}",
        f"--username={settings.pg_user}",
        f"--dbname={settings.pg_database}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={
            **os.environ,
            "PGPASSWORD": settings.pg_password,
            "PGSSLMODE": "verify-full",
            "PGSSLROOTCERT": str(settings.ca_file),
        },
    )
    out, err = await dump.communicate()
    assert dump.returncode == 0, err.decode()
    text_dump = out.decode()
    assert f"COPY {schema}.customers" in text_dump, "the dump holds the customers table"
    return text_dump.lower()


async def create(svc: AccountsApi, subject: str, person: dict[str, Any]) -> dict[str, Any]:
    return await svc.call(
        "POST",
        "/v1/customers",
        svc.customer(subject),
        expect=201,
        template="/v1/customers",
        json=person,
    )


async def row(engine: AsyncEngine, svc: AccountsApi, customer_id: str) -> Any:
    table = svc.customers.table
    async with engine.connect() as conn:
        return (await conn.execute(select(table).where(table.c.id == customer_id))).one()


async def test_customer_is_sealed_at_rest_and_read_back_by_its_owner(
    svc: AccountsApi, engine: AsyncEngine, transit: TransitClient, settings: Settings
) -> None:
    person = maria(tag())
    created = await create(svc, "usr_cus_owner", person)
    assert {k: created[k] for k in person} == person
    assert created["id"].startswith("cus_") and created["status"] == "active"
    read = await svc.call(
        "GET",
        f"/v1/customers/{created['id']}",
        svc.customer("usr_cus_owner"),
        expect=200,
        template="/v1/customers/{id}",
    )
    assert read == created
    stored = await row(engine, svc, created["id"])
    assert stored.data_key.startswith("vault:v")
    for column in SEALED_COLUMNS:
        assert getattr(stored, column).startswith("lf1:")
    dump = await schema_dump(settings, svc.schema)
    assert created["id"].lower() in dump and stored.email_bi in dump
    for form in clear_forms(person):
        assert form not in dump, f"{form!r} stored in clear"
    # A token moved to another column does not open, even with the right key.
    cipher = await SubjectKeys(transit).cipher(stored.data_key)
    with pytest.raises(FieldDecryptionError):
        cipher.open(stored.name, table=TABLE, column="email", row_id=created["id"])


async def test_email_is_unique_however_it_is_written(svc: AccountsApi) -> None:
    person = maria(tag())
    await create(svc, "usr_cus_dup1", person)
    twin = {**maria(tag()), "email": f"  {person['email'].upper()} "}
    twin["email"] = twin["email"].strip()
    document = await svc.call(
        "POST", "/v1/customers", svc.customer("usr_cus_dup2"), expect=409, json=twin
    )
    assert document["type"].endswith("/email-taken")


async def test_contact_data_changes_and_the_email_index_follows(svc: AccountsApi) -> None:
    person = maria(tag())
    created = await create(svc, "usr_cus_patch", person)
    headers = svc.customer("usr_cus_patch")
    new_email = f"new.{tag()}@example.org"
    updated = await svc.call(
        "PATCH",
        f"/v1/customers/{created['id']}",
        headers,
        expect=200,
        template="/v1/customers/{id}",
        json={"email": new_email, "phone": None},
    )
    assert (updated["email"], updated["phone"], updated["name"]) == (
        new_email,
        None,
        person["name"],
    )
    assert await svc.customers.find_by_email(new_email.upper()) == [created["id"]]
    assert await svc.customers.find_by_email(person["email"]) == []
    for bad in ({}, {"document_number": "999"}, {"phone": "12"}, {"email": None}):
        await svc.call("PATCH", f"/v1/customers/{created['id']}", headers, expect=422, json=bad)
    again = await svc.call("GET", f"/v1/customers/{created['id']}", headers, expect=200)
    assert again == updated


async def test_erasure_crypto_shreds_personal_data_and_keeps_the_ledger(
    svc: AccountsApi, engine: AsyncEngine, transit: TransitClient, settings: Settings
) -> None:
    person = maria(tag())
    owner = svc.customer("usr_cus_erase")
    customer = await create(svc, "usr_cus_erase", person)
    account = await svc.call(
        "POST",
        "/v1/accounts",
        owner,
        expect=201,
        json={"customer_id": customer["id"], "currency": "BRL"},
    )
    settlement = await svc.call(
        "POST",
        "/internal/v1/accounts",
        svc.service(),
        expect=201,
        json={"currency": "BRL", "purpose": "settlement"},
    )
    await svc.call(
        "POST",
        "/internal/v1/postings",
        svc.service(),
        expect=201,
        json={
            "external_id": f"txn_{tag()}",
            "entries": [
                {
                    "account_id": settlement["id"],
                    "direction": "debit",
                    "amount": 4200,
                    "currency": "BRL",
                },
                {
                    "account_id": account["id"],
                    "direction": "credit",
                    "amount": 4200,
                    "currency": "BRL",
                },
            ],
        },
    )
    export = await svc.call(
        "GET",
        f"/v1/customers/{customer['id']}/export",
        owner,
        expect=200,
        template="/v1/customers/{id}/export",
    )
    assert export["customer"] == customer
    assert [(a["id"], a["balance"]["posted"]) for a in export["accounts"]] == [
        (account["id"], 4200)
    ]
    before = await row(engine, svc, customer["id"])
    wrapped = before.data_key
    assert await svc.customers.find_by_document(person["document_number"]) == [customer["id"]]

    tombstone = await svc.call(
        "DELETE",
        f"/v1/customers/{customer['id']}",
        owner,
        expect=200,
        template="/v1/customers/{id}",
    )
    assert tombstone["status"] == "erased" and set(tombstone) == {
        "id",
        "object",
        "status",
        "erased_at",
    }
    assert await svc.call("DELETE", f"/v1/customers/{customer['id']}", owner, expect=200) == (
        tombstone
    )

    after = await row(engine, svc, customer["id"])
    assert (after.status, after.data_key, after.email_bi, after.document_bi) == (
        "erased",
        None,
        None,
        None,
    )
    dump = await schema_dump(settings, svc.schema)
    assert customer["id"].lower() in dump and before.name.lower() in dump
    assert wrapped.lower() not in dump, "the wrapped data key survives somewhere"
    for form in clear_forms(person):
        assert form not in dump, f"{form!r} stored in clear"
    # The sealed fields are still there, and no key the service can obtain opens them.
    other = await SubjectKeys(transit).create_subject_key()
    for column in SEALED_COLUMNS:
        token = getattr(after, column)
        if token is None:
            continue
        assert token == getattr(before, column)
        with pytest.raises(FieldDecryptionError):
            FieldCipher(other.plaintext).open(
                token, table=TABLE, column=column, row_id=customer["id"]
            )
    assert await svc.customers.find_by_email(person["email"]) == []
    assert await svc.customers.find_by_document(person["document_number"]) == []
    for method, path in (
        ("GET", f"/v1/customers/{customer['id']}"),
        ("GET", f"/v1/customers/{customer['id']}/export"),
    ):
        document = await svc.call(method, path, owner, expect=410)
        assert document["type"].endswith("/customer-erased")
    await svc.call(
        "PATCH", f"/v1/customers/{customer['id']}", owner, expect=410, json={"phone": None}
    )

    # The ledger is intact and the account still belongs to its owner.
    kept = await svc.call("GET", f"/v1/accounts/{account['id']}", owner, expect=200)
    assert kept["balance"]["posted"] == 4200 and kept["customer_id"] == customer["id"]
    async with engine.execution_options(isolation_level="REPEATABLE READ").connect() as conn:
        report = await verify_ledger(conn, svc.ledger.tables)
        events = (
            await conn.execute(
                text(
                    f'SELECT envelope FROM "{svc.schema}".outbox'
                    " WHERE envelope->>'type' = 'lastro.customer.erased'"
                    " AND envelope->>'subject' = :id"
                ),
                {"id": customer["id"]},
            )
        ).all()
        audited = await conn.scalar(
            text(
                f'SELECT count(*) FROM "{svc.schema}".audit_log'
                " WHERE action = 'customer.erased' AND target = :id"
            ),
            {"id": customer["id"]},
        )
    assert report.ok, report
    assert len(events) == 1 and audited == 1

    # The e-mail address is free again for a new customer.
    await create(svc, "usr_cus_erase", person)


async def test_after_erasure_a_key_rotation_rewraps_everyone_but_the_shredded_customer(
    settings: Settings, engine: AsyncEngine, transit: TransitClient
) -> None:
    """The PII key rotates (a throwaway one, so the shared stack's key is left alone)
    after the product erased one customer: the rotation job rewraps every live data
    key, never brings the erased one back, and the others stay readable."""
    pii_key = f"lastro-pii-test-{secrets.token_hex(6)}"
    async with running_accounts(settings, engine, "customers_rotation", pii_key=pii_key) as api:
        owner = api.customer("usr_cus_rotate")
        kept = await create(api, "usr_cus_rotate", maria(tag()))
        gone = await create(api, "usr_cus_rotate", maria(tag()))
        await api.call("DELETE", f"/v1/customers/{gone['id']}", owner, expect=200)
        before = await row(engine, api, kept["id"])

        await transit.rotate(pii_key)
        keys = SubjectKeys(transit, pii_key)
        assert await keys.rewrap_all(engine, api.customers.table, "data_key") == 1

        after = await row(engine, api, kept["id"])
        assert after.data_key != before.data_key and after.data_key.startswith("vault:v2:")
        assert (await row(engine, api, gone["id"])).data_key is None
        read = await api.call("GET", f"/v1/customers/{kept['id']}", owner, expect=200)
        assert read == kept
        await api.call("GET", f"/v1/customers/{gone['id']}", owner, expect=410)
