"""The ledger: accounts, postings, entries, holds, outbox, inbox and audit log.

Creates the tables of :func:`lastro.accounts.store.ledger_metadata` in the schema
that :func:`lastro.core.db.migrate` passes in (``config.attributes["schema"]``),
with their CHECK constraints and the deferred zero-sum trigger on entries. It
builds from the metadata as the code defines it, so a later revision that alters
these tables must also accept a database this revision created from the newer
metadata (``IF NOT EXISTS`` / ``IF EXISTS`` guards).
"""

from alembic import context, op

from lastro.accounts.store import ledger_metadata

revision = "accounts_0001_ledger"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    ledger_metadata(context.config.attributes["schema"]).create_all(op.get_bind())


def downgrade() -> None:
    ledger_metadata(context.config.attributes["schema"]).drop_all(op.get_bind())
