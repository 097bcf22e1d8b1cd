"""Customers: personal data sealed per customer, blind indexes, erasure tombstones.

Explicit DDL, frozen as released. A CHECK constraint refuses an erased row that
keeps its wrapped data key or a blind index (crypto-shredding is all or nothing).

Revision ID: accounts_0002
Revises: accounts_0001
"""

from alembic import op
from sqlalchemy import CheckConstraint, Column, DateTime, String, Text, UniqueConstraint

revision = "accounts_0002"
down_revision = "accounts_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "customers",
        Column("id", String(40), primary_key=True),
        Column("owner", String(255), nullable=False),
        Column("status", String(16), nullable=False),
        Column("data_key", Text),
        Column("name", Text, nullable=False),
        Column("email", Text, nullable=False),
        Column("phone", Text),
        Column("document_number", Text, nullable=False),
        Column("address", Text),
        Column("email_bi", String(80)),
        Column("document_bi", String(80)),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
        Column("erased_at", DateTime(timezone=True)),
        UniqueConstraint("email_bi", name="customers_email_bi_key"),
        CheckConstraint("status IN ('active', 'erased')", name="customers_status_known"),
        CheckConstraint(
            "(status = 'active' AND data_key IS NOT NULL AND email_bi IS NOT NULL"
            " AND document_bi IS NOT NULL AND erased_at IS NULL)"
            " OR (status = 'erased' AND data_key IS NULL AND email_bi IS NULL"
            " AND document_bi IS NULL AND erased_at IS NOT NULL)",
            name="customers_erasure_complete",
        ),
    )
    op.create_index("customers_owner_idx", "customers", ["owner"])
    op.create_index("customers_document_bi_idx", "customers", ["document_bi"])


def downgrade() -> None:
    op.drop_table("customers")
