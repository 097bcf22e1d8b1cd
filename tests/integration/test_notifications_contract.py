"""Every operation of the notification contract, fuzzed with schemathesis.

The service runs in-process over HTTPS on a throwaway schema with a seeded endpoint,
delivery and customer (accounts in-process); generated requests address them as
often as random ids. Every answer must be documented, schema-conformant,
problem+json on error, never a 5xx; every invalid request refused with a 4xx.
Webhook URLs resolve through the stub resolver only (nothing generated is ever
contacted: random names do not resolve and are refused).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from accounts_app import running_accounts
from contract_fuzz import Target, load_contract, operation_labels, run_fuzz
from hypothesis import strategies as st
from notifications_kit import eventually, running_notifications, webhook_receiver
from schemathesis import Case
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.config import Settings
from lastro.notifications import app as notifications_app

CONTRACT = load_contract(notifications_app.OPENAPI)
EVERY_SCOPE = "notifications:read notifications:write privacy:admin"
RELAXED_PER_MINUTE = 1_000_000


@dataclasses.dataclass
class Seeded:
    target: Target
    ids: dict[str, list[str]]


@pytest.fixture(scope="module")
async def seeded(settings: Settings, engine: AsyncEngine) -> AsyncIterator[Seeded]:
    relaxed = dataclasses.replace(settings, rate_limit_per_minute=RELAXED_PER_MINUTE)
    owner = f"usr_fuzz_{uuid.uuid4().hex[:8]}"
    async with (
        running_accounts(relaxed, engine, "contracts_notif_accounts") as accounts,
        running_notifications(relaxed, engine, "contracts_notif", accounts=accounts) as api,
        webhook_receiver(settings) as receiver,
    ):
        tag = uuid.uuid4().hex[:8]
        customer = await accounts.call(
            "POST",
            "/v1/customers",
            accounts.customer(owner),
            expect=201,
            json={"name": "Fuzz", "email": f"{tag}@example.com", "document_number": tag},
        )
        endpoint, secret = await api.register(owner, receiver.url)
        receiver.secrets.append(secret)
        queued = await api.call(
            "POST", f"/v1/webhook-endpoints/{endpoint['id']}/test", api.bearer(owner), expect=202
        )

        async def delivered() -> bool:
            return (await api.delivery(owner, queued["id"]))["status"] == "delivered"

        await eventually(delivered, 30, "the seeded test delivery")
        token = api.issuer.mint(scope=EVERY_SCOPE, subject=owner, client_id="cli_fuzz")
        target = Target(
            base_url=str(api.client.make_url("")).rstrip("/"),
            ca_file=settings.ca_file,
            headers={"Authorization": f"Bearer {token}"},
        )
        ids = {
            "/v1/webhook-endpoints/": [endpoint["id"]],
            "/v1/deliveries/": [queued["id"]],
            "customer": [customer["id"]],
        }
        yield Seeded(dataclasses.replace(target, steer=_steer(ids)), ids)


def _steer(ids: dict[str, list[str]]) -> Any:
    """Half the time, name the seeded customer, so preferences get past ownership."""

    def steer(data: st.DataObject, case: Case) -> None:
        for holder in (case.body, case.query):
            if isinstance(holder, dict) and "customer_id" in holder and data.draw(st.booleans()):
                holder["customer_id"] = ids["customer"][0]

    return steer


def _path_ids(ids: dict[str, list[str]], label: str) -> list[str]:
    path = label.split(" ", 1)[1]
    return next((pool for prefix, pool in ids.items() if path.startswith(prefix)), [])


@pytest.mark.parametrize("label", operation_labels(CONTRACT))
async def test_notifications_operation_honours_its_contract(label: str, seeded: Seeded) -> None:
    target = dataclasses.replace(seeded.target, path_ids=_path_ids(seeded.ids, label))
    statuses = await run_fuzz(CONTRACT, label, target)
    assert statuses, f"{label}: nothing was sent"
