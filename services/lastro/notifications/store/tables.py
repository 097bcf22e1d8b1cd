"""The notification service's tables, declared without a schema (:func:`bind_schema`
maps them to the service's); revision ``notifications_0001`` creates them."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    Time,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.audit import audit_tables
from lastro.core.events import inbox_table, outbox_table

SCHEMA: Final = "notifications"
MIGRATIONS: Final = Path(__file__).parents[1] / "migrations"

metadata = MetaData()
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
audit = audit_tables(metadata)

subject_keys = Table(
    "subject_keys",
    metadata,
    Column("subject_id", Text, primary_key=True),
    Column("data_key", Text, nullable=False),  # wrapped by Transit (vault:vN:...)
    Column("created_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("data_key LIKE 'vault:v%'", name="subject_keys_wrapped"),
)

customer_owners = Table(
    "customer_owners",
    metadata,
    Column("customer_id", Text, primary_key=True),
    Column("owner", Text, nullable=False),
    Column("learned_at", DateTime(timezone=True), nullable=False),
    Index("customer_owners_owner_idx", "owner"),
)

preferences = Table(
    "preferences",
    metadata,
    Column("customer_id", Text, primary_key=True),
    Column("locale", Text, nullable=False),
    Column("timezone", Text, nullable=False),
    Column("quiet_start", Time),
    Column("quiet_end", Time),
    Column("channels", JSONB, nullable=False),
    Column("marketing_consent", Boolean, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("(quiet_start IS NULL) = (quiet_end IS NULL)", name="preferences_quiet_pair"),
)

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", Text, primary_key=True),
    Column("owner", Text, nullable=False),
    Column("url", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("event_types", ARRAY(Text), nullable=False),
    Column("status", Text, nullable=False),
    Column("consecutive_failures", Integer, nullable=False),
    Column("notice_email", Text),  # sealed with the owner's data key
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("disabled_at", DateTime(timezone=True)),
    Column("disabled_reason", Text),
    CheckConstraint("status IN ('enabled', 'disabled')", name="webhook_endpoints_status"),
    CheckConstraint("consecutive_failures >= 0", name="webhook_endpoints_failures"),
    Index("webhook_endpoints_owner_idx", "owner"),
)

webhook_secrets = Table(
    "webhook_secrets",
    metadata,
    Column("id", Text, primary_key=True),
    Column(
        "endpoint_id",
        Text,
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("secret", Text, nullable=False),  # Transit ciphertext of the whsec_ secret
    # True: encrypted with the row's id as associated data (all rows written since 0004)
    Column("bound", Boolean, nullable=False, server_default=false()),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    CheckConstraint("secret LIKE 'vault:v%'", name="webhook_secrets_encrypted"),
    Index("webhook_secrets_endpoint_idx", "endpoint_id"),
)

occurrences = Table(
    "occurrences",
    metadata,
    Column("event_id", Text, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("customer_ids", ARRAY(Text), nullable=False),
    Column("user_id", Text),
    Column("facts", JSONB, nullable=False),
    Column("status", Text, nullable=False),
    Column("plan_attempts", Integer, nullable=False),
    Column("next_plan_at", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("planned_at", DateTime(timezone=True)),
    Column("traceparent", Text),  # the trace of the consumed event
    CheckConstraint("status IN ('pending', 'planned')", name="occurrences_status"),
    Index("occurrences_pending_idx", "next_plan_at", postgresql_where=text("status = 'pending'")),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Text, primary_key=True),
    Column("event_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("channel", Text, nullable=False),
    Column("destination", Text, nullable=False),
    Column("customer_id", Text),
    Column("endpoint_id", Text),
    Column("subject_id", Text),
    Column("status", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("round_attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("lease_until", DateTime(timezone=True)),
    Column("address", Text),  # sealed
    Column("content", Text),  # sealed JSON of the rendered message
    Column("payload", JSONB),  # a webhook's body
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("delivered_at", DateTime(timezone=True)),
    Column("traceparent", Text),  # the trace its attempts join
    UniqueConstraint("event_id", "channel", "destination", name="deliveries_once_per_destination"),
    CheckConstraint("status IN ('pending', 'delivered', 'dead')", name="deliveries_status"),
    CheckConstraint("channel IN ('webhook', 'email', 'sms')", name="deliveries_channel"),
    CheckConstraint(
        "attempts >= round_attempts AND round_attempts >= 0", name="deliveries_attempt_counts"
    ),
    Index("deliveries_due_idx", "next_attempt_at", postgresql_where=text("status = 'pending'")),
    Index("deliveries_endpoint_idx", "endpoint_id", "id"),
    Index("deliveries_customer_idx", "customer_id", "id"),
    Index("deliveries_created_idx", "created_at"),
)

delivery_attempts = Table(
    "delivery_attempts",
    metadata,
    Column("delivery_id", Text, ForeignKey("deliveries.id", ondelete="CASCADE"), primary_key=True),
    Column("number", Integer, primary_key=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("outcome", Text),
    Column("status_code", Integer),
    Column("latency_ms", Integer),
    Column("error", Text),
    CheckConstraint("number >= 1", name="delivery_attempts_number"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("delivery_id", Text, ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False),
    Column("reason", Text, nullable=False),
    Column("dead_at", DateTime(timezone=True), nullable=False),
    Column("replayed_at", DateTime(timezone=True)),
    Index("dead_letters_open_idx", "delivery_id", postgresql_where=text("replayed_at IS NULL")),
)


def bind_schema(engine: AsyncEngine, schema: str = SCHEMA) -> AsyncEngine:
    """``engine`` with every table above mapped to ``schema`` (same pool)."""
    return engine.execution_options(schema_translate_map={None: schema})


def schema_metadata(schema: str = SCHEMA) -> MetaData:
    """The tables as they stand in ``schema`` (what its migrations build)."""
    bound = MetaData(schema=schema)
    for table in metadata.sorted_tables:
        table.to_metadata(bound, schema=schema)
    return bound
