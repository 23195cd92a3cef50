"""Reading DICOM audit messages (PS3.15 A.5.1) and their RFC 3881 ancestors, with defusedxml only:
a DTD, an entity declaration or an external reference is refused before any expansion, so a
billion-laughs message costs a parse of its first few hundred bytes.

The two syntaxes differ in how codes are written: DICOM uses ``csd-code``/``originalText``
attributes, RFC 3881 ``code``/``displayName``; the record says which one a message used.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from pacsguard.atna.message.record import AuditRecord, Code, Participant, ParticipantObject, SopClass


class AuditMessageError(ValueError):
    """The payload is not an audit message we can read; ``problem`` names the class of fault
    (entity-expansion, unparsable-xml, bad-encoding, not-audit-message)."""

    def __init__(self, problem: str, detail: str) -> None:
        super().__init__(detail)
        self.problem = problem


def parse_xml(payload: bytes) -> Element:
    """The root element; DTDs and entities are refused (defusedxml), any parse fault is an
    AuditMessageError."""
    try:
        root: Element = fromstring(payload, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise AuditMessageError("entity-expansion", f"refused: {type(exc).__name__}") from None
    except ParseError as exc:
        problem = "bad-encoding" if _not_utf8(payload) else "unparsable-xml"
        raise AuditMessageError(problem, f"XML: {exc}") from None
    except (ValueError, LookupError) as exc:  # an unknown encoding declaration
        raise AuditMessageError("bad-encoding", f"XML: {exc}") from None
    return root


def _not_utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def parse(payload: bytes) -> AuditRecord:
    """An AuditMessage document as an AuditRecord."""
    root = parse_xml(payload)
    if _local(root.tag) != "AuditMessage":
        raise AuditMessageError("not-audit-message", f"root element is <{_local(root.tag)}>, not <AuditMessage>")
    return read_message(root)


def read_message(root: Element) -> AuditRecord:
    ident = _one(root, "EventIdentification")
    if ident is None:
        raise AuditMessageError("not-audit-message", "no EventIdentification")
    event_id_el = _one(ident, "EventID")
    if event_id_el is None:
        raise AuditMessageError("not-audit-message", "no EventID")
    syntax = "dicom" if "csd-code" in event_id_el.attrib else "rfc3881"
    source = _one(root, "AuditSourceIdentification")
    return AuditRecord(
        syntax=syntax,
        event_id=code_of(event_id_el),
        action=ident.get("EventActionCode"),
        time=parse_datetime(ident.get("EventDateTime")),
        outcome=ident.get("EventOutcomeIndicator", ""),
        event_types=tuple(code_of(e) for e in _all(ident, "EventTypeCode")),
        outcome_description=_text(_one(ident, "EventOutcomeDescription")),
        purposes=tuple(code_of(e) for e in _all(ident, "PurposeOfUse")),
        participants=tuple(_participant(e) for e in _all(root, "ActiveParticipant")),
        source_id=source.get("AuditSourceID") if source is not None else None,
        source_site=source.get("AuditEnterpriseSiteID") if source is not None else None,
        source_types=tuple(_source_type(e) for e in _all(source, "AuditSourceTypeCode")) if source is not None
        else (),
        objects=tuple(_object(e) for e in _all(root, "ParticipantObjectIdentification")),
    )


def code_of(el: Element) -> Code:
    """A CodedValueType in either syntax."""
    code = el.get("csd-code") or el.get("code") or ""
    return Code(code, el.get("codeSystemName") or el.get("codeSystem"),
                el.get("originalText") or el.get("displayName"))


def _source_type(el: Element) -> Code:
    # RFC 3881 writes the code as the element's text or as code=; DICOM as csd-code=.
    found = code_of(el)
    return found if found.code else Code((el.text or "").strip())


def _participant(el: Element) -> Participant:
    return Participant(
        user_id=el.get("UserID", ""),
        alternative_user_id=el.get("AlternativeUserID"),
        user_name=el.get("UserName"),
        requestor=(el.get("UserIsRequestor") or "").strip().lower() in ("true", "1"),
        access_point=el.get("NetworkAccessPointID"),
        access_point_type=el.get("NetworkAccessPointTypeCode"),
        roles=tuple(code_of(r) for r in _all(el, "RoleIDCode")),
    )


def _object(el: Element) -> ParticipantObject:
    id_type = _one(el, "ParticipantObjectIDTypeCode")
    # Before 2014 PS3.15 nested SOPClass, Accession etc. in ParticipantObjectDescription; read both.
    holders = [el, *_all(el, "ParticipantObjectDescription")]
    return ParticipantObject(
        object_id=el.get("ParticipantObjectID", ""),
        id_type=code_of(id_type) if id_type is not None else Code(""),
        type_code=el.get("ParticipantObjectTypeCode"),
        role=el.get("ParticipantObjectTypeCodeRole"),
        life_cycle=el.get("ParticipantObjectDataLifeCycle"),
        name=_text(_one(el, "ParticipantObjectName")),
        query=_text(_one(el, "ParticipantObjectQuery")),
        details=tuple((d.get("type", ""), d.get("value", "")) for d in _all(el, "ParticipantObjectDetail")),
        sop_classes=tuple(_sop_class(s) for h in holders for s in _all(h, "SOPClass")),
        accessions=tuple(a.get("Number", "") for h in holders for a in _all(h, "Accession")),
        studies=tuple(s.get("UID", "") for h in holders for c in _all(h, "ParticipantObjectContainsStudy")
                      for s in _all(c, "StudyIDs")),
    )


def _sop_class(el: Element) -> SopClass:
    count = el.get("NumberOfInstances")
    return SopClass(el.get("UID", ""), int(count) if count and count.strip().isdigit() else None,
                    tuple(i.get("UID", "") for i in _all(el, "Instance")))


def parse_datetime(text: str | None) -> datetime | None:
    """xsd:dateTime; without a zone it is taken as UTC (A.5.1 asks for one, senders forget it)."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def _local(tag: Any) -> str:
    return str(tag).rsplit("}", 1)[-1]


def _all(el: Element, name: str) -> Iterable[Element]:
    return [c for c in el if _local(c.tag) == name]


def _one(el: Element, name: str) -> Element | None:
    return next((c for c in el if _local(c.tag) == name), None)


def _text(el: Element | None) -> str | None:
    if el is None or el.text is None:
        return None
    return el.text.strip() or None
