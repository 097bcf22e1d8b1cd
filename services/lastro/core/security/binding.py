"""Binding older ciphertexts to their rows, once, when a service starts.

A service that starts sealing a column with Transit associated data (the row's id,
so a ciphertext copied into another row does not open there) still holds the rows
it sealed before. :func:`bind_rows` re-seals them one row at a time. Identity's
signing keys and TOTP seeds and notifications' webhook secrets all use it.

Guarantees: each row is swapped in its own transaction by ``swap``, which must write
only if the row is still unbound and unchanged, so replicas starting together split
the work and a row edited meanwhile is left for the next start. A row the KMS refuses
(tampered, another key, below ``min_decryption_version``) is logged and stays
readable as it was. If the KMS cannot be reached the pass stops there: the rows left
stay unbound and readable until the next start.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lastro.core.db import in_transaction
from lastro.core.security.transit import TransitError, TransitUnavailable

log = logging.getLogger(__name__)

Row = TypeVar("Row")
Sealed = TypeVar("Sealed")


async def bind_rows(
    engine: AsyncEngine,
    rows: Iterable[Row] | AsyncIterable[Row],
    *,
    reseal: Callable[[Row], Awaitable[Sealed]],
    swap: Callable[[AsyncConnection, Row, Sealed], Awaitable[bool]],
    name: Callable[[Row], str],
) -> int:
    """Re-seal each of ``rows`` (``reseal``) and write it back (``swap``); how many
    rows this process bound. ``name`` says which row a warning is about."""
    bound = 0
    async for row in _each(rows):
        try:
            sealed = await reseal(row)
        except TransitUnavailable as error:
            log.warning("the KMS is unavailable, older ciphertexts stay unbound: %s", error)
            break
        except TransitError as error:
            log.warning("%s left unbound: %s", name(row), error)
            continue

        async def write(conn: AsyncConnection, row: Row = row, sealed: Sealed = sealed) -> bool:
            return await swap(conn, row, sealed)

        bound += await in_transaction(engine, write)
    return bound


async def _each(rows: Iterable[Row] | AsyncIterable[Row]) -> AsyncIterator[Row]:
    if isinstance(rows, AsyncIterable):
        async for row in rows:
            yield row
    else:
        for row in rows:
            yield row
