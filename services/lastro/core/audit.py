"""Append-only, hash-chained audit log (who, what, when, from where, outcome).

Each service keeps the log in its own schema: two tables from
:func:`audit_tables`. Record ``n`` stores ``hash_n = sha256(hash_{n-1} ||
canonical_json(record_n with seq n))`` with ``hash_0`` 32 zero bytes, and the
single head row stores the last ``(seq, hash)`` with an HMAC-SHA256 over them
under a key the database never sees.

Guarantees:
- :func:`append` (one record) and :func:`append_many` (several, in order, with
  one head lock and one write) run inside the caller's transaction and serialise
  writers on the head row (``SELECT ... FOR UPDATE``): sequence numbers are
  gap-free and the records commit or roll back together with what they audit;
- :func:`append` refuses (``AuditChainBroken``) to extend a chain whose head
  signature is invalid, so tampering is never re-signed;
- :func:`verify` pinpoints the first edited, deleted, reordered or inserted
  record and detects a truncated tail through the signed head; given a position it
  verified before, it checks only the records after it (and the head);
- given an :class:`AuditStream`, the records of each append are also written, in the
  same transaction, to the service's outbox as one ``lastro.audit.recorded`` event on
  the ``lastro.audit`` topic (every hashed field of each record, plus the hashes), so
  a central store gets every record and can re-check the chain
  (:func:`entries_from_event`) without reading the service's database. One event per
  append, not per record: a group-committed batch of postings appends its records
  together, and an event each cost the ledger 40 % of its throughput
  (docs/benchmarks.md);
- UPDATE, DELETE and TRUNCATE on the log are rejected by triggers created with
  the table (an owner can disable them, which the hash chain still detects);
- retention (``core/audit_retention.purge_before``) deletes the records older than a
  cutoff from the start of the chain only (a prefix, never a hole), after verifying it,
  and stores the last purged record's ``(seq, hash)`` HMAC-signed as the chain's
  anchor (``audit_anchor``, one row) in the same transaction; :func:`verify` starts
  from that anchor and reports a forged anchor or a record left at or before it. The
  trigger lets a DELETE through only for ``seq <=`` the anchor row's seq while the
  transaction-local setting ``lastro.audit_purge_through`` names that same seq
  (docs/decisions/0007-audit-retention-anchor.md: why that narrow path gives the
  application's role nothing it did not have).

Limit: an attacker holding an old, validly signed head row can restore it after
deleting the newer records; anchoring the head outside the database (e.g.
publishing it periodically) closes that gap.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final

from sqlalchemy import (
    DDL,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
    bindparam,
    cast,
    event,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Row
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lastro.core.audit_chain import (
    DENIED,
    FAILURE,
    GENESIS,
    GENESIS_HASH,
    OUTCOMES,
    SUCCESS,
    AuditChainBroken,
    AuditEntry,
    AuditRecord,
    ChainAnchor,
    ChainHead,
    ChainPosition,
    VerifyResult,
    anchor_mac,
    anchored_walker,
    canonical_json,
    chain_hash,
    head_is_authentic,
    head_mac,
    verify_chain,
)
from lastro.core.db import sqlstate
from lastro.core.events import (
    EventSigner,
    OutboxMessage,
    enqueue_parameters,
    enqueue_statement,
    new_event,
)

# What callers use: the store and stream here, the chain from audit_chain.
__all__ = [
    "DENIED",
    "FAILURE",
    "GENESIS",
    "GENESIS_HASH",
    "OUTCOMES",
    "RECORDED_EVENT",
    "STREAM_TOPIC",
    "SUCCESS",
    "AuditChainBroken",
    "AuditEntry",
    "AuditRecord",
    "AuditStream",
    "AuditTables",
    "ChainAnchor",
    "ChainHead",
    "ChainPosition",
    "VerifyResult",
    "anchor_mac",
    "append",
    "append_many",
    "audit_anchor_table",
    "audit_head_table",
    "audit_table",
    "audit_tables",
    "canonical_json",
    "chain_hash",
    "entries_from_event",
    "head_mac",
    "stream_event_data",
    "verify",
    "verify_chain",
    "verify_schema",
]

STREAM_TOPIC: Final = "lastro.audit"
RECORDED_EVENT: Final = "lastro.audit.recorded"
HEAD_ID: Final = 1
_PAGE: Final = 1000
PURGE_SETTING: Final = "lastro.audit_purge_through"
_UNDEFINED_TABLE: Final = "42P01"

# The one trigger function of the log (also in core/migrations.py, frozen there as
# released): UPDATE and TRUNCATE always fail; DELETE only of a record at or before the
# anchor while the transaction says, through PURGE_SETTING, that it is writing that anchor.
# Plain SQL, no input: the anchor table is found in the trigger's own schema.
REJECT_CHANGE_BODY: Final = (
    "RETURNS trigger LANGUAGE plpgsql AS $$ DECLARE anchored bigint; BEGIN "
    "IF TG_OP = 'DELETE' THEN "
    "EXECUTE format('SELECT seq FROM %I.audit_anchor WHERE id = 1', TG_TABLE_SCHEMA) "
    "INTO anchored; "
    "IF anchored IS NOT NULL AND OLD.seq <= anchored "
    "AND current_setting('lastro.audit_purge_through', true) = anchored::text "
    "THEN RETURN OLD; END IF; "
    "END IF; "
    "RAISE EXCEPTION USING ERRCODE = 'restrict_violation', "
    "MESSAGE = 'audit log is append-only: ' || TG_OP || ' rejected'; END $$"
)

# ---------------------------------------------------------------- tables


@dataclass(frozen=True)
class AuditTables:
    log: Table
    head: Table
    anchor: Table


def _ddl(statement: str) -> DDL:
    return DDL(statement)  # type: ignore[no-untyped-call]  # untyped in SQLAlchemy


def audit_table(metadata: MetaData) -> Table:
    """The ``audit_log`` table in ``metadata`` (its schema), with append-only triggers."""
    table = Table(
        "audit_log",
        metadata,
        Column("seq", BigInteger, primary_key=True, autoincrement=False),
        Column("occurred_at", DateTime(timezone=True), nullable=False),
        Column("actor", Text, nullable=False),
        Column("action", Text, nullable=False),
        Column("target", Text, nullable=False),
        Column("outcome", Text, nullable=False),
        Column("source_ip", Text),
        Column("details", JSONB, nullable=False),
        Column("prev_hash", LargeBinary, nullable=False),
        Column("hash", LargeBinary, nullable=False),
        CheckConstraint("seq > 0", name="audit_log_seq_positive"),
        CheckConstraint("octet_length(hash) = 32", name="audit_log_hash_sha256"),
    )
    reject = f"{'%(schema)s.' if table.schema else ''}audit_log_reject_change"
    event.listen(
        table,
        "after_create",
        _ddl(f"CREATE FUNCTION {reject}() " + REJECT_CHANGE_BODY.replace("%", "%%")),
    )
    event.listen(
        table,
        "after_create",
        _ddl(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON %(fullname)s "
            f"FOR EACH ROW EXECUTE FUNCTION {reject}()"
        ),
    )
    event.listen(
        table,
        "after_create",
        _ddl(
            "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON %(fullname)s "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {reject}()"
        ),
    )
    event.listen(table, "after_drop", _ddl(f"DROP FUNCTION IF EXISTS {reject}()"))
    return table


def audit_head_table(metadata: MetaData) -> Table:
    """The one-row ``audit_head`` table: last seq, its hash and their HMAC."""
    return Table(
        "audit_head",
        metadata,
        Column("id", SmallInteger, primary_key=True, autoincrement=False),
        Column("seq", BigInteger, nullable=False),
        Column("hash", LargeBinary, nullable=False),
        Column("mac", LargeBinary, nullable=False),
        CheckConstraint(f"id = {HEAD_ID}", name="audit_head_single_row"),
    )


def audit_anchor_table(metadata: MetaData) -> Table:
    """The ``audit_anchor`` table: at most one row, the last purged record's seq and
    hash with their HMAC (:func:`anchor_mac`) and when the purge ran."""
    return Table(
        "audit_anchor",
        metadata,
        Column("id", SmallInteger, primary_key=True, autoincrement=False),
        Column("seq", BigInteger, nullable=False),
        Column("hash", LargeBinary, nullable=False),
        Column("mac", LargeBinary, nullable=False),
        Column("purged_at", DateTime(timezone=True), nullable=False),
        CheckConstraint(f"id = {HEAD_ID}", name="audit_anchor_single_row"),
        CheckConstraint("seq > 0", name="audit_anchor_seq_positive"),
    )


def audit_tables(metadata: MetaData) -> AuditTables:
    return AuditTables(
        log=audit_table(metadata),
        head=audit_head_table(metadata),
        anchor=audit_anchor_table(metadata),
    )


# ---------------------------------------------------------------- database


def _head_query(tables: AuditTables) -> Any:
    head = tables.head
    return select(head.c.seq, head.c.hash, head.c.mac).where(head.c.id == HEAD_ID)


@lru_cache(maxsize=16)
def _append_statement(tables: AuditTables, outbox: Table | None) -> Any:
    """One statement writing every record (``unnest`` of one array per column), the
    new head and, given the stream's ``outbox``, its rows (``core.events``'
    enqueue statement as a CTE). Built once per tables; SQLAlchemy renders the
    tables' schema, a ``schema_translate_map`` included, as in any other statement."""
    log, head = tables.log, tables.head
    records = (
        func.unnest(*(cast(bindparam(c.name), ARRAY(c.type)) for c in log.c))
        .table_valued(*log.c.keys())
        .render_derived(name="r")
    )
    appended = pg_insert(log).from_select(log.c.keys(), select(records)).cte("appended")
    statement = (
        update(head)
        .where(head.c.id == HEAD_ID)
        .values(seq=bindparam("head_seq"), hash=bindparam("head_hash"), mac=bindparam("head_mac"))
        .add_cte(appended)
    )
    if outbox is not None:
        statement = statement.add_cte(enqueue_statement(outbox).cte("enqueued"))
    return statement


