"""The fraud schema's tables, as today's code declares them.

Declared without a schema: :func:`bind_schema` maps them onto the service's schema
(``fraud``, or a throwaway one in tests). The DDL that creates them is explicit in
``migrations/`` (a later change is a new revision).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.audit import audit_tables
from lastro.core.events import inbox_table, outbox_table

SCHEMA: Final = "fraud"
MIGRATIONS: Final = Path(__file__).parents[1] / "migrations"

metadata = MetaData()

outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
audit = audit_tables(metadata)


def _at(name: str, nullable: bool = False) -> Column[object]:
    return Column(name, DateTime(timezone=True), nullable=nullable)


screenings = Table(
    "screenings",
    metadata,
    Column("transaction_id", Text, primary_key=True),
    Column("id", Text, nullable=False, unique=True),
    Column("customer_id", Text, nullable=False),
    Column("fingerprint", Text, nullable=False),
    Column("request", JSONB(none_as_null=True)),
    Column("decision", Text, nullable=False),
    Column("score", SmallInteger, nullable=False),
    Column("ruleset_version", BigInteger, nullable=False),
    Column("reasons", JSONB, nullable=False),
    Column("shadow", JSONB, nullable=False),
    Column("enforced_rules", ARRAY(Text), nullable=False),
    Column("shadow_rules", ARRAY(Text), nullable=False),
    Column("failed_rules", ARRAY(Text), nullable=False),
    Column("shadow_decision", Text, nullable=False),
    _at("screened_at"),
    _at("anonymized_at", nullable=True),
    CheckConstraint(
        "decision IN ('approve', 'challenge', 'review', 'decline')", name="screenings_decision"
    ),
    CheckConstraint("score BETWEEN 0 AND 100", name="screenings_score"),
    Index("screenings_customer_idx", "customer_id"),
    Index("screenings_screened_at_idx", "screened_at"),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", Text, primary_key=True),
    Column("origin", Text, nullable=False, unique=True),
    Column("typology", Text, nullable=False),
    Column("severity", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("customer_id", Text, nullable=False),
    Column("account_id", Text),
    Column("transaction_id", Text),
    Column("detector_id", Text, nullable=False),
    Column("evidence", JSONB, nullable=False),
    Column("rule_ids", ARRAY(Text), nullable=False),
    Column("related", ARRAY(Text), nullable=False),
    Column("status", Text, nullable=False),
    Column("assignee", Text),
    _at("assigned_at", nullable=True),
    Column("resolution", Text),
    Column("resolved_by", Text),
    _at("resolved_at", nullable=True),
    Column("note", Text),
    Column("freeze_state", Text, nullable=False),
    Column("freeze_attempts", Integer, nullable=False, server_default=text("0")),
    _at("freeze_next_at", nullable=True),
    Column("freeze_detail", Text),
    Column("review_state", Text, nullable=False),
    Column("review_attempts", Integer, nullable=False, server_default=text("0")),
    _at("review_next_at", nullable=True),
    Column("review_detail", Text),
    _at("created_at"),
    _at("updated_at"),
    CheckConstraint("severity IN ('low', 'medium', 'high', 'critical')", name="alerts_severity"),
    CheckConstraint("source IN ('screening', 'analyser')", name="alerts_source"),
    CheckConstraint("status IN ('open', 'assigned', 'resolved')", name="alerts_status"),
    CheckConstraint(
        "(status = 'resolved') = (resolution IS NOT NULL)", name="alerts_resolution_iff_resolved"
    ),
    CheckConstraint(
        "resolution IS NULL OR resolution IN ('true_positive', 'false_positive')",
        name="alerts_resolution",
    ),
    CheckConstraint(
        "freeze_state IN ('none', 'pending', 'done', 'failed')", name="alerts_freeze_state"
    ),
    CheckConstraint(
        "review_state IN ('none', 'pending', 'done', 'failed')", name="alerts_review_state"
    ),
    Index("alerts_status_created_idx", "status", "created_at"),
    Index("alerts_customer_idx", "customer_id"),
    Index("alerts_transaction_idx", "transaction_id"),
    Index(
        "alerts_freeze_due_idx", "freeze_next_at", postgresql_where=text("freeze_state = 'pending'")
    ),
    Index(
        "alerts_review_due_idx", "review_next_at", postgresql_where=text("review_state = 'pending'")
    ),
)


def schema_metadata(schema: str = SCHEMA) -> MetaData:
    """The tables as they stand in ``schema`` (what its migrations build)."""
    bound = MetaData(schema=schema)
    for table in metadata.sorted_tables:
        table.to_metadata(bound, schema=schema)
    return bound


def bind_schema(engine: AsyncEngine, schema: str = SCHEMA) -> AsyncEngine:
    """``engine`` with every fraud table mapped onto ``schema`` (same pool)."""
    return engine.execution_options(schema_translate_map={None: schema})
