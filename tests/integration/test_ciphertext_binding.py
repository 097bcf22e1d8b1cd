"""``core.security.binding.bind_rows`` and ``TransitClient.bind`` against real
PostgreSQL and the KMS: older ciphertexts are re-sealed bound to their row, a row the
KMS refuses stays as it was, an unreachable KMS ends the pass, and a row changed by
someone else meanwhile is not overwritten."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest
from schemas import unique_schema
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lastro.core.db import read
from lastro.core.security.binding import bind_rows
from lastro.core.security.transit import TransitClient, TransitError, TransitUnavailable

KEY = "tests-binding"


@pytest.fixture
async def table(engine: AsyncEngine, transit: TransitClient) -> AsyncIterator[str]:
    await transit.ensure_key(KEY)
    schema = unique_schema("binding")
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        await conn.exec_driver_sql(
            f'CREATE TABLE "{schema}".sealed (id text PRIMARY KEY, ciphertext text NOT NULL,'
            " bound boolean NOT NULL DEFAULT false)"
        )
    yield f'"{schema}".sealed'
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


def aad(row_id: str) -> bytes:
    return f"sealed:{row_id}".encode()


async def test_older_rows_are_bound_refused_ones_kept_and_an_outage_stops_the_pass(
    engine: AsyncEngine, transit: TransitClient, table: str
) -> None:
    clear = {f"row_{n}": secrets.token_hex(8) for n in range(5)}
    sealed = {row: await transit.encrypt(KEY, value.encode()) for row, value in clear.items()}
    sealed["row_1"] = sealed["row_1"][:-6] + "AAAAA="  # tampered: the KMS refuses it
    async with engine.begin() as conn:
        for row, ciphertext in sealed.items():
            await conn.execute(
                text(f"INSERT INTO {table} (id, ciphertext) VALUES (:id, :c)"),
                {"id": row, "c": ciphertext},
            )
    changed_meanwhile = "row_2"

    async def reseal(row: tuple[str, str]) -> str:
        row_id, ciphertext = row
        if row_id == "row_3":
            raise TransitUnavailable("the KMS did not answer")
        if row_id == changed_meanwhile:  # another writer replaces the row first
            async with engine.begin() as conn:
                await conn.execute(
                    text(f"UPDATE {table} SET ciphertext = 'new' WHERE id = :id"), {"id": row_id}
                )
        return await transit.bind(KEY, ciphertext, aad(row_id))

    async def swap(conn: AsyncConnection, row: tuple[str, str], bound: str) -> bool:
        result = await conn.execute(
            text(
                f"UPDATE {table} SET ciphertext = :bound, bound = true"
                " WHERE id = :id AND ciphertext = :was AND NOT bound"
            ),
            {"bound": bound, "id": row[0], "was": row[1]},
        )
        return bool(result.rowcount)

    async def unbound(conn: AsyncConnection) -> list[tuple[str, str]]:
        rows = await conn.execute(
            text(f"SELECT id, ciphertext FROM {table} WHERE NOT bound ORDER BY id")
        )
        return [(row.id, row.ciphertext) for row in rows]

    older = await read(engine, unbound)
    done = await bind_rows(engine, older, reseal=reseal, swap=swap, name=lambda row: row[0])
    assert done == 1  # row_0; row_1 refused, row_2 changed, row_3 ended the pass, row_4 not reached

    stored = dict(await read(engine, unbound))
    assert sorted(stored) == ["row_1", "row_2", "row_3", "row_4"]
    assert stored["row_2"] == "new"
    async with engine.connect() as conn:
        (row_0,) = (
            await conn.execute(text(f"SELECT ciphertext FROM {table} WHERE id = 'row_0'"))
        ).one()
    assert (
        await transit.decrypt(KEY, row_0, associated_data=aad("row_0")) == clear["row_0"].encode()
    )
    with pytest.raises(TransitError):
        await transit.decrypt(KEY, row_0)  # bound: it no longer opens without its row
    with pytest.raises(TransitError):
        await transit.decrypt(KEY, row_0, associated_data=aad("row_4"))
