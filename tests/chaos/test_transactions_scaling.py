"""Two worker processes share the command partitions and the load; one stopped
mid-load hands its partitions over, and nothing is lost or done twice."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator

import pytest
from transactions_kit import (
    PATIENT_SCREENING,
    EventTap,
    FraudService,
    Party,
    Platform,
    Processes,
    TxApi,
    drop_schemas,
)

from lastro.core.config import Settings
from lastro.core.events import EventSigner
from lastro.core.security.transit import TransitClient

PAYERS = 24
PER_PAYER = 10


@pytest.fixture(scope="module")
def fraud(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FraudService]:
    service = FraudService(settings, tmp_path_factory.mktemp("fraud"))
    yield service
    service.close()


@pytest.fixture
async def processes(
    settings: Settings, fraud: FraudService, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Processes]:
    procs = Processes(
        settings,
        tmp_path_factory.mktemp("transactions"),
        LASTRO_TRANSACTIONS_FRAUD_URL=fraud.url,
        **PATIENT_SCREENING,
        LASTRO_RATE_LIMIT_PER_MINUTE="100000",
    )
    fraud.start(procs.base)
    procs.start_api()
    yield procs
    procs.close()
    fraud.stop()
    await drop_schemas(settings, procs.schema, fraud.schema)


@pytest.fixture(scope="module")
async def platform(settings: Settings) -> AsyncIterator[Platform]:
    async with Platform.open(settings) as p:
        yield p


@pytest.fixture
async def tap(settings: Settings) -> AsyncIterator[EventTap]:
    transit = TransitClient.from_settings(settings)
    events = EventTap(settings, await EventSigner.from_transit(transit, settings.events_key_name))
    await events.start()
    yield events
    await events.stop()
    await transit.close()


async def load(api: TxApi, payers: list[Party], payee: Party) -> list[str]:
    """PER_PAYER transfers from each payer, the payers concurrently."""

    async def one_payer(payer: Party) -> list[str]:
        ids = []
        for n in range(PER_PAYER):
            body = api.transfer(payer.accounts["EUR"], payee.accounts["EUR"], 1 + n)
            reply = await api.post("/v1/transfers", payer.token, body)
            assert reply.status == 202, reply.body
            ids.append(reply.body["id"])
        return ids

    batches = await asyncio.gather(*(one_payer(p) for p in payers))
    return [txn_id for batch in batches for txn_id in batch]


async def all_posted(api: TxApi, payers: list[Party], expected: int) -> None:
    """Wait until each payer's history shows ``expected`` transfers, all posted."""
    for payer in payers:
        path = f"/v1/transactions?limit=100&account_id={payer.accounts['EUR']}"
        while True:
            page = await api.get(path, payer.token)
            assert page.status == 200, page.body
            statuses = [t["status"] for t in page.body["data"]]
            if statuses == ["posted"] * expected:
                break
            await asyncio.sleep(0.5)


async def test_two_workers_both_get_partitions_and_both_process_commands(
    processes: Processes, platform: Platform
) -> None:
    processes.start_worker("one")
    processes.start_worker("two")
    api = TxApi(platform, processes.base)
    payers = [await platform.party(f"payer{i}", {"EUR": 1_000}) for i in range(PAYERS)]
    payee = await platform.party("payee")
    await load(api, payers, payee)
    async with asyncio.timeout(120):
        await all_posted(api, payers, PER_PAYER)
    group = f'consumer="workers-{processes.schema}"'
    handled = {name: processes.metric(name, f"lastro_events_applied_total.*{group}")
               for name in ("one", "two")}  # fmt: skip
    assert all(count > 0 for count in handled.values()), handled
    assert sum(handled.values()) >= PAYERS * PER_PAYER
    expected = sum(range(1, PER_PAYER + 1)) * PAYERS
    assert (await platform.balance(payee.accounts["EUR"]))["posted"] == expected


async def test_a_worker_stopped_mid_load_hands_over_and_nothing_is_lost_or_doubled(
    processes: Processes, platform: Platform, tap: EventTap
) -> None:
    processes.start_worker("one")
    processes.start_worker("two")
    api = TxApi(platform, processes.base)
    payers = [await platform.party(f"payer{i}", {"EUR": 1_000}) for i in range(PAYERS)]
    payee = await platform.party("payee")
    submitting = asyncio.create_task(load(api, payers, payee))
    await tap.wait_for(lambda events: sum(e["event"].endswith(".posted") for e in events) >= PAYERS)
    await asyncio.to_thread(processes.stop, "one", signal.SIGTERM)  # graceful: hands over
    ids = await submitting
    async with asyncio.timeout(180):
        await all_posted(api, payers, PER_PAYER)
    expected = sum(range(1, PER_PAYER + 1)) * PAYERS
    assert (await platform.balance(payee.accounts["EUR"]))["posted"] == expected
    entries = await platform.account_entries(payee.accounts["EUR"])
    assert len(entries) == PAYERS * PER_PAYER  # one credit per transfer, none twice
    await tap.wait_for(
        lambda _: all(
            any(e["event"] == "lastro.transaction.posted" for e in tap.about(i)) for i in ids
        ),
        within=60,
    )
    for txn_id in ids:
        posted = {e["event_id"] for e in tap.about(txn_id) if e["event"].endswith(".posted")}
        assert len(posted) == 1, txn_id
