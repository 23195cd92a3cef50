"""Events placed by patient: the events table is re-keyed by `place` (bucket, patient hash, seq; see
store/index.py) with a unique index on seq and the first patient ID as a column; of the other
copies of the sealed event's fields only those that searches filter on stay (time, kind, actor);
event_patients keeps only the patient IDs after an event's first.

The rows are copied in seq order, a chunk at a time, into the new table; a store of 10M events
takes minutes and twice its size on disk while it runs.

Revision ID: 0003
Revises: 0002
"""

import orjson
import sqlalchemy as sa
from alembic import op

from pacsguard.store.index import place_of, placed_by

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_CHUNK = 20_000
# The columns of 0001 that stay; this revision adds place and patient_id.
_KEPT = ("seq", "time_us", "kind", "actor_ae", "actor_host", "actor_user", "body", "leaf")


def _seq() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    new = op.create_table(
        "events_v3",
        sa.Column("place", _seq(), primary_key=True, autoincrement=False),
        sa.Column("seq", _seq(), nullable=False),
        sa.Column("patient_id", sa.String(128)),
        sa.Column("time_us", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(128), nullable=False),
        sa.Column("actor_ae", sa.String(64)),
        sa.Column("actor_host", sa.String(255)),
        sa.Column("actor_user", sa.String(255)),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("leaf", sa.LargeBinary(32), nullable=False),
    )
    conn = op.get_bind()
    read = sa.text(f"SELECT {', '.join(_KEPT)} FROM events WHERE seq >= :start ORDER BY seq LIMIT {_CHUNK}")
    start = 0
    while rows := conn.execute(read, {"start": start}).all():
        out = []
        for r in rows:
            first = placed_by(_patients(r.body))
            out.append({"place": place_of(r.seq, first), "patient_id": first, **r._asdict()})
        out.sort(key=lambda row: row["place"])
        conn.execute(new.insert(), out)
        start = rows[-1].seq + 1
    op.drop_table("events")
    op.rename_table("events_v3", "events")
    op.create_index("ix_events_seq", "events", ["seq"], unique=True)
    op.execute("DELETE FROM event_patients WHERE EXISTS (SELECT 1 FROM events WHERE events.seq = event_patients.seq "
               "AND events.patient_id = event_patients.patient_id)")
    op.execute("UPDATE pacsguard_meta SET value = '3' WHERE key = 'format_version'")


def _patients(body: str) -> list[str]:
    """The sealed event's patient IDs; a body that does not parse is copied as it is (verify reports it)."""
    try:
        return list(orjson.loads(body)["event"].get("patient_ids") or ())
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return []


def downgrade() -> None:
    raise NotImplementedError("a pacsguard store is not downgraded: restore the backup taken before upgrading")
