"""signing gate: trust policies, trusted keys, notation trust stores, signature records,
trust state per digest and the global signing-policy version (hand-written: only these
tables).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 12:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dtr.db.base

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = dtr.db.base.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'signing_policy',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=255), nullable=False),
        sa.Column('pattern', sa.String(length=255), nullable=False),
        sa.Column('protected', sa.Boolean(), nullable=False),
        sa.Column('mode', sa.String(length=16), nullable=False),
        sa.Column('min_signatures', sa.Integer(), nullable=False),
        sa.Column('require_children_signed', sa.Boolean(), nullable=False),
        sa.Column('formats', sa.Text(), nullable=False),
        sa.Column('source', sa.String(length=16), nullable=False),
        sa.Column('version', sa.BigInteger(), nullable=False),
        sa.Column('created_at', _TS, nullable=False),
        sa.Column('updated_at', _TS, nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_signing_policy')),
        sa.UniqueConstraint('name', name=op.f('uq_signing_policy_name')),
    )
    op.create_table(
        'signing_key',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('policy_id', sa.Integer(), nullable=False),
        sa.Column('key_id', sa.String(length=64), nullable=False),
        sa.Column('name', sa.String(length=255), nullable=True),
        sa.Column('pem', sa.Text(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('valid_from', _TS, nullable=False),
        sa.Column('retired_at', _TS, nullable=True),
        sa.Column('revoked_at', _TS, nullable=True),
        sa.ForeignKeyConstraint(['policy_id'], ['signing_policy.id'],
                                name=op.f('fk_signing_key_policy_id_signing_policy'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_signing_key')),
        sa.UniqueConstraint('policy_id', 'key_id', name='uq_signing_key_policy_key'),
    )
    with op.batch_alter_table('signing_key', schema=None) as batch_op:
        batch_op.create_index('ix_signing_key_key_id', ['key_id'], unique=False)
    op.create_table(
        'signing_trust_store',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('policy_id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=255), nullable=False),
        sa.Column('roots_pem', sa.Text(), nullable=False),
        sa.Column('identities', sa.Text(), nullable=False),
        sa.Column('created_at', _TS, nullable=False),
        sa.ForeignKeyConstraint(['policy_id'], ['signing_policy.id'],
                                name=op.f('fk_signing_trust_store_policy_id_signing_policy'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_signing_trust_store')),
        sa.UniqueConstraint('policy_id', 'name', name='uq_signing_trust_store_name'),
    )
    op.create_table(
        'signing_signature',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('repository_id', sa.Integer(), nullable=False),
        sa.Column('subject_digest', sa.String(length=200), nullable=False),
        sa.Column('signature_digest', sa.String(length=200), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('format', sa.String(length=32), nullable=True),
        sa.Column('signer', sa.String(length=255), nullable=True),
        sa.Column('valid', sa.Boolean(), nullable=False),
        sa.Column('reason', sa.String(length=32), nullable=True),
        sa.Column('message', sa.Text(), nullable=True),
        sa.Column('policy_version', sa.BigInteger(), nullable=False),
        sa.Column('first_verified_at', _TS, nullable=False),
        sa.ForeignKeyConstraint(['repository_id'], ['repository.id'],
                                name=op.f('fk_signing_signature_repository_id_repository'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_signing_signature')),
        sa.UniqueConstraint('repository_id', 'signature_digest', 'subject_digest', 'position',
                            name='uq_signing_signature'),
    )
    with op.batch_alter_table('signing_signature', schema=None) as batch_op:
        batch_op.create_index('ix_signing_signature_subject',
                              ['repository_id', 'subject_digest'], unique=False)
        batch_op.create_index('ix_signing_signature_signer', ['signer'], unique=False)
    op.create_table(
        'signing_trust',
        sa.Column('repository_id', sa.Integer(), nullable=False),
        sa.Column('digest', sa.String(length=200), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('via', sa.String(length=200), nullable=True),
        sa.Column('policy_id', sa.Integer(), nullable=True),
        sa.Column('updated_at', _TS, nullable=False),
        sa.ForeignKeyConstraint(['repository_id'], ['repository.id'],
                                name=op.f('fk_signing_trust_repository_id_repository'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('repository_id', 'digest', name=op.f('pk_signing_trust')),
    )
    op.create_table(
        'signing_state',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('version', sa.BigInteger(), nullable=False),
        sa.Column('updated_at', _TS, nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_signing_state')),
    )


def downgrade() -> None:
    op.drop_table('signing_state')
    op.drop_table('signing_trust')
    with op.batch_alter_table('signing_signature', schema=None) as batch_op:
        batch_op.drop_index('ix_signing_signature_signer')
        batch_op.drop_index('ix_signing_signature_subject')
    op.drop_table('signing_signature')
    op.drop_table('signing_trust_store')
    with op.batch_alter_table('signing_key', schema=None) as batch_op:
        batch_op.drop_index('ix_signing_key_key_id')
    op.drop_table('signing_key')
    op.drop_table('signing_policy')
