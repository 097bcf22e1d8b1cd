"""Fraud: outbox, inbox, audit log, screening decisions and alerts.

Explicit DDL as the tables were when this revision was written (``store/tables.py``
holds today's declarations); a later change is a new revision.
"""

from alembic import op
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Integer,
    SmallInteger,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from lastro.core.migrations import (
    create_audit_log,
    create_inbox,
    create_outbox,
    drop_platform_tables,
)

revision = "fraud_0001"
down_revision = None
branch_labels = None
depends_on = None


def _at(name: str, nullable: bool = False) -> Column[object]:
    return Column(name, DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    create_outbox()
    create_inbox()
    create_audit_log()
    op.create_table(
        "screenings",
        Column("transaction_id", Text, primary_key=True),
        Column("id", Text, nullable=False, unique=True),
        Column("customer_id", Text, nullable=False),
        Column("fingerprint", Text, nullable=False),
        Column("request", JSONB),
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
            "decision IN ('approve', 'challenge', 'review', 'decline')",
            name="screenings_decision",
        ),
        CheckConstraint("score BETWEEN 0 AND 100", name="screenings_score"),
    )
    op.create_index("screenings_customer_idx", "screenings", ["customer_id"])
    op.create_index("screenings_screened_at_idx", "screenings", ["screened_at"])
    op.create_table(
        "alerts",
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
        CheckConstraint(
            "severity IN ('low', 'medium', 'high', 'critical')", name="alerts_severity"
        ),
        CheckConstraint("source IN ('screening', 'analyser')", name="alerts_source"),
        CheckConstraint("status IN ('open', 'assigned', 'resolved')", name="alerts_status"),
        CheckConstraint(
            "(status = 'resolved') = (resolution IS NOT NULL)",
            name="alerts_resolution_iff_resolved",
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
    )
    op.create_index("alerts_status_created_idx", "alerts", ["status", "created_at"])
    op.create_index("alerts_customer_idx", "alerts", ["customer_id"])
    op.create_index("alerts_transaction_idx", "alerts", ["transaction_id"])
    op.create_index(
        "alerts_freeze_due_idx",
        "alerts",
        ["freeze_next_at"],
        postgresql_where=text("freeze_state = 'pending'"),
    )
    op.create_index(
        "alerts_review_due_idx",
        "alerts",
        ["review_next_at"],
        postgresql_where=text("review_state = 'pending'"),
    )


def downgrade() -> None:
    op.drop_table("alerts")
    op.drop_table("screenings")
    drop_platform_tables()
