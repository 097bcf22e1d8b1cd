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
- given an :class:`AuditStream`, each appended record is also written, in the same
  transaction, to the service's outbox as a ``lastro.audit.recorded`` event on the
  ``lastro.audit`` topic (every field hashed, plus the hashes), so a central store
  gets every record and can re-check the chain (:func:`entry_from_event`) without
  reading the service's database;
- UPDATE, DELETE and TRUNCATE on the log are rejected by triggers created with
  the table (an owner can disable them, which the hash chain still detects).

Limit: an attacker holding an old, validly signed head row can restore it after
deleting the newer records; anchoring the head outside the database (e.g.
publishing it periodically) closes that gap.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lastro.core.events import EventSigner, OutboxMessage, enqueue_many, new_event

# The one audit vocabulary: actions are ``<resource>.<past participle>``
# (``account.opened``, ``login.failed``, ``key.rotated``) and outcomes one of these.
SUCCESS: Final = "success"
FAILURE: Final = "failure"
DENIED: Final = "denied"
OUTCOMES: Final = (SUCCESS, FAILURE, DENIED)

GENESIS_HASH: Final = bytes(32)
STREAM_TOPIC: Final = "lastro.audit"
RECORDED_EVENT: Final = "lastro.audit.recorded"
_HEAD_ID: Final = 1
_PAGE: Final = 1000


class AuditChainBroken(RuntimeError):
    """The chain head fails its signature check; appending would hide tampering."""


# ---------------------------------------------------------------- tables


@dataclass(frozen=True)
class AuditTables:
    log: Table
    head: Table


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
        _ddl(
            f"CREATE FUNCTION {reject}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION USING ERRCODE = 'restrict_violation', "
            "MESSAGE = 'audit log is append-only: ' || TG_OP || ' rejected'; END $$"
        ),
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
        CheckConstraint(f"id = {_HEAD_ID}", name="audit_head_single_row"),
    )


def audit_tables(metadata: MetaData) -> AuditTables:
    return AuditTables(log=audit_table(metadata), head=audit_head_table(metadata))


# ---------------------------------------------------------------- pure chain logic


def _check_json(value: object, path: str) -> None:
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_json(item, f"{path}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{path} has a non-string key {key!r}")
            _check_json(item, f"{path}.{key}")
        return
    # floats do not survive JSONB exactly (1e20 comes back as an integer); money is never one
    raise ValueError(
        f"{path} must be str, int, bool, None, list or dict; got {type(value).__name__}"
    )


