"""Transactions, refunds, FX quotes, transfer batches, system accounts, acquirer
settlements, payout destinations; the outbox, audit log and idempotency keys.

Explicit DDL, frozen: a later change is a new revision. The database repeats the
money rules the domain checks: positive amounts, known kinds and statuses,
``0 <= refunded <= captured <= amount``, a quote used at most once.
"""

from alembic import op
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Integer,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from lastro.core import migrations

revision = "transactions_0001"
down_revision = None
branch_labels = None
depends_on = None

KINDS = "'transfer', 'fx_transfer', 'card_payment', 'payout', 'deposit'"
STATUSES = (
    "'received', 'screening', 'challenged', 'in_review', 'approved', 'authorized', "
    "'posted', 'settled', 'declined', 'failed', 'reversed', 'refunded'"
)
OPEN = "'received', 'screening', 'approved', 'authorized'"


def _at(name: str, nullable: bool = False) -> Column:  # type: ignore[type-arg]
    return Column(name, DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "transactions",
        Column("id", Text, primary_key=True),
        Column("kind", Text, nullable=False),
        Column("status", Text, nullable=False),
        Column("version", Integer, nullable=False),
        Column("client_id", Text, nullable=False),
        Column("owner", Text, nullable=False),
        Column("amount", BigInteger, nullable=False),
        Column("currency", Text, nullable=False),
        Column("customer_id", Text),
        Column("source_account_id", Text),
        Column("destination_account_id", Text),
        Column("counterparty_customer_id", Text),
        Column("counterparty", Text),
        Column("description", Text, nullable=False),
        Column("metadata", JSONB, nullable=False),
        Column("context", JSONB, nullable=False),
        Column("batch_id", Text),
        Column("fx", JSONB),
        Column("card", JSONB),
        Column("capture_method", Text),
        Column("screening", JSONB),
        Column("reason", Text),
        Column("posting_id", Text),
        Column("hold_id", Text),
        _at("hold_expires_at", nullable=True),
        Column("authorization_id", Text),
        Column("capture_id", Text),
        Column("captured_amount", BigInteger, nullable=False),
        Column("refunded_amount", BigInteger, nullable=False),
        Column("capture_requested", BigInteger),
        Column("void_requested", Boolean, nullable=False),
        _at("confirmed_at", nullable=True),
        Column("review_outcome", Text),
        Column("reverse_requested", Boolean, nullable=False),
        Column("compensation", Text),
        Column("settlement_id", Text),
        Column("last_error", Text),
        _at("created_at"),
        _at("updated_at"),
        CheckConstraint(f"kind IN ({KINDS})", name="transactions_kind"),
        CheckConstraint(f"status IN ({STATUSES})", name="transactions_status"),
        CheckConstraint("amount > 0", name="transactions_amount_positive"),
        CheckConstraint("currency ~ '^[A-Z]{3}$'", name="transactions_currency"),
        CheckConstraint(
            "0 <= refunded_amount AND refunded_amount <= captured_amount"
            " AND captured_amount <= amount",
            name="transactions_refunds_within_capture",
        ),
        CheckConstraint(
            "capture_requested IS NULL OR capture_requested BETWEEN 1 AND amount",
            name="transactions_capture_within_authorisation",
        ),
        CheckConstraint(
            "review_outcome IS NULL OR review_outcome IN ('legitimate', 'fraud', 'expired')",
            name="transactions_review_outcome",
        ),
    )
    op.create_index("transactions_source_idx", "transactions", ["source_account_id", "id"])
    op.create_index(
        "transactions_destination_idx", "transactions", ["destination_account_id", "id"]
    )
    op.create_index("transactions_created_idx", "transactions", ["created_at"])
    op.create_index("transactions_batch_idx", "transactions", ["batch_id"])
    op.create_index("transactions_settlement_idx", "transactions", ["settlement_id"])
    op.create_index("transactions_capture_idx", "transactions", ["capture_id"])
    op.create_index(
        "transactions_open_idx",
        "transactions",
        ["updated_at"],
        postgresql_where=text(f"status IN ({OPEN}) OR compensation IS NOT NULL"),
    )
    op.create_index(
        "transactions_waiting_idx",
        "transactions",
        ["status", "updated_at"],
        postgresql_where=text("status IN ('challenged', 'in_review')"),
    )
    op.create_table(
        "refunds",
        Column("id", Text, primary_key=True),
        Column("payment_id", Text, nullable=False),
        Column("amount", BigInteger, nullable=False),
        Column("currency", Text, nullable=False),
        Column("status", Text, nullable=False),
        Column("reason", Text),
        Column("posting_id", Text),
        Column("acquirer_refund_id", Text),
        Column("failure", Text),
        Column("version", Integer, nullable=False),
        _at("created_at"),
        _at("updated_at"),
        CheckConstraint("amount > 0", name="refunds_amount_positive"),
        CheckConstraint("status IN ('pending', 'succeeded', 'failed')", name="refunds_status"),
    )
    op.create_foreign_key("refunds_payment_fk", "refunds", "transactions", ["payment_id"], ["id"])
    op.create_index("refunds_payment_idx", "refunds", ["payment_id"])
    op.create_table(
        "fx_quotes",
        Column("id", Text, primary_key=True),
        Column("scope", Text, nullable=False),
        Column("sell_currency", Text, nullable=False),
        Column("buy_currency", Text, nullable=False),
        Column("sell_amount", BigInteger, nullable=False),
        Column("buy_amount", BigInteger, nullable=False),
        Column("provider_rate", Text, nullable=False),
        Column("rate", Text, nullable=False),
        Column("spread_bps", Integer, nullable=False),
        _at("rate_as_of"),
        _at("created_at"),
        _at("expires_at"),
        Column("used_by", Text),
        CheckConstraint("sell_amount > 0 AND buy_amount > 0", name="fx_quotes_amounts"),
        CheckConstraint("sell_currency <> buy_currency", name="fx_quotes_pair"),
        CheckConstraint("expires_at > created_at", name="fx_quotes_expiry"),
        UniqueConstraint("used_by", name="fx_quotes_used_once"),
    )
    op.create_table(
        "transfer_batches",
        Column("id", Text, primary_key=True),
        Column("client_id", Text, nullable=False),
        Column("owner", Text, nullable=False),
        Column("source_account_id", Text, nullable=False),
        Column("customer_id", Text),
        Column("currency", Text, nullable=False),
        Column("atomic", Boolean, nullable=False),
        Column("count", Integer, nullable=False),
        Column("total", BigInteger, nullable=False),
        Column("status", Text, nullable=False),
        Column("step", Text),
        Column("funding_posting_id", Text),
        Column("distributed_chunks", Integer, nullable=False),
        Column("reason", Text),
        Column("version", Integer, nullable=False),
        _at("created_at"),
        _at("updated_at"),
        CheckConstraint("count BETWEEN 1 AND 1000", name="transfer_batches_size"),
        CheckConstraint("total > 0", name="transfer_batches_total"),
        CheckConstraint(
            "status IN ('received', 'processing', 'completed')", name="transfer_batches_status"
        ),
    )
    op.create_table(
        "system_accounts",
        Column("purpose", Text, primary_key=True),
        Column("currency", Text, primary_key=True),
        Column("account_id", Text, nullable=False, unique=True),
        _at("created_at"),
    )
    op.create_table(
        "acquirer_settlements",
        Column("id", Text, primary_key=True),
        Column("deposit_id", Text, nullable=False, unique=True),
        Column("amount", BigInteger, nullable=False),
        Column("currency", Text, nullable=False),
        Column("payload", JSONB, nullable=False),
        _at("received_at"),
    )
    op.create_table(
        "payout_destinations",
        Column("transaction_id", Text, primary_key=True),
        Column("wrapped_key", Text),
        Column("iban", Text),
        Column("holder_name", Text),
        Column("iban_index", Text, nullable=False),
        Column("iban_last4", Text, nullable=False),
        Column("country", Text, nullable=False),
    )
    migrations.create_outbox()
    migrations.create_audit_log()
    migrations.create_idempotency_keys()


def downgrade() -> None:
    for table in (
        "idempotency_keys",
        "payout_destinations",
        "acquirer_settlements",
        "system_accounts",
        "transfer_batches",
        "fx_quotes",
        "refunds",
        "transactions",
    ):
        op.drop_table(table)
    op.drop_table("audit_head")
    op.drop_table("audit_log")
    op.drop_table("outbox")
    op.execute("DROP FUNCTION IF EXISTS audit_log_reject_change()")
