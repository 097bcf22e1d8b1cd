"""accounts' contact lookup for the notification service: owner, e-mail and phone
only, to a service token with ``customers:contact``; 410 once erased."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from accounts_app import AccountsApi, running_accounts
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.config import Settings

PROBLEM = "https://lastro.dev/problems/"


@pytest.fixture(scope="module")
async def svc(settings: Settings, engine: AsyncEngine) -> AsyncIterator[AccountsApi]:
    async with running_accounts(settings, engine, "accounts_contact") as api:
        yield api


def notifications(svc: AccountsApi) -> dict[str, str]:
    return svc.bearer("customers:contact", "svc_notifications", client_id="svc_notifications")


async def test_the_contact_names_owner_email_and_phone_and_nothing_else(svc: AccountsApi) -> None:
    owner, tag = f"usr_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:8]
    created = await svc.call(
        "POST",
        "/v1/customers",
        svc.customer(owner),
        expect=201,
        json={
            "name": "Dora",
            "email": f"{tag}@example.com",
            "phone": "+351 912 345 678",
            "document_number": tag,
            "address": {"line1": "Rua A", "city": "Lisboa", "postal_code": "1000", "country": "PT"},
        },
    )
    path = f"/internal/v1/customers/{created['id']}/contact"
    contact = await svc.call(
        "GET", path, notifications(svc), expect=200, template="/internal/v1/customers/{id}/contact"
    )
    assert contact == {
        "object": "customer_contact",
        "customer_id": created["id"],
        "owner": owner,
        "email": f"{tag}@example.com",
        "phone": "+351 912 345 678",
    }
    for scopes in ("accounts:read accounts:write", "ledger:write", "accounts:admin"):
        refused = await svc.call("GET", path, svc.bearer(scopes, owner), expect=403)
        assert refused["type"] == PROBLEM + "insufficient-scope"

    await svc.call("DELETE", f"/v1/customers/{created['id']}", svc.customer(owner), expect=200)
    erased = await svc.call("GET", path, notifications(svc), expect=410)
    assert erased["type"] == PROBLEM + "customer-erased"
    unknown = await svc.call(
        "GET", "/internal/v1/customers/cus_nobody/contact", notifications(svc), expect=404
    )
    assert unknown["type"] == PROBLEM + "unknown-customer"
