"""What the store's search columns and index keys hold for a value they cannot hold as it is.

The sealed record (event_bodies.body, canonical JSON) keeps every value exactly: JSON writes U+0000 as
the six characters ``\\u0000`` and a text column has no length limit. The copies made for searching
are narrower: `events.patient_id` is VARCHAR(128), `event_studies.study_uid` 64, `event_terms.term`
300, the actor columns 64 and 255 (schema.py), and PostgreSQL's text types cannot hold U+0000 at
all. One such value from a hostile modality or audit source made the whole batch's INSERT fail on
PostgreSQL, and the event bus kept retrying it, so nothing after it was recorded (round 6).

:func:`column_key` is the one rule for every backend, used wherever a column copy or an index key
is written (store.py, index.py), checked (`audit verify`) or searched for (search.py): a value
that fits its column and holds no U+0000 is kept as it is; any other value is stored as its
*key*, a prefix of the value without U+0000, the marker ``~sha256:`` and the SHA-256 of the whole
value (FIPS 180-4) in hex, cut to fit the column. The key is a function of the value alone, so a
search computes it from the value it is given and finds exactly the events that carry the value,
and verify computes it from the sealed record. A value that itself contains the marker is keyed
too, so no value held as it is can equal another value's key: an exact search never finds the
events of another value, short of a SHA-256 collision (the digest keeps at least 192 bits).

Stores written before this rule never held such a value on PostgreSQL (the insert failed); an
SQLite store of an earlier version that took one as it was (SQLite ignores lengths) is reported by
verify as a column that differs from its record.

:func:`append_refusing` is the other half: a batch the database still refuses for what an event
holds (SQLSTATE class 22, "data exception"; or an event that cannot even be sealed) is split until
the events it cannot take are found; the rest are stored, and each refused event is replaced by a
`pacsguard.recording.failed` event that names it (id, time, digest) and the database's reason, not
the refused value. Nothing blocks the events after it; nothing is dropped without a record.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence

from sqlalchemy import Column
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DataError

from pacsguard.events.model import Event, Outcome, Severity
from pacsguard.store.schema import event_studies, event_terms, events

log = logging.getLogger("pacsguard.store")

#: Separates a key's readable prefix from its digest. Any value holding it is keyed, so a value
#: stored as it is never looks like a key.
MARKER = "~sha256:"
#: Hex digits of the digest kept: all 64 where the column has room, else 48 (192 bits, so that a
#: collision costs about 2^96 work).
_FULL_DIGEST, _SHORT_DIGEST = 64, 48
#: A key keeps at least this many characters of the value when it can (the 64-character columns).
_MIN_PREFIX = 8
_NUL = "\x00"


def column_key(value: str, size: int) -> str:
    """``value`` as a column or index key of ``size`` characters holds it (module docstring)."""
    if not value.isascii():  # O(1) in CPython: the check below costs only non-ASCII values
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate: the sealed record holds its escape text (Event.to_json), and so
            # does the column, so that verify finds the copy equal to the record.
            value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(value) <= size and _NUL not in value and MARKER not in value:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    keep = _FULL_DIGEST if size - len(MARKER) - _FULL_DIGEST >= _MIN_PREFIX else _SHORT_DIGEST
    prefix = value.replace(_NUL, "")[:max(size - len(MARKER) - keep, 0)]
    return prefix + MARKER + digest[:keep]


def key_for(column: Column[str]) -> Callable[[str], str]:
    """:func:`column_key` bound to the length a schema column declares (schema.py is the one source)."""
    size = getattr(column.type, "length", None)
    if not isinstance(size, int):
        raise TypeError(f"column {column} declares no length")

    def key(value: str) -> str:
        return column_key(value, size)

    return key


# The keys of each column. event_patients.patient_id has the length of events.patient_id (a test
# holds them together), so an event's first patient and its others are keyed alike: a search
# compares both with one key.
patient_key = key_for(events.c.patient_id)
study_key = key_for(event_studies.c.study_uid)
term_key = key_for(event_terms.c.term)
kind_key = key_for(events.c.kind)
ae_key = key_for(events.c.actor_ae)
host_key = key_for(events.c.actor_host)
user_key = key_for(events.c.actor_user)


def study_keys(study_uids: Sequence[str]) -> tuple[str, ...]:
    """An event's study UIDs as event_studies holds them, each once, in order."""
    return tuple(dict.fromkeys(study_key(uid) for uid in study_uids))


