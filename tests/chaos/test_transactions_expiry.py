"""Nobody answers: a fraud challenge the customer never confirms, and a review the
fraud service never resolves, each end by the configured policy (short timeouts here)
and release the money they held."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from transactions_kit import (
    PATIENT_SCREENING,
    FraudService,
    Platform,
    Processes,
    TxApi,
    drop_schemas,
)

from lastro.core.config import Settings

REVIEW, CHALLENGE = 7_001, 7_002


@pytest.fixture(scope="module")
def fraud(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FraudService]:
    service = FraudService(settings, tmp_path_factory.mktemp("fraud"))
    yield service
    service.close()


@pytest.fixture(scope="module")
async def processes(
    settings: Settings, fraud: FraudService, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Processes]:
    procs = Processes(
        settings,
        tmp_path_factory.mktemp("transactions"),
        LASTRO_TRANSACTIONS_FRAUD_URL=fraud.url,
        **PATIENT_SCREENING,
        LASTRO_TRANSACTIONS_CHALLENGE_TIMEOUT="2",
        LASTRO_TRANSACTIONS_REVIEW_TIMEOUT="2",
    )
    fraud.start(procs.base)
    procs.start_api()
    procs.start_worker()
    yield procs
    procs.close()
    fraud.stop()
    await drop_schemas(settings, procs.schema, fraud.schema)


@pytest.fixture(scope="module")
async def platform(settings: Settings) -> AsyncIterator[Platform]:
    async with Platform.open(settings) as p:
        yield p


async def test_an_unconfirmed_challenge_and_an_unresolved_review_expire_and_release_money(
    processes: Processes, platform: Platform, fraud: FraudService
) -> None:
    await fraud.script(platform, {REVIEW: "review", CHALLENGE: "challenge"})
    api = TxApi(platform, processes.base)
    ana = await platform.party("ana", {"EUR": 50_000})
    bruno = await platform.party("bruno")
    challenged = await api.post(
        "/v1/transfers",
        ana.token,
        api.transfer(ana.accounts["EUR"], bruno.accounts["EUR"], CHALLENGE),
        wait=10,
    )
    held = await api.post(
        "/v1/transfers",
        ana.token,
        api.transfer(ana.accounts["EUR"], bruno.accounts["EUR"], REVIEW),
        wait=10,
    )
    assert (challenged.body["status"], held.body["status"]) == ("challenged", "in_review")
    assert (await platform.balance(ana.accounts["EUR"]))["pending"] == REVIEW

    expired = await api.settle(
        f"/v1/transfers/{challenged.body['id']}", ana.token, until={"declined"}, within=60
    )
    assert expired["reason"] == "challenge_expired"
    voided = await api.settle(
        f"/v1/transfers/{held.body['id']}", ana.token, until={"declined"}, within=90
    )
    assert voided["reason"] == "review_expired"
    assert await platform.balance(ana.accounts["EUR"]) == {
        "posted": 50_000,
        "pending": 0,
        "available": 50_000,
    }
    assert (await platform.balance(bruno.accounts["EUR"]))["posted"] == 0
