"""Syslog message headers: RFC 5424 section 6 (PRI, VERSION, TIMESTAMP, HOSTNAME, APP-NAME, PROCID,
MSGID, STRUCTURED-DATA, MSG), and the legacy BSD form of RFC 3164 section 4.1, tolerated and flagged.

IHE ITI-20 sends audit messages with MSGID "IHE+RFC-3881" (or "DICOM+RFC3881"); other MSGIDs are
accepted and recorded, a missing one ("-") is flagged so `atna sources` can name the sender.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

NIL = "-"

#: MSGIDs ITI-20 and PS3.15 A.5 senders use for audit messages.
AUDIT_MSGIDS = frozenset({"IHE+RFC-3881", "IHE+RFC3881", "DICOM+RFC3881", "DICOM+RFC-3881", "IHE+FHIR"})

_BSD_TIME = re.compile(rb"^([A-Z][a-z]{2}) ([ \d]\d) (\d\d):(\d\d):(\d\d) ")
#: An RFC 3339 TIMESTAMP where RFC 3164 has its own (rsyslog's RSYSLOG_ForwardFormat).
_RFC3339_START = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)) ")
#: A TAG without its colon (printable, no colon), ended by the space before an XML or JSON message.
_TAG_BEFORE_PAYLOAD = re.compile(rb"^([!-9;-~]{1,48}) (?=[<{])")
#: A TAG where RFC 3164 has its HOSTNAME: a name without colon or space, an optional "[PID]", the
#: colon that ends a TAG.
_TAG_FIRST = re.compile(rb"([^:\[\]\s]{1,48})(?:\[[^\]\s]{0,32}\])?:")
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
    """RFC 3164 4.1.2: "Mmm dd hh:mm:ss HOSTNAME TAG: MSG"; the year is not sent (`_bsd_time`). The
    TIMESTAMP may be an RFC 3339 one instead, as rsyslog's RSYSLOG_ForwardFormat template writes it
    (and rsyslog reads it). The TAG ends at a colon, or (RFC 3164 4.1.3: at the first character
    that is not alphanumeric) at a space when an audit message, XML or JSON, follows it."""
    timestamp: datetime | None = None
    hostname = tag = None
    classic = _BSD_TIME.match(rest)
    modern = _RFC3339_START.match(rest) if classic is None else None
    if classic is not None and classic.group(1) in _MONTHS:
        day, hour, minute, second = (int(classic.group(i)) for i in range(2, 6))
        timestamp = _bsd_time(_MONTHS[classic.group(1)], day, hour, minute, second)
        end = classic.end()
    elif modern is not None:
        timestamp = _timestamp(modern.group(1).decode("ascii"))
        end = modern.end()
    else:
        end = -1
    if end >= 0:
        rest = rest[end:]
        if rest[:1] in (b"<", b"{"):  # no HOSTNAME nor TAG: the audit message follows the TIMESTAMP
            return SyslogMessage(pri, None, timestamp, None, None, None, None, None, rest, ("legacy-bsd",))
        host, _, after = rest.partition(b" ")
        relayed = _TAG_FIRST.fullmatch(host)
        if relayed is not None:
            # No HOSTNAME: the TAG follows the TIMESTAMP, as busybox's and inetutils' syslogd forward
            # what local programs logged ("<13>Dec  5 23:29:04 ctaudit: ..."). A HOSTNAME has no colon
            # at its end (RFC 3164 4.1.2); rsyslog reads such a header the same way.
            tag = relayed.group(1).decode("utf-8", "replace")
            return SyslogMessage(pri, None, timestamp, None, tag, None, None, None, after.lstrip(b" "),
                                 ("legacy-bsd",))
        hostname, rest = host.decode("utf-8", "replace") or None, after
        colon = rest.find(b":", 0, 48)
        bare = _TAG_BEFORE_PAYLOAD.match(rest)
        if colon > 0 and b" " not in rest[:colon].strip():
            tag = rest[:colon].decode("utf-8", "replace").split("[", 1)[0]
            rest = rest[colon + 1:].lstrip(b" ")
        elif bare is not None:
            tag = bare.group(1).decode("utf-8", "replace").split("[", 1)[0]
            rest = rest[bare.end():]
    return SyslogMessage(pri, None, timestamp, hostname, tag, None, None, None, rest, ("legacy-bsd",))


def _bsd_time(month: int, day: int, hour: int, minute: int, second: int,
              now: datetime | None = None) -> datetime | None:
    """An RFC 3164 TIMESTAMP, which has no year: the latest of last year's, this year's and next
    year's that is not more than a day after ``now`` (the sender's local time, up to 14 hours
    ahead of UTC, or its clock a little fast). So "Dec 31 23:59:59" received just after midnight on
    1 January is last year's, not a date a year ahead, and "Jan  1 00:00:05" from a sender a few
    seconds fast at the end of the year is next year's (rsyslog decides the same way); a message
    from a backlog is in the past. None when it is no such date (Feb 30; Feb 29 outside those
    years)."""
    now = now or datetime.now(timezone.utc)
    found = []
    for year in (now.year - 1, now.year, now.year + 1):
        try:
            found.append(datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc))
        except ValueError:
            continue
    return max((when for when in found if when <= now + _BSD_AHEAD), default=None)


#: How far after the time of receipt an RFC 3164 TIMESTAMP may lie (see `_bsd_time`).
_BSD_AHEAD = timedelta(days=1)
