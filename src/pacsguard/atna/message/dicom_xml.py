"""Reading DICOM audit messages (PS3.15 A.5.1) and their RFC 3881 ancestors, hardened as defusedxml is:
a DTD, an entity declaration or an external reference is refused before any expansion, so a
billion-laughs message costs a parse of its first few hundred bytes.

The two syntaxes differ in how codes are written: DICOM uses ``csd-code``/``originalText``
attributes, RFC 3881 ``code``/``displayName``; the record says which one a message used.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from xml.etree.ElementTree import Element, ParseError
from xml.parsers.expat import ExpatError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from pacsguard.atna.message.mapping import record_from_details
from pacsguard.atna.message.reader import Reader, code_dict
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
    with _faults(payload):
        root: Element = fromstring(payload, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    return root


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


def read(payload: bytes) -> Reading:
    """An AuditMessage document read in one pass (pacsguard.atna.message.reader) into its stored form."""
    with _faults(payload):
        document = Reader().read(payload)
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
                              "outcome_indicator": attrs.get("EventOutcomeIndicator", "")}
    action = attrs.get("EventActionCode")
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
    return Reading(fields, parse_datetime(attrs.get("EventDateTime")))


def parse(payload: bytes) -> AuditRecord:
    """An AuditMessage document as an AuditRecord (optional values sent empty read as absent, as
    they are stored)."""
    reading = read(payload)
    return record_from_details(reading.fields, reading.time)


def parse_datetime(text: str | None) -> datetime | None:
    """xsd:dateTime; without a zone it is taken as UTC (A.5.1 asks for one, senders forget it)."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    except (ValueError, OverflowError):  # OverflowError: an offset that moves it out of years 1-9999
        return None
