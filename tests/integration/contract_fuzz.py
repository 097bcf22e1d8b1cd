"""Property-based contract checks with schemathesis, for apps served in-process.

:func:`fuzz_operation` drives one OpenAPI operation with schemathesis-generated
requests (valid ones, and invalid ones that must be refused) and checks every
response against the contract. The app under test is served by the test's event
loop, so the synchronous schemathesis/requests calls run in a worker thread
(:func:`run_fuzz`) while the loop keeps serving.

Runs are bounded and reproducible: a fixed number of examples per operation and
mode, ``derandomize=True`` (the same inputs on every run) and no example database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.schemas import APIOperation, BaseSchema

from lastro.core.openapi import ApiContract
from lastro.core.problems import PROBLEM_CONTENT_TYPE

EXAMPLES_PER_MODE = 30
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# Invalid input must be refused (4xx), on top of the contract checks.
NEGATIVE_CHECKS = [*CHECKS, negative_data_rejection]
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES_PER_MODE,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# Rewrites a generated valid case (for example to point ids at seeded resources).
Steer = Callable[[st.DataObject, Case], None]


def load_contract(path: Path) -> BaseSchema:
    """The contract as the service serves it (``/openapi.json``): the ``openapi.yaml``
    with the platform answers and generated enums of ``core/openapi.py``."""
    return schemathesis.openapi.from_dict(ApiContract.load(path).document)


def operation_labels(contract: BaseSchema) -> list[str]:
    """``"METHOD /path"`` of every operation, for test parametrisation."""
    return [result.ok().label for result in contract.get_all_operations()]


@dataclass
class Target:
    """Where and as whom to send the generated requests."""

    base_url: str
    ca_file: Path
    headers: dict[str, str] = field(default_factory=dict)
    path_ids: Sequence[str] = ()
    steer: Steer | None = None


def _cases(operation: APIOperation, mode: GenerationMode, ids: Sequence[str]) -> Any:
    """Generated cases; valid ones address seeded resources as often as random ids."""
    generated = operation.as_strategy(mode)
    if mode is GenerationMode.NEGATIVE or not ids or "{id}" not in operation.path:
        return generated
    seeded = [operation.as_strategy(mode, path_parameters={"id": i}) for i in ids]
    return st.one_of(generated, *seeded)


@dataclass
class Fuzzed:
    """The statuses the generated valid and invalid requests got."""

    valid: list[int] = field(default_factory=list)
    invalid: list[int] = field(default_factory=list)

    def succeeded(self, success: Sequence[int] = range(200, 300)) -> bool:
        """Whether some valid request was carried out (a 2xx unless ``success`` says
        otherwise, e.g. the authorization endpoint's redirect)."""
        return any(status in success for status in self.valid)


def fuzz_operation(contract: BaseSchema, label: str, target: Target) -> Fuzzed:
    """Send valid and invalid generated requests for ``label``; every response must
    conform to the contract and invalid requests must be refused. Returns the
    statuses seen, so a caller can assert valid requests were carried out."""
    operation = contract.find_operation_by_label(label)
    assert operation is not None, label
    fuzzed = Fuzzed()
    # OAuth endpoints answer errors in the RFC 6749 format, not problem+json.
    oauth = operation.path.startswith("/oauth/")
    session = requests.Session()

    def exercise(case: Case, checks: list[Any], statuses: list[int]) -> None:
        response = case.call(
            base_url=target.base_url,
            session=session,
            headers=target.headers,
            verify=str(target.ca_file),
        )
        statuses.append(response.status_code)
        content_type = (response.headers.get("content-type") or [""])[0]
        if response.status_code >= 400 and not oauth:
            assert content_type.startswith(PROBLEM_CONTENT_TYPE), (
                f"{label}: {response.status_code} error is not problem+json: {response.text}"
            )
        case.validate_response(response, checks=checks, headers=target.headers)

    @FUZZ_SETTINGS
    @given(case=_cases(operation, GenerationMode.POSITIVE, target.path_ids), data=st.data())
    def valid_requests(case: Case, data: st.DataObject) -> None:
        if target.steer is not None:
            target.steer(data, case)
        exercise(case, CHECKS, fuzzed.valid)

    @FUZZ_SETTINGS
    @given(case=_cases(operation, GenerationMode.NEGATIVE, ()))
    def invalid_requests(case: Case) -> None:
        exercise(case, NEGATIVE_CHECKS, fuzzed.invalid)

    try:
        valid_requests()
        if _has_inputs(operation):
            invalid_requests()
    finally:
        session.close()
    return fuzzed


def _has_inputs(operation: APIOperation) -> bool:
    """Whether there is anything to make invalid (parameters or a body)."""
    return bool(len(operation.path_parameters) or len(operation.query) or len(operation.body))


async def run_fuzz(contract: BaseSchema, label: str, target: Target) -> Fuzzed:
    """:func:`fuzz_operation` in a worker thread, so this loop keeps serving the app."""
    return await asyncio.to_thread(fuzz_operation, contract, label, target)
