"""Every service's migrations replay from an empty schema to exactly its metadata.

Generic over the registry: each registered service package with a ``migrations/``
folder is covered (a service that lands later is covered by being registered).
Its ``store`` module names the folder (``MIGRATIONS``) and the tables the code
expects (``schema_metadata(schema)``). The test upgrades a fresh schema one
revision at a time, compares the result with the metadata (alembic's
``compare_metadata``: tables, columns, types, nullability, indexes, unique and
foreign keys: no difference allowed), then downgrades one revision at a time to
an empty schema and upgrades again.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from schemas import unique_schema
from sqlalchemy import MetaData, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core import registry
from lastro.core.db import ALEMBIC_DIR, downgrade, migrate


def _packages() -> list[str]:
    """Service packages (``lastro.accounts``) that exist and keep migrations."""
    found: list[str] = []
    for spec in registry.SERVICES:
        package = spec.module.rsplit(".", 1)[0]
        if package in found or importlib.util.find_spec(package) is None:
            continue
        module = importlib.import_module(package)
        if any((Path(p) / "migrations").is_dir() for p in module.__path__):
            found.append(package)
    return found


PACKAGES = _packages()


def test_the_two_existing_services_are_found() -> None:
    assert {"lastro.accounts", "lastro.identity"} <= set(PACKAGES)


def _store(package: str) -> ModuleType:
    return importlib.import_module(f"{package}.store")


def _revisions(versions: Path) -> list[Any]:
    """Revisions from base to head (one linear history)."""
    script = ScriptDirectory(str(ALEMBIC_DIR), version_locations=[str(versions)])
    assert len(script.get_heads()) == 1, "one head: no branches"
    return list(reversed(list(script.walk_revisions())))


@pytest.mark.parametrize("package", PACKAGES)
def test_revision_ids_follow_one_style(package: str) -> None:
    service = package.rsplit(".", 1)[1]
    versions = _store(package).MIGRATIONS
    for number, revision in enumerate(_revisions(versions), start=1):
        assert revision.revision == f"{service}_{number:04d}"
        assert Path(revision.path).name.startswith(f"{number:04d}_")


def _differences(conn: Connection, schema: str, metadata: MetaData) -> list[Any]:
    def include_name(name: str | None, type_: str, parent: Any) -> bool:
        return name == schema if type_ == "schema" else name != "alembic_version"

    context = MigrationContext.configure(
        conn,
        opts={
            "include_schemas": True,
            "include_name": include_name,
            "compare_type": True,
        },
    )
    return list(compare_metadata(context, metadata))


def _tables(conn: Connection, schema: str) -> set[str]:
    return set(inspect(conn).get_table_names(schema=schema)) - {"alembic_version"}


@pytest.mark.parametrize("package", PACKAGES)
async def test_migrations_replay_one_by_one_to_the_metadata_and_back(
    engine: AsyncEngine, package: str
) -> None:
    store = _store(package)
    revisions = _revisions(store.MIGRATIONS)
    schema = unique_schema(f"migrations_{package.rsplit('.', 1)[1]}")
    try:
        for revision in revisions:
            await migrate(engine, schema, store.MIGRATIONS, target="+1")
            async with engine.connect() as conn:
                current = await conn.exec_driver_sql(
                    f'SELECT version_num FROM "{schema}".alembic_version'
                )
                assert current.scalar_one() == revision.revision
        async with engine.connect() as conn:
            differences = await conn.run_sync(_differences, schema, store.schema_metadata(schema))
        assert differences == [], "\n".join(map(str, differences))

        for _ in revisions:
            await downgrade(engine, schema, store.MIGRATIONS, "-1")
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables, schema) == set()
            functions = await conn.exec_driver_sql(
                "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                f" WHERE n.nspname = '{schema}'"
            )
            assert functions.scalar_one() == 0, "downgrades drop their functions too"

        await migrate(engine, schema, store.MIGRATIONS)
        async with engine.connect() as conn:
            differences = await conn.run_sync(_differences, schema, store.schema_metadata(schema))
        assert differences == []
    finally:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_revision_files_name_no_metadata_of_today() -> None:
    """A revision holds its own DDL: it never builds from the code's current tables."""
    for package in PACKAGES:
        for path in sorted(_store(package).MIGRATIONS.glob("*.py")):
            text = path.read_text()
            assert not re.search(r"create_all|drop_all|\.store\b", text), path