async def locked_head(conn: AsyncConnection, tables: AuditTables, key: bytes) -> ChainHead:
    """Lock the head row (creating the genesis head on first use) and check its MAC."""
    found = (await conn.execute(_head_query(tables).with_for_update())).one_or_none()
    if found is None:
        genesis = {"id": HEAD_ID, "seq": 0, "hash": GENESIS_HASH}
        await conn.execute(
            pg_insert(tables.head)
            .values(**genesis, mac=head_mac(key, 0, GENESIS_HASH))
            .on_conflict_do_nothing(index_elements=[tables.head.c.id])
        )
        found = (await conn.execute(_head_query(tables).with_for_update())).one()
    head = ChainHead(seq=found.seq, hash=found.hash, mac=found.mac)
    if not head_is_authentic(head, key):
        raise AuditChainBroken("audit chain head signature is invalid; run `lastro audit verify`")
    return head


@dataclass(frozen=True)
class AuditStream:
    """Where appended records are streamed: the service's ``outbox`` (same schema, same
    transaction), signed by ``signer``, as events of ``source``; ``chain`` names the log
    (the service's schema) and keys the records, so each chain stays in order."""

    outbox: Table
    signer: EventSigner
    source: str
    chain: str


def stream_event_data(chain: str, entries: Sequence[AuditEntry]) -> dict[str, Any]:
    """The ``lastro.audit.recorded`` payload: the chain and its consecutive ``entries``,
    each with every hashed field, its seq and both hashes."""
    return {"chain": chain, "entries": [_entry_data(entry) for entry in entries]}


