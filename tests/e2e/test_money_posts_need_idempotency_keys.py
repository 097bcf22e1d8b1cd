"""Every POST that moves money, in every API service's contract, refuses a request
without ``Idempotency-Key`` (shared/DESIGN.md), as the running service enforces it.

Walks each API service of ``core/registry.py`` whose package is present, reads its
``openapi.yaml`` and classifies a POST as money-moving when it is marked
``x-idempotent`` or ``x-moves-money``, when its request body carries an
``amount``, or when it is a money verb on a named resource (``/{id}/capture``,
``/void``, ``/refunds``, ``/reverse``, ``/post``, ``/confirm``). Then, with a real
token holding every scope the service accepts:

* a public or money-moving operation marked ``x-idempotent`` must answer 400
  ``idempotency-key-missing`` to a request without the header;
* an operation idempotent on a body field instead (``x-idempotent-on: <field>``, a
  partner's callback; or the ledger's service-to-service ``/internal`` routes, keyed
  by the caller's ``external_id``) must require that field, and a request without
  it must be refused before anything is done;
* the ledger's service-to-service transitions of a named hold or posting
  (``/internal/v1/holds/{id}/post|void``, ``/internal/v1/postings/{id}/reverse``)
  are idempotent on that resource: done twice without a key, the second is refused
  or replays the first, and the money moves once.

No other kind of money-moving POST is allowed: the test fails naming it. (The ledger
exceptions are the account service's contract today; shared/DESIGN.md's
rule read literally would have them require ``Idempotency-Key`` too.)
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from transactions_kit import Platform

from lastro.core import registry
from lastro.core.config import Settings
from lastro.devstack.components import Service, available_services

PROBLEM = "https://lastro.dev/problems/"


def contract_of(spec: registry.ServiceSpec) -> dict[str, Any]:
    found = importlib.util.find_spec(spec.module)
    assert found is not None and found.origin is not None
    path = Path(found.origin).parent / "openapi.yaml"
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def resolve(document: dict[str, Any], node: Any, seen: frozenset[str] = frozenset()) -> Any:
    """``node`` with local ``$ref``s replaced (recursion cut at the first repeat)."""
    if isinstance(node, list):
        return [resolve(document, item, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref not in seen:
        target: Any = document
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        return resolve(document, target, seen | {ref})
    return {k: resolve(document, v, seen) for k, v in node.items() if k != "$ref"}


MONEY_VERBS = frozenset(
    {"post", "void", "reverse", "capture", "refunds", "confirm", "review-outcome"}
)


def mentions_amount(schema: Any) -> bool:
    if isinstance(schema, dict):
        if "amount" in (schema.get("properties") or {}):
            return True
        return any(mentions_amount(v) for v in schema.values())
    if isinstance(schema, list):
        return any(mentions_amount(v) for v in schema)
    return False


def body_schema(document: dict[str, Any], operation: dict[str, Any]) -> dict[str, Any]:
    body = resolve(document, operation.get("requestBody") or {})
    content = body.get("content", {}).get("application/json", {})
    return dict(content.get("schema") or {})


def money_posts() -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(service, path, operation, its resolved body schema) for every money-moving POST."""
    found = []
    present = set(available_services())
    for spec in registry.SERVICES:
        if spec.kind != "api" or spec.name not in present:
            continue
        document = contract_of(spec)
        for path, item in (document.get("paths") or {}).items():
            operation = item.get("post")
            if operation is None:
                continue
            schema = body_schema(document, operation)
            marked = operation.get("x-idempotent") or operation.get("x-moves-money")
            *_, parent, verb = path.rstrip("/").split("/")
            acts_on_money = parent.startswith("{") and verb in MONEY_VERBS
            if marked or mentions_amount(schema) or acts_on_money:
                found.append((spec.name, path, operation, schema))
    return found


MONEY_POSTS = money_posts()


def test_the_walk_finds_the_money_routes_of_every_present_service() -> None:
    routes = {(service, path) for service, path, _, _ in MONEY_POSTS}
    assert ("accounts", "/internal/v1/postings") in routes
    assert ("transactions", "/v1/transfers") in routes
    assert ("transactions", "/v1/payments/{id}/refunds") in routes
    assert ("transactions", "/v1/payments/{id}/void") in routes  # no amount, but marked


