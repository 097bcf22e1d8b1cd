"""DDL of the tables every service schema holds (outbox, inbox, audit log), as
explicit migration operations.

A migration must describe the database as it was when the migration was written,
not as today's code describes it, so that an old database upgraded later goes
through every step in between. Each function here is therefore frozen: a released
migration calls it, so it never changes. A later change to one of these tables is a
new function (``create_outbox`` → ``outbox_add_…``) called by a new revision of
each service. Triggers and constraints are fixed SQL, as django-hordak keeps its
ledger invariants. The functions run inside a revision's ``upgrade()``, in the
schema ``lastro.core.db.migrate`` put on the ``search_path``.
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Identity,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB


def create_outbox() -> None:
    """The transactional outbox (``core/events.py``): signed envelopes to publish."""
    op.create_table(
        "outbox",
        Column("id", BigInteger, Identity(), primary_key=True),
        Column("event_id", String(40), nullable=False, unique=True),
        Column("topic", String(200), nullable=False),
        Column("key", String(200), nullable=False),
        Column("envelope", JSONB, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("published_at", DateTime(timezone=True)),
    )
    op.create_index(
        "outbox_pending_idx", "outbox", ["id"], postgresql_where=text("published_at IS NULL")
    )


def create_inbox() -> None:
    """Ids of events each consumer has applied (``core/events.py``)."""
    op.create_table(
        "inbox",
        Column("consumer", String(100), primary_key=True),
        Column("event_id", String(40), primary_key=True),
        Column("event_type", String(200), nullable=False),
        Column("applied_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )


def create_audit_log() -> None:
    """The hash-chained audit log and its signed head (``core/audit.py``); the log
    refuses UPDATE, DELETE and TRUNCATE."""
    op.create_table(
        "audit_log",
        Column("seq", BigInteger, primary_key=True, autoincrement=False),
        Column("occurred_at", DateTime(timezone=True), nullable=False),
        Column("actor", Text, nullable=False),
        Column("action", Text, nullable=False),
        Column("target", Text, nullable=False),
        Column("outcome", Text, nullable=False),
        Column("source_ip", Text),
        Column("details", JSONB, nullable=False),
        Column("prev_hash", LargeBinary, nullable=False),
        Column("hash", LargeBinary, nullable=False),
        CheckConstraint("seq > 0", name="audit_log_seq_positive"),
        CheckConstraint("octet_length(hash) = 32", name="audit_log_hash_sha256"),
    )
    op.execute(
        "CREATE FUNCTION audit_log_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN RAISE EXCEPTION USING ERRCODE = 'restrict_violation', "
        "MESSAGE = 'audit log is append-only: ' || TG_OP || ' rejected'; END $$"
    )
    op.execute(
        "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION audit_log_reject_change()"
    )
    op.execute(
        "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_reject_change()"
    )
    op.create_table(
        "audit_head",
        Column("id", SmallInteger, primary_key=True, autoincrement=False),
        Column("seq", BigInteger, nullable=False),
        Column("hash", LargeBinary, nullable=False),
        Column("mac", LargeBinary, nullable=False),
        CheckConstraint("id = 1", name="audit_head_single_row"),
    )


def audit_log_add_anchor() -> None:
    """Retention for the audit log (``core/audit_retention.py`` ``purge_before``,
    docs/decisions/0007-audit-retention-anchor.md): the one-row ``audit_anchor`` (the
    last purged record's seq and hash, HMAC-signed), and the trigger function replaced
    so that a DELETE passes only for records at or before that anchor while the
    transaction-local setting ``lastro.audit_purge_through`` names the anchor's seq.
    UPDATE and TRUNCATE stay refused, and every other DELETE too."""
    op.create_table(
        "audit_anchor",
        Column("id", SmallInteger, primary_key=True, autoincrement=False),
        Column("seq", BigInteger, nullable=False),
        Column("hash", LargeBinary, nullable=False),
        Column("mac", LargeBinary, nullable=False),
        Column("purged_at", DateTime(timezone=True), nullable=False),
        CheckConstraint("id = 1", name="audit_anchor_single_row"),
        CheckConstraint("seq > 0", name="audit_anchor_seq_positive"),
    )
    op.execute(
        "CREATE OR REPLACE FUNCTION audit_log_reject_change() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ DECLARE anchored bigint; BEGIN "
        "IF TG_OP = 'DELETE' THEN "
        "EXECUTE format('SELECT seq FROM %I.audit_anchor WHERE id = 1', TG_TABLE_SCHEMA) "
        "INTO anchored; "
        "IF anchored IS NOT NULL AND OLD.seq <= anchored "
        "AND current_setting('lastro.audit_purge_through', true) = anchored::text "
        "THEN RETURN OLD; END IF; "
        "END IF; "
        "RAISE EXCEPTION USING ERRCODE = 'restrict_violation', "
        "MESSAGE = 'audit log is append-only: ' || TG_OP || ' rejected'; END $$"
    )


def audit_log_drop_anchor() -> None:
    """Undo :func:`audit_log_add_anchor`: refused once a purge anchored the chain (the
    log no longer starts at the genesis, so without its anchor it cannot verify)."""
    op.execute(
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM audit_anchor) THEN "
        "RAISE EXCEPTION USING ERRCODE = 'restrict_violation', "
        "MESSAGE = 'audit log was purged: its anchor cannot be dropped'; END IF; END $$"
    )
    op.execute(
        "CREATE OR REPLACE FUNCTION audit_log_reject_change() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ "
        "BEGIN RAISE EXCEPTION USING ERRCODE = 'restrict_violation', "
        "MESSAGE = 'audit log is append-only: ' || TG_OP || ' rejected'; END $$"
    )
    op.drop_table("audit_anchor")


def create_idempotency_keys() -> None:
    """Stored responses of ``Idempotency-Key`` requests (``core/idempotency.py``),
    kept at least 24 hours, per client and end user."""
    op.create_table(
        "idempotency_keys",
        Column("scope", Text, primary_key=True),
        Column("key", Text, primary_key=True),
        Column("fingerprint", Text, nullable=False),
        Column("status", Text, nullable=False),
        Column("response_status", SmallInteger),
        Column("response_headers", JSONB),
        Column("response_body", LargeBinary),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("expires_at", DateTime(timezone=True), nullable=False),
        CheckConstraint("status IN ('in_flight', 'completed')", name="idempotency_keys_status"),
        CheckConstraint(
            "status = 'in_flight' OR response_status IS NOT NULL",
            name="idempotency_keys_response",
        ),
        CheckConstraint(
            "expires_at >= created_at + interval '24 hours'", name="idempotency_keys_retention"
        ),
    )
    op.create_index("idempotency_keys_expires_at_idx", "idempotency_keys", ["expires_at"])


def drop_platform_tables() -> None:
    """Undo :func:`create_outbox`, :func:`create_inbox` and :func:`create_audit_log`."""
    for table in ("audit_head", "audit_log", "inbox", "outbox"):
        op.drop_table(table)
    op.execute("DROP FUNCTION IF EXISTS audit_log_reject_change()")
