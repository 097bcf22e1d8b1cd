"""The transaction service's tables, as the queries see them.

The DDL that creates them is in ``migrations/`` (explicit operations, frozen per
revision); these definitions must describe the newest revision. Every table
lives in one schema (``transactions`` by default, a throwaway one in tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from lastro.core.audit import AuditTables, audit_tables
from lastro.core.events import outbox_table
from lastro.core.idempotency import idempotency_table


@dataclass(frozen=True)
class Tables:
    metadata: MetaData
    transactions: Table
    refunds: Table
    quotes: Table
    batches: Table
    system_accounts: Table
    settlements: Table
    payout_destinations: Table
    outbox: Table
    idempotency: Table
    audit: AuditTables

    @property
    def schema(self) -> str:
        assert self.metadata.schema is not None
        return self.metadata.schema


OPEN: Final = "'received', 'screening', 'approved', 'authorized'"
"""The states the worker moves on by itself (the sweeper's partial index)."""


def _timestamp(name: str, nullable: bool = False) -> Column[object]:
    return Column(name, DateTime(timezone=True), nullable=nullable)


def tables(schema: str) -> Tables:
    """The tables of ``schema``."""
    metadata = MetaData(schema=schema)
    transactions = Table(
        "transactions",
        metadata,
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
        _timestamp("hold_expires_at", nullable=True),
        Column("authorization_id", Text),
        Column("capture_id", Text),
        Column("captured_amount", BigInteger, nullable=False),
        Column("refunded_amount", BigInteger, nullable=False),
        Column("capture_requested", BigInteger),
        Column("void_requested", Boolean, nullable=False),
        _timestamp("confirmed_at", nullable=True),
        Column("review_outcome", Text),
        Column("reverse_requested", Boolean, nullable=False),
        Column("compensation", Text),
        Column("settlement_id", Text),
        Column("last_error", Text),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        Index("transactions_source_idx", "source_account_id", "id"),
        Index("transactions_destination_idx", "destination_account_id", "id"),
        Index("transactions_created_idx", "created_at"),
        Index("transactions_batch_idx", "batch_id"),
        Index("transactions_settlement_idx", "settlement_id"),
        Index("transactions_capture_idx", "capture_id"),
        Index(
            "transactions_open_idx",
            "updated_at",
            postgresql_where=text(f"status IN ({OPEN}) OR compensation IS NOT NULL"),
        ),
        Index(
            "transactions_waiting_idx",
            "status",
            "updated_at",
            postgresql_where=text("status IN ('challenged', 'in_review')"),
        ),
    )
    refunds = Table(
        "refunds",
        metadata,
        Column("id", Text, primary_key=True),
        Column(
            "payment_id",
            Text,
            ForeignKey(transactions.c.id, name="refunds_payment_fk"),
            nullable=False,
        ),
        Column("amount", BigInteger, nullable=False),
        Column("currency", Text, nullable=False),
        Column("status", Text, nullable=False),
        Column("reason", Text),
        Column("posting_id", Text),
        Column("acquirer_refund_id", Text),
        Column("failure", Text),
        Column("version", Integer, nullable=False),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        Index("refunds_payment_idx", "payment_id"),
        Index("refunds_pending_idx", "updated_at", postgresql_where=text("status = 'pending'")),
    )
    quotes = Table(
        "fx_quotes",
        metadata,
        Column("id", Text, primary_key=True),
        Column("scope", Text, nullable=False),
        Column("sell_currency", Text, nullable=False),
        Column("buy_currency", Text, nullable=False),
        Column("sell_amount", BigInteger, nullable=False),
        Column("buy_amount", BigInteger, nullable=False),
        Column("provider_rate", Text, nullable=False),
        Column("rate", Text, nullable=False),
        Column("spread_bps", Integer, nullable=False),
        _timestamp("rate_as_of"),
        _timestamp("created_at"),
        _timestamp("expires_at"),
        Column("used_by", Text),
        UniqueConstraint("used_by", name="fx_quotes_used_once"),
    )
    batches = Table(
        "transfer_batches",
        metadata,
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
        _timestamp("created_at"),
        _timestamp("updated_at"),
    )
    system_accounts = Table(
        "system_accounts",
        metadata,
        Column("purpose", Text, primary_key=True),
        Column("currency", Text, primary_key=True),
        Column("account_id", Text, nullable=False, unique=True),
        _timestamp("created_at"),
    )
    settlements = Table(
        "acquirer_settlements",
        metadata,
        Column("id", Text, primary_key=True),
        Column("deposit_id", Text, nullable=False, unique=True),
        Column("amount", BigInteger, nullable=False),
        Column("currency", Text, nullable=False),
        Column("payload", JSONB, nullable=False),
        _timestamp("received_at"),
    )
    payout_destinations = Table(
        "payout_destinations",
        metadata,
        Column("transaction_id", Text, primary_key=True),
        Column("wrapped_key", Text),
        Column("iban", Text),
        Column("holder_name", Text),
        Column("iban_index", Text, nullable=False),
        Column("iban_last4", Text, nullable=False),
        Column("country", Text, nullable=False),
    )
    return Tables(
        metadata=metadata,
        transactions=transactions,
        refunds=refunds,
        quotes=quotes,
        batches=batches,
        system_accounts=system_accounts,
        settlements=settlements,
        payout_destinations=payout_destinations,
        outbox=outbox_table(metadata),
        idempotency=idempotency_table(metadata),
        audit=audit_tables(metadata),
    )
