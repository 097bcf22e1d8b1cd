"""Retention of the audit log: drop the oldest records as a verified prefix of the
chain and anchor it, signed, so the chain stays verifiable (``core/audit.py`` keeps
the tables, the trigger and the verification from the anchor; docs/privacy.md
"Audit records"; docs/decisions/0007-audit-retention-anchor.md)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from lastro.core.audit import (
    GENESIS,
    HEAD_ID,
    PURGE_SETTING,
    AuditChainBroken,
    AuditTables,
    ChainPosition,
    anchor_mac,
    locked_head,
    verify,
)


async def purge_before(
    conn: AsyncConnection,
    tables: AuditTables,
    cutoff: datetime,
    key: bytes,
    *,
    dry_run: bool = False,
    verified: ChainPosition = GENESIS,
) -> int:
    """Delete, in the caller's transaction, the records that start the chain and all
    occurred before ``cutoff``; returns how many (a dry run only counts).

    A prefix, never a hole: the purge stops before the first record at or after the
    cutoff even when later ones are older. Serialised with appends by the head lock;
    refuses (AuditChainBroken) when the head, the anchor or any record fails
    verification, so tampering is never purged away nor re-signed. ``verified`` is a
    position a verification of this chain just found intact (from a snapshot, without
    the lock): only the records after it are walked again under the lock, so appends
    wait for that short walk, not for the whole chain's. The last purged record's seq
    and hash become the chain's signed anchor, written before the records go (the
    trigger lets exactly those through, see the module docstring). Purging what is
    already gone affects 0.
    """
    head = await locked_head(conn, tables, key)
    checked = await verify(conn, tables, key, start=verified)
    if not checked.ok:
        raise AuditChainBroken(
            f"audit chain broken at seq {checked.first_bad_seq}: {checked.reason}; "
            "nothing purged, run `lastro audit verify`"
        )
    log = tables.log
    first_kept = (
        await conn.execute(
            select(func.min(log.c.seq)).where(
                log.c.seq > checked.anchor, log.c.occurred_at >= cutoff
            )
        )
    ).scalar_one()
    through = head.seq if first_kept is None else first_kept - 1
    purged = max(through - checked.anchor, 0)
    if dry_run or purged == 0:
        return purged
    last_hash = (await conn.execute(select(log.c.hash).where(log.c.seq == through))).scalar_one()
    anchor = {
        "seq": through,
        "hash": last_hash,
        "mac": anchor_mac(key, through, last_hash),
        "purged_at": func.now(),
    }
    await conn.execute(
        pg_insert(tables.anchor)
        .values(id=HEAD_ID, **anchor)
        .on_conflict_do_update(index_elements=[tables.anchor.c.id], set_=anchor)
    )
    await conn.execute(select(func.set_config(PURGE_SETTING, str(through), True)))
    deleted = await conn.execute(delete(log).where(log.c.seq <= through))
    await conn.execute(select(func.set_config(PURGE_SETTING, "", True)))
    if deleted.rowcount != purged:
        raise AuditChainBroken(f"purge through seq {through} deleted {deleted.rowcount} records")
    return purged
