"""The search parameters of IHE ITI-81 (Retrieve ATNA Audit Event, RESTful ATNA 3.81.4.1.2) over the
stored audit events: ``date`` (with the FHIR prefixes eq, ge, gt, le, lt), ``patient``,
``agent-name``, the parameters matched by value (`_MATCHED`: ``address``, ``agent-identifier``,
``entity-identifier``, ``entity-type``, ``entity-role``, ``outcome``, ``source``, ``type``,
``subtype``, ``action``), ``_count`` (the page size), and ``_cursor``, the opaque position a
Bundle's ``next`` link carries (FHIR R4 3.1.1.4.8, paging: the server's own). `stored_by_id` finds
the one stored audit message a FHIR read (``GET /AuditEvent/ID``, FHIR R4 3.1.0.1) names."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from pacsguard.events.model import Event

if TYPE_CHECKING:
    from pacsguard.store import EventStore
    from pacsguard.store.store import StoredEvent


#: Store positions read at a time around the place an id's time points to (`stored_by_id`).
_READ_CHUNK = 64
#: Events read each way from that place at most: a well-formed id of no stored event must not make
#: a read walk the hour of disorder `sources.DISORDER` allows (millions of events on a busy store);
#: the hand-over's real disorder is a few of its batches, thousands of events.
_MOST_READ = 50_000
#: An Event id as this repository gives it (`events.model.new_event_id`): 32 hex digits, lower case.
_EVENT_ID = re.compile("[0-9a-f]{32}")


class QueryError(ValueError):
    """A search parameter that cannot be understood (answered 400 with an OperationOutcome)."""


@dataclass(slots=True)
class AuditQuery:
    patient: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    agent_names: list[str] = field(default_factory=list)
    entity_types: list[str] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    subtypes: list[str] = field(default_factory=list)
    agent_ids: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    entity_ids: list[str] = field(default_factory=list)
    entity_roles: list[str] = field(default_factory=list)
    count: int = 100  # the page size; 0: only the number of matches (``_count=0``)
    after: int | None = None  # the store position (seq) the page starts after: the ``_cursor``
    counted: bool = False  # ``_total=accurate``: every match counted, whatever the page
    ignored: list[str] = field(default_factory=list)  # parameters not understood (lenient handling)

    @classmethod
    def parse(cls, params: Mapping[str, list[str]], *, strict: bool = True) -> AuditQuery:
        """The query of these parameters. A parameter this server does not know is a QueryError
        when ``strict`` (FHIR's ``Prefer: handling=strict``), else left out and named in `ignored`
        (FHIR R4 3.1.1.5.x: lenient handling, the default)."""
        q = cls()
        for name, values in params.items():
            if name not in _KNOWN and not strict:
                q.ignored.append(name)
                continue
            for value in values:
                q._add(name, value)
        return q

    def _add(self, name: str, value: str) -> None:
        if name == "patient":
            # Patient/ID, or system|value (a token), or the bare ID.
            self.patient = value.rsplit("/", 1)[-1].split("|")[-1]
        elif name == "date":
            self._date(value)
        elif name == "agent-name":
            self.agent_names.extend(v.lower() for v in value.split(","))
        elif name in _MATCHED:
            reference = name == "source"  # Device/ID, or system|value
            getattr(self, _MATCHED[name]).extend(_value(v, reference=reference) for v in value.split(","))
        elif name == "_count":
            if not (value.isascii() and value.isdigit()) or not 0 <= int(value) <= 10_000:
                raise QueryError(f"_count: expected 0..10000, got {value!r}")
            self.count = int(value)
        elif name == "_total":
            if value not in ("none", "estimate", "accurate"):
                raise QueryError(f"_total: expected none, estimate or accurate, got {value!r}")
            self.counted = value == "accurate"
        elif name == "_cursor":
            if not (value.isascii() and value.isdigit()) or len(value) > 19:
                raise QueryError(f"_cursor: not a position this server gave (a next link's), got {value!r}")
            self.after = int(value)
        elif name not in ("_format",):
            raise QueryError(f"unsupported search parameter {name!r}")

    def _date(self, value: str) -> None:
        prefix, text = (value[:2], value[2:]) if value[:2] in ("eq", "ge", "gt", "le", "lt") else ("eq", value)
        start, end = _period(text)
        if prefix in ("ge", "gt", "eq"):
            lower = end if prefix == "gt" else start
            self.since = lower if self.since is None else max(self.since, lower)
        if prefix in ("le", "lt", "eq"):
            upper = start if prefix == "lt" else end
            self.until = upper if self.until is None else min(self.until, upper)

    def matches(self, event: Event) -> bool:
        """Whether a stored message holds every parameter given: one of its values each (FHIR's
        comma, and a parameter given twice, are both "or" here)."""
        d = event.details
        participants, objects = d.get("participants", ()), d.get("objects", ())
        if self.agent_names:
            names = [str(p.get(k, "")).lower() for p in participants for k in ("user_id", "user_name")]
            if not any(n.startswith(a) for a in self.agent_names for n in names if n):
                return False
        wanted_and_held = (
            (self.entity_types, {o.get("type_code") for o in objects}),
            (self.entity_roles, {o.get("role") for o in objects}),
            (self.entity_ids, {i for o in objects for i in (o.get("id"), str(o.get("id", "")).split("^", 1)[0])}),
            (self.agent_ids, {p.get(k) for p in participants for k in ("user_id", "alternative_user_id")}),
            (self.addresses, {p.get("access_point") for p in participants}),
            (self.event_ids, {(d.get("event_id") or {}).get("code")}),
            (self.subtypes, {c.get("code") for c in d.get("event_types", ())}),
            (self.actions, {d.get("action")}),
            (self.sources, {(d.get("source") or {}).get("id")}),
            (self.outcomes, {d.get("outcome_indicator")}),
        )
        return all(not wanted or not held.isdisjoint(wanted) for wanted, held in wanted_and_held)

    def stored(self, store: EventStore, *, after: int | None = None) -> Iterator[StoredEvent]:
        """The stored audit messages of this query's patient and time span, from after the store
        position ``after``, in store order: the store's indexes select those; `matches` judges
        the rest of the query."""
        from pacsguard.store import EventQuery

        return store.search(EventQuery(patient=self.patient, kind="atna.audit.*", since=self.since,
                                       until=self.until, after_seq=after, limit=None))

    def page(self, stored: Iterable[StoredEvent]) -> list[StoredEvent]:
        """The first `count` of ``stored`` (in store order, from after the cursor) that match."""
        out: list[StoredEvent] = []
        for item in stored:
            if self.matches(item.event):
                out.append(item)
                if len(out) >= self.count:
                    break
        return out


#: The ITI-81 parameters (IHE RESTful ATNA 3.81.4.1.2.1) matched by value, and where each is kept.
_MATCHED = {"entity-type": "entity_types", "entity-role": "entity_roles", "entity-identifier": "entity_ids",
            "agent-identifier": "agent_ids", "address": "addresses", "type": "event_ids", "subtype": "subtypes",
            "action": "actions", "source": "sources", "outcome": "outcomes"}
#: Every search parameter taken, with its FHIR search type (FHIR R4 3.1.1.4): what GET /metadata lists.
SEARCH_PARAMETERS = {"date": "date", "patient": "reference", "agent-name": "string",
                     **{name: {"address": "string", "source": "reference"}.get(name, "token") for name in _MATCHED}}
#: Every parameter the search understands: those and the result parameters.
_KNOWN = frozenset({*SEARCH_PARAMETERS, "_count", "_cursor", "_total", "_format"})


def stored_by_id(store: EventStore, resource_id: str) -> StoredEvent | None:
    """The stored audit message whose Event id is ``resource_id`` (the AuditEvent id a search
    Bundle gives it), or None: for an id of no such message, or of a form this repository does
    not give (FHIR R4 3.1.0.1: read answers 404).

    The store has no index by id, but it holds events in the order they arrived and every id
    begins with the millisecond it was made (UUIDv7, RFC 9562 5.7): a binary search by that time
    finds where the event was stored, give or take the disorder of the hand-over from the reading
    processes (`sources.DISORDER`), and `_around` reads outwards from there: a few reads for an
    event that is there, whatever the store's size."""
    from pacsguard.atna.sources import first_made_from, made_ms
    from pacsguard.store import EventQuery

    made = made_ms(resource_id) if _EVENT_ID.fullmatch(resource_id) else None
    if made is None:
        return None
    at = first_made_from(store, datetime.fromtimestamp(made / 1000, timezone.utc))
    if at is None:  # an event in the store with an id of another form: no time to start from
        around: Iterable[StoredEvent] = store.search(EventQuery(kind="atna.audit.*", limit=None))
    else:
        around = _around(store, at, made)
    found = next((s for s in around if s.event.id == resource_id), None)
    return found if found is not None and found.event.kind.startswith("atna.audit.") else None


def _around(store: EventStore, at: int, made: int) -> Iterator[StoredEvent]:
    """The stored events from position ``at`` outwards, a chunk forwards and a chunk backwards in
    turn; each way until the store ends or an event there was made further from ``made`` (Unix
    ms) than the store's disorder: the event of ``made`` cannot lie beyond one stored out of
    order by more than that."""
    from pacsguard.atna.sources import DISORDER, made_ms
    from pacsguard.store import EventQuery

    def beyond(chunk: list[StoredEvent], far: Callable[[int], bool]) -> bool:
        return any(m is not None and far(m) for m in (made_ms(s.event.id) for s in chunk))

    margin = DISORDER // timedelta(milliseconds=1)
    ahead: int | None = at  # the next position to read forwards
    behind: int | None = at  # the position after the next chunk to read backwards
    first, last = max(at - _MOST_READ, 0), at + _MOST_READ
    while ahead is not None or behind is not None:
        if ahead is not None:
            chunk = list(store.search(EventQuery(after_seq=ahead - 1, limit=_READ_CHUNK)))
            yield from chunk
            done = len(chunk) < _READ_CHUNK or beyond(chunk, lambda m: m > made + margin)
            ahead = None if done or chunk[-1].seq + 1 >= last else chunk[-1].seq + 1
        if behind is not None:
            start = max(behind - _READ_CHUNK, first)
            chunk = list(store.search(EventQuery(after_seq=start - 1, limit=behind - start))) if behind > start else []
            yield from reversed(chunk)
            behind = None if start == first or beyond(chunk, lambda m: m < made - margin) else start


def _value(text: str, *, reference: bool = False) -> str:
    """The value to match of a token (``system|code`` gives ``code``) or, with ``reference``, of a
    reference (``Device/ID`` gives ``ID``)."""
    if reference:
        text = text.rsplit("/", 1)[-1]
    return text.split("|")[-1]


def _period(text: str) -> tuple[datetime, datetime]:
    """The time span a FHIR date(Time) denotes: a day, a month, a year, or an instant."""
    try:
        if len(text) == 4:
            year = datetime(int(text), 1, 1, tzinfo=timezone.utc)
            return year, _until(lambda: year.replace(year=year.year + 1))
        if len(text) == 7:
            month = datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=timezone.utc)
            return month, _until(lambda: (month + timedelta(days=32)).replace(day=1))
        if len(text) == 10:
            day = datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
            return day, _until(lambda: day + timedelta(days=1))
        instant = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(f"date: expected a FHIR date or dateTime, got {text!r}") from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=timezone.utc)
    return instant, _until(lambda: instant + timedelta(seconds=1))


def _until(end: Callable[[], datetime]) -> datetime:
    """The end of a span; the last instant there is for one that would end after the year 9999."""
    try:
        return end()
    except (ValueError, OverflowError):
        return datetime.max.replace(tzinfo=timezone.utc)
