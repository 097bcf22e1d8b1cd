"""Request-body schemas are validated with their references resolved once, at load."""

from __future__ import annotations

from typing import Any

from lastro.core.openapi import ApiContract, Operation, field_errors


def _contract(schemas: dict[str, Any], body: dict[str, Any]) -> Operation:
    document = {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1"},
        "components": {"schemas": schemas},
        "paths": {
            "/v1/things": {
                "post": {
                    "security": [],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": body}},
                    },
                    "responses": {"201": {"description": "created"}},
                }
            }
        },
    }
    return ApiContract(document).operations[("POST", "/v1/things")]


def _errors(operation: Operation, body: Any) -> list[dict[str, str]]:
    assert operation.body is not None
    return field_errors(operation.body.iter_errors(body))


AMOUNT = {"type": "integer"}
TRANSFER = {
    "type": "object",
    "additionalProperties": False,
    "required": ["amount"],
    "properties": {"amount": {"$ref": "#/components/schemas/Amount", "minimum": 1}},
}


def test_reference_with_sibling_keywords_enforces_both() -> None:
    op = _contract(
        {"Amount": AMOUNT, "Transfer": TRANSFER}, {"$ref": "#/components/schemas/Transfer"}
    )
    assert _errors(op, {"amount": 5}) == []
    assert _errors(op, {"amount": 0}) == [{"field": "amount", "detail": "must be >= 1"}]
    assert _errors(op, {"amount": "5"}) == [
        {"field": "amount", "detail": "must be of type integer"}
    ]
    assert _errors(op, {"amount": 5, "extra": 1}) == [
        {"field": "extra", "detail": "is not allowed"}
    ]


def test_recursive_schema_is_validated_at_any_depth() -> None:
    node = {
        "type": "object",
        "required": ["value"],
        "properties": {
            "value": {"type": "integer"},
            "children": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}},
        },
    }
    op = _contract({"Node": node}, {"$ref": "#/components/schemas/Node"})
    deep = {"value": 1, "children": [{"value": 2, "children": [{"value": "x"}, {}]}]}
    assert _errors(op, deep) == [
        {"field": "children[0].children[0].value", "detail": "must be of type integer"},
        {"field": "children[0].children[1].value", "detail": "is required"},
    ]
    assert _errors(op, {"value": 1, "children": [{"value": 2, "children": []}]}) == []


def test_schema_with_its_own_identifier_is_still_enforced() -> None:
    money = {
        "$id": "urn:example:money",
        "type": "object",
        "required": ["currency"],
        "properties": {"currency": {"type": "string", "pattern": "^[A-Z]{3}$"}},
    }
    op = _contract({"Money": money}, {"$ref": "#/components/schemas/Money"})
    assert _errors(op, {"currency": "USD"}) == []
    assert _errors(op, {"currency": "usd"}) == [
        {"field": "currency", "detail": "must match the pattern ^[A-Z]{3}$"}
    ]
