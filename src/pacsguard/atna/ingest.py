"""From one received frame to one Event (IHE ITI-20 Record Audit Event, receiver side): the syslog
header (RFC 5424), the payload (PS3.15 A.5 / RFC 3881 XML, or FHIR AuditEvent JSON), and the raw
bytes beside the parsed fields. Whatever fails, an Event is made: an unreadable message is stored
raw and flagged, so the evidence is kept and `atna sources` can name the sender."""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from pacsguard.atna.message import codes, dicom_xml, fhir
from pacsguard.atna.message.dicom_xml import AuditMessageError, Reading
from pacsguard.atna.message.mapping import event_of, record_details
from pacsguard.atna.syslog import rfc5424
from pacsguard.atna.syslog.framing import FrameProblem
from pacsguard.events.model import Event, Outcome, Party, Severity

log = logging.getLogger("pacsguard.atna")


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sent a frame and how: its address, the transport, the framing detected (stream
    transports), the subject of its client certificate (TLS)."""

    host: str
    port: int | None
    transport: str
    framing: str | None = None
    certificate: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"host": self.host, "transport": self.transport}
        if self.port is not None:
            out["port"] = self.port
        if self.framing is not None:
            out["framing"] = self.framing
        if self.certificate is not None:
            out["certificate"] = self.certificate
        return out


def peer_address(peername: Any) -> tuple[str, int | None]:
    """(host, port) of a transport's ``peername`` extra info; ("?", None) when it has none."""
    peer = peername or ("?", None)
    return str(peer[0]), int(peer[1]) if peer[1] is not None else None


def raw_fields(data: bytes) -> dict[str, str]:
    """The raw message byte for byte: as text when it is UTF-8, else base64."""
    try:
        return {"raw": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"raw_base64": base64.b64encode(data).decode("ascii")}


