"""Sender diagnostics (`pacsguard atna sources`): per sender, what arrived and what was wrong with
it, counted from the Events the receiver recorded, so the figures survive restarts and cover
every receiver writing to the store.

Every time here is a time of receipt: a received message's `details.received`, not its
EventDateTime, which is only what the sender claims (wrong with its clock, years old in a
backlog); a refusal or framing problem is recorded when it is seen, at its own time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pacsguard.atna.timespan import shifted
from pacsguard.events.model import Event, parse_time
from pacsguard.store import EventQuery

if TYPE_CHECKING:
    from pacsguard.store import EventStore

#: Payload problems counted as "unparsable XML".
_XML_PROBLEMS = frozenset({"unparsable-xml", "entity-expansion", "bad-encoding", "not-audit-message", "unreadable"})
_FRAME_PROBLEMS = frozenset({"malformed-frame", "oversize", "truncated", "not-syslog", "too-slow"})

#: How much later than events made after it an event may be stored: the order of the store is the
#: order of arrival but for the hand-over from the reading processes, which takes milliseconds.
DISORDER = timedelta(hours=1)


@dataclass(slots=True)
class SourceCounts:
    sender: str
    transports: list[str] = field(default_factory=list)
    messages: int = 0
    parsed: int = 0
    malformed_frames: int = 0
    wrong_framing: int = 0
    missing_msgid: int = 0
    unparsable_xml: int = 0
    not_fhir: int = 0
    legacy_bsd: int = 0
    bad_action_code: int = 0  # EventActionCode outside PS3.15 A.5.1's C R U D E (stored, judged, flagged)
    bad_outcome: int = 0  # EventOutcomeIndicator missing or outside A.5.1's 0 4 8 12 (stored, outcome unknown)
    no_time_zone: int = 0  # EventDateTime without a zone (A.5.1 asks for one): read as UTC, flagged
    clock_skew: int = 0  # EventDateTime a day ahead of its receipt or ten years behind: the sender's clock
    silent_connections: int = 0
    http_refused: int = 0  # requests refused, cut short or too slow (atna.http.rejected but silent)
    tls_failed: int = 0  # syslog TLS handshakes that failed (no or an untrusted certificate, plain text)
    refused_connections: int = 0  # syslog connections closed because the listener was full (too-many-connections)
    dropped_datagrams: int = 0  # UDP messages dropped while the store was behind (backlog-full)
    last_seen: str | None = None
    last_error: str | None = None
    last_error_time: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def received_at(ev: Event) -> datetime:
    """When pacsguard received what ``ev`` records: a received message's ``details.received``, else
    the Event's own time (a refusal, a framing problem or a silent connection is recorded as it is
    seen)."""
    text = ev.details.get("received")
    if isinstance(text, str):
        try:
            return parse_time(text)
        except ValueError:
            pass
    return ev.time


def count_sources(events: Iterable[Event]) -> list[SourceCounts]:
    """Counts per sender host, busiest first."""
    found: dict[str, SourceCounts] = {}
    for ev in events:
        sender = ev.details.get("sender") or {}
        host = sender.get("host")
        if not host:
            continue
        row = found.get(host)
        if row is None:
            row = found[host] = SourceCounts(host)
        _count(row, ev, sender.get("transport"))
    return sorted(found.values(), key=lambda r: (-r.messages, r.sender))


def _count(row: SourceCounts, ev: Event, transport: str | None) -> None:
    if transport and transport not in row.transports:
        row.transports.append(transport)
    when = received_at(ev).isoformat()
    row.last_seen = when if row.last_seen is None or when > row.last_seen else row.last_seen
    flags = ev.details.get("flags") or ()
    problem = ev.details.get("problem")
    if ev.kind.startswith("atna.audit.") or ev.kind == "atna.message.unparsed":
        row.messages += 1
        row.parsed += ev.kind.startswith("atna.audit.")
        row.wrong_framing += "wrong-framing" in flags
        row.missing_msgid += "missing-msgid" in flags
        row.legacy_bsd += "legacy-bsd" in flags
        if "bad-action-code" in flags:
            row.bad_action_code += 1
            _error(row, when, f"bad-action-code: EventActionCode {ev.details.get('action')!r} is not "
                              "C, R, U, D or E (PS3.15 A.5.1)")
        if "bad-outcome" in flags:
            row.bad_outcome += 1
            sent = ev.details.get("outcome_indicator")
            name = "AuditEvent.outcome" if ev.details.get("syntax") == "fhir" else "EventOutcomeIndicator"
            _error(row, when, f"bad-outcome: {name} {repr(sent) if sent else 'missing or empty'}, not 0, 4, 8 "
                              "or 12 (PS3.15 A.5.1); stored with outcome unknown")
        if "no-time-zone" in flags:
            row.no_time_zone += 1
            _error(row, when, "no-time-zone: EventDateTime has no time zone (PS3.15 A.5.1 asks for one, "
                              "Z or +hh:mm); read as UTC")
        if "clock-skew" in flags:
            row.clock_skew += 1
            _error(row, when, f"clock-skew: the event is dated {str(ev.time)[:19]}, received "
                              f"{str(ev.details.get('received', ''))[:19]}; check the sender's clock "
                              "(NTP, IHE Consistent Time)")
    # A summary stands for the requests or connections it counted (`repeats`), each other event for one.
    weight = _weight(ev.details.get("repeats"))
    if problem == "silent":  # a syslog or an HTTP connection
        row.silent_connections += weight
    elif problem == "tls-handshake-failed":  # syslog over TLS, or HTTPS
        row.tls_failed += weight
    elif ev.kind == "atna.http.rejected":  # before the frame problems: HTTP has its "truncated" too
        row.http_refused += weight
    elif problem == "bad-encoding" and str(ev.details.get("error", "")).startswith("JSON"):
        row.not_fhir += 1  # a FHIR AuditEvent not in UTF-8: no XML was sent
    elif problem in _XML_PROBLEMS:
        row.unparsable_xml += 1
    elif problem == "not-fhir":
        row.not_fhir += 1
    elif problem in _FRAME_PROBLEMS:
        row.malformed_frames += weight  # a summary of a connection's frame problems stands for many
    elif problem == "too-many-connections":  # a syslog listener's (the endpoint's are counted above)
        row.refused_connections += weight
    elif problem == "backlog-full":
        row.dropped_datagrams += weight
    if problem is not None:
        _error(row, when, f"{problem}: {ev.details.get('error', '')}")


def _weight(repeats: Any) -> int:
    """How many refusals an Event stands for: its ``repeats`` (a summary), else one; a stored value
    that is no positive whole number (an edited store) counts as one, never as none or an error."""
    return repeats if isinstance(repeats, int) and not isinstance(repeats, bool) and repeats > 0 else 1


def _error(row: SourceCounts, when: str, text: str) -> None:
    if row.last_error_time is None or when >= row.last_error_time:
        row.last_error = text
        row.last_error_time = when


def recorded(store: EventStore, since: datetime | None = None) -> Iterator[Event]:
    """The receiver's Events (kinds atna.*) in ``store``; with ``since``, those received at or after it.

    The store finds events by their own time, which for a message is the sender's claim, not by
    time of receipt; but it holds them in the order they arrived, and every Event's id begins with
    the millisecond it was made (UUIDv7, RFC 9562 5.7), for a received message just after its
    receipt. A binary search over the store's positions by that time finds where the events made
    from ``since`` - DISORDER on begin (a few indexed reads, whatever the store's size); only the
    events after it are read, and each is kept when received at or after ``since``."""
    start = None if since is None else shifted(since, -DISORDER)  # None: since is in year 1
    first = None if start is None else first_made_from(store, start)
    if since is None or first is None:  # everything (ids of another form: no position to start from)
        events = (s.event for s in store.search(EventQuery(kind="atna.*", limit=None)))
    else:
        events = (s.event for s in store.search(EventQuery(after_seq=first - 1, limit=None))
                  if s.event.kind.startswith("atna."))
    for ev in events:
        if since is None or received_at(ev) >= since:
            yield ev


def first_made_from(store: EventStore, when: datetime) -> int | None:
    """The first position in ``store`` whose event was made at or after ``when`` (binary search),
    or None when an event's id does not say when it was made."""
    cutoff = int(when.timestamp() * 1000)
    lo, hi = 0, store.size()
    while lo < hi:
        mid = (lo + hi) // 2
        found = list(store.search(EventQuery(after_seq=mid - 1, limit=1)))
        made = made_ms(found[0].event.id) if found else None
        if made is None:
            return None
        if made < cutoff:
            lo = mid + 1
        else:
            hi = mid
    return lo


def made_ms(event_id: str) -> int | None:
    """The Unix time in milliseconds at which an Event was made, from its id: unix_ts_ms is the
    first 48 of 128 bits and version 7 the next 4 (RFC 9562 5.7); None for an id of another form."""
    if len(event_id) != 32:
        return None
    try:
        value = int(event_id, 16)
    except ValueError:
        return None
    return value >> 80 if (value >> 76) & 0xF == 7 else None
