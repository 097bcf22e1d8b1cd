"""The fast body check (code fastjsonschema generates) accepts exactly what the
Draft 2020-12 validator accepts, for every request body of every service contract:
on bodies schemathesis generates from the contract (valid ones and invalid ones), and
on those bodies with single values swapped for the look-alikes where JSON Schema and
Python disagree (true for 1, 1.0 for 1, null, empty text, huge numbers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastjsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from lastro.core.openapi import ApiContract, Operation
from lastro.core.schema_check import fast_check

SERVICES = Path(__file__).resolve().parents[2] / "services" / "lastro"
CONTRACTS = sorted(SERVICES.glob("**/openapi.yaml"))
LOOKALIKES: list[Any] = [True, False, 0, 1, 1.0, 2.5, -1, None, "", "1", 10**30, [], {}]
EXAMPLES = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _bodies() -> list[Any]:
    cases = []
    for path in CONTRACTS:
        contract = ApiContract.load(path)
        schema = schemathesis.openapi.from_dict(contract.document)
        for (method, route), operation in contract.operations.items():
            if operation.body_check is not None:
                label = f"{path.parent.name} {method} {route}"
                cases.append(pytest.param(schema, operation, method, route, id=label))
    return cases


def _valid(operation: Operation, body: Any) -> bool:
    assert operation.body is not None
    return not any(True for _ in operation.body.iter_errors(body))


def _fast(operation: Operation, body: Any) -> bool:
    assert operation.body_check is not None
    try:
        operation.body_check(body)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [path] + [p for k, v in value.items() for p in _leaves(v, (*path, k))]
    if isinstance(value, list):
        return [path] + [p for i, v in enumerate(value) for p in _leaves(v, (*path, i))]
    return [path]


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    copy = list(value)
    copy[head] = _replace(copy[head], rest, new)
    return copy


@pytest.mark.parametrize(("schema", "operation", "method", "route"), _bodies())
def test_the_fast_check_agrees_with_the_draft_2020_12_validator(
    schema: Any, operation: Operation, method: str, route: str
) -> None:
    api_operation = schema[route][method]

    @EXAMPLES
    @given(data=st.data())
    def agree(data: st.DataObject) -> None:
        mode = data.draw(st.sampled_from([GenerationMode.POSITIVE, GenerationMode.NEGATIVE]))
        case = data.draw(api_operation.as_strategy(mode))
        body = case.body
        if not isinstance(body, (dict, list, str, int, float, bool)) and body is not None:
            return  # not a JSON value (a negative case may send other media)
        variants = [body]
        paths = _leaves(body)
        for _ in range(4):
            where = data.draw(st.sampled_from(paths))
            variants.append(_replace(body, where, data.draw(st.sampled_from(LOOKALIKES))))
        for variant in variants:
            assert _fast(operation, variant) == _valid(operation, variant), variant

    agree()


def test_only_bodies_with_keywords_that_differ_between_drafts_fall_back() -> None:
    """Every other body takes the fast path; these use ``uniqueItems`` or non-text
    ``enum``/``const`` and are validated by jsonschema alone."""
    slow = {
        (path.parent.name, *key)
        for path in CONTRACTS
        for key, operation in ApiContract.load(path).operations.items()
        if operation.body is not None and operation.body_check is None
    }
    assert slow == {
        ("identity", "POST", "/v1/clients"),
        ("notifications", "POST", "/v1/webhook-endpoints"),
        ("notifications", "PATCH", "/v1/webhook-endpoints/{id}"),
        ("notifications", "PUT", "/v1/preferences"),
    }


def test_hot_bodies_take_the_fast_path() -> None:
    """The money path's bodies are the ones that must not fall back to jsonschema."""
    hot = {
        "accounts": ("POST", "/internal/v1/postings"),
        "fraud": ("POST", "/internal/v1/screenings"),
        "transactions": ("POST", "/v1/transfers"),
    }
    for service, key in hot.items():
        contract = ApiContract.load(SERVICES / service / "openapi.yaml")
        assert contract.operations[key].body_check is not None, service


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
        {"enum": [1, 2]},
        {"const": False},
        {"prefixItems": [{"type": "string"}]},
        {"$ref": "#/$defs/x", "$defs": {"x": {"type": "string"}}},
        {"type": "object", "unevaluatedProperties": False},
    ],
)
def test_keywords_that_differ_between_drafts_are_left_to_jsonschema(schema: Any) -> None:
    assert fast_check(schema) is None


def test_formats_are_jsonschemas_not_fastjsonschemas() -> None:
    check = fast_check({"type": "string", "format": "date-time"})
    assert check is not None
    check("2026-11-30T12:00:00Z")
    with pytest.raises(fastjsonschema.JsonSchemaValueException, match="date-time"):
        check("30/11/2026")
    unknown = fast_check({"type": "string", "format": "iso4217"})
    assert unknown is not None
    unknown("anything")  # a format jsonschema does not know is an annotation
