"""The store's tables (SQLAlchemy Core). Alembic migrations in `migrations/` create and evolve them.

`event_bodies.body` holds the sealed record: the canonical JSON of {"event", "prev", "seq"}
whose RFC 9162 leaf hash is `events.leaf`. The bodies sit in a table of their own keyed by seq
(the rowid on SQLite), so each batch appends them at the end of one B-tree; only the small
`events` rows are keyed by `place` (bucket, patient hash, seq: see index.py), and `seq` has a
unique index there. Stored inside the patient-placed rows, a 3.7 KB body dirtied a 16 KiB page
per event (~48 us of CPU against ~12 us apart: docs/PERFORMANCE.md, "Bodies apart"). The other
columns of `events` are copies for filtering and for SQL readers (`patient_id` is the event's
first patient ID; other fields are in the body's JSON, e.g. SQLite's
`json_extract(body, '$.event.outcome')` on the view `events_with_body`, which migration 0004
creates); `audit verify` checks them against the sealed body, so editing a column is caught like
editing the body. The search index
(event_patients, event_studies, event_terms, event_batches) is described in `index.py`; verify
checks it against the bodies too.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, LargeBinary, MetaData, String, Table, Text

metadata = MetaData()

STORE_FORMAT = "pacsguard-store"
STORE_FORMAT_VERSION = "4"

SEQ = BigInteger().with_variant(Integer, "sqlite")
# Byte order, so that prefix ranges over terms mean the same on PostgreSQL as on SQLite.
TERM = String(300).with_variant(String(300, collation="C"), "postgresql")

events = Table(
    "events", metadata,
    # INTEGER on SQLite makes it the rowid: the table itself is ordered by place.
    Column("place", SEQ, primary_key=True, autoincrement=False),
    Column("seq", SEQ, nullable=False),
    Column("patient_id", String(128)),
    Column("time_us", BigInteger, nullable=False),
    Column("kind", String(128), nullable=False),
    Column("actor_ae", String(64)),
    Column("actor_host", String(255)),
    Column("actor_user", String(255)),
    Column("leaf", LargeBinary(32), nullable=False),
)
Index("ix_events_seq", events.c.seq, unique=True)

event_bodies = Table(
    "event_bodies", metadata,
    # INTEGER on SQLite makes it the rowid: bodies are appended in seq order at the B-tree's end.
    Column("seq", SEQ, primary_key=True, autoincrement=False),
    Column("body", Text, nullable=False),
)
# The view events_with_body (events joined with their records, for SQL readers: docs/store.md) is
# made by migration 0004 only; pacsguard itself reads the two tables.


def _context_index(name: str, column: str, size: int) -> Table:
    """One row per (value, event) for other patient IDs or study UIDs, keyed bucket first (index.py)."""
    return Table(
        name, metadata,
        Column("bucket", Integer, primary_key=True, autoincrement=False),
        Column(column, String(size), primary_key=True),
        Column("seq", SEQ, primary_key=True),
        sqlite_with_rowid=False,
    )


event_patients = _context_index("event_patients", "patient_id", 128)
event_studies = _context_index("event_studies", "study_uid", 64)

event_terms = Table(
    "event_terms", metadata,
    Column("bucket", Integer, primary_key=True, autoincrement=False),
    Column("term", TERM, primary_key=True),
    Column("first_seq", SEQ, primary_key=True),
    Column("seqs", LargeBinary, nullable=False),
    sqlite_with_rowid=False,
)

event_batches = Table(
    "event_batches", metadata,
    Column("first_seq", SEQ, primary_key=True, autoincrement=False),
    Column("last_seq", SEQ, nullable=False),
    Column("min_time_us", BigInteger, nullable=False),
    Column("max_time_us", BigInteger, nullable=False),
)
Index("ix_event_batches_time", event_batches.c.max_time_us)

tree_state = Table(
    "tree_state", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("size", BigInteger, nullable=False),
    Column("frontier", LargeBinary, nullable=False),
    Column("last_leaf", LargeBinary(32), nullable=False),
)

checkpoints = Table(
    "checkpoints", metadata,
    Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
    Column("root", LargeBinary(32), nullable=False),
    Column("time_us", BigInteger, nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("signature", LargeBinary(64), nullable=False),
)

meta = Table(
    "pacsguard_meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
