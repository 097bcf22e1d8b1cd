"""Audit records streamed to `lastro.audit` through the outbox, and the periodic
verification that exports each chain's state, against the real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from prometheus_client import generate_latest
from schemas import unique_schema
from sqlalchemy import MetaData, Table, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core import audit
from lastro.core.audit_monitor import ChainMonitor
from lastro.core.changes import Caller, Change, ChangeRecorder
from lastro.core.events import EventSigner, OutboxMessage, new_event, outbox_table
from lastro.core.observability import metrics_registry

KEY = b"integration-audit-stream-key"


@dataclass(frozen=True)
class Schema:
    name: str
    outbox: Table
    audit: audit.AuditTables


@pytest.fixture
async def schema(engine: AsyncEngine) -> AsyncIterator[Schema]:
    name = unique_schema("audit_stream")
    metadata = MetaData(schema=name)
    made = Schema(name, outbox_table(metadata), audit.audit_tables(metadata))
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
        await conn.run_sync(metadata.create_all)
    yield made
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f'DROP SCHEMA "{name}" CASCADE')


def recorder(schema: Schema, signer: EventSigner) -> ChangeRecorder:
    return ChangeRecorder(
        source="/tests",
        outbox=schema.outbox,
        audit_tables=schema.audit,
        signer=signer,
        audit_key=KEY,
    )


async def record_changes(engine: AsyncEngine, changes: ChangeRecorder, count: int) -> None:
    for i in range(count):
        async with engine.begin() as conn:
            await changes.record(
                conn,
                Caller("cli_1/usr_1", source_ip="198.51.100.7", request_id=f"req-{i}"),
                action="account.frozen",
                target=f"acc_{i}",
                data={"account_id": f"acc_{i}", "reason": "court order"},
                event_type="lastro.account.frozen",
                topic="lastro.accounts",
                key=f"acc_{i}",
            )


async def streamed(engine: AsyncEngine, schema: Schema) -> list[dict[str, object]]:
    o = schema.outbox
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(o.c.key, o.c.envelope).where(o.c.topic == audit.STREAM_TOPIC).order_by(o.c.id)
        )
        return [{"key": row.key, "envelope": row.envelope} for row in rows]


async def test_every_audit_record_is_streamed_in_the_same_transaction_with_its_hashes(
    engine: AsyncEngine, schema: Schema, signer: EventSigner
) -> None:
    changes = recorder(schema, signer)
    await record_changes(engine, changes, 3)

    events = await streamed(engine, schema)
    assert [e["key"] for e in events] == [schema.name] * 3  # one chain, one partition
    entries = []
    for event in events:
        envelope = event["envelope"]
        assert isinstance(envelope, dict)
        verified = signer.verify(envelope)  # signed like every event
        assert verified.type == audit.RECORDED_EVENT and verified.source == "/tests"
        entries.extend(audit.entries_from_event(verified.data))
    assert [e.seq for e in entries] == [1, 2, 3]
    assert entries[1].record.details["request_id"] == "req-1"
    # A central store can re-check the chain from the events alone.
    async with engine.connect() as conn:
        head = (await conn.execute(select(schema.audit.head))).one()
    result = audit.verify_chain(entries, audit.ChainHead(head.seq, head.hash, head.mac), KEY)
    assert result.ok and result.checked == 3
    stored = await audit.verify_schema(engine, schema.name, KEY)
    assert stored.verified == audit.ChainPosition(3, entries[-1].hash)


async def test_records_appended_together_are_streamed_as_one_event_in_seq_order(
    engine: AsyncEngine, schema: Schema, signer: EventSigner
) -> None:
    """A group-committed batch appends its records at once: one stream event carries
    them all, consecutive, so the chain still checks out from the events alone."""
    changes = recorder(schema, signer)
    caller = Caller("cli_1/usr_1", source_ip="198.51.100.7", request_id="req-batch")
    async with engine.begin() as conn:
        await changes.record_many(
            conn,
            [
                Change(caller, "account.frozen", f"acc_{i}", {"n": i}, None, None, None)
                for i in range(4)
            ],
        )

    events = await streamed(engine, schema)
    assert len(events) == 1
    envelope = events[0]["envelope"]
    assert isinstance(envelope, dict)
    verified = signer.verify(envelope)
    entries = audit.entries_from_event(verified.data)
    assert [e.seq for e in entries] == [1, 2, 3, 4]
    assert [e.record.target for e in entries] == ["acc_0", "acc_1", "acc_2", "acc_3"]
    assert verified.subject == f"{schema.name}/1-4"
    async with engine.connect() as conn:
        head = (await conn.execute(select(schema.audit.head))).one()
    result = audit.verify_chain(entries, audit.ChainHead(head.seq, head.hash, head.mac), KEY)
    assert result.ok and result.checked == 4
    with pytest.raises(ValueError, match="not an audit record event"):
        audit.entries_from_event({"chain": schema.name})


async def test_a_batch_writes_its_events_then_its_audit_event_and_nothing_on_a_bad_topic(
    engine: AsyncEngine, schema: Schema, signer: EventSigner
) -> None:
    """``record_many`` writes the events and the audit trail with the chain's append
    (one statement): the outbox holds each change's event in the batch's order (an
    event-only change included), then the one stream event of the audited ones; a
    change bound for a topic outside the catalogue refuses the batch, and nothing of
    it is written."""
    changes = recorder(schema, signer)
    caller = Caller("cli_1/usr_1")

    def frozen(n: int, *, action: str | None = "account.frozen") -> Change:
        return Change(
            caller, action, f"acc_{n}", {"n": n}, "lastro.account.frozen", "lastro.accounts", None
        )

    async with engine.begin() as conn:
        await changes.record_many(conn, [frozen(0), frozen(1, action=None), frozen(2)])
    with pytest.raises(ValueError, match="unknown topic"):
        async with engine.begin() as conn:
            bad = Change(caller, "account.frozen", "acc_9", {}, "lastro.x", "lastro.nowhere", None)
            await changes.record_many(conn, [frozen(3), bad])

    o = schema.outbox
    async with engine.connect() as conn:
        rows = (await conn.execute(select(o.c.topic, o.c.key).order_by(o.c.id))).all()
        audited = await conn.scalar(text(f'SELECT count(*) FROM "{schema.name}".audit_log'))
    assert [tuple(row) for row in rows] == [
        ("lastro.accounts", "acc_0"),
        ("lastro.accounts", "acc_1"),
        ("lastro.accounts", "acc_2"),
        (audit.STREAM_TOPIC, schema.name),
    ]
    assert audited == 2
    [event] = await streamed(engine, schema)
    envelope = event["envelope"]
    assert isinstance(envelope, dict)
    entries = audit.entries_from_event(signer.verify(envelope).data)
    assert [(e.seq, e.record.target) for e in entries] == [(1, "acc_0"), (2, "acc_2")]

    # Events ride on an append: without a stream or a record to carry them they are
    # refused, never dropped.
    fact = new_event("lastro.account.frozen", "/tests", {"n": 5}, subject="acc_5")
    message = OutboxMessage(fact, "lastro.accounts", "acc_5")
    record = audit.AuditRecord("cli_1/usr_1", "account.frozen", "acc_5", audit.SUCCESS, None, {})
    for stream, records in ((None, [record]), (changes.stream, [])):
        async with engine.begin() as conn:
            with pytest.raises(ValueError, match="ride on an append"):
                await audit.append_many(
                    conn, schema.audit, records, KEY, stream=stream, events=[message]
                )


async def test_a_rolled_back_change_streams_nothing(
    engine: AsyncEngine, schema: Schema, signer: EventSigner
) -> None:
    changes = recorder(schema, signer)
    async with engine.connect() as conn:
        transaction = await conn.begin()
        await changes.audit(
            conn, Caller("cli_1/usr_1"), action="login.failed", target="usr_1", details={}
        )
        await transaction.rollback()
    assert await streamed(engine, schema) == []


def exported(name: str, schema: str) -> float | None:
    for line in generate_latest(metrics_registry()).decode().splitlines():
        if line.startswith(f'{name}{{schema="{schema}"}} '):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_the_periodic_verification_exports_each_chain_and_finds_an_old_edit(
    engine: AsyncEngine, schema: Schema, signer: EventSigner
) -> None:
    changes = recorder(schema, signer)
    await record_changes(engine, changes, 3)
    monitor = ChainMonitor(engine, schema.name, KEY, full_every=2)

    first = await monitor.verify_once()  # round 1 walks everything
    assert first is not None and first.ok and first.checked == 3
    assert exported("lastro_audit_chain_intact", schema.name) == 1.0
    assert exported("lastro_audit_chain_records", schema.name) == 3.0
    assert exported("lastro_audit_chain_verified_timestamp_seconds", schema.name)

    await record_changes(engine, changes, 2)
    log = schema.audit.log
    async with engine.begin() as conn:  # a database owner edits an old record
        await conn.execute(text(f'ALTER TABLE "{schema.name}".audit_log DISABLE TRIGGER USER'))
        await conn.execute(update(log).where(log.c.seq == 2).values(outcome="failure"))
        await conn.execute(text(f'ALTER TABLE "{schema.name}".audit_log ENABLE TRIGGER USER'))

    second = await monitor.verify_once()  # round 2 checks only records 4..5 and the head
    assert second is not None and second.ok and second.checked == 5
    third = await monitor.verify_once()  # round 3 walks everything again
    assert third is not None and not third.ok and third.first_bad_seq == 2
    assert exported("lastro_audit_chain_intact", schema.name) == 0.0


async def test_a_schema_without_an_audit_log_is_skipped(engine: AsyncEngine) -> None:
    assert await ChainMonitor(engine, unique_schema("nothing"), KEY).verify_once() is None
