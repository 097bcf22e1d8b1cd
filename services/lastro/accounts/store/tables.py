"""The account service's tables (SQLAlchemy Core metadata, PostgreSQL) and its
migrations.

The database repeats every money invariant the domain checks, so no code path
(a bug, a migration, a hand-written ``psql`` session) can bypass them:

* ``entries``: explicit ``direction`` (debit | credit), ``amount > 0``, the entry
  currency equal to its account's (composite foreign key), rows immutable, and a
  DEFERRABLE INITIALLY DEFERRED constraint trigger that rejects, at commit, any
  posting whose entries do not sum to zero per currency (SQLSTATE 23514);
* ``accounts``: ``pending >= 0``, ``overdraft_limit >= 0`` (always 0 on system
  accounts), a customer account's ``posted - pending >= -overdraft_limit``, and a
  closed account holds nothing;
* ``holds``: ``0 <= posted_amount <= amount``, known statuses only;
* ``customers``: personal fields sealed per customer (``lf1:`` tokens, the data key
  stored only wrapped by the KMS), unique e-mail blind index, and an erased row
  keeps neither its key nor its indexes.

The triggers are fixed SQL in the migrations (``migrations/``), which build exactly
this metadata revision by revision (``tests/integration/test_migrations.py``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    MetaData,
    String,
    Table,
    Text,
    TextClause,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.accounts.domain import MAX_EXTERNAL_ID_LENGTH, AccountKind, AccountStatus, HoldStatus
from lastro.core.audit import AuditTables, audit_tables
from lastro.core.db import migrate
from lastro.core.events import inbox_table, outbox_table

MIGRATIONS: Final = Path(__file__).parents[1] / "migrations"
ID = String(40)
CUSTOMERS: Final = "customers"
SEALED_COLUMNS: Final = ("name", "email", "phone", "document_number", "address")
EMAIL_INDEX_CONSTRAINT: Final = "customers_email_bi_key"
POSTING_EXTERNAL_ID_KEY: Final = "postings_external_id_key"
POSTING_REVERSES_KEY: Final = "postings_reverses_key"
HOLD_EXTERNAL_ID_KEY: Final = "holds_external_id_key"
_SCHEMA_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def sql(schema: str, *parts: str) -> TextClause:
    """The statement ``parts`` with ``{s}`` replaced by the schema name, which must be
    a plain lower-case identifier (the only text ever spliced into these statements)."""
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"schema name {schema!r} is not a plain identifier")
    return text("".join(parts).replace("{s}", schema))


def _in(column: str, values: Sequence[str]) -> str:
    quoted = ", ".join("'" + value + "'" for value in values)
    return f"{column} IN ({quoted})"


@dataclass(frozen=True)
class LedgerTables:
    """Every table of one account-service schema."""

    metadata: MetaData
    accounts: Table
    postings: Table
    entries: Table
    holds: Table
    customers: Table
    outbox: Table
    inbox: Table
    audit: AuditTables

    @property
    def schema(self) -> str:
        assert self.metadata.schema is not None
        return self.metadata.schema


def ledger_tables(schema: str = "accounts") -> LedgerTables:
    """The tables in ``schema`` (tests pass a throwaway schema)."""
    metadata = MetaData(schema=schema)
    accounts = Table(
        "accounts",
        metadata,
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
        CheckConstraint(_in("kind", list(AccountKind)), name="accounts_kind_known"),
        CheckConstraint(_in("status", list(AccountStatus)), name="accounts_status_known"),
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
        Index("ix_accounts_customer_id", "customer_id"),
    )
    postings = Table(
        "postings",
        metadata,
        Column("id", ID, primary_key=True),
        Column("external_id", String(MAX_EXTERNAL_ID_LENGTH), nullable=False),
        Column("fingerprint", String(64), nullable=False),
        Column("description", Text, nullable=False, server_default=""),
        Column("metadata", JSONB, nullable=False, server_default="{}"),
        Column("reverses", ID, ForeignKey("postings.id")),
        Column("created_at", DateTime(timezone=True), nullable=False),
        UniqueConstraint("external_id", name="postings_external_id_key"),
        UniqueConstraint("reverses", name="postings_reverses_key"),
    )
    entries = Table(
        "entries",
        metadata,
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
        Index("ix_entries_posting_id", "posting_id"),
        Index("entries_account_history_idx", "account_id", "id"),
    )
    holds = Table(
        "holds",
        metadata,
        Column("id", ID, primary_key=True),
        Column("external_id", String(MAX_EXTERNAL_ID_LENGTH), nullable=False),
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
        CheckConstraint(_in("status", list(HoldStatus)), name="holds_status_known"),
        CheckConstraint("amount > 0", name="holds_amount_positive"),
        CheckConstraint(
            "posted_amount >= 0 AND posted_amount <= amount", name="holds_posted_within_amount"
        ),
        CheckConstraint(
            "(status = 'pending') = (resolved_at IS NULL)", name="holds_resolved_when_final"
        ),
        Index("ix_holds_account_id", "account_id"),
        Index("holds_due_idx", "expires_at", postgresql_where=text("status = 'pending'")),
    )
    return LedgerTables(
        metadata=metadata,
        accounts=accounts,
        postings=postings,
        entries=entries,
        holds=holds,
        customers=customers_table(metadata),
        outbox=outbox_table(metadata),
        inbox=inbox_table(metadata),
        audit=audit_tables(metadata),
    )


def schema_metadata(schema: str = "accounts") -> MetaData:
    """The service's MetaData (every table, constraint and index) for ``schema``."""
    return ledger_tables(schema).metadata


def customers_table(metadata: MetaData) -> Table:
    """The customers table in ``metadata``'s schema (see the module docstring)."""
    return Table(
        CUSTOMERS,
        metadata,
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
        UniqueConstraint("email_bi", name=EMAIL_INDEX_CONSTRAINT),
        CheckConstraint("status IN ('active', 'erased')", name="customers_status_known"),
        CheckConstraint(
            "(status = 'active' AND data_key IS NOT NULL AND email_bi IS NOT NULL"
            " AND document_bi IS NOT NULL AND erased_at IS NULL)"
            " OR (status = 'erased' AND data_key IS NULL AND email_bi IS NULL"
            " AND document_bi IS NULL AND erased_at IS NOT NULL)",
            name="customers_erasure_complete",
        ),
        Index("customers_owner_idx", "owner"),
        Index("customers_document_bi_idx", "document_bi"),
    )


async def migrate_accounts(engine: AsyncEngine, schema: str = "accounts") -> None:
    """Upgrade ``schema`` to the newest revision (idempotent)."""
    await migrate(engine, schema, MIGRATIONS)
