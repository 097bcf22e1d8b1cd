"""Every operation of the transaction service's contract, fuzzed with schemathesis
against its real processes (real tokens, the real account service and ledger).

Valid generated requests (path ids steered at a real transfer, payment, batch and
quote as often as at random ones) and invalid ones: no 5xx, a documented status,
the documented content type, headers and body schema, problem+json for every error,
and every invalid request refused with a 4xx. The ledger is verified at the end: no
generated request left it inconsistent.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from transactions_kit import (
    CUSTOMER_SCOPES,
    FraudService,
    Platform,
    Processes,
    TxApi,
    transaction_processes,
)

from lastro.core.config import Settings
from lastro.transactions.app import OPENAPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from contract_fuzz import Target, load_contract, operation_labels, run_fuzz

CONTRACT = load_contract(OPENAPI)
SCOPES = [*CUSTOMER_SCOPES, "transactions:admin", "transactions:review"]


@pytest.fixture(scope="module")
def fraud(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FraudService]:
    service = FraudService(settings, tmp_path_factory.mktemp("fraud"))
    yield service
    service.close()


@pytest.fixture(scope="module")
async def processes(
    settings: Settings, fraud: FraudService, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Processes]:
    workdir = tmp_path_factory.mktemp("transactions")
    rate = {"LASTRO_RATE_LIMIT_PER_MINUTE": "1000000"}
    async with transaction_processes(settings, fraud, workdir, **rate) as procs:
        yield procs


@pytest.fixture(scope="module")
async def target(settings: Settings, processes: Processes) -> AsyncIterator[Target]:
    """A party whose token carries every scope of the contract, with a transfer, a
    card payment, a batch and a quote to aim at."""
    async with Platform.open(settings) as platform:
        client = await platform.register("fuzzer", SCOPES, ["accounts", "transactions"])
        token = await platform.client_token(
            client["client_id"], client["client_secret"], None, ["accounts", "transactions"]
        )
        party = await platform.customer("fuzzer", token, {"EUR": 10_000_000})
        other = await platform.party("other")
        api = TxApi(platform, processes.base)
        transfer = await api.post(
            "/v1/transfers", token, api.transfer(party.accounts["EUR"], other.accounts["EUR"], 100)
        )
        card = await platform.call(
            "POST",
            f"{settings.service_url('acquirer')}/v1/tokens",
            settings.partner_api_keys["acquirer"],
            json={"number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123"},
        )
        assert card.status == 201, card.body
        payment = await api.post(
            "/v1/payments",
            token,
            {"destination_account_id": party.accounts["EUR"], "amount": 5_000, "currency": "EUR",
             "card": {"token": card.body["token"]}, "capture_method": "manual"},
        )  # fmt: skip
        batch = await api.post(
            "/v1/transfer-batches",
            token,
            {"source_account_id": party.accounts["EUR"],
             "transfers": [{"destination_account_id": other.accounts["EUR"], "amount": 1,
                            "currency": "EUR"}]},
        )  # fmt: skip
        quote = await api.post(
            "/v1/fx/quotes",
            token,
            {"sell_currency": "EUR", "buy_currency": "USD", "sell_amount": 1_000},
            key=None,
        )
        ids = [transfer.body["id"], payment.body["id"], batch.body["id"], quote.body["id"]]
        assert all(ids), ids
        yield Target(
            base_url=processes.base,
            ca_file=settings.ca_file,
            headers={"Authorization": f"Bearer {token}"},
            path_ids=ids,
        )


@pytest.mark.parametrize("label", operation_labels(CONTRACT))
async def test_every_operation_answers_as_its_contract_says(target: Target, label: str) -> None:
    fuzzed = await run_fuzz(CONTRACT, label, target)
    statuses = [*fuzzed.valid, *fuzzed.invalid]
    assert statuses, label
    assert all(status < 500 for status in statuses), (label, sorted(set(statuses)))


def test_no_fuzzed_request_left_the_ledger_inconsistent(settings: Settings) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lastro.cli", "accounts", "verify"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