@pytest.fixture(scope="module")
async def platform(settings: Settings) -> AsyncIterator[Platform]:
    async with Platform.open(settings) as p:
        yield p


@pytest.fixture(scope="module")
async def tokens(platform: Platform) -> dict[str, str]:
    """A real token per service, with every scope the service accepts."""
    issued = {}
    for service in {s for s, _, _, _ in MONEY_POSTS}:
        spec = registry.service(service)
        assert spec.audience is not None
        client = await platform.register(f"walker-{service}", sorted(spec.scopes), [spec.audience])
        issued[service] = await platform.client_token(
            client["client_id"], client["client_secret"], None, [spec.audience]
        )
    return issued


@pytest.mark.parametrize(
    ("service", "path", "operation", "schema"),
    MONEY_POSTS,
    ids=[f"{service}:{path}" for service, path, _, _ in MONEY_POSTS],
)
async def test_a_money_moving_post_without_an_idempotency_key_is_refused(
    settings: Settings,
    platform: Platform,
    tokens: dict[str, str],
    service: str,
    path: str,
    operation: dict[str, Any],
    schema: dict[str, Any],
) -> None:
    assert Service(settings, service).healthy(), f"{service} is not running: `lastro dev up`"
    url = settings.service_url(service) + re.sub(
        r"\{[^}]+\}", "txn_01M8NC0000000000000000000", path
    )
    required = set(schema.get("required", ()))
    if operation.get("x-idempotent"):
        reply = await platform.call("POST", url, tokens[service], json={})
        assert reply.status == 400, (path, reply.status, reply.body)
        assert reply.body["type"] == PROBLEM + "idempotency-key-missing"
        return
    if path in RESOURCE_TRANSITIONS:
        await twice_moves_money_once(settings, platform, path)
        return
    handle = operation.get("x-idempotent-on") or (
        "external_id" if path.startswith("/internal/") else None
    )
    assert handle is not None, (
        f"{service} {path} moves money but neither requires Idempotency-Key "
        "(x-idempotent) nor names the body field it is idempotent on"
    )
    assert handle in required, f"{service} {path} is idempotent on {handle}, which is optional"
    reply = await platform.call("POST", url, tokens[service], json={})
    assert reply.status in (400, 422), (path, reply.status, reply.body)
    fields = {e["field"] for e in reply.body.get("errors", [])}
    assert handle in fields, reply.body


RESOURCE_TRANSITIONS = frozenset(
    {
        "/internal/v1/holds/{id}/post",
        "/internal/v1/holds/{id}/void",
        "/internal/v1/postings/{id}/reverse",
    }
)


async def twice_moves_money_once(settings: Settings, platform: Platform, path: str) -> None:
    """Do the ledger transition ``path`` twice on a real hold or posting, without a key."""
    accounts = settings.service_url("accounts")
    payer = await platform.party("payer", {"EUR": 1_000})
    payee = await platform.party("payee")
    leg = {"amount": 300, "currency": "EUR"}
    if "/holds/" in path:
        created = await platform.call(
            "POST",
            f"{accounts}/internal/v1/holds",
            platform.funder,
            json={
                "external_id": f"walker-{payer.customer_id}",
                "account_id": payer.accounts["EUR"],
                "counterparty_id": payee.accounts["EUR"],
                "expires_at": "2099-01-01T00:00:00+00:00",
                **leg,
            },
        )
    else:
        created = await platform.call(
            "POST",
            f"{accounts}/internal/v1/postings",
            platform.funder,
            json={
                "external_id": f"walker-{payer.customer_id}",
                "entries": [
                    {"account_id": payer.accounts["EUR"], "direction": "debit", **leg},
                    {"account_id": payee.accounts["EUR"], "direction": "credit", **leg},
                ],
            },
        )
    assert created.status == 201, created.body
    url = accounts + path.replace("{id}", created.body["id"])
    first = await platform.call("POST", url, platform.funder, json={})
    second = await platform.call("POST", url, platform.funder, json={})
    assert first.status in (200, 201), first.body
    replayed = second.status == 200 and second.body["id"] == first.body["id"]
    assert second.status == 409 or replayed, second.body
    expected = 300 if path.endswith("/post") else 0
    assert (await platform.balance(payee.accounts["EUR"]))["posted"] == expected
    assert (await platform.balance(payer.accounts["EUR"]))["posted"] == 1_000 - expected
