"""Customers: personal data sealed per customer, blind indexes, erasure tombstones.

Creates the table of :func:`lastro.accounts.customers.customers_metadata` in the
schema :func:`lastro.core.db.migrate` passes in, beside the ledger of revision 0001.
"""

from alembic import context, op

from lastro.accounts.customers import customers_metadata

revision = "accounts_0002_customers"
down_revision = "accounts_0001_ledger"
branch_labels = None
depends_on = None


def upgrade() -> None:
    customers_metadata(context.config.attributes["schema"]).create_all(op.get_bind())


def downgrade() -> None:
    customers_metadata(context.config.attributes["schema"]).drop_all(op.get_bind())