@dataclass(frozen=True)
class AuditRecord:
    """One audited action. ``details`` holds JSON values without floats."""

    actor: str
    action: str
    target: str
    outcome: str
    source_ip: str | None
    details: Mapping[str, Any] = field(default_factory=dict)
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        for name in ("actor", "action", "target", "outcome"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string")
        if self.source_ip is not None and not isinstance(self.source_ip, str):
            raise ValueError("source_ip must be a string or None")
        if not isinstance(self.details, dict):
            raise ValueError("details must be a dict")
        _check_json(self.details, "details")
        if not isinstance(self.occurred_at, datetime) or self.occurred_at.tzinfo is None:
            raise ValueError("occurred_at must be a timezone-aware datetime")
        object.__setattr__(self, "occurred_at", self.occurred_at.astimezone(UTC))


@dataclass(frozen=True)
class AuditEntry:
    """A stored record with its chain position."""

    seq: int
    record: AuditRecord
    prev_hash: bytes
    hash: bytes


@dataclass(frozen=True)
class ChainHead:
    seq: int
    hash: bytes
    mac: bytes


@dataclass(frozen=True)
class ChainPosition:
    """A record verified intact: its seq and hash (where a later verification resumes)."""

    seq: int
    hash: bytes


GENESIS: Final = ChainPosition(0, GENESIS_HASH)


@dataclass(frozen=True)
class VerifyResult:
    """``checked`` is the seq of the last record found intact (the count of intact
    records when verification started from the genesis); ``verified`` is the chain's
    end when it is intact."""

    ok: bool
    checked: int
    first_bad_seq: int | None
    reason: str | None
    verified: ChainPosition | None = None


def canonical_json(seq: int, record: AuditRecord) -> bytes:
    """The exact bytes hashed for a record: sorted keys, no whitespace, UTF-8."""
    document = {
        "seq": seq,
        "occurred_at": record.occurred_at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": record.actor,
        "action": record.action,
        "target": record.target,
        "outcome": record.outcome,
        "source_ip": record.source_ip,
        "details": record.details,
    }
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def chain_hash(prev_hash: bytes, seq: int, record: AuditRecord) -> bytes:
    """``sha256(prev_hash || canonical_json(record with seq))``."""
    return hashlib.sha256(prev_hash + canonical_json(seq, record)).digest()


def head_mac(key: bytes, seq: int, hash_: bytes) -> bytes:
    """HMAC-SHA256 under ``key`` over the head's ``(seq, hash)``."""
    if not key:
        raise ValueError("the audit HMAC key must not be empty")
    message = b"lastro-audit-head\x00" + seq.to_bytes(8, "big") + hash_
    return hmac.new(key, message, hashlib.sha256).digest()


def _head_is_authentic(head: ChainHead, key: bytes) -> bool:
    return hmac.compare_digest(head.mac, head_mac(key, head.seq, head.hash))


class _ChainWalker:
    """Checks entries one at a time in seq order from ``start``; stops at the first bad one."""

    def __init__(self, start: ChainPosition = GENESIS) -> None:
        self.checked = start.seq
        self.prev_hash = start.hash

    def bad(self, seq: int | None, reason: str) -> VerifyResult:
        return VerifyResult(ok=False, checked=self.checked, first_bad_seq=seq, reason=reason)

    def feed(self, entry: AuditEntry) -> VerifyResult | None:
        expected = self.checked + 1
        if entry.seq > expected:
            return self.bad(expected, f"record {expected} is missing (deleted)")
        if entry.seq < expected:
            return self.bad(entry.seq, f"record {entry.seq} is out of order")
        if not hmac.compare_digest(entry.prev_hash, self.prev_hash):
            return self.bad(
                entry.seq,
                f"record {entry.seq} does not follow record {entry.seq - 1} "
                "(records reordered, replaced, inserted or deleted and renumbered)",
            )
        if not hmac.compare_digest(
            entry.hash, chain_hash(entry.prev_hash, entry.seq, entry.record)
        ):
            return self.bad(entry.seq, f"record {entry.seq} does not match its hash (edited)")
        self.checked += 1
        self.prev_hash = entry.hash
        return None

    def malformed(self, seq: int, problem: str) -> VerifyResult:
        """A stored row that is not even a valid record: report it in chain order."""
        expected = self.checked + 1
        if seq > expected:
            return self.bad(expected, f"record {expected} is missing (deleted)")
        return self.bad(seq, f"record {seq} is malformed (edited): {problem}")

    def finish(self, head: ChainHead | None, key: bytes) -> VerifyResult:
        last = self.checked
        if head is None:
            if last == 0:
                return VerifyResult(True, 0, None, None, GENESIS)
            return self.bad(None, "chain head is missing")
        if not _head_is_authentic(head, key):
            return self.bad(None, "chain head signature is invalid (forged head or wrong key)")
        if head.seq > last:
            return self.bad(
                last + 1, f"records {last + 1}..{head.seq} are missing (tail truncated)"
            )
        if head.seq < last:
            return self.bad(head.seq + 1, f"records after {head.seq} are not covered by the head")
        if not hmac.compare_digest(head.hash, self.prev_hash):
            return self.bad(last or None, f"record {last} does not match the signed head")
        return VerifyResult(True, last, None, None, ChainPosition(last, self.prev_hash))


def verify_chain(entries: Iterable[AuditEntry], head: ChainHead | None, key: bytes) -> VerifyResult:
    """Verify entries (in seq order) against each other and the signed head; no I/O."""
    walker = _ChainWalker()
    for entry in entries:
        bad = walker.feed(entry)
        if bad is not None:
            return bad
    return walker.finish(head, key)


# ---------------------------------------------------------------- database


def _head_query(tables: AuditTables) -> Any:
    head = tables.head
    return select(head.c.seq, head.c.hash, head.c.mac).where(head.c.id == _HEAD_ID)


@lru_cache(maxsize=16)
def _append_statement(tables: AuditTables) -> Any:
    """One statement writing every record (``unnest`` of one array per column) and the
    new head. Built once per tables; SQLAlchemy renders the tables' schema, a
    ``schema_translate_map`` included, as in any other statement."""
    log, head = tables.log, tables.head
    records = (
        func.unnest(*(cast(bindparam(c.name), ARRAY(c.type)) for c in log.c))
        .table_valued(*log.c.keys())
        .render_derived(name="r")
    )
    appended = pg_insert(log).from_select(log.c.keys(), select(records)).cte("appended")
    return (
        update(head)
        .where(head.c.id == _HEAD_ID)
        .values(seq=bindparam("head_seq"), hash=bindparam("head_hash"), mac=bindparam("head_mac"))
        .add_cte(appended)
    )


async def _locked_head(conn: AsyncConnection, tables: AuditTables, key: bytes) -> ChainHead:
    """Lock the head row (creating the genesis head on first use) and check its MAC."""
    found = (await conn.execute(_head_query(tables).with_for_update())).one_or_none()
    if found is None:
        genesis = {"id": _HEAD_ID, "seq": 0, "hash": GENESIS_HASH}
        await conn.execute(
            pg_insert(tables.head)
            .values(**genesis, mac=head_mac(key, 0, GENESIS_HASH))
            .on_conflict_do_nothing(index_elements=[tables.head.c.id])
        )
        found = (await conn.execute(_head_query(tables).with_for_update())).one()
    head = ChainHead(seq=found.seq, hash=found.hash, mac=found.mac)
    if not _head_is_authentic(head, key):
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


def stream_event_data(chain: str, entry: AuditEntry) -> dict[str, Any]:
    """The ``lastro.audit.recorded`` payload: every hashed field, the seq and both hashes."""
    record = entry.record
    return {
        "chain": chain,
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


def entry_from_event(data: Mapping[str, Any]) -> AuditEntry:
    """The chain entry a ``lastro.audit.recorded`` event carries (a central store feeds
    these, in seq order, to :func:`verify_chain`-style checks); ValueError if malformed."""
    try:
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
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not an audit record event: {exc}") from None


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
) -> list[int]:
    """Append ``records`` in order in the caller's transaction; returns their seqs.

    The same guarantees as :func:`append` (one head lock held until the caller
    commits, gap-free seqs, AuditChainBroken on a forged head, nothing visible
    without a commit, the stream's events in the same transaction) at the cost of
    one: the head is locked once, then every record and the new head are written by
    a single statement (and the events by one more).
    """
    if not records:
        return []
    head = await _locked_head(conn, tables, key)
    seqs = list(range(head.seq + 1, head.seq + 1 + len(records)))
    hashes: list[bytes] = []
    prev = head.hash
    for seq, record in zip(seqs, records, strict=True):
        prev = chain_hash(prev, seq, record)
        hashes.append(prev)
    await conn.execute(
        _append_statement(tables),
        {
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
        },
    )
    if stream is not None:
        entries = [
            AuditEntry(seq, record, prev, hash_)
            for seq, record, prev, hash_ in zip(
                seqs, records, [head.hash, *hashes[:-1]], hashes, strict=True
            )
        ]
        await enqueue_many(
            conn,
            stream.outbox,
            stream.signer,
            [
                OutboxMessage(
                    new_event(
                        RECORDED_EVENT,
                        stream.source,
                        stream_event_data(stream.chain, entry),
                        subject=f"{stream.chain}/{entry.seq}",
                    ),
                    STREAM_TOPIC,
                    stream.chain,
                )
                for entry in entries
            ],
        )
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


async def verify(
    conn: AsyncConnection, tables: AuditTables, key: bytes, *, start: ChainPosition = GENESIS
) -> VerifyResult:
    """Walk the log in seq order from ``start`` (by default the whole log; else the
    records after a position a previous verification returned as ``verified``) and
    report the first tampered record; the signed head is always checked.

    Reads page by page, so memory stays flat. Run it in a REPEATABLE READ
    transaction (as :func:`verify_schema` does) so concurrent appends cannot
    look like tampering.
    """
    found = (await conn.execute(_head_query(tables))).one_or_none()
    head = None if found is None else ChainHead(seq=found.seq, hash=found.hash, mac=found.mac)
    walker = _ChainWalker(start)
    after = start.seq
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
