"""The ledger: accounts, postings, entries, holds, and the outbox, inbox and audit log.

Explicit DDL, frozen as released: a later change is a new revision. The money
invariants are constraints and fixed SQL triggers (django-hordak style): entries
are immutable and a deferred constraint trigger refuses, at commit, a posting
whose entries do not sum to zero per currency (SQLSTATE 23514, constraint
``entries_zero_sum``).

Revision ID: accounts_0001
Revises:
"""

from alembic import context, op
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from lastro.core import migrations

revision = "accounts_0001"
down_revision = None
branch_labels = None
depends_on = None

ID = String(40)


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    op.create_table(
        "accounts",
        Column("id", ID, primary_key=True),
        Column("customer_id", ID),
        Column("currency", String(3), nullable=False),
        Column("kind", String(16), nullable=False),
        Column("status", String(16), nullable=False),
        Column("overdraft_limit", BigInteger, nullable=False, server_default="0"),
        Column("posted", BigInteger, nullable=False, server_default="0"),
        Column("pending", BigInteger, nullable=False, server_default="0"),
        Column("metadata", JSONB, nullable=False, server_default="{}"),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
        UniqueConstraint("id", "currency", name="accounts_id_currency_key"),
        CheckConstraint("kind IN ('customer', 'system')", name="accounts_kind_known"),
        CheckConstraint("status IN ('active', 'frozen', 'closed')", name="accounts_status_known"),
        CheckConstraint("overdraft_limit >= 0", name="accounts_overdraft_non_negative"),
        CheckConstraint(
            "kind = 'customer' OR overdraft_limit = 0", name="accounts_system_no_overdraft"
        ),
        CheckConstraint("pending >= 0", name="accounts_pending_non_negative"),
        CheckConstraint(
            "kind <> 'customer' OR posted - pending >= -overdraft_limit",
            name="accounts_within_overdraft",
        ),
        CheckConstraint(
            "status <> 'closed' OR (posted = 0 AND pending = 0)", name="accounts_closed_empty"
        ),
    )
    op.create_index("ix_accounts_customer_id", "accounts", ["customer_id"])
    op.create_table(
        "postings",
        Column("id", ID, primary_key=True),
        Column("external_id", String(255), nullable=False),
        Column("fingerprint", String(64), nullable=False),
        Column("description", Text, nullable=False, server_default=""),
        Column("metadata", JSONB, nullable=False, server_default="{}"),
        Column("reverses", ID, ForeignKey("postings.id")),
        Column("created_at", DateTime(timezone=True), nullable=False),
        UniqueConstraint("external_id", name="postings_external_id_key"),
        UniqueConstraint("reverses", name="postings_reverses_key"),
    )
    op.create_table(
        "entries",
        Column("id", BigInteger, Identity(), primary_key=True),
        Column("posting_id", ID, ForeignKey("postings.id"), nullable=False),
        Column("account_id", ID, nullable=False),
        Column("direction", String(6), nullable=False),
        Column("amount", BigInteger, nullable=False),
        Column("currency", String(3), nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        ForeignKeyConstraint(
            ["account_id", "currency"],
            ["accounts.id", "accounts.currency"],
            name="entries_account_currency_fkey",
        ),
        CheckConstraint("direction IN ('debit', 'credit')", name="entries_direction_known"),
        CheckConstraint("amount > 0", name="entries_amount_positive"),
    )
    op.create_index("ix_entries_posting_id", "entries", ["posting_id"])
    op.create_index("entries_account_history_idx", "entries", ["account_id", "id"])
    op.create_table(
        "holds",
        Column("id", ID, primary_key=True),
        Column("external_id", String(255), nullable=False),
        Column("fingerprint", String(64), nullable=False),
        Column("account_id", ID, nullable=False),
        Column("counterparty_id", ID, nullable=False),
        Column("amount", BigInteger, nullable=False),
        Column("currency", String(3), nullable=False),
        Column("status", String(16), nullable=False),
        Column("posted_amount", BigInteger, nullable=False, server_default="0"),
        Column("expires_at", DateTime(timezone=True), nullable=False),
        Column("description", Text, nullable=False, server_default=""),
        Column("metadata", JSONB, nullable=False, server_default="{}"),
        Column("posting_id", ID, ForeignKey("postings.id")),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("resolved_at", DateTime(timezone=True)),
        UniqueConstraint("external_id", name="holds_external_id_key"),
        ForeignKeyConstraint(
            ["account_id", "currency"],
            ["accounts.id", "accounts.currency"],
            name="holds_account_currency_fkey",
        ),
        ForeignKeyConstraint(
            ["counterparty_id", "currency"],
            ["accounts.id", "accounts.currency"],
            name="holds_counterparty_currency_fkey",
        ),
        CheckConstraint(
            "status IN ('pending', 'posted', 'voided', 'expired')", name="holds_status_known"
        ),
        CheckConstraint("amount > 0", name="holds_amount_positive"),
        CheckConstraint(
            "posted_amount >= 0 AND posted_amount <= amount", name="holds_posted_within_amount"
        ),
        CheckConstraint(
            "(status = 'pending') = (resolved_at IS NULL)", name="holds_resolved_when_final"
        ),
    )
    op.create_index("ix_holds_account_id", "holds", ["account_id"])
    op.create_index(
        "holds_due_idx", "holds", ["expires_at"], postgresql_where=text("status = 'pending'")
    )
    # The function bodies name the entries table with its schema: triggers run under
    # the writer's search_path, not the migration's.
    entries = f'"{schema}".entries'
    op.execute(
        f'CREATE FUNCTION "{schema}".entries_zero_sum_check() RETURNS trigger'  # noqa: S608 - schema is ours
        " LANGUAGE plpgsql AS $$ DECLARE bad record; BEGIN"
        " SELECT e.currency, sum(CASE e.direction WHEN 'credit' THEN e.amount"
        f" ELSE -e.amount END) AS total INTO bad FROM {entries} e"
        " WHERE e.posting_id = NEW.posting_id GROUP BY e.currency"
        " HAVING sum(CASE e.direction WHEN 'credit' THEN e.amount ELSE -e.amount END) <> 0"
        " LIMIT 1;"
        " IF FOUND THEN RAISE EXCEPTION USING ERRCODE = 'check_violation',"
        " CONSTRAINT = 'entries_zero_sum',"
        " MESSAGE = 'posting ' || NEW.posting_id || ' does not sum to zero in '"
        " || bad.currency || ' (credits - debits = ' || bad.total || ')'; END IF;"
        " RETURN NULL; END $$"
    )
    op.execute(
        f"CREATE CONSTRAINT TRIGGER entries_zero_sum AFTER INSERT ON {entries}"
        " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
        f' EXECUTE FUNCTION "{schema}".entries_zero_sum_check()'
    )
    op.execute(
        "CREATE FUNCTION entries_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN RAISE EXCEPTION USING ERRCODE = 'restrict_violation',"
        " MESSAGE = 'ledger entries are immutable: ' || TG_OP || ' rejected'; END $$"
    )
    op.execute(
        "CREATE TRIGGER entries_immutable BEFORE UPDATE OR DELETE ON entries"
        " FOR EACH ROW EXECUTE FUNCTION entries_reject_change()"
    )
    op.execute(
        "CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON entries"
        " FOR EACH STATEMENT EXECUTE FUNCTION entries_reject_change()"
    )
    migrations.create_outbox()
    migrations.create_inbox()
    migrations.create_audit_log()


def downgrade() -> None:
    migrations.drop_platform_tables()
    for table in ("holds", "entries", "postings", "accounts"):
        op.drop_table(table)
    op.execute("DROP FUNCTION entries_reject_change()")
    op.execute("DROP FUNCTION entries_zero_sum_check()")
