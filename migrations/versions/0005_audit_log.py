"""audit log: hash-chained events (time-partitioned on PostgreSQL), the chain head,
signed checkpoints and the forwarding sinks' cursors (hand-written: only these tables).

On PostgreSQL ``audit_event`` is declared ``PARTITION BY RANGE (time)`` with a DEFAULT
partition; the audit maintenance task creates the dated partitions ahead of time and
retention drops them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 14:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dtr.db.base

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = dtr.db.base.UTCDateTime(timezone=True)
GENESIS = "0" * 64


def _event_columns() -> list[sa.Column[object]]:
    return [
        sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('time', _TS, nullable=False),
        sa.Column('action', sa.String(length=64), nullable=False),
        sa.Column('outcome', sa.String(length=8), nullable=False),
        sa.Column('actor_kind', sa.String(length=16), nullable=False),
        sa.Column('actor_id', sa.String(length=255), nullable=False),
        sa.Column('actor', sa.String(length=255), nullable=False),
        sa.Column('method', sa.String(length=32), nullable=False),
        sa.Column('token_id', sa.String(length=64), nullable=False),
        sa.Column('client_ip', sa.String(length=64), nullable=False),
        sa.Column('user_agent', sa.String(length=512), nullable=False),
        sa.Column('request_id', sa.String(length=64), nullable=False),
        sa.Column('org', sa.String(length=255), nullable=False),
        sa.Column('repository', sa.String(length=255), nullable=False),
        sa.Column('tag', sa.String(length=255), nullable=False),
        sa.Column('digest', sa.String(length=200), nullable=False),
        sa.Column('resource', sa.String(length=512), nullable=False),
        sa.Column('reason', sa.String(length=255), nullable=False),
        sa.Column('rule', sa.String(length=512), nullable=False),
        sa.Column('detail', sa.Text(), nullable=False),
        sa.Column('prev_hash', sa.String(length=64), nullable=False),
        sa.Column('hash', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('seq', 'time', name=op.f('pk_audit_event')),
    ]


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.create_table('audit_event', *_event_columns(),
                        postgresql_partition_by='RANGE (time)')
        op.execute('CREATE TABLE audit_event_default PARTITION OF audit_event DEFAULT')
    else:
        op.create_table('audit_event', *_event_columns())
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.create_index('ix_audit_event_time', ['time'], unique=False)
        batch_op.create_index('ix_audit_event_actor', ['actor', 'seq'], unique=False)
        batch_op.create_index('ix_audit_event_action', ['action', 'seq'], unique=False,
                              postgresql_ops={'action': 'varchar_pattern_ops'})
        batch_op.create_index('ix_audit_event_repository', ['repository', 'seq'],
                              unique=False,
                              postgresql_ops={'repository': 'varchar_pattern_ops'})
        batch_op.create_index('ix_audit_event_outcome', ['outcome', 'seq'], unique=False)
    if op.get_bind().dialect.name == 'postgresql':
        op.create_index('ix_audit_event_repository_reversed', 'audit_event',
                        [sa.text('reverse(repository) text_pattern_ops'), 'seq'],
                        unique=False)

    head = op.create_table(
        'audit_head',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('seq', sa.BigInteger(), nullable=False),
        sa.Column('hash', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_head')),
    )
    op.bulk_insert(head, [{'id': 1, 'seq': 0, 'hash': GENESIS}])
    op.create_table(
        'audit_checkpoint',
        sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('hash', sa.String(length=64), nullable=False),
        sa.Column('time', _TS, nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('key_id', sa.String(length=128), nullable=False),
        sa.Column('signature', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('seq', name=op.f('pk_audit_checkpoint')),
    )
    op.create_table(
        'audit_cursor',
        sa.Column('sink', sa.String(length=255), nullable=False),
        sa.Column('seq', sa.BigInteger(), nullable=False),
        sa.Column('updated_at', _TS, nullable=False),
        sa.PrimaryKeyConstraint('sink', name=op.f('pk_audit_cursor')),
    )


def downgrade() -> None:
    op.drop_table('audit_cursor')
    op.drop_table('audit_checkpoint')
    op.drop_table('audit_head')
    op.drop_table('audit_event')
