"""The first reading of `pacsguard audit verify`: the whole store checked in memory bounded by one
bucket (65,536 events) rather than by the store, for the case that matters most often, a store
nobody changed.

Rows come in their stored order (place: bucket first, store/index.py), one bucket at a time, each
with its sealed record from event_bodies (read by seq). Each row must be exactly what sealing
wrote: its record (present) hashes to its leaf column, names its own seq,
links to the leaf before it (RFC 9162 leaves, the chain of store.py), its search columns and its
place are what the record gives, and the seqs run on without a gap. The bucket's index rows
(event_patients, event_studies) and the term postings and time range of every batch must be what
the sealed events give, and the tables must hold nothing else (event_bodies no record without
its events row). At the first departure the reading
stops and returns None: the forensic reading (verify.py) then reads everything at once and tells
what each departure is. What this one accepts, that one would find nothing in.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from sqlalchemy import Connection, Row, Select, Table, func, select

from pacsguard.events.model import Event
from pacsguard.store.bodies import body_columns
from pacsguard.store.columns import ae_key, host_key, kind_key, optional, study_keys, user_key
from pacsguard.store.index import BatchIndex, bucket_of, other_patients, place_of, placed_by
from pacsguard.store.merkle import leaf_hash
from pacsguard.store.schema import (
    event_batches,
    event_bodies,
    event_patients,
    event_studies,
    event_terms,
    events,
)
from pacsguard.store.store import GENESIS_PREV

# Search columns that must equal what the sealed event says.
COLUMNS = ("patient_id", "time_us", "kind", "actor_ae", "actor_host", "actor_user")

#: An event's term-index inputs as sealed: (time_us, kind, actor AE title, host, user).
Terms = tuple[int, str, str | None, str | None, str | None]
#: What a bucket's check needs of a row: seq, prev, leaf, its index values (patients after the
#: first, studies) and its term-index inputs, as sealed.
_Sealed = tuple[int, bytes, bytes, set[str], set[str], Terms]


class _Departure(Exception):
    """Something the forensic reading must look at."""


def _as_written(r: Row[Any]) -> bool:
    """Whether a row's seq, body and leaf have the types pacsguard writes: SQLite keeps whatever an
    UPDATE writes (a real seq, a text leaf), which the forensic reading names as a finding."""
    return (isinstance(r.seq, int) and not isinstance(r.seq, bool) and r.body_type == "text"
            and isinstance(r.body, (bytes, str)) and isinstance(r.leaf, (bytes, memoryview)))


def select_rows(dialect: str) -> Select[Any]:
    """Every events row with its sealed record (body None when event_bodies lacks it; read as
    `body_columns` says): the record is looked up by seq in the bodies' own B-tree, which is in seq
    order as a bucket is."""
    return select(events.c.place, events.c.seq, *body_columns(dialect), events.c.leaf,
                  *[events.c[c] for c in COLUMNS]).select_from(
        events.outerjoin(event_bodies, event_bodies.c.seq == events.c.seq))


def columns_of(ev: Event) -> dict[str, Any]:
    """The search columns as the store writes them from the sealed event (keyed as columns.py says)."""
    return {"patient_id": placed_by(ev.patient_ids), "time_us": ev.time_us, "kind": kind_key(ev.kind),
            "actor_ae": optional(ae_key, ev.actor.ae_title), "actor_host": optional(host_key, ev.actor.host),
            "actor_user": optional(user_key, ev.actor.user)}


def terms_of(ev: Event) -> Terms:
    actor = ev.actor
    return ev.time_us, ev.kind, actor.ae_title, actor.host, actor.user


def clean_chain(conn: Connection, expected: int, progress: Callable[[int, int], None] | None) -> list[bytes] | None:
    """The leaf hashes of the sealed events in order when every row, index row and batch is as
    sealed; None at the first departure."""
    try:
        return _Reading(conn, expected, progress).run()
    except _Departure:
        return None
    except TypeError:
        # An index or batch column edited to another type (text where a seq belongs): a departure
        # like any other, which the forensic reading names.
        return None


class _Reading:
    def __init__(self, conn: Connection, expected: int, progress: Callable[[int, int], None] | None) -> None:
        self.conn, self.expected, self.progress = conn, expected, progress
        self.leaves: list[bytes] = []
        self.batches: Iterator[Row[Any]] = iter(conn.execute(select(event_batches)
                                                             .order_by(event_batches.c.first_seq)).all())
        self.batch: Row[Any] | None = next(self.batches, None)
        self.pending: list[Terms] = []  # the sealed terms of the current batch's events seen so far
        self.terms: dict[tuple[str, int], bytes] = {}  # the term rows of self.terms_bucket
        self.terms_bucket: int | None = None
        self.index_rows = 0
        self.term_rows = 0

    def run(self) -> list[bytes]:
        stmt = select_rows(self.conn.dialect.name).order_by(events.c.place)
        # Rows fetched 2,000 at a time: what the reading holds is one bucket's sealed fields, these
        # rows and a leaf hash per event, whatever the size of the store.
        result = self.conn.execution_options(stream_results=True, yield_per=2_000).execute(stmt)
        bucket: int | None = None
        rows: list[_Sealed] = []
        for n, r in enumerate(result):
            if not _as_written(r):
                raise _Departure
            b = bucket_of(r.seq)
            if b != bucket:
                if bucket is not None:
                    if b < bucket:
                        raise _Departure
                    self._bucket(bucket, rows)
                bucket, rows = b, []
            rows.append(self._row(r))
            if self.progress is not None and n % 20_000 == 0:
                self.progress(n, self.expected)
        if bucket is not None:
            self._bucket(bucket, rows)
        self._finish()
        if self.progress is not None:
            self.progress(len(self.leaves), len(self.leaves))
        return self.leaves

    @staticmethod
    def _row(r: Row[Any]) -> _Sealed:
        # _as_written(r) holds: seq an integer, body text (its bytes on SQLite), leaf bytes.
        body = r.body.encode() if isinstance(r.body, str) else bytes(r.body)
        leaf = leaf_hash(body)
        if leaf != bytes(r.leaf):
            raise _Departure
        try:
            sealed = orjson.loads(body)
            seq, prev = int(sealed["seq"]), bytes.fromhex(sealed["prev"])
            event = Event.from_dict(sealed["event"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise _Departure from None
        cols = columns_of(event)
        if seq != r.seq or r.place != place_of(seq, cols["patient_id"]) \
                or any(getattr(r, name) != cols[name] for name in COLUMNS):
            raise _Departure
        others, studies = set(other_patients(event.patient_ids)), set(study_keys(event.study_uids))
        return seq, prev, leaf, others, studies, terms_of(event)

    def _bucket(self, bucket: int, rows: list[_Sealed]) -> None:
        rows.sort(key=lambda row: row[0])
        patients = self._index(event_patients, event_patients.c.patient_id, bucket)
        studies = self._index(event_studies, event_studies.c.study_uid, bucket)
        for seq, prev, leaf, others, study_uids, terms in rows:
            if seq != len(self.leaves) or prev != (self.leaves[-1] if self.leaves else GENESIS_PREV):
                raise _Departure
            if patients.pop(seq, set()) != others or studies.pop(seq, set()) != study_uids:
                raise _Departure
            self.leaves.append(leaf)
            self.pending.append(terms)
            self._batches()
        if patients or studies:  # index rows of events that do not exist
            raise _Departure

    def _index(self, table: Table, column: Any, bucket: int) -> dict[int, set[str]]:
        out: dict[int, set[str]] = defaultdict(set)
        for value, seq in self.conn.execute(select(column, table.c.seq).where(table.c.bucket == bucket)):
            out[seq].add(value)
            self.index_rows += 1
        return out

    def _batches(self) -> None:
        """Check every batch whose events have all been read."""
        while self.batch is not None and self.batch.last_seq < len(self.leaves):
            b = self.batch
            first = len(self.leaves) - len(self.pending)
            if b.first_seq != first or b.last_seq < b.first_seq:
                raise _Departure
            count = b.last_seq - b.first_seq + 1
            members, self.pending = self.pending[:count], self.pending[count:]
            idx = BatchIndex(b.first_seq)
            for seq, m in enumerate(members, b.first_seq):
                idx.add(seq, *m, (), ())
            if (idx.min_time, idx.max_time) != (b.min_time_us, b.max_time_us):
                raise _Departure
            for term_bucket, term, first_seq, blob in idx.term_rows():
                if self._term(term_bucket, term, first_seq) != blob:
                    raise _Departure
            self.batch = next(self.batches, None)

    def _term(self, bucket: int, term: str, first_seq: int) -> bytes | None:
        if bucket != self.terms_bucket:
            if self.terms:  # term rows of the bucket before that no batch accounts for
                raise _Departure
            self.terms_bucket = bucket
            self.terms = {(t.term, t.first_seq): bytes(t.seqs) for t in self.conn.execute(
                select(event_terms.c.term, event_terms.c.first_seq, event_terms.c.seqs)
                .where(event_terms.c.bucket == bucket))}
            self.term_rows += len(self.terms)
        return self.terms.pop((term, first_seq), None)

    def _finish(self) -> None:
        """Nothing left over: every event in a batch, every batch and every index or term row
        accounted for."""
        if self.pending or self.batch is not None or self.terms:
            raise _Departure
        counted = sum(self.conn.execute(select(func.count()).select_from(t)).scalar() or 0
                      for t in (event_patients, event_studies))
        terms = self.conn.execute(select(func.count()).select_from(event_terms)).scalar() or 0
        if counted != self.index_rows or terms != self.term_rows:
            raise _Departure
        # Each events row was read with its own record: more records are ones without an event.
        if (self.conn.execute(select(func.count()).select_from(event_bodies)).scalar() or 0) != len(self.leaves):
            raise _Departure
