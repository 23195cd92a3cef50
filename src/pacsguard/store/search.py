"""`events search`: find the seqs that match through the index (index.py), then read those events,
with every filter applied again to the rows themselves, so the index only narrows the reading.

Candidates come from the indexed filters given: patient or study (their index), actor or kind
(term postings); a time range alone reads the seq span of the batches that overlap it; no filter
reads the table in seq order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Iterator

from sqlalchemy import and_, func, or_, select
from sqlalchemy.engine import Connection

from pacsguard.store.index import ACTOR, KIND, buckets_upto, decode_postings
from pacsguard.store.schema import event_batches, event_patients, event_studies, event_terms, events, tree_state

#: Events read per statement when fetching candidates by seq.
_FETCH = 500


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
    """(seq, sealed body) of the matching events, in seq order (or newest first), up to q.limit."""
    if q.limit is not None and q.limit <= 0:
        return
    exact = _row_filter(q)
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
    left = q.limit
    for i in range(0, len(wanted), _FETCH):
        chunk = wanted[i:i + _FETCH]
        stmt = select(events.c.seq, events.c.body).where(events.c.seq.in_(chunk), *exact)
        found = dict(conn.execute(stmt).all())
        for seq in chunk:
            body = found.get(seq)
            if body is not None:
                yield seq, body
                if left is not None:
                    left -= 1
                    if not left:
                        return


def _candidates(conn: Connection, q: EventQuery) -> set[int] | None:
    """Seqs that may match, from the index; None when no indexed filter narrows the search."""
    found: set[int] | None = None

    def narrow(seqs: set[int]) -> None:
        nonlocal found
        found = seqs if found is None else found & seqs

    buckets = None
    if q.patient is not None or q.study is not None:
        buckets = buckets_upto(conn.execute(select(tree_state.c.size).where(tree_state.c.id == 1)).scalar() or 0)
    if q.patient is not None:
        narrow(set(conn.execute(select(event_patients.c.seq).where(
            event_patients.c.bucket.in_(buckets), event_patients.c.patient_id == q.patient)).scalars()))
    if q.study is not None:
        narrow(set(conn.execute(select(event_studies.c.seq).where(
            event_studies.c.bucket.in_(buckets), event_studies.c.study_uid == q.study)).scalars()))
    if q.actor is not None and (found is None or len(found) > _FETCH):
        narrow(_postings(conn, event_terms.c.term == ACTOR + q.actor))
    if q.kind is not None and (found is None or len(found) > _FETCH):
        if q.kind.endswith("*"):
            prefix = KIND + q.kind[:-1]
            narrow(_postings(conn, and_(event_terms.c.term >= prefix, event_terms.c.term < prefix + "\U0010ffff")))
        else:
            narrow(_postings(conn, event_terms.c.term == KIND + q.kind))
    return found


def _postings(conn: Connection, term_clause) -> set[int]:
    out: set[int] = set()
    for first_seq, blob in conn.execute(select(event_terms.c.first_seq, event_terms.c.seqs).where(term_clause)):
        out.update(decode_postings(first_seq, blob))
    return out


def _time_span(conn: Connection, q: EventQuery) -> tuple[int | None, int | None]:
    """The seq span of the batches whose time range overlaps [since, until): event times follow
    the order of storage closely, so the span is little more than the events in the range."""
    stmt = select(func.min(event_batches.c.first_seq), func.max(event_batches.c.last_seq))
    if q.since is not None:
        stmt = stmt.where(event_batches.c.max_time_us >= _us(q.since))
    if q.until is not None:
        stmt = stmt.where(event_batches.c.min_time_us < _us(q.until))
    lo, hi = conn.execute(stmt).one()
    return lo, hi


def _scan(conn: Connection, q: EventQuery, exact: list) -> Iterator[tuple[int, str]]:
    stmt = select(events.c.seq, events.c.body).where(*exact)
    if q.after_seq is not None:
        stmt = stmt.where(events.c.seq > q.after_seq)
    stmt = stmt.order_by(events.c.seq.desc() if q.newest_first else events.c.seq)
    if q.limit is not None:
        stmt = stmt.limit(q.limit)
    yield from conn.execute(stmt)


def _row_filter(q: EventQuery) -> list:
    """The filters as conditions on the events rows (the index may over-select, never under)."""
    out = []
    if q.actor is not None:
        out.append(or_(events.c.actor_ae == q.actor, events.c.actor_host == q.actor, events.c.actor_user == q.actor))
    if q.kind is not None:
        if q.kind.endswith("*"):
            out.append(events.c.kind.startswith(q.kind[:-1], autoescape=True))
        else:
            out.append(events.c.kind == q.kind)
    if q.since is not None:
        out.append(events.c.time_us >= _us(q.since))
    if q.until is not None:
        out.append(events.c.time_us < _us(q.until))
    return out


def _us(value: datetime) -> int:
    return int(value.timestamp() * 1_000_000)
