"""signing gate: a notation verdict keeps its certificate chain, so that an edit of the
trust stores checks stored signatures again at once (hand-written: one column).

Verdicts stored before this revision have no chain; a trust-store edit stops them
counting until their digest's next tag write verifies them again from the envelope.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 11:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('signing_signature') as batch:
        batch.add_column(sa.Column('certificate_chain', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('signing_signature') as batch:
        batch.drop_column('certificate_chain')
