"""Identity schema: users, TOTP, recovery codes, clients, codes, refresh-token families,
signing keys and the audit log.

Creates the tables of :data:`lastro.identity.store.metadata` (with their CHECK
constraints and indexes) in the schema :func:`lastro.core.db.migrate` passes in,
which the shared Alembic environment puts first on the search path. It builds from
the metadata as the code defines it, so a later revision that alters these tables
must also accept a database this revision created from the newer metadata
(``IF NOT EXISTS`` / ``IF EXISTS`` guards).

Revision ID: 0001_identity
Revises:
"""

from alembic import op

from lastro.identity.store import metadata

revision = "0001_identity"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # No existence check: it would also see same-named tables elsewhere on the search path.
    metadata.create_all(op.get_bind(), checkfirst=False)


def downgrade() -> None:
    metadata.drop_all(op.get_bind(), checkfirst=False)
