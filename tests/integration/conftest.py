"""Integration fixtures: real PostgreSQL, Redis, Kafka and KMS from `lastro dev up`.

Each test module that needs tables gets its own throwaway schema, so runs never
see each other's rows; the stack itself is started once, by `make test`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.config import Settings
from lastro.core.db import create_engine
from lastro.core.events import EventSigner
from lastro.core.security.transit import TransitClient
from lastro.devstack.components import components


@pytest.fixture(scope="session", autouse=True)
def stack_is_up(settings: Settings) -> None:
    down = [c.name for c in components(settings, services=False) if not c.healthy()]
    if down:
        pytest.exit(f"dev stack not healthy ({', '.join(down)}): run `lastro dev up`", 2)


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(settings, pool_size=20, max_overflow=40, name="lastro-tests")
    yield eng
    await eng.dispose()


@pytest.fixture(scope="session")
async def transit(settings: Settings) -> AsyncIterator[TransitClient]:
    client = TransitClient.from_settings(settings)
    yield client
    await client.close()


@pytest.fixture(scope="session")
async def signer(transit: TransitClient) -> EventSigner:
    return await EventSigner.from_transit(transit, "lastro-events")
