"""Every read, screening, alert and privacy operation of the fraud contract, fuzzed
with schemathesis.

The fraud app runs in-process over HTTPS on a throwaway schema and Redis prefix,
with a token from the running identity service carrying every fraud scope; a
seeded alert and rule are addressed as often as random ids. Every
answer must be documented, schema-conformant, problem+json on error, never a 5xx;
every invalid request refused with a 4xx.

``PUT`` and ``DELETE /v1/rules/{id}`` are left out on purpose: a valid generated
rule would be published to the shared, compacted ``lastro.fraud.rules`` log, which
every fraud process of the stack reads (a generated ``true`` in ``enforce`` mode
would decline every payment). Their refusals are tested one by one in
``test_fraud_screening.py``.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from contract_fuzz import Target, load_contract, operation_labels, run_fuzz
from fraud_stack import (
    StackIdentity,
    drop_schema,
    https_session,
    require_services,
    running_fraud,
    transaction,
    transactions_stand_in,
)
from schemas import unique_schema
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.config import Settings
from lastro.fraud import app as fraud_app

CONTRACT = load_contract(fraud_app.OPENAPI)
EVERY_SCOPE = ["fraud:read", "fraud:admin", "fraud:screen", "privacy:admin"]
PUBLISHES_RULES = {"PUT /v1/rules/{id}", "DELETE /v1/rules/{id}"}
RUN = secrets.token_hex(3)


@dataclasses.dataclass
class Seeded:
    target: Target
    ids: dict[str, list[str]]


@pytest.fixture(scope="module")
async def seeded(settings: Settings, engine: AsyncEngine) -> AsyncIterator[Seeded]:
    require_services(settings, "identity")
    relaxed = dataclasses.replace(settings, rate_limit_per_minute=1_000_000)
    schema = unique_schema("fraud_contract")
    async with https_session(settings) as http:
        identity = await StackIdentity.connect(settings, http)
        client = await identity.client("fuzz", EVERY_SCOPE, ["fraud"])
        headers = await client.bearer(" ".join(EVERY_SCOPE))
        with transactions_stand_in(settings) as stand_in:
            async with running_fraud(
                relaxed,
                engine,
                http,
                schema=schema,
                prefix=f"lastro:fraud-test:{RUN}",
                transactions_url=stand_in,
            ) as (api, _):
                customer, account = f"cus_{RUN}_fuzz", f"acc_{RUN}_fuzz"
                rule_id = f"t{RUN}-fuzz-review"
                rule = {
                    "expression": f'txn.customer_id == "{customer}"',
                    "action": "review",
                    "mode": "enforce",
                }
                await api.call("PUT", f"/v1/rules/{rule_id}", headers, json=rule, expect=200)
                body = transaction(customer, account)
                await api.screen(headers, body)
                listed = await api.call(
                    "GET", f"/v1/alerts?customer_id={customer}", headers, expect=200
                )
                ids = {
                    "/v1/alerts/": [listed["data"][0]["id"]],
                    "/v1/rules/": [rule_id],
                }
                target = Target(base_url=api.base, ca_file=settings.ca_file, headers=headers)
                try:
                    yield Seeded(target, ids)
                finally:
                    await api.call("DELETE", f"/v1/rules/{rule_id}", headers, expect=204)
    await drop_schema(engine, schema)


def _path_ids(ids: dict[str, list[str]], label: str) -> list[str]:
    path = label.split(" ", 1)[1]
    return next((pool for prefix, pool in ids.items() if path.startswith(prefix)), [])


@pytest.mark.parametrize(
    "label", [label for label in operation_labels(CONTRACT) if label not in PUBLISHES_RULES]
)
async def test_fraud_operation_honours_its_contract(label: str, seeded: Seeded) -> None:
    target = dataclasses.replace(seeded.target, path_ids=_path_ids(seeded.ids, label))
    statuses = await run_fuzz(CONTRACT, label, target)
    assert statuses, f"{label}: nothing was sent"


def test_only_the_rule_publishing_operations_are_left_out() -> None:
    labels: Any = set(operation_labels(CONTRACT))
    assert labels >= PUBLISHES_RULES