def _entry_data(entry: AuditEntry) -> dict[str, Any]:
    record = entry.record
    return {
        "seq": entry.seq,
        "occurred_at": record.occurred_at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": record.actor,
        "action": record.action,
        "target": record.target,
        "outcome": record.outcome,
        "source_ip": record.source_ip,
        "details": dict(record.details),
        "prev_hash": entry.prev_hash.hex(),
        "hash": entry.hash.hex(),
    }


def entries_from_event(data: Mapping[str, Any]) -> list[AuditEntry]:
    """The chain entries a ``lastro.audit.recorded`` event carries, in seq order (a
    central store feeds these to :func:`verify_chain`-style checks); ValueError if
    malformed."""
    try:
        return [_entry_from_data(item) for item in data["entries"]]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not an audit record event: {exc}") from None


def _entry_from_data(data: Mapping[str, Any]) -> AuditEntry:
    record = AuditRecord(
        actor=data["actor"],
        action=data["action"],
        target=data["target"],
        outcome=data["outcome"],
        source_ip=data["source_ip"],
        details=data["details"],
        occurred_at=datetime.fromisoformat(data["occurred_at"]),
    )
    return AuditEntry(
        seq=int(data["seq"]),
        record=record,
        prev_hash=bytes.fromhex(data["prev_hash"]),
        hash=bytes.fromhex(data["hash"]),
    )


