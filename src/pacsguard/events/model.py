"""The one record type of pacsguard: every decision, alert, finding and login is an `Event`.

The field set follows what IHE ATNA / DICOM PS3.15 A.5 audit messages carry (event, outcome,
active participants, participant objects), so an Event maps onto an audit message and back.
The vocabulary of `kind` is documented in docs/events.md.
"""

from __future__ import annotations

import random
import time as _time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import IntEnum
from typing import Any, Mapping

import orjson


class Severity(IntEnum):
    """RFC 5424 section 6.2.1 severities (lower is more severe), so syslog output needs no mapping."""

    EMERGENCY = 0
    ALERT = 1
    CRITICAL = 2
    ERROR = 3
    WARNING = 4
    NOTICE = 5
    INFO = 6
    DEBUG = 7

    @classmethod
    def parse(cls, value: "str | int | Severity") -> "Severity":
        if isinstance(value, Severity):
            return value
        if isinstance(value, int):
            return cls(value)
        return cls[value.strip().upper()]


class Outcome:
    """Event outcome, named after PS3.15 A.5.3 EventOutcomeIndicator (0, 4, 8, 12)."""

    SUCCESS = "success"
    MINOR_FAILURE = "minor-failure"
    SERIOUS_FAILURE = "serious-failure"
    MAJOR_FAILURE = "major-failure"
    UNKNOWN = "unknown"

    ALL = frozenset({SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE, UNKNOWN})


@dataclass(frozen=True, slots=True)
class Party:
    """An active participant: a DICOM application entity, a host, and/or a user."""

    ae_title: str | None = None
    host: str | None = None
    port: int | None = None
    user: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.ae_title is not None:
            out["ae_title"] = self.ae_title
        if self.host is not None:
            out["host"] = self.host
        if self.port is not None:
            out["port"] = self.port
        if self.user is not None:
            out["user"] = self.user
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "Party":
        if not data:
            return NOBODY
        return cls(ae_title=data.get("ae_title"), host=data.get("host"),
                   port=data.get("port"), user=data.get("user"))

    def label(self) -> str:
        """Short human form, dcmtk style: AE@host:port (user)."""
        text = self.ae_title or ""
        if self.host:
            text += f"@{self.host}" + (f":{self.port}" if self.port else "")
        if self.user:
            text += f" ({self.user})"
        return text or "-"


NOBODY = Party()


