"""`events search`: find the seqs that match through the index (index.py), then read those events,
with every filter applied again to the rows themselves, so the index only narrows the reading.

A patient search reads, bucket by bucket, the run of rows placed by that patient (index.py) and
the events that name the patient second or later (event_patients). Otherwise candidates come from
the indexed filters given: study (its index), actor or kind (term postings); a time range alone
reads the seq span of the batches that overlap it; no filter reads the table in seq order.

The filters apply to the `events` rows; each match's sealed record is then read from
`event_bodies` by seq, in the same statement (an outer join, so that a missing record is named
rather than its event silently left out).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, or_, select, text
from sqlalchemy.engine import Connection

from pacsguard.store.bodies import Unreadable, body_columns, body_of
from pacsguard.store.columns import ae_key, host_key, kind_key, patient_key, study_key, term_key, user_key
from pacsguard.store.database import describe
from pacsguard.store.errors import StoreError
from pacsguard.store.index import ACTOR, KIND, bucket_of, buckets_upto, decode_postings, patient_run
from pacsguard.store.schema import (
    event_batches,
    event_bodies,
    event_patients,
    event_studies,
    event_terms,
    events,
    tree_state,
)

#: Events read per statement when fetching candidates by seq.
_FETCH = 500
#: Buckets read per statement by a patient search.
_BUCKETS = 64

#: Conditions on the events rows, all of which must hold.
_Conditions = list[ColumnElement[bool]]

#: Each events row with its sealed record (None when the event_bodies row is missing).
_WITH_BODY = events.outerjoin(event_bodies, event_bodies.c.seq == events.c.seq)


def _rows(conn: Connection) -> Select[Any]:
    """(seq, body, body_type) of events rows: the filters go on `events`, the body is read by seq, as
    verify reads it (bodies.body_columns: on SQLite its bytes and storage class, as SQLite keeps
    whatever bytes an edit writes as TEXT and sqlite3 would fail the whole statement with a message
    that echoes the record)."""
    return select(events.c.seq, *body_columns(conn.dialect.name)).select_from(_WITH_BODY)


def _read(rows: Iterable[Any]) -> Iterator[tuple[int, Any]]:
    """(seq, body) of rows selected by `_rows`: the body decoded (bodies.body_of), one that cannot
    be kept as `Unreadable` for `_sealed` to name; None for a missing record."""
    for seq, raw, kind in rows:
        yield seq, None if raw is None else body_of(raw, kind)


@dataclass(slots=True)
class EventQuery:
    """Filters of `events search`; every given filter must hold (AND)."""

    patient: str | None = None
    study: str | None = None
    actor: str | None = None
    kind: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    after_seq: int | None = None
    limit: int | None = 1000
    newest_first: bool = False


def select_events(conn: Connection, q: EventQuery) -> Iterator[tuple[int, str]]:
    """(seq, sealed body) of the matching events, in seq order (or newest first), up to q.limit.
    StoreError, naming the row, when a body is not a sealed record (the store is damaged)."""
    for seq, body in _select(conn, q):
        yield seq, _sealed(conn, seq, body)


#: How every sealed record begins, and what follows its event (pacsguard.store.store seals them so).
_SEALED_START = '{"event":'
_SEALED_PREV = ',"prev":"'


#: SQLite storage classes as the type a value of it reads as, for `_sealed`'s message.
_PYTHON_TYPES = {"blob": "bytes", "integer": "int", "real": "float"}


def _sealed(conn: Connection, seq: int, body: object) -> str:
    """``body`` when it has the sealed record's frame (two string checks: readers cut the event out
    by that frame rather than parse the envelope); a damaged row is refused by name, not left to
    fail later as an internal error."""
    if isinstance(body, str) and body.startswith(_SEALED_START) and body.rfind(_SEALED_PREV) > len(_SEALED_START):
        return body
    if body is None:
        raise damaged(conn, f"events row #{seq}: its sealed record is missing (event_bodies has no row #{seq})")
    if isinstance(body, Unreadable) and body.raw:
        raise damaged(conn, f"events row #{seq}: its sealed record is not valid UTF-8 text ({len(body.raw)} bytes; "
                            "pacsguard never stores such text: the store was edited outside pacsguard)")
    # The length and type only: a body holds patient data, which an error line should not echo.
    kind = _PYTHON_TYPES.get(body.kind, body.kind) if isinstance(body, Unreadable) else type(body).__name__
    found = f"{len(body)} characters" if isinstance(body, str) else f"a value of type {kind}"
    raise damaged(conn, f"events row #{seq}: its body is not a sealed record ({found} without its frame)")


def damaged(conn: Connection, what: str) -> StoreError:
    """The error for a row no writer of pacsguard could have stored: the store is damaged or edited
    (docs/store.md: `audit verify` tells what else is)."""
    where = describe(conn.engine.url.render_as_string(hide_password=True))
    return StoreError(f"{where}: the store is damaged: {what}; run `pacsguard audit verify` to see what "
                      "else is, and restore a backup")


def _select(conn: Connection, q: EventQuery) -> Iterator[tuple[int, str]]:
    if q.limit is not None and q.limit <= 0:
        return
    if q.kind is not None and q.kind.endswith("*") and "\x00" in q.kind:
        return  # no stored kind begins so: columns.py keys one holding U+0000 (and PostgreSQL cannot be asked)
    exact = _row_filter(q)
    if q.patient is not None:
        # Columns and index keys hold what columns.py makes of a value: the search asks for the same.
        yield from _by_patient(conn, q, patient_key(q.patient), exact)
        return
    candidates = _candidates(conn, q)
    if candidates is None:
        if q.since is not None or q.until is not None:
            lo, hi = _time_span(conn, q)
            if lo is None:
                return
            exact.append(events.c.seq.between(lo, hi))
        yield from _scan(conn, q, exact)
        return
    wanted = sorted(candidates, reverse=q.newest_first)
    if q.after_seq is not None:
        wanted = [s for s in wanted if s > q.after_seq]
    yield from _limited(_fetch(conn, wanted, exact), q.limit)


def _fetch(conn: Connection, seqs: Sequence[int], exact: _Conditions) -> Iterator[tuple[int, str]]:
    """The events of *seqs* that pass *exact*, in the order of *seqs*."""
    for i in range(0, len(seqs), _FETCH):
        chunk = seqs[i:i + _FETCH]
        found: dict[int, Any] = dict(_read(conn.execute(_rows(conn).where(events.c.seq.in_(chunk), *exact))))
        for seq in chunk:
            if seq in found:
                yield seq, found[seq]


def _limited(rows: Iterator[tuple[int, str]], limit: int | None) -> Iterator[tuple[int, str]]:
    for n, row in enumerate(rows, 1):
        yield row
        if n == limit:
            return


def _by_patient(conn: Connection, q: EventQuery, patient: str, exact: _Conditions) -> Iterator[tuple[int, str]]:
    """A bucket at a time (newest first if asked), so a limited search stops early: the events placed
    by the patient (one run of rows per bucket) and those that name the patient later on."""
    buckets = _buckets(conn)
    if q.after_seq is not None:
        buckets = buckets[bucket_of(q.after_seq):]
        exact.append(events.c.seq > q.after_seq)
    if q.study is not None:
        exact.append(events.c.seq.in_(select(event_studies.c.seq).where(
            event_studies.c.study_uid == study_key(q.study), event_studies.c.bucket.in_(buckets))))
    if q.newest_first:
        buckets.reverse()

    def found() -> Iterator[tuple[int, str]]:
        for i in range(0, len(buckets), _BUCKETS):
            chunk = buckets[i:i + _BUCKETS]
            # The runs as literal integers: built and planned in microseconds whatever the number of
            # buckets, and PostgreSQL sees each range (a join against a list of runs made it scan).
            runs = text("(" + " OR ".join("events.place BETWEEN %d AND %d" % patient_run(b, patient)
                                          for b in chunk) + ")")
            rows = list(_read(conn.execute(_rows(conn).where(runs, events.c.patient_id == patient, *exact))))
            others = conn.execute(select(event_patients.c.seq).where(
                event_patients.c.bucket.in_(chunk), event_patients.c.patient_id == patient)).scalars().all()
            if others:
                rows += _fetch(conn, others, exact)
            rows.sort(key=lambda row: row[0], reverse=q.newest_first)
            yield from rows

    yield from _limited(found(), q.limit)


def _buckets(conn: Connection) -> list[int]:
    """Every bucket the store has events in now."""
    size = conn.execute(select(tree_state.c.size).where(tree_state.c.id == 1)).scalar() or 0
    if not isinstance(size, int):
        raise damaged(conn, f"tree_state.size holds {str(size)[:40]!r}, not a count of events")
    return buckets_upto(size)


def _candidates(conn: Connection, q: EventQuery) -> set[int] | None:
    """Seqs that may match, from the index; None when no indexed filter narrows the search."""
    found: set[int] | None = None

    def narrow(seqs: set[int]) -> None:
        nonlocal found
        found = seqs if found is None else found & seqs

    if q.study is not None:
        narrow(set(conn.execute(select(event_studies.c.seq).where(
            event_studies.c.bucket.in_(_buckets(conn)), event_studies.c.study_uid == study_key(q.study))).scalars()))
    if q.actor is not None and (found is None or len(found) > _FETCH):
        narrow(_postings(conn, event_terms.c.term == term_key(ACTOR + q.actor)))
    if q.kind is not None and (found is None or len(found) > _FETCH):
        if q.kind.endswith("*"):
            prefix = KIND + q.kind[:-1]
            narrow(_postings(conn, and_(event_terms.c.term >= prefix, event_terms.c.term < prefix + "\U0010ffff")))
        else:
            narrow(_postings(conn, event_terms.c.term == term_key(KIND + q.kind)))
    return found


def _postings(conn: Connection, term_clause: ColumnElement[bool]) -> set[int]:
    out: set[int] = set()
    rows = conn.execute(select(event_terms.c.term, event_terms.c.first_seq, event_terms.c.seqs).where(term_clause))
    for term, first_seq, blob in rows:
        try:
            out.update(decode_postings(first_seq, blob))
        except ValueError as exc:
            raise damaged(conn, f"event_terms row of term {term!r} (first seq {first_seq!r}): {exc}") from None
    return out


def _time_span(conn: Connection, q: EventQuery) -> tuple[int | None, int | None]:
    """The seq span of the batches whose time range overlaps [since, until): event times follow
    the order of storage closely, so the span is little more than the events in the range."""
    stmt = select(func.min(event_batches.c.first_seq), func.max(event_batches.c.last_seq))
    if q.since is not None:
        stmt = stmt.where(event_batches.c.max_time_us >= bound_us(q.since))
    if q.until is not None:
        stmt = stmt.where(event_batches.c.min_time_us < bound_us(q.until))
    lo, hi = conn.execute(stmt).one()
    return lo, hi


def _scan(conn: Connection, q: EventQuery, exact: _Conditions) -> Iterator[tuple[int, str]]:
    stmt = _rows(conn).where(*exact)
    if q.after_seq is not None:
        stmt = stmt.where(events.c.seq > q.after_seq)
    stmt = stmt.order_by(events.c.seq.desc() if q.newest_first else events.c.seq)
    if q.limit is not None:
        stmt = stmt.limit(q.limit)
    yield from _read(conn.execute(stmt))


def _row_filter(q: EventQuery) -> _Conditions:
    """The filters as conditions on the events rows (the index may over-select, never under)."""
    out: _Conditions = []
    if q.actor is not None:
        out.append(or_(events.c.actor_ae == ae_key(q.actor), events.c.actor_host == host_key(q.actor),
                       events.c.actor_user == user_key(q.actor)))
    if q.kind is not None:
        if q.kind.endswith("*"):
            out.append(events.c.kind.startswith(q.kind[:-1], autoescape=True))
        else:
            out.append(events.c.kind == kind_key(q.kind))
    if q.since is not None:
        out.append(events.c.time_us >= bound_us(q.since))
    if q.until is not None:
        out.append(events.c.time_us < bound_us(q.until))
    return out


def bound_us(value: datetime) -> int:
    """A search's time bound as it is compared with the stored `time_us` (microseconds)."""
    return int(value.timestamp() * 1_000_000)
