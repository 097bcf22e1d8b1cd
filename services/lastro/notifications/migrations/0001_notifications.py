"""Notifications: outbox, inbox, audit log, subject keys, customer owners, preferences,
webhook endpoints and secrets, occurrences, deliveries, attempts and dead letters.

Explicit DDL as the tables were when this revision was written (``store.py`` holds
today's declarations); a later change is a new revision.
"""

from alembic import op
from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Integer,
    Text,
    Time,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from lastro.core.migrations import (
    create_audit_log,
    create_inbox,
    create_outbox,
    drop_platform_tables,
)

revision = "notifications_0001"
down_revision = None
branch_labels = None
depends_on = None

_TABLES = (
    "dead_letters",
    "delivery_attempts",
    "deliveries",
    "occurrences",
    "webhook_secrets",
    "webhook_endpoints",
    "preferences",
    "customer_owners",
    "subject_keys",
)


def _at(name: str, nullable: bool = False) -> Column[object]:
    return Column(name, DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    create_outbox()
    create_inbox()
    create_audit_log()
    op.create_table(
        "subject_keys",
        Column("subject_id", Text, primary_key=True),
        Column("data_key", Text, nullable=False),
        _at("created_at"),
        CheckConstraint("data_key LIKE 'vault:v%'", name="subject_keys_wrapped"),
    )
    op.create_table(
        "customer_owners",
        Column("customer_id", Text, primary_key=True),
        Column("owner", Text, nullable=False),
        _at("learned_at"),
    )
    op.create_index("customer_owners_owner_idx", "customer_owners", ["owner"])
    op.create_table(
        "preferences",
        Column("customer_id", Text, primary_key=True),
        Column("locale", Text, nullable=False),
        Column("timezone", Text, nullable=False),
        Column("quiet_start", Time),
        Column("quiet_end", Time),
        Column("channels", JSONB, nullable=False),
        Column("marketing_consent", Boolean, nullable=False),
        _at("updated_at"),
        CheckConstraint(
            "(quiet_start IS NULL) = (quiet_end IS NULL)", name="preferences_quiet_pair"
        ),
    )
    op.create_table(
        "webhook_endpoints",
        Column("id", Text, primary_key=True),
        Column("owner", Text, nullable=False),
        Column("url", Text, nullable=False),
        Column("description", Text, nullable=False),
        Column("event_types", ARRAY(Text), nullable=False),
        Column("status", Text, nullable=False),
        Column("consecutive_failures", Integer, nullable=False),
        Column("notice_email", Text),
        _at("created_at"),
        _at("updated_at"),
        _at("disabled_at", nullable=True),
        Column("disabled_reason", Text),
        CheckConstraint("status IN ('enabled', 'disabled')", name="webhook_endpoints_status"),
        CheckConstraint("consecutive_failures >= 0", name="webhook_endpoints_failures"),
    )
    op.create_index("webhook_endpoints_owner_idx", "webhook_endpoints", ["owner"])
    op.create_table(
        "webhook_secrets",
        Column("id", Text, primary_key=True),
        Column(
            "endpoint_id",
            Text,
            ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
            nullable=False,
        ),
        Column("secret", Text, nullable=False),
        _at("created_at"),
        _at("expires_at", nullable=True),
        CheckConstraint("secret LIKE 'vault:v%'", name="webhook_secrets_encrypted"),
    )
    op.create_index("webhook_secrets_endpoint_idx", "webhook_secrets", ["endpoint_id"])
    op.create_table(
        "occurrences",
        Column("event_id", Text, primary_key=True),
        Column("kind", Text, nullable=False),
        _at("occurred_at"),
        Column("customer_ids", ARRAY(Text), nullable=False),
        Column("user_id", Text),
        Column("facts", JSONB, nullable=False),
        Column("status", Text, nullable=False),
        Column("plan_attempts", Integer, nullable=False),
        _at("next_plan_at"),
        _at("received_at"),
        _at("planned_at", nullable=True),
        CheckConstraint("status IN ('pending', 'planned')", name="occurrences_status"),
    )
    op.create_index(
        "occurrences_pending_idx",
        "occurrences",
        ["next_plan_at"],
        postgresql_where=text("status = 'pending'"),
    )
    op.create_table(
        "deliveries",
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
        _at("next_attempt_at"),
        _at("lease_until", nullable=True),
        Column("address", Text),
        Column("content", Text),
        Column("payload", JSONB),
        Column("last_error", Text),
        _at("created_at"),
        _at("updated_at"),
        _at("delivered_at", nullable=True),
        UniqueConstraint(
            "event_id", "channel", "destination", name="deliveries_once_per_destination"
        ),
        CheckConstraint("status IN ('pending', 'delivered', 'dead')", name="deliveries_status"),
        CheckConstraint("channel IN ('webhook', 'email', 'sms')", name="deliveries_channel"),
        CheckConstraint(
            "attempts >= round_attempts AND round_attempts >= 0",
            name="deliveries_attempt_counts",
        ),
    )
    op.create_index(
        "deliveries_due_idx",
        "deliveries",
        ["next_attempt_at"],
        postgresql_where=text("status = 'pending'"),
    )
    op.create_index("deliveries_endpoint_idx", "deliveries", ["endpoint_id", "id"])
    op.create_index("deliveries_customer_idx", "deliveries", ["customer_id", "id"])
    op.create_index("deliveries_created_idx", "deliveries", ["created_at"])
    op.create_table(
        "delivery_attempts",
        Column(
            "delivery_id",
            Text,
            ForeignKey("deliveries.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        Column("number", Integer, primary_key=True),
        _at("started_at"),
        _at("finished_at", nullable=True),
        Column("outcome", Text),
        Column("status_code", Integer),
        Column("latency_ms", Integer),
        Column("error", Text),
        CheckConstraint("number >= 1", name="delivery_attempts_number"),
    )
    op.create_table(
        "dead_letters",
        Column("id", BigInteger, Identity(), primary_key=True),
        Column(
            "delivery_id",
            Text,
            ForeignKey("deliveries.id", ondelete="CASCADE"),
            nullable=False,
        ),
        Column("reason", Text, nullable=False),
        _at("dead_at"),
        _at("replayed_at", nullable=True),
    )
    op.create_index(
        "dead_letters_open_idx",
        "dead_letters",
        ["delivery_id"],
        postgresql_where=text("replayed_at IS NULL"),
    )


def downgrade() -> None:
    for table in _TABLES:
        op.drop_table(table)
    drop_platform_tables()