async def append(
    conn: AsyncConnection,
    tables: AuditTables,
    record: AuditRecord,
    key: bytes,
    *,
    stream: AuditStream | None = None,
) -> int:
    """Append ``record`` in the caller's transaction; returns its seq.

    Serialised by a row lock on the head (held until the caller commits), so
    concurrent appends never fork the chain. Raises AuditChainBroken if the head's
    signature is invalid. Nothing is visible unless the caller commits. With
    ``stream`` the record's event goes into the outbox in the same transaction.
    """
    (seq,) = await append_many(conn, tables, [record], key, stream=stream)
    return seq


async def append_many(
    conn: AsyncConnection,
    tables: AuditTables,
    records: Sequence[AuditRecord],
    key: bytes,
    *,
    stream: AuditStream | None = None,
    events: Sequence[OutboxMessage] = (),
) -> list[int]:
    """Append ``records`` in order in the caller's transaction; returns their seqs.

    The same guarantees as :func:`append` (one head lock held until the caller
    commits, gap-free seqs, AuditChainBroken on a forged head, nothing visible
    without a commit, the stream's events in the same transaction) at the cost of
    one: the head is locked once, then every record, the new head and the stream's
    event are written by a single statement. ``events`` (the changes the records
    audit, for the stream's outbox) go into the outbox by the same statement, before
    the stream's event: one round trip for a change's event and its audit trail.
    """
    if events and (stream is None or not records):
        raise ValueError("events ride on an append to a stream: pass the stream and records")
    if not records:
        return []
    head = await locked_head(conn, tables, key)
    seqs = list(range(head.seq + 1, head.seq + 1 + len(records)))
    hashes: list[bytes] = []
    prev = head.hash
    for seq, record in zip(seqs, records, strict=True):
        prev = chain_hash(prev, seq, record)
        hashes.append(prev)
    parameters: dict[str, Any] = {
        "seq": seqs,
        "occurred_at": [r.occurred_at for r in records],
        "actor": [r.actor for r in records],
        "action": [r.action for r in records],
        "target": [r.target for r in records],
        "outcome": [r.outcome for r in records],
        "source_ip": [r.source_ip for r in records],
        "details": [json.dumps(r.details, ensure_ascii=False) for r in records],
        "prev_hash": [head.hash, *hashes[:-1]],
        "hash": hashes,
        "head_seq": seqs[-1],
        "head_hash": hashes[-1],
        "head_mac": head_mac(key, seqs[-1], hashes[-1]),
    }
    if stream is not None:
        entries = [
            AuditEntry(seq, record, prev, hash_)
            for seq, record, prev, hash_ in zip(
                seqs, records, [head.hash, *hashes[:-1]], hashes, strict=True
            )
        ]
        recorded = new_event(
            RECORDED_EVENT,
            stream.source,
            stream_event_data(stream.chain, entries),
            subject=f"{stream.chain}/{seqs[0]}-{seqs[-1]}",
        )
        messages = [*events, OutboxMessage(recorded, STREAM_TOPIC, stream.chain)]
        parameters |= enqueue_parameters(conn, stream.outbox, stream.signer, messages)
    outbox = stream.outbox if stream is not None else None
    await conn.execute(_append_statement(tables, outbox), parameters)
    return seqs