#: The byte order marks of XML in UTF-16 and UTF-32 (XML 1.0 4.3.3, Appendix F.1), UTF-32's first:
#: UTF-32LE's begins with UTF-16LE's.
_UNICODE_BOMS = ((b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"),
                 (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))
_DECLARED = re.compile(dicom_xml.ENCODING_DECLARATION)


#: The UTF-8 byte order mark: RFC 8259 8.1 lets a JSON parser ignore it, and XML 1.0 4.3.3 allows it.
_UTF8_BOM = b"\xef\xbb\xbf"


def read_payload(payload: bytes) -> Reading:
    """The audit message in a syslog MSG or an HTTP body, XML (A.5 / RFC 3881) or FHIR JSON, in the
    form its Event stores."""
    body = payload.lstrip().removeprefix(_UTF8_BOM).lstrip()
    if body.startswith(b"{"):
        return read_fhir(body)
    if body.startswith(b"<"):
        return dicom_xml.read(body)
    unicode_xml = _unicode_xml(body)
    if unicode_xml is not None:
        return dicom_xml.read(unicode_xml)
    raise AuditMessageError("not-audit-message", "the payload is neither XML nor JSON")


def _unicode_xml(body: bytes) -> bytes | None:
    """XML in UTF-16 or UTF-32, told by its byte order mark (XML 1.0 4.3.3, Appendix F.1), in UTF-8,
    its encoding declaration saying so: expat reads no UTF-32, and a fault of a UTF-16 document it
    reads is taken for one of encoding (any octets that are no UTF-8). White space may come between
    the mark and the first ``<``. None when ``body`` starts with no such mark, or what follows it is
    not XML. A ``bad-encoding`` AuditMessageError for octets that are not in the mark's encoding, or
    a declaration of another encoding, naming them; and for JSON after the mark (RFC 8259 8.1: JSON
    exchanged between systems SHALL be UTF-8), which would otherwise be "neither XML nor JSON"."""
    bom, codec = next(((m, c) for m, c in _UNICODE_BOMS if body.startswith(m)), (b"", ""))
    first = body[len(bom):].decode(codec, "replace").lstrip(" \t\r\n")[:1] if bom else ""
    if first == "{":
        raise AuditMessageError("bad-encoding", f"JSON: in {codec.upper()} (byte order mark "
                                f"{bom.hex(' ').upper()}), not UTF-8 (RFC 8259 8.1); send the AuditEvent in UTF-8")
    if first != "<":
        return None
    try:
        text = body[len(bom):].decode(codec)
    except UnicodeDecodeError as exc:
        at = len(bom) + exc.start
        raise AuditMessageError("bad-encoding", f"XML: octet {at} ({body[at:at + 4].hex(' ')}) is no "
                                f"{codec.upper()} character, the encoding its byte order mark names") from None
    declared = _DECLARED.match(text)
    if declared is None:
        return text.encode("utf-8", "surrogatepass")
    family = codec[:6].replace("-", "")  # utf16, utf32
    name = re.sub(r"[-_]", "", declared.group(1).lower())
    if name not in (family, codec.replace("-", ""), *_ALIASES[family]):
        raise AuditMessageError("bad-encoding", f"XML: the XML declaration names the encoding "
                                f"{declared.group(1)!r}, but the message begins with the byte order mark of "
                                f"{codec.upper()} (XML 1.0 4.3.3)")
    start, end = declared.span(1)
    return (text[:start] + "UTF-8" + text[end:]).encode("utf-8", "surrogatepass")


#: Other names of UTF-16 and UTF-32 a declaration may use (IANA charsets), as compared above.
_ALIASES = {"utf16": ("ucs2", "iso10646ucs2"), "utf32": ("ucs4", "iso10646ucs4")}


def read_fhir(body: bytes) -> Reading:
    """A FHIR AuditEvent (JSON) in the form its Event stores; AuditMessageError for anything else."""
    record = fhir.parse(read_json(body))
    return Reading(record_details(record), record.time)


def read_json(body: bytes) -> Any:
    """A FHIR JSON document (FHIR R4 json.html), its UTF-8 byte order mark ignored (RFC 8259 8.1).
    AuditMessageError ``bad-encoding`` when it is not UTF-8 (RFC 8259 8.1: JSON exchanged between
    systems SHALL be UTF-8), naming where; ``not-fhir`` when it is not JSON, or names a member of
    an object twice (FHIR: "property names SHALL be unique"; which of the two a reader keeps differs
    from one parser to the next, so the stored meaning could differ from what another reads)."""
    body = body.removeprefix(_UTF8_BOM)
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        shown = body[exc.start:exc.start + 4].hex(" ")
        raise AuditMessageError("bad-encoding", f"JSON: not UTF-8 (RFC 8259 8.1): octet {exc.start} ({shown}) "
                                "is no UTF-8 character; send the AuditEvent in UTF-8") from None
    try:
        resource = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise AuditMessageError("not-fhir", f"JSON: {exc}") from None
    # orjson keeps the last of two members of a name without a word: read again, only to find one.
    try:
        json.loads(body, object_pairs_hook=_unique_members)
    except RecursionError:  # nesting orjson takes (up to 1024) and Python's stack does not
        raise AuditMessageError("not-fhir", "JSON: objects and arrays nested too deeply") from None
    return resource


def _unique_members(pairs: list[tuple[str, Any]]) -> None:
    """An object_pairs_hook refusing an object that names a member twice; the object itself is not
    needed (orjson made it)."""
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            raise AuditMessageError("not-fhir", f"JSON: the member {name[:64]!r} is given twice in one object "
                                    "(FHIR R4 JSON: property names SHALL be unique)")
        seen.add(name)


def frame_event(sender: Sender, frame: bytes, *, flags: tuple[str, ...] = (),
                now: datetime | None = None) -> Event:
    """The Event of one syslog frame as received (``frame`` without its octet count)."""
    return frame_events(sender, [frame], flags=flags, now=now)[0]


def frame_events(sender: Sender, frames: Iterable[bytes], *, flags: tuple[str, ...] = (),
                 now: datetime | None = None) -> list[Event]:
    """The Events of frames that arrived together (one read of a connection): the sender's fields
    and the time of receipt are made once for all of them."""
    received = (now or datetime.now(timezone.utc)).isoformat()
    who = sender.to_dict()
    events = []
    for frame in frames:
        base: dict[str, Any] = {"sender": dict(who), "received": received, **raw_fields(frame)}
        try:
            message = rfc5424.parse(frame)
        except rfc5424.SyslogError as exc:
            events.append(unparsed_event(base, "not-syslog", str(exc), list(flags), sender))
            continue
        except Exception as exc:  # noqa: BLE001 - one frame the header parser has no rule for: the rest go on
            events.append(unreadable_event(base, exc, list(flags), sender))
            continue
        base["syslog"] = message.header()
        events.append(payload_event(base, message.msg, [*flags, *message.flags], sender, relayed=True))
    return events


#: rsyslog's escape of a control character it received (parser.escapeControlCharactersOnReceive, on
#: by default): "#" and the character's three octal digits. Only those of XML's white space (XML 1.0
#: 2.3 S: TAB, LF, CR) are undone; any other control character is no XML character anyway.
_RSYSLOG_ESCAPE = re.compile(rb"#0(11|12|15)")
_ESCAPED = {b"11": b"\t", b"12": b"\n", b"15": b"\r"}


def unescape_relayed(payload: bytes) -> bytes | None:
    """``payload`` with rsyslog's escapes of TAB, LF and CR (``#011``, ``#012``, ``#015``) undone,
    or None when it has none. A pretty-printed audit message relayed by an rsyslog with its default
    settings arrives with the line feed between its XML declaration and its root element written
    ``#012``, which XML 1.0 2.8 does not allow there (nor RFC 8259 2 between JSON tokens)."""
    if b"#0" not in payload or _RSYSLOG_ESCAPE.search(payload) is None:
        return None
    return _RSYSLOG_ESCAPE.sub(lambda m: _ESCAPED[m.group(1)], payload)


#: How far from its receipt an EventDateTime may lie before its sender's clock is suspect: a day
#: ahead (clocks drift, zones get mixed up, by hours), ten years behind (a sender's backlog after an
#: outage, or an archive's migrated trail, is days to years old; a dead clock's 1900, 1970 or 2000
#: is decades).
SKEW_AHEAD = timedelta(days=1)
SKEW_BEHIND = timedelta(days=3653)


def _skewed(when: datetime, received: object) -> bool:
    """Whether ``when`` is implausibly far from ``received`` (its ISO text), flag ``clock-skew``."""
    if not isinstance(received, str):
        return False
    try:
        at = datetime.fromisoformat(received)
    except ValueError:
        return False
    if when.tzinfo is None or at.tzinfo is None:
        return False
    return when > at + SKEW_AHEAD or when < at - SKEW_BEHIND


def payload_event(base: dict[str, Any], payload: bytes, flags: list[str], sender: Sender, *,
                  relayed: bool = False) -> Event:
    """The Event of one audit message payload, ``base`` (taken over as its details) holding where and
    how it came. A syslog MSG (``relayed``) that is no well-formed XML (or JSON) as received is read
    again with rsyslog's escapes of white space undone (`unescape_relayed`), and flagged
    ``relay-escaped`` when that reads; the raw bytes stay as received."""
    try:
        try:
            reading = read_payload(payload)
        except AuditMessageError as exc:
            retry = relayed and exc.problem in ("unparsable-xml", "not-fhir")
            unescaped = unescape_relayed(payload) if retry else None
            if unescaped is None:
                raise
            try:
                reading = read_payload(unescaped)
            except AuditMessageError:
                raise exc from None  # the fault as received is the one to show the sender's vendor
            flags = [*flags, "relay-escaped"]
        if reading.time is None:  # EventDateTime missing or not an instant: stored at its time of receipt
            flags = [*flags, "bad-event-time"]
        elif _skewed(reading.time, base.get("received")):
            flags = [*flags, "clock-skew"]
        action = reading.fields.get("action")
        if action is not None and action not in codes.ACTIONS:
            # PS3.15 A.5.1 enumerates C R U D E: another code is kept as sent and flagged, and the
            # message is judged as an access (explain.is_access), so a wrong code hides nothing.
            flags = [*flags, "bad-action-code"]
        indicator = reading.fields.get("outcome_indicator", "")
        if indicator not in codes.OUTCOMES and (indicator or reading.fields.get("syntax") != "fhir"):
            # PS3.15 A.5.1 (and RFC 3881 5.1.3) require EventOutcomeIndicator, one of 0 4 8 12; FHIR R4's
            # AuditEvent.outcome is optional, bound to the same codes. Stored as sent (outcome unknown),
            # flagged, so that the sender's fault is counted rather than read as an outcome.
            flags = [*flags, "bad-outcome"]
        flags = [*flags, *reading.flags]
        details = {**base, **({"flags": flags} if flags else {}), **reading.fields}
        return event_of(details, reading.time)
    except AuditMessageError as exc:
        return unparsed_event(base, exc.problem, str(exc), flags, sender)
    except Exception as exc:  # noqa: BLE001 - a message the readers have no rule for: kept raw, the others go on
        return unreadable_event(base, exc, flags, sender)


def fhir_body_event(base: dict[str, Any], payload: bytes, sender: Sender) -> Event:
    """The Event of an HTTP body POSTed as a FHIR AuditEvent (ITI-20's FHIR feed): FHIR JSON only. A
    body of another form is stored raw as unparsed; an A.5 or RFC 3881 XML audit message too, as
    `not-fhir` (read as XML, it would be taken on a path that promises FHIR: its sender should use
    the syslog listeners, or FHIR), any other XML with the problem the XML reader finds in it."""
    body = payload.lstrip().removeprefix(_UTF8_BOM).lstrip()
    # Named as what they are: "neither XML nor JSON" would blame the sender's JSON (FHIR R4 JSON: a
    # resource is one JSON object) or say nothing of a body that is not there.
    if not body:
        return unparsed_event(base, "not-fhir", "an empty body: POST one FHIR AuditEvent as a JSON object", [],
                              sender)
    if body.startswith(b"["):
        return unparsed_event(base, "not-fhir", "a JSON array, not a FHIR resource: POST one AuditEvent (a JSON "
                              "object) to /AuditEvent, or a batch Bundle of them to the FHIR base", [], sender)
    event = payload_event(base, payload, [], sender)
    if body.startswith(b"{") or event.kind == "atna.message.unparsed":
        return event
    return unparsed_event(base, "not-fhir", f"an XML audit message ({event.details.get('syntax')}), not a FHIR "
                          "AuditEvent: this endpoint takes FHIR AuditEvent JSON only (send XML audit messages "
                          "to the syslog listeners)", [], sender)


def unreadable_event(base: dict[str, Any], exc: Exception, flags: list[str], sender: Sender) -> Event:
    """A message that a reader failed on in a way it has no rule for (a pacsguard bug): logged
    without a traceback and stored raw, so the evidence is kept and the messages around it go on."""
    log.error("audit message from %s: cannot be read (%s: %s); stored unparsed", sender.host,
              type(exc).__name__, exc)
    return unparsed_event(base, "unreadable", f"{type(exc).__name__}: {exc}", flags, sender)


def unparsed_event(base: dict[str, Any], problem: str, error: str, flags: list[str], sender: Sender) -> Event:
    details = {**base, "problem": problem, "error": error}
    if flags:
        details["flags"] = flags
    return Event(kind="atna.message.unparsed", component="atna", severity=Severity.WARNING,
                 outcome=Outcome.MINOR_FAILURE, actor=Party(host=sender.host, port=sender.port),
                 message=f"unreadable audit message from {sender.host}: {error}", details=details)


def problem_event(sender: Sender, problem: FrameProblem, *, repeats: int = 0) -> Event:
    """A framing problem (or a silent connection) as an Event naming the sender; with ``repeats``,
    a summary standing for that many (`atna sources` counts each)."""
    details: dict[str, Any] = {"sender": sender.to_dict(), "problem": problem.problem, "error": problem.detail}
    if repeats:
        details["repeats"] = repeats
    if problem.data:
        details["sample_base64"] = base64.b64encode(problem.data[:256]).decode("ascii")
    return Event(kind="atna.frame.rejected", component="atna", severity=Severity.WARNING,
                 outcome=Outcome.MINOR_FAILURE, actor=Party(host=sender.host, port=sender.port),
                 message=f"{problem.problem} from {sender.host}: {problem.detail}", details=details)
