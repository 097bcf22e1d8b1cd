"""Every API operation of the simulated third parties, fuzzed with schemathesis
against the real processes: valid requests get documented answers that match their
schemas, invalid ones are refused with a 4xx problem, nothing answers 5xx. (The
``/admin`` simulation controls are left out: a generated fault plan would stall the
run; test_external_faults covers them.)"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import schemathesis
import yaml
from contract_fuzz import Steer, Target, operation_labels, run_fuzz
from external_kit import ProviderProcess, running
from hypothesis import strategies as st
from schemathesis import Case
from schemathesis.schemas import BaseSchema

from lastro.external import acquirer, fx, sms
from lastro.external.cards import TEST_DECLINES


def _without_security(path: Path) -> BaseSchema:
    """The contract with its API-key requirement taken out: the fuzzer sends the key
    on every request anyway, so generated "no credentials" cases would be false
    alarms (the key is tested in test_external_fx)."""
    document = yaml.safe_load(path.read_text())
    document.pop("security")
    return schemathesis.openapi.from_dict(document)


CONTRACTS = {"fx": _without_security(fx.OPENAPI), "acquirer": _without_security(acquirer.OPENAPI),
             "sms": _without_security(sms.OPENAPI)}  # fmt: skip
OPERATIONS = [
    (name, label)
    for name, contract in CONTRACTS.items()
    for label in operation_labels(contract)
    if " /v1/" in label
]
ENV = {"LASTRO_ACQUIRER_WEBHOOK_SECRET": "whsec_contracts"}


@dataclasses.dataclass
class Fuzzed:
    provider: ProviderProcess
    ids: dict[str, list[str]]


async def _seed(provider: ProviderProcess) -> dict[str, list[str]]:
    """Resources for generated requests to address: an approved, partly captured
    authorization and its capture; a message."""
    async with provider.session() as http:
        if provider.name == "acquirer":
            card = {"number": "4242424242424242", "exp_month": 1, "cvc": "123",
                    "exp_year": datetime.now(UTC).year + 2}  # fmt: skip
            async with http.post("/v1/tokens", json=card) as r:
                token = (await r.json())["token"]
            body = {"token": token, "amount": 10**9, "currency": "EUR", "reference": "fuzz"}
            key = {"Idempotency-Key": uuid.uuid4().hex}
            async with http.post("/v1/authorizations", json=body, headers=key) as r:
                auth = (await r.json())["id"]
            key = {"Idempotency-Key": uuid.uuid4().hex}
            async with http.post(f"/v1/authorizations/{auth}/captures", json={"amount": 10**8},
                                 headers=key) as r:  # fmt: skip
                capture = (await r.json())["id"]
            return {"/v1/authorizations/": [auth], "/v1/captures/": [capture], "token": [token]}
        if provider.name == "sms":
            key = {"Idempotency-Key": uuid.uuid4().hex}
            async with http.post("/v1/messages", json={"to": "+351910000000", "body": "hi"},
                                 headers=key) as r:  # fmt: skip
                return {"/v1/messages/": [(await r.json())["id"]]}
    return {}


@pytest.fixture(scope="module")
async def providers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Fuzzed]]:
    root: Path = tmp_path_factory.mktemp("contracts")
    async with (
        running("fx", root / "fx", ENV) as fx_process,
        running("acquirer", root / "acquirer", ENV) as acquirer_process,
        running("sms", root / "sms", ENV) as sms_process,
    ):
        yield {
            p.name: Fuzzed(p, await _seed(p)) for p in (fx_process, acquirer_process, sms_process)
        }


def _steer(ids: dict[str, list[str]]) -> Steer:
    """Half the time, make a generated card a real test card, a generated token the
    seeded one and a currency real: requests then get past lookups into the
    provider's own rules."""

    def steer(data: st.DataObject, case: Case) -> None:
        body = case.body
        if not isinstance(body, dict) or not data.draw(st.booleans()):
            return
        if "number" in body:
            body["number"] = data.draw(st.sampled_from(["4242424242424242", *TEST_DECLINES]))
            body["cvc"], body["exp_year"] = "123", datetime.now(UTC).year + 1
        if "token" in body and ids.get("token"):
            body["token"] = ids["token"][0]
        if "currency" in body:
            body["currency"] = data.draw(st.sampled_from(["EUR", "USD", "JPY"]))

    return steer


@pytest.mark.parametrize(("name", "label"), OPERATIONS)
async def test_provider_operation_honours_its_contract(
    providers: dict[str, Fuzzed], name: str, label: str
) -> None:
    fuzzed = providers[name]
    path = label.split(" ", 1)[1]
    ids = next((pool for prefix, pool in fuzzed.ids.items() if path.startswith(prefix)), [])
    target = Target(
        base_url=fuzzed.provider.base,
        ca_file=fuzzed.provider.ca_file,
        headers=fuzzed.provider.headers,
        path_ids=ids,
        steer=_steer(fuzzed.ids),
    )
    sent = await run_fuzz(CONTRACTS[name], label, target)
    assert sent.valid, f"{label}: nothing was sent"
    assert any(s < 400 for s in sent.valid) or "{id}" in path, f"{label}: {sorted(set(sent.valid))}"
