"""Tables and queries of the transaction service (``tables``, ``rows``, ``queries``).

Only this package speaks SQL; the use cases pass their open transaction in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.db import migrate

MIGRATIONS: Final = Path(__file__).parent.parent / "migrations"


async def migrate_transactions(engine: AsyncEngine, schema: str) -> None:
    """Bring ``schema`` to the newest revision (replicas serialise on a lock)."""
    await migrate(engine, schema, MIGRATIONS)


def schema_metadata(schema: str) -> MetaData:
    """The tables as they stand in ``schema`` (what its migrations must build)."""
    from lastro.transactions.store.tables import tables

    return tables(schema).metadata
