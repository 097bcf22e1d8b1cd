"""Every service's contract says what the platform answers on each of its routes.

Walks the served form (``ApiContract.load``: the ``openapi.yaml`` completed by
``core/openapi.py``) of every service contract in the package: each operation that
needs a token documents 401 and 403, every operation documents 429 and 503, and each
of those is a problem+json answer (the OAuth and login-form routes of identity
document their own formats, which are kept).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

import lastro
from lastro.core import money, registry
from lastro.core.openapi import ApiContract, needs_token
from lastro.core.problems import PROBLEM_CONTENT_TYPE

PACKAGE = Path(lastro.__file__).parent
CONTRACTS = sorted(PACKAGE.glob("*/openapi.yaml"))


def _resolve(document: Mapping[str, Any], node: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in node:
        target: Any = document
        for token in node["$ref"].removeprefix("#/").split("/"):
            target = target[token]
        node = target
    return node


def test_every_api_service_in_the_registry_has_a_contract_here() -> None:
    served = {path.parent.name for path in CONTRACTS}
    assert {"identity", "accounts", "fraud", "notifications"} <= served
    packaged = {p.name for p in PACKAGE.iterdir() if (p / "app.py").exists()}
    apis = {s.name for s in registry.SERVICES if s.kind == "api" and s.name in packaged}
    assert apis <= served


@pytest.mark.parametrize("path", CONTRACTS, ids=lambda p: p.parent.name)
def test_each_route_documents_the_answers_the_platform_can_give(path: Path) -> None:
    contract = ApiContract.load(path)
    document = contract.document
    for (method, route), _ in contract.operations.items():
        operation = document["paths"][route][method.lower()]
        expected = {"429", "503"} | ({"401", "403"} if needs_token(document, operation) else set())
        missing = expected - operation["responses"].keys()
        assert not missing, f"{path.parent.name} {method} {route} lacks {sorted(missing)}"
        for status in expected:
            answer = _resolve(document, operation["responses"][status])
            content = answer.get("content", {})
            assert PROBLEM_CONTENT_TYPE in content or route.startswith("/oauth/"), (
                f"{path.parent.name} {method} {route} {status} is not problem+json"
            )


def test_the_yaml_source_is_not_changed_by_loading() -> None:
    path = PACKAGE / "accounts" / "openapi.yaml"
    source = yaml.safe_load(path.read_text())
    ApiContract.load(path)
    assert source == yaml.safe_load(path.read_text())
    assert "enum" not in source["components"]["schemas"]["Currency"]


def test_currencies_are_the_iso_4217_codes_money_supports() -> None:
    document = ApiContract.load(PACKAGE / "accounts" / "openapi.yaml").document
    assert document["components"]["schemas"]["Currency"]["enum"] == sorted(money.CURRENCIES)


def test_client_scopes_are_the_scopes_the_registered_services_accept() -> None:
    document = yaml.safe_load((PACKAGE / "identity" / "openapi.yaml").read_text())
    scopes = document["components"]["schemas"]["NewClient"]["properties"]["scopes"]
    assert sorted(scopes["items"]["enum"]) == sorted(registry.scopes())
