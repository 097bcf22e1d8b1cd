"""OpenID Connect: a client's ID tokens are signed with the algorithm it registered
(``id_token_signed_response_alg``), RS256 when it registered none (OpenID Connect Core
1.0 §2). Clients registered before keep ES256, what their ID tokens always were.

Revision ID: identity_0006
Revises: identity_0005
"""

from alembic import op
from sqlalchemy import Column, Text

revision = "identity_0006"
down_revision = "identity_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("clients", Column("id_token_signed_response_alg", Text, server_default="ES256"))
    op.alter_column("clients", "id_token_signed_response_alg", server_default="RS256")
    op.alter_column("clients", "id_token_signed_response_alg", nullable=False)
    op.create_check_constraint(
        "clients_id_token_alg",
        "clients",
        "id_token_signed_response_alg IN ('RS256', 'ES256')",
    )


def downgrade() -> None:
    op.drop_constraint("clients_id_token_alg", "clients")
    op.drop_column("clients", "id_token_signed_response_alg")
