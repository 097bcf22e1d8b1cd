"""Audit-record retention: the audit log's signed start anchor and the trigger that
lets a retention purge (and nothing else) delete the oldest records
(``core/migrations.audit_log_add_anchor``, docs/decisions/0007-audit-retention-anchor.md).

Explicit DDL, frozen as released.

Revision ID: accounts_0004
Revises: accounts_0003
"""

from lastro.core.migrations import audit_log_add_anchor, audit_log_drop_anchor

revision = "accounts_0004"
down_revision = "accounts_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    audit_log_add_anchor()


def downgrade() -> None:
    audit_log_drop_anchor()