def new_event_id() -> str:
    """A time-ordered 128-bit id (UUIDv7 layout, RFC 9562 5.7) as 32 hex digits."""
    ms = _time.time_ns() // 1_000_000
    # The ids need to be unique, not secret: Python's generator (seeded from os.urandom at start-up
    # and again in every forked child) costs no system call, where os.urandom makes one per event and
    # lets go of the GIL for it, handing it to the store's writer thread mid-message (ATNA ingest,
    # docs/PERFORMANCE.md).
    rand = random.getrandbits(80)
    value = (ms << 80) | (0x7 << 76) | ((rand >> 68) & 0xFFF) << 64 | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return f"{value:032x}"


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True, slots=True)
class Event:
    """One typed record. Patient context (patient_ids, study_uids) is filled whenever an event
    touches patient data, so "who touched patient X" is one indexed query."""

    kind: str
    component: str
    severity: Severity = Severity.INFO
    outcome: str = Outcome.SUCCESS
    actor: Party = NOBODY
    target: Party = NOBODY
    patient_ids: tuple[str, ...] = ()
    study_uids: tuple[str, ...] = ()
    sop_instance_count: int = 0
    details: Mapping[str, Any] = field(default_factory=dict)
    message: str = ""
    time: datetime = field(default_factory=utc_now)
    id: str = field(default_factory=new_event_id)

    def __post_init__(self) -> None:
        if self.time.tzinfo is None:
            raise ValueError("Event.time must be timezone-aware (UTC)")
        if self.outcome not in Outcome.ALL:
            raise ValueError(f"Event.outcome must be one of {sorted(Outcome.ALL)}, not {self.outcome!r}")

    @property
    def time_us(self) -> int:
        """Microseconds since the Unix epoch, UTC: the stored and indexed form of `time`."""
        delta = self.time - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds

    def to_dict(self) -> dict[str, Any]:
        """The JSON form as Python values (time as its ISO 8601 text, exactly as `to_json` writes it)."""
        out = self._json_fields()
        out["time"] = json_time(out["time"])
        out["patient_ids"] = list(self.patient_ids)
        out["study_uids"] = list(self.study_uids)
        out["details"] = dict(self.details)
        return out

    def _json_fields(self) -> dict[str, Any]:
        utc = self.time if self.time.tzinfo is timezone.utc else self.time.astimezone(timezone.utc)
        return {
            "id": self.id,
            "time": utc,
            "kind": self.kind,
            "severity": _SEVERITY_NAMES[self.severity],
            "component": self.component,
            "outcome": self.outcome,
            "actor": self.actor.to_dict() if self.actor is not NOBODY else {},
            "target": self.target.to_dict() if self.target is not NOBODY else {},
            "patient_ids": self.patient_ids,
            "study_uids": self.study_uids,
            "sop_instance_count": self.sop_instance_count,
            "message": self.message,
            "details": self.details,
        }

    def to_json(self) -> str:
        """The canonical form: sorted keys, no insignificant white space, UTF-8, time in UTC with a Z
        (microseconds unless they are zero). Its bytes are what the store hashes."""
        # orjson writes the datetime, tuples and sorted keys itself, several times faster than
        # json.dumps; the store hashes the stored text, so a future change of serializer never
        # invalidates sealed events.
        fields = self._json_fields()
        try:
            return orjson.dumps(fields, default=json_default, option=JSON_OPTIONS).decode()
        except TypeError as exc:
            # A lone surrogate (a file name or a value decoded with surrogateescape) is not UTF-8:
            # written as its escape text instead, so the event is still recorded, readably.
            try:
                escaped = _surrogates_escaped(fields)
            except RecursionError:  # a cycle in the details: not writable at all
                raise exc from None
            return orjson.dumps(escaped, default=json_default, option=JSON_OPTIONS).decode()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Event":
        return cls(
            id=data["id"],
            time=parse_time(data["time"]),
            kind=data["kind"],
            severity=Severity.parse(data["severity"]),
            component=data["component"],
            outcome=data["outcome"],
            actor=Party.from_dict(data.get("actor")),
            target=Party.from_dict(data.get("target")),
            patient_ids=tuple(data.get("patient_ids", ())),
            study_uids=tuple(data.get("study_uids", ())),
            sop_instance_count=int(data.get("sop_instance_count", 0)),
            message=data.get("message", ""),
            details=dict(data.get("details", {})),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> "Event":
        return cls.from_dict(orjson.loads(text))


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SEVERITY_NAMES = {s: s.name.lower() for s in Severity}
JSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z


def json_time(value: datetime) -> str:
    """A UTC datetime as `to_json` writes it (orjson's RFC 3339 form with OPT_UTC_Z)."""
    return value.isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """Parse the ISO 8601 UTC form written by `Event.to_dict` (and any ISO form with an offset)."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:  # 0001-01-01T00:00+05:00 is before year 1 in UTC
        raise ValueError(f"{text!r} is outside the years 1-9999 in UTC") from None


def time_from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _surrogates_escaped(value: Any) -> Any:
    """*value* with every lone surrogate in its strings (keys too) written as its ``\\udcXX`` text."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, Mapping):
        return {_surrogates_escaped(k): _surrogates_escaped(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_surrogates_escaped(v) for v in value]
    return value


class JsonDetails(Mapping[str, Any]):
    """An Event's details kept as their canonical JSON text (as ``Event.to_json`` writes them) and
    decoded only when first read; ``to_json`` writes the text as it is. A process that receives
    Events already serialised by another (the ATNA reading processes) stores them without building
    every nested value again; what it reads at once (``eager``: a few top-level keys) is given
    decoded beside the text."""

    __slots__ = ("text", "eager", "_value")

    def __init__(self, text: bytes, eager: Mapping[str, Any] | None = None) -> None:
        self.text = text
        self.eager = eager or {}
        self._value: dict[str, Any] | None = None

    def _decoded(self) -> dict[str, Any]:
        if self._value is None:
            self._value = orjson.loads(self.text)
        return self._value

    def __getitem__(self, key: str) -> Any:
        if key in self.eager:
            return self.eager[key]
        return self._decoded()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._decoded())

    def __len__(self) -> int:
        return len(self._decoded())

    def __repr__(self) -> str:
        return f"JsonDetails({self._decoded()!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (JsonDetails, (self.text, dict(self.eager)))


def json_default(value: Any) -> Any:
    if isinstance(value, JsonDetails):
        return orjson.Fragment(value.text)
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
