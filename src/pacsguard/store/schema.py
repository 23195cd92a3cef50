"""The store's tables (SQLAlchemy Core). Alembic migrations in `migrations/` create and evolve them.

`events.body` holds the sealed record: the canonical JSON of {"event", "prev", "seq"} whose
RFC 9162 leaf hash is `events.leaf`. The other columns are copies for indexed search; `audit
verify` checks them against the sealed body, so editing a column is caught like editing the body.
"""

from __future__ import annotations

from sqlalchemy import (BigInteger, Column, Index, Integer, LargeBinary, MetaData, SmallInteger,
                        String, Table, Text)

metadata = MetaData()

STORE_FORMAT = "pacsguard-store"
STORE_FORMAT_VERSION = "1"

events = Table(
    "events", metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False),
    Column("event_id", String(32), nullable=False),
    Column("time_us", BigInteger, nullable=False),
    Column("kind", String(128), nullable=False),
    Column("severity", SmallInteger, nullable=False),
    Column("component", String(64), nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("actor_ae", String(64)),
    Column("actor_host", String(255)),
    Column("actor_user", String(255)),
    Column("target_ae", String(64)),
    Column("target_host", String(255)),
    Column("sop_instance_count", Integer, nullable=False),
    Column("body", Text, nullable=False),
    Column("leaf", LargeBinary(32), nullable=False),
)
Index("ix_events_time", events.c.time_us)
Index("ix_events_kind", events.c.kind, events.c.time_us)
Index("ix_events_actor_ae", events.c.actor_ae)
Index("ix_events_actor_host", events.c.actor_host)

event_patients = Table(
    "event_patients", metadata,
    Column("patient_id", String(128), primary_key=True),
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    sqlite_with_rowid=False,
)

event_studies = Table(
    "event_studies", metadata,
    Column("study_uid", String(64), primary_key=True),
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    sqlite_with_rowid=False,
)

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
