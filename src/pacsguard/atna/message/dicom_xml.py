"""Reading DICOM audit messages (PS3.15 A.5.1) and their RFC 3881 ancestors, hardened as defusedxml is:
a DTD, an entity declaration or an external reference is refused before any expansion, so a
billion-laughs message costs a parse of its first few hundred bytes.

The two syntaxes differ in how codes are written: DICOM uses ``csd-code``/``originalText``
attributes, RFC 3881 ``code``/``displayName``; the record says which one a message used.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar
from xml.etree.ElementTree import Element, ParseError
from xml.parsers.expat import ExpatError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from pacsguard.atna.message.mapping import record_from_details
from pacsguard.atna.message.reader import TOKENS, Document, Reader, code_dict, token
from pacsguard.atna.message.record import AuditRecord


class AuditMessageError(ValueError):
    """The payload is not an audit message we can read; ``problem`` names the class of fault
    (entity-expansion, unparsable-xml, bad-encoding, not-audit-message)."""

    def __init__(self, problem: str, detail: str) -> None:
        super().__init__(detail)
        self.problem = problem


def parse_xml(payload: bytes) -> Element:
    """The root element (for the schema check); DTDs and entities are refused (defusedxml), any
    parse fault is an AuditMessageError."""
    root: Element = _in_declared_encoding(
        payload, lambda data: fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True))
    return root


_T = TypeVar("_T")
#: The encoding declaration at the start of a document (XML 1.0 4.3.3, [80] EncodingDecl, [81]
#: EncName), its name the first group: matched as octets here (an ASCII-compatible encoding), as
#: text by ingest (a document in UTF-16 or UTF-32, decoded by its byte order mark).
ENCODING_DECLARATION = r"<\?xml\s[^>]*?encoding\s*=\s*[\"']([A-Za-z][A-Za-z0-9._-]*)[\"']"
_DECLARED = re.compile(ENCODING_DECLARATION.encode("ascii"))
#: The encodings expat reads itself; any other is read through Python's codecs, by expat one octet per
#: character only (pyexpat: "multi-byte encodings are not supported").
_EXPAT_ENCODINGS = frozenset({"utf-8", "utf-16", "iso-8859-1", "us-ascii"})


def _in_declared_encoding(payload: bytes, parse: Callable[[bytes], _T]) -> _T:
    """``parse(payload)``; when expat cannot read the encoding the document declares (Shift_JIS,
    EUC-JP, GB18030, Big5: several octets a character; "UTF8", a name it does not know), the
    document decoded in it and given to ``parse`` again as UTF-8, so that a Japanese or Chinese
    modality's message is read as its sender wrote it (XML 1.0 4.3.3). Only a message that fails
    pays for this; the fault reported is that of the document read in its encoding."""
    try:
        with _faults(payload):
            return parse(payload)
    except AuditMessageError as exc:
        transcoded = None if exc.problem == "entity-expansion" else _transcoded(payload)
        if transcoded is None:
            raise
    with _faults(transcoded):
        return parse(transcoded)


def _transcoded(payload: bytes) -> bytes | None:
    """The document in UTF-8, declared so, when it declares an encoding other than expat's own that
    Python knows; None otherwise. A ``bad-encoding`` AuditMessageError naming the first octet that
    is not in the encoding declared."""
    declared = _DECLARED.match(payload)
    name = declared.group(1).decode("ascii") if declared is not None else "utf-8"
    if declared is None or name.lower() in _EXPAT_ENCODINGS:
        return None
    start, end = declared.span(1)
    try:
        text = (payload[:start] + b"UTF-8" + payload[end:]).decode(name)
    except LookupError:  # no such codec, or not one of text
        return None
    except UnicodeDecodeError as exc:
        at = exc.start + (end - start - 5 if exc.start >= end else 0)  # an offset in the payload as sent
        raise AuditMessageError("bad-encoding", f"XML: octet {at} ({payload[at:at + 4].hex(' ')}) is no "
                                f"{name} character, the encoding the message declares") from None
    return text.encode("utf-8", "surrogatepass")


@contextmanager
def _faults(payload: bytes) -> Iterator[None]:
    """A parser's exceptions as AuditMessageErrors naming the class of fault."""
    try:
        yield
    except DefusedXmlException as exc:
        raise AuditMessageError("entity-expansion", f"refused: {type(exc).__name__}") from None
    except (ParseError, ExpatError) as exc:
        problem = "bad-encoding" if _not_utf8(payload) else "unparsable-xml"
        raise AuditMessageError(problem, f"XML: {exc}") from None
    except (ValueError, LookupError) as exc:  # an unknown encoding declaration
        raise AuditMessageError("bad-encoding", f"XML: {exc}") from None


