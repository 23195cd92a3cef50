"""Search index for fast ingest: bucketed patient/study index, per-batch term postings (kinds,
actors) and batch time ranges, instead of four per-event secondary indexes (see store/index.py).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from pacsguard.store.index import BUCKET_BITS, BatchIndex

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

#: Events per batch when the index of an existing store is built.
_CHUNK = 5000


def _seq() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    for name in ("ix_events_time", "ix_events_kind", "ix_events_actor_ae", "ix_events_actor_host"):
        op.drop_index(name, table_name="events")
    for table, column, size in (("event_patients", "patient_id", 128), ("event_studies", "study_uid", 64)):
        op.rename_table(table, f"{table}_v1")
        op.create_table(
            table,
            sa.Column("bucket", sa.Integer(), primary_key=True, autoincrement=False),
            sa.Column(column, sa.String(size), primary_key=True),
            sa.Column("seq", _seq(), primary_key=True),
            sqlite_with_rowid=False,
        )
        op.execute(f"INSERT INTO {table} (bucket, {column}, seq) SELECT seq >> {BUCKET_BITS}, {column}, seq "
                   f"FROM {table}_v1")
        op.drop_table(f"{table}_v1")
    terms = op.create_table(
        "event_terms",
        sa.Column("bucket", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("term", sa.String(300).with_variant(sa.String(300, collation="C"), "postgresql"), primary_key=True),
        sa.Column("first_seq", _seq(), primary_key=True),
        sa.Column("seqs", sa.LargeBinary(), nullable=False),
        sqlite_with_rowid=False,
    )
    batches = op.create_table(
        "event_batches",
        sa.Column("first_seq", _seq(), primary_key=True, autoincrement=False),
        sa.Column("last_seq", _seq(), nullable=False),
        sa.Column("min_time_us", sa.BigInteger(), nullable=False),
        sa.Column("max_time_us", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_event_batches_time", "event_batches", ["max_time_us"])
    _index_existing(op.get_bind(), terms, batches)
    op.execute("UPDATE pacsguard_meta SET value = '2' WHERE key = 'format_version'")


def _index_existing(conn: sa.Connection, terms: sa.Table, batches: sa.Table) -> None:
    """Postings and batch rows for the events already stored, in chunks of _CHUNK seqs."""
    rows = conn.execute(sa.text("SELECT seq, time_us, kind, actor_ae, actor_host, actor_user FROM events "
                                "ORDER BY seq")).all()
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start:start + _CHUNK]
        idx = BatchIndex(chunk[0].seq)
        for r in chunk:
            idx.add(r.seq, r.time_us, r.kind, r.actor_ae, r.actor_host, r.actor_user, (), ())
        conn.execute(terms.insert(), [dict(zip(("bucket", "term", "first_seq", "seqs"), row, strict=True))
                                      for row in idx.term_rows()])
        conn.execute(batches.insert(), {"first_seq": chunk[0].seq, "last_seq": chunk[-1].seq,
                                        "min_time_us": idx.min_time, "max_time_us": idx.max_time})


def downgrade() -> None:
    raise NotImplementedError("a pacsguard store is not downgraded: restore the backup taken before upgrading")
