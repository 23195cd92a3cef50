"""IBM QRadar Log Event Extended Format (LEEF) version 2.0, as one text line per Event.

    LEEF:2.0|Vendor|Product|Version|EventID|x09|key=value<TAB>key=value...

The sixth header field names the attribute delimiter (LEEF 2.0 adds it to LEEF 1.0's header; a
hex value written `x09` is the tab, LEEF 1.0's fixed delimiter). Attribute names are LEEF's
predefined ones (devTime with devTimeFormat, src, dst, srcPort, dstPort, usrName, sev, cat, ...)
and custom keys for what LEEF has no name for. LEEF defines no escaping inside a value, yet a
value must not hold the delimiter or a line break: pacsguard writes a backslash as '\\\\', a tab
as '\\t', LF as '\\n' and CR as '\\r' (documented in docs/sinks.md), so every value survives.
"""

from __future__ import annotations

from datetime import timezone
from typing import Iterator

from pacsguard.events.model import Event
from pacsguard.sinks.formats import common

DELIMITER = "\t"
DELIMITER_FIELD = "x09"
# Java SimpleDateFormat pattern QRadar applies to devTime; Z is the RFC 822 offset (+0000).
DEV_TIME_FORMAT = "yyyy-MM-dd'T'HH:mm:ss.SSSZ"


def header_field(value: str) -> str:
    """A header field: LEEF's header is pipe-separated with no escape, so '|', '\\' and control
    characters become '_' (the EventID is a kind, which never needs them; `cat` keeps it whole)."""
    return "".join("_" if ch in "|\\" or ord(ch) < 32 or ord(ch) == 127 else ch for ch in value)


def escape_value(value: str) -> str:
    """An attribute value with backslash, tab, LF and CR written as two-character escapes, other
    control characters replaced (`common.without_controls`)."""
    return (common.without_controls(value).replace("\\", "\\\\").replace("\t", "\\t")
            .replace("\n", "\\n").replace("\r", "\\r"))


def _pairs(event: Event) -> Iterator[tuple[str, str]]:
    utc = event.time.astimezone(timezone.utc)
    yield "devTime", utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}+0000"
    yield "devTimeFormat", DEV_TIME_FORMAT
    yield "sev", str(max(1, common.severity_0_10(event.severity)))  # LEEF's sev is 1-10
    yield from common.identity(event, "eventId", "action")
    for is_source, party, side in common.sides(event):
        prefix, user_key = ("src", "usrName") if is_source else ("dst", "dstUsrName")
        if side.ip is not None:
            yield prefix, side.ip  # LEEF's src/dst take IPv4 and IPv6
        if side.hostname:
            yield f"{prefix}HostName", side.hostname
        if side.port is not None:
            yield f"{prefix}Port", str(side.port)
        if party.user:
            yield user_key, party.user
        if party.ae_title:
            yield f"{prefix}AETitle", party.ae_title
    if event.patient_ids:
        yield "patientIds", common.joined(event.patient_ids)
    if event.study_uids:
        yield "studyUids", common.joined(event.study_uids)
    if event.sop_instance_count:
        yield "sopInstances", str(event.sop_instance_count)
    yield "component", event.component
    if event.details:
        yield "details", common.details_json(event)
    if event.message:
        yield "msg", event.message


def format_leef(event: Event) -> str:
    """One LEEF:2.0 record for `event` (no syslog header, no trailing newline)."""
    header = "|".join([
        "LEEF:2.0",
        *(header_field(v) for v in (common.VENDOR, common.PRODUCT, common.PRODUCT_VERSION, event.kind)),
        DELIMITER_FIELD,
    ])
    attributes = DELIMITER.join(f"{key}={escape_value(value)}" for key, value in _pairs(event))
    return f"{header}|{attributes}"
