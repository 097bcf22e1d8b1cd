"""Erasure certificates of data-subject requests (what was erased where, when, by
whom, why; per service).

Explicit DDL, frozen as released.

Revision ID: accounts_0003
Revises: accounts_0002
"""

from alembic import op
from sqlalchemy import CheckConstraint, Column, DateTime, String, Text
from sqlalchemy.dialects.postgresql import JSONB

revision = "accounts_0003"
down_revision = "accounts_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erasure_certificates",
        Column("id", String(40), primary_key=True),
        Column("customer_id", String(40), nullable=False),
        Column("user_id", String(255)),
        Column("reason", Text, nullable=False),
        Column("requested_by", Text, nullable=False),
        Column("request_id", Text),
        Column("status", String(16), nullable=False),
        Column("services", JSONB, nullable=False),
        Column("signature", JSONB),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
        CheckConstraint(
            "status IN ('complete', 'partial')", name="erasure_certificates_status_known"
        ),
    )
    op.create_index("erasure_certificates_customer_idx", "erasure_certificates", ["customer_id"])


def downgrade() -> None:
    op.drop_table("erasure_certificates")
