"""Initial store schema: sealed events, patient/study index tables, tree state, checkpoints, meta.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _seq() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("seq", _seq(), primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.String(32), nullable=False),
        sa.Column("time_us", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(128), nullable=False),
        sa.Column("severity", sa.SmallInteger(), nullable=False),
        sa.Column("component", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("actor_ae", sa.String(64)),
        sa.Column("actor_host", sa.String(255)),
        sa.Column("actor_user", sa.String(255)),
        sa.Column("target_ae", sa.String(64)),
        sa.Column("target_host", sa.String(255)),
        sa.Column("sop_instance_count", sa.Integer(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("leaf", sa.LargeBinary(32), nullable=False),
    )
    op.create_index("ix_events_time", "events", ["time_us"])
    op.create_index("ix_events_kind", "events", ["kind", "time_us"])
    op.create_index("ix_events_actor_ae", "events", ["actor_ae"])
    op.create_index("ix_events_actor_host", "events", ["actor_host"])
    op.create_table(
        "event_patients",
        sa.Column("patient_id", sa.String(128), primary_key=True),
        sa.Column("seq", _seq(), primary_key=True),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "event_studies",
        sa.Column("study_uid", sa.String(64), primary_key=True),
        sa.Column("seq", _seq(), primary_key=True),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "tree_state",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("frontier", sa.LargeBinary(), nullable=False),
        sa.Column("last_leaf", sa.LargeBinary(32), nullable=False),
    )
    op.create_table(
        "checkpoints",
        sa.Column("tree_size", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
        sa.Column("time_us", sa.BigInteger(), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("signature", sa.LargeBinary(64), nullable=False),
    )
    op.create_table(
        "pacsguard_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    for name in ("pacsguard_meta", "checkpoints", "tree_state", "event_studies", "event_patients", "events"):
        op.drop_table(name)