def _not_utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@dataclass(frozen=True, slots=True)
class Reading:
    """What one message says, in the form its Event stores (``fields``: mapping.record_details's), and
    its EventDateTime."""

    fields: dict[str, Any]
    time: datetime | None
    #: What the reader noticed in a message it read all the same (``no-time-zone``), for its Event's flags.
    flags: tuple[str, ...] = ()


def read(payload: bytes) -> Reading:
    """An AuditMessage document read in one pass (pacsguard.atna.message.reader) into its stored form."""
    document = _in_declared_encoding(payload, _document)
    if document.root != "AuditMessage":
        raise AuditMessageError("not-audit-message", f"root element is <{document.root}>, not <AuditMessage>")
    message = document.message
    ident = message.identification
    if ident is None:
        raise AuditMessageError("not-audit-message", "no EventIdentification")
    if ident.event_id is None:
        raise AuditMessageError("not-audit-message", "no EventID")
    attrs = ident.attrs
    fields: dict[str, Any] = {"syntax": "dicom" if "csd-code" in ident.event_id else "rfc3881",
                              "event_id": code_dict(ident.event_id),
                              "outcome_indicator": _token(attrs.get("EventOutcomeIndicator", ""))}
    action = _token(attrs.get("EventActionCode") or "")  # tokens of A.5.1's enumerations: " R " is R
    if action:
        fields["action"] = action
    if ident.types:
        fields["event_types"] = ident.types
    if ident.description:
        fields["outcome_description"] = ident.description
    if ident.purposes:
        fields["purposes"] = ident.purposes
    fields["participants"] = message.participants
    source: dict[str, Any] = {}
    if message.source is not None:
        for key, attribute in (("id", "AuditSourceID"), ("site", "AuditEnterpriseSiteID")):
            value = message.source.attrs.get(attribute)
            if value:
                source[key] = value
        if message.source.types:
            source["types"] = message.source.types
    fields["source"] = source
    fields["objects"] = message.objects
    written = _as_written(attrs.get("EventDateTime"))
    time = _in_utc(written)
    # A.5.1 asks for the zone: one without is read as UTC, and flagged, so that the sender's clock
    # setting can be fixed (its events are hours off otherwise, and nothing would say so).
    zoneless = time is not None and written is not None and written.tzinfo is None
    return Reading(fields, time, ("no-time-zone",) if zoneless else ())


def _document(payload: bytes) -> Document:
    return Reader().read(payload)


def _token(value: str) -> str:
    return value if value in TOKENS else token(value)


def parse(payload: bytes) -> AuditRecord:
    """An AuditMessage document as an AuditRecord (optional values sent empty read as absent, as
    they are stored)."""
    reading = read(payload)
    return record_from_details(reading.fields, reading.time)


def parse_datetime(text: str | None) -> datetime | None:
    """xsd:dateTime; without a zone it is taken as UTC (A.5.1 asks for one, senders forget it). A
    date alone (xsd:date, ``2026-12-03``) is no instant: None, not its midnight, which would date the
    event up to a day wrong without a word."""
    return _in_utc(_as_written(text))


def _in_utc(value: datetime | None) -> datetime | None:
    """A datetime as written (`_as_written`) in UTC; naive, it is taken as UTC."""
    if value is None:
        return None
    try:
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    except OverflowError:  # an offset that moves it out of years 1-9999
        return None


def _as_written(text: str | None) -> datetime | None:
    """xsd:dateTime as written: with its zone, or naive when it names none; None when it is no
    date and time."""
    text = (text or "").strip()
    if "T" not in text and " " not in text:  # datetime.fromisoformat takes a date alone as its midnight
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        return None
