"""Syslog message headers: RFC 5424 section 6 (PRI, VERSION, TIMESTAMP, HOSTNAME, APP-NAME, PROCID,
MSGID, STRUCTURED-DATA, MSG), and the legacy BSD form of RFC 3164 section 4.1, tolerated and flagged.

IHE ITI-20 sends audit messages with MSGID "IHE+RFC-3881" (or "DICOM+RFC3881"); other MSGIDs are
accepted and recorded, a missing one ("-") is flagged so `atna sources` can name the sender.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

NIL = "-"

#: MSGIDs ITI-20 and PS3.15 A.5 senders use for audit messages.
AUDIT_MSGIDS = frozenset({"IHE+RFC-3881", "IHE+RFC3881", "DICOM+RFC3881", "DICOM+RFC-3881", "IHE+FHIR"})

_BSD_TIME = re.compile(rb"^([A-Z][a-z]{2}) ([ \d]\d) (\d\d):(\d\d):(\d\d) ")
_MONTHS = {m: i for i, m in enumerate(
    (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"), 1)}


class SyslogError(ValueError):
    """The frame is not a syslog message at all (no PRI)."""


@dataclass(frozen=True, slots=True)
class SyslogMessage:
    """One syslog message: header fields (None when NIL or absent), structured data as text, the MSG
    bytes, and flags (legacy-bsd, missing-msgid, bad-timestamp)."""

    pri: int
    version: int | None
    timestamp: datetime | None
    hostname: str | None
    app_name: str | None
    procid: str | None
    msgid: str | None
    structured_data: str | None
    msg: bytes
    flags: tuple[str, ...] = field(default=())

    @property
    def facility(self) -> int:
        return self.pri >> 3

    @property
    def severity(self) -> int:
        return self.pri & 7

    def header(self) -> dict[str, object]:
        """The header as JSON values (for Event details)."""
        out: dict[str, object] = {"pri": self.pri, "facility": self.facility, "severity": self.severity}
        for name in ("hostname", "app_name", "procid", "msgid", "structured_data"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.version is not None:
            out["version"] = self.version
        if self.timestamp is not None:
            out["timestamp"] = self.timestamp.isoformat()
        return out


def parse(frame: bytes) -> SyslogMessage:
    """Parse one frame; RFC 5424 when VERSION follows PRI, else the BSD form (flagged legacy-bsd)."""
    pri, rest = _pri(frame)
    if rest[:2] == b"1 ":
        return _rfc5424(pri, rest[2:])
    return _bsd(pri, rest)


def _pri(frame: bytes) -> tuple[int, bytes]:
    """PRI = "<" PRIVAL ">", PRIVAL 0..191 (RFC 5424 6.2.1); any value in range is accepted."""
    end = frame.find(b">", 0, 5)
    if not frame.startswith(b"<") or end < 2 or not frame[1:end].isdigit():
        raise SyslogError("no PRI at the start of the message")
    pri = int(frame[1:end])
    if pri > 191 or (end > 2 and frame[1:2] == b"0"):
        raise SyslogError(f"PRI {frame[1:end].decode()} is out of range 0..191")
    return pri, frame[end + 1:]


def _rfc5424(pri: int, rest: bytes) -> SyslogMessage:
    flags: list[str] = []
    fields: list[str | None] = []
    for _ in range(5):  # TIMESTAMP HOSTNAME APP-NAME PROCID MSGID
        token, _, rest = rest.partition(b" ")
        text = token.decode("utf-8", "replace")
        fields.append(None if text in (NIL, "") else text)
    stamp, hostname, app_name, procid, msgid = fields
    timestamp = _timestamp(stamp) if stamp is not None else None
    if stamp is not None and timestamp is None:
        flags.append("bad-timestamp")
    if msgid is None:
        flags.append("missing-msgid")
    structured, msg = _structured_data(rest)
    if msg.startswith(b"\xef\xbb\xbf"):  # RFC 5424 6.4: a UTF-8 MSG may start with the BOM
        msg = msg[3:]
    return SyslogMessage(pri, 1, timestamp, hostname, app_name, procid, msgid, structured, msg, tuple(flags))


def _structured_data(rest: bytes) -> tuple[str | None, bytes]:
    """STRUCTURED-DATA is NIL or SD-ELEMENTs; escaped ']' and '"' inside PARAM-VALUE are honoured."""
    if rest.startswith(b"-"):
        return None, rest[2:] if rest[1:2] == b" " else rest[1:]
    if not rest.startswith(b"["):
        return None, rest
    i, quoted = 0, False
    while i < len(rest):
        c = rest[i]
        if c == 0x5C and quoted:  # backslash escapes the next octet within a value
            i += 2
            continue
        if c == 0x22:
            quoted = not quoted
        elif c == 0x5D and not quoted and rest[i + 1:i + 2] != b"[":
            sd = rest[:i + 1].decode("utf-8", "replace")
            tail = rest[i + 1:]
            return sd, tail[1:] if tail.startswith(b" ") else tail
        i += 1
    return rest.decode("utf-8", "replace"), b""


def _timestamp(text: str) -> datetime | None:
    """RFC 5424 6.2.3 (RFC 3339 with Z or an offset). None when it is not one, or when it names an
    instant outside what a datetime holds once in UTC (0001-01-01T00:00:00+05:00)."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        if value.tzinfo is None:
            return None
        return value.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return None


def _bsd(pri: int, rest: bytes) -> SyslogMessage:
    """RFC 3164 4.1.2: "Mmm dd hh:mm:ss HOSTNAME TAG: MSG"; the year is not sent, this one is assumed."""
    timestamp: datetime | None = None
    hostname = tag = None
    match = _BSD_TIME.match(rest)
    if match is not None and match.group(1) in _MONTHS:
        now = datetime.now(timezone.utc)
        try:
            timestamp = datetime(now.year, _MONTHS[match.group(1)], int(match.group(2)), int(match.group(3)),
                                 int(match.group(4)), int(match.group(5)), tzinfo=timezone.utc)
        except ValueError:
            timestamp = None
        rest = rest[match.end():]
        host, _, rest = rest.partition(b" ")
        hostname = host.decode("utf-8", "replace") or None
        colon = rest.find(b":", 0, 48)
        if colon > 0 and b" " not in rest[:colon].strip():
            tag = rest[:colon].decode("utf-8", "replace").split("[", 1)[0]
            rest = rest[colon + 1:].lstrip(b" ")
    return SyslogMessage(pri, None, timestamp, hostname, tag, None, None, None, rest, ("legacy-bsd",))
