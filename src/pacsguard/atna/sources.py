"""Sender diagnostics (`pacsguard atna sources`): per sender, what arrived and what was wrong with
it, counted from the Events the receiver recorded, so the figures survive restarts and cover
every receiver writing to the store."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from pacsguard.events.model import Event

#: Payload problems counted as "unparsable XML".
_XML_PROBLEMS = frozenset({"unparsable-xml", "entity-expansion", "bad-encoding", "not-audit-message", "unreadable"})
_FRAME_PROBLEMS = frozenset({"malformed-frame", "oversize", "truncated", "not-syslog"})


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
    silent_connections: int = 0
    last_seen: str | None = None
    last_error: str | None = None
    last_error_time: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        transport = sender.get("transport")
        if transport and transport not in row.transports:
            row.transports.append(transport)
        row.last_seen = _later(row.last_seen, ev.time)
        flags = ev.details.get("flags") or ()
        problem = ev.details.get("problem")
        if ev.kind.startswith("atna.audit.") or ev.kind == "atna.message.unparsed":
            row.messages += 1
            row.parsed += ev.kind.startswith("atna.audit.")
            row.wrong_framing += "wrong-framing" in flags
            row.missing_msgid += "missing-msgid" in flags
            row.legacy_bsd += "legacy-bsd" in flags
        if problem in _XML_PROBLEMS:
            row.unparsable_xml += 1
        elif problem == "not-fhir":
            row.not_fhir += 1
        elif problem in _FRAME_PROBLEMS:
            row.malformed_frames += 1
        elif problem == "silent":
            row.silent_connections += 1
        if problem is not None:
            row.last_error = f"{problem}: {ev.details.get('error', '')}"
            row.last_error_time = ev.time.isoformat()
    return sorted(found.values(), key=lambda r: (-r.messages, r.sender))


def _later(current: str | None, when: datetime) -> str:
    text = when.isoformat()
    return text if current is None or text > current else current
