"""Bodies apart (store format 4): the sealed records move from `events.body` into a table of their
own, `event_bodies` (seq primary key: the rowid on SQLite), appended in seq order; `events` keeps
the small patient-placed columns. The view `events_with_body` joins the two for SQL readers.

Why: a sealed record of a few KB inside the patient-placed row dirtied a page of the events
B-tree per event; apart, the bodies fill pages at the end of one B-tree (docs/PERFORMANCE.md,
"Bodies apart: store format 4").

The bodies are copied in seq order, a chunk at a time. SQLite then rebuilds `events` without the
column (its ALTER TABLE DROP COLUMN rewrites the table too, and needs SQLite 3.35); PostgreSQL
drops the column in place (the space is reused after VACUUM FULL). A store of 10M events takes
minutes and about twice its size on disk while it runs.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_CHUNK = 50_000
#: The columns of 0003 that `events` keeps (all but body), in table order.
_KEPT = ("place", "seq", "patient_id", "time_us", "kind", "actor_ae", "actor_host", "actor_user", "leaf")
#: The view for SQL readers: the columns of 0003's events, body included, by seq.
VIEW = ("CREATE VIEW events_with_body AS SELECT e.place, e.seq, e.patient_id, e.time_us, e.kind, e.actor_ae, "
        "e.actor_host, e.actor_user, b.body, e.leaf FROM events e JOIN event_bodies b ON b.seq = e.seq")


def _seq() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "event_bodies",
        sa.Column("seq", _seq(), primary_key=True, autoincrement=False),
        sa.Column("body", sa.Text(), nullable=False),
    )
    conn = op.get_bind()
    # Chunks by seq range, each in seq order: the new B-tree is only ever appended to.
    last = conn.execute(sa.text("SELECT max(seq) FROM events")).scalar()
    move = sa.text("INSERT INTO event_bodies (seq, body) SELECT seq, body FROM events "
                   "WHERE seq >= :start AND seq < :end ORDER BY seq")
    for start in range(0, (last if isinstance(last, int) else -1) + 1, _CHUNK):
        conn.execute(move, {"start": start, "end": start + _CHUNK})
    if conn.dialect.name == "sqlite":
        _rebuild_events_without_body()
    else:
        op.drop_column("events", "body")
    op.execute(VIEW)
    op.execute("UPDATE pacsguard_meta SET value = '4' WHERE key = 'format_version'")


def _rebuild_events_without_body() -> None:
    """SQLite: a copy of `events` without the column, in place order (the table's own order)."""
    op.create_table(
        "events_v4",
        sa.Column("place", _seq(), primary_key=True, autoincrement=False),
        sa.Column("seq", _seq(), nullable=False),
        sa.Column("patient_id", sa.String(128)),
        sa.Column("time_us", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(128), nullable=False),
        sa.Column("actor_ae", sa.String(64)),
        sa.Column("actor_host", sa.String(255)),
        sa.Column("actor_user", sa.String(255)),
        sa.Column("leaf", sa.LargeBinary(32), nullable=False),
    )
    names = ", ".join(_KEPT)
    op.execute(f"INSERT INTO events_v4 ({names}) SELECT {names} FROM events ORDER BY place")
    op.drop_table("events")
    op.rename_table("events_v4", "events")
    op.create_index("ix_events_seq", "events", ["seq"], unique=True)


def downgrade() -> None:
    raise NotImplementedError("a pacsguard store is not downgraded: restore the backup taken before upgrading")