def optional(key: Callable[[str], str], value: str | None) -> str | None:
    """``key(value)`` of a value that may be absent (an event with no actor host)."""
    return None if value is None else key(value)


# --- a batch the database refuses ----------------------------------------------------------------

#: Refusals that lie in the events themselves, not in the database's state: retrying the same batch
#: cannot succeed. SQLSTATE class 22 (data exception: a value too long, U+0000 in text, a number out
#: of range) reaches SQLAlchemy as DataError; ValueError and TypeError come from sealing an event
#: that cannot be written as JSON (details nested beyond orjson's limit, or a cycle; a lone
#: surrogate is written as its escape text: Event.to_json).
REFUSALS: tuple[type[BaseException], ...] = (DataError, ValueError, TypeError)
REFUSED_KIND = "pacsguard.recording.failed"


def append_refusing(conn: Connection, batch: Sequence[Event],
                    append: Callable[[Connection, Sequence[Event]], int]) -> tuple[int, list[Event]]:
    """Store ``batch`` with ``append`` in the open transaction ``conn``, leaving out the events the
    database refuses (REFUSALS) and storing a refusal record in the place of each, in order.

    Each try runs in a SAVEPOINT, so a refused part leaves nothing behind and the whole batch is
    still one transaction (the bus retries a failed emit whole: it must never be half stored).
    The batch is halved until the refused events are alone: log2(n) tries per refused event.
    Returns the new tree size and the refused events."""
    refused: list[Event] = []
    size = _append_parts(conn, list(batch), append, refused)
    return size, refused


def _append_parts(conn: Connection, part: list[Event], append: Callable[[Connection, Sequence[Event]], int],
                  refused: list[Event]) -> int:
    try:
        with conn.begin_nested():
            return append(conn, part)
    except REFUSALS as exc:
        if len(part) > 1:
            middle = len(part) // 2
            _append_parts(conn, part[:middle], append, refused)
            return _append_parts(conn, part[middle:], append, refused)
        refused.append(part[0])
        record = refusal_record(part[0], exc)
        log.error("the store refused an event: %s", record.message)
        with conn.begin_nested():
            return append(conn, [record])


def refusal_record(event: Event, exc: BaseException) -> Event:
    """The event stored in the place of one the database refused: what it was (id, kind and time,
    each cleaned, and the SHA-256 of its JSON form), and why, without any value it carried."""
    try:
        digest = hashlib.sha256(event.to_json().encode()).hexdigest()
    except REFUSALS:  # it cannot even be written as JSON: the digest of what can be said of it
        digest = hashlib.sha256(repr(event).encode("utf-8", "backslashreplace")).hexdigest()
    what = (f"event {_safe(event.id, 40)} (kind {_safe(event.kind, 80)}, time {event.time.isoformat()}, "
            f"SHA-256 of its JSON {digest})")
    reason = refusal_reason(exc)
    return Event(kind=REFUSED_KIND, component="store", severity=Severity.ALERT, outcome=Outcome.MAJOR_FAILURE,
                 message=f"the store refused {what}: {reason}; the other events of its batch were stored",
                 details={"error": f"refused {what}: {reason}"})


def refusal_reason(exc: BaseException) -> str:
    """The database's reason, by class and SQLSTATE; its message is left out, since a driver may
    quote the refused value in it (PostgreSQL does for an invalid input syntax)."""
    orig = getattr(exc, "orig", None) or exc
    sqlstate = getattr(orig, "sqlstate", None)
    code = f", SQLSTATE {sqlstate}" if isinstance(sqlstate, str) else ""
    return f"{type(orig).__name__}{code}"


def _safe(value: object, size: int) -> str:
    """A value the record may show: printable ASCII only, at most ``size`` characters."""
    text = "".join(c if c.isascii() and c.isprintable() else "?" for c in str(value)[:size])
    return text + ("..." if len(str(value)) > size else "")