def _entry(row: Row[Any]) -> AuditEntry:
    record = AuditRecord(
        actor=row.actor,
        action=row.action,
        target=row.target,
        outcome=row.outcome,
        source_ip=row.source_ip,
        details=row.details,
        occurred_at=row.occurred_at,
    )
    return AuditEntry(seq=row.seq, record=record, prev_hash=row.prev_hash, hash=row.hash)


async def _anchor(conn: AsyncConnection, tables: AuditTables) -> ChainAnchor | None:
    """The chain's signed anchor, if a purge left one. A schema whose migrations
    predate the anchor has no such table: it has never been purged."""
    anchor = tables.anchor
    query = select(anchor.c.seq, anchor.c.hash, anchor.c.mac).where(anchor.c.id == HEAD_ID)
    try:
        async with conn.begin_nested():
            found = (await conn.execute(query)).one_or_none()
    except ProgrammingError as error:
        if sqlstate(error) != _UNDEFINED_TABLE:
            raise
        return None
    return None if found is None else ChainAnchor(seq=found.seq, hash=found.hash, mac=found.mac)


async def verify(
    conn: AsyncConnection, tables: AuditTables, key: bytes, *, start: ChainPosition = GENESIS
) -> VerifyResult:
    """Walk the log in seq order from ``start`` (by default the whole log; else the
    records after a position a previous verification returned as ``verified``) and
    report the first tampered record; the signed head is always checked, and so is
    the signed anchor a retention purge left: the walk then starts after it (or at
    ``start`` when that is further on), and a record still at or before it, or an
    anchor whose signature fails, is tampering.

    Reads page by page, so memory stays flat. Run it in a REPEATABLE READ
    transaction (as :func:`verify_schema` does) so concurrent appends cannot
    look like tampering.
    """
    found = (await conn.execute(_head_query(tables))).one_or_none()
    head = None if found is None else ChainHead(seq=found.seq, hash=found.hash, mac=found.mac)
    anchor = await _anchor(conn, tables)
    walker = anchored_walker(anchor, key, start)
    if isinstance(walker, VerifyResult):
        return walker
    if anchor is not None:
        left = (
            await conn.execute(
                select(func.min(tables.log.c.seq)).where(tables.log.c.seq <= anchor.seq)
            )
        ).scalar_one()
        if left is not None:
            return walker.before_anchor(left)
    after = walker.checked
    while True:
        rows = (
            await conn.execute(
                select(tables.log)
                .where(tables.log.c.seq > after)
                .order_by(tables.log.c.seq)
                .limit(_PAGE)
            )
        ).all()
        for row in rows:
            try:
                entry = _entry(row)
            except ValueError as exc:
                return walker.malformed(row.seq, str(exc))
            bad = walker.feed(entry)
            if bad is not None:
                return bad
            after = row.seq
        if len(rows) < _PAGE:
            return walker.finish(head, key)


async def verify_schema(
    engine: AsyncEngine, schema: str, key: bytes, *, start: ChainPosition = GENESIS
) -> VerifyResult:
    """Verify the audit log in ``schema`` (from ``start``, see :func:`verify`) from one
    read-only, consistent snapshot."""
    tables = audit_tables(MetaData(schema=schema))
    snapshot = engine.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    async with snapshot.connect() as conn:
        return await verify(conn, tables, key, start=start)
