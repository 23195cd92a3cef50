"""Writing DICOM audit messages (PS3.15 A.5.1) from an AuditRecord: the form pacsguard sends to an
external Audit Record Repository. The output passes `schema.check`."""

from __future__ import annotations

import re
from xml.etree.ElementTree import Element, SubElement, tostring

from pacsguard.atna.message.record import AuditRecord, Code


def to_xml(record: AuditRecord) -> bytes:
    """The AuditMessage document, UTF-8, with an XML declaration, on one line."""
    root = Element("AuditMessage")
    ident = SubElement(root, "EventIdentification", _attrs(
        EventActionCode=record.action, EventOutcomeIndicator=record.outcome,
        EventDateTime=record.time.isoformat().replace("+00:00", "Z") if record.time else None))
    _code(ident, "EventID", record.event_id)
    for code in record.event_types:
        _code(ident, "EventTypeCode", code)
    if record.outcome_description:
        SubElement(ident, "EventOutcomeDescription").text = record.outcome_description
    for code in record.purposes:
        _code(ident, "PurposeOfUse", code)
    for p in record.participants:
        el = SubElement(root, "ActiveParticipant", _attrs(
            UserID=p.user_id, AlternativeUserID=p.alternative_user_id, UserName=p.user_name,
            UserIsRequestor="true" if p.requestor else "false", NetworkAccessPointID=p.access_point,
            NetworkAccessPointTypeCode=p.access_point_type))
        for role in p.roles:
            _code(el, "RoleIDCode", role)
    source = SubElement(root, "AuditSourceIdentification", _attrs(
        AuditSourceID=record.source_id or "pacsguard", AuditEnterpriseSiteID=record.source_site))
    for code in record.source_types:
        _code(source, "AuditSourceTypeCode", code)
    for o in record.objects:
        el = SubElement(root, "ParticipantObjectIdentification", _attrs(
            ParticipantObjectID=o.object_id, ParticipantObjectTypeCode=o.type_code,
            ParticipantObjectTypeCodeRole=o.role, ParticipantObjectDataLifeCycle=o.life_cycle))
        _code(el, "ParticipantObjectIDTypeCode", o.id_type)
        if o.name is not None:
            SubElement(el, "ParticipantObjectName").text = o.name
        elif o.query is not None:
            SubElement(el, "ParticipantObjectQuery").text = o.query
        for kind, value in o.details:
            SubElement(el, "ParticipantObjectDetail", {"type": kind, "value": value})
        for sop in o.sop_classes:
            sop_el = SubElement(el, "SOPClass", _attrs(
                UID=sop.uid, NumberOfInstances=None if sop.instances is None else str(sop.instances)))
            for uid in sop.instance_uids:
                SubElement(sop_el, "Instance", {"UID": uid})
        for number in o.accessions:
            SubElement(el, "Accession", {"Number": number})
        if o.studies:
            holder = SubElement(el, "ParticipantObjectContainsStudy")
            for uid in o.studies:
                SubElement(holder, "StudyIDs", {"UID": uid})
    for el in root.iter():
        if el.text is not None:
            el.text = _chars(el.text)
        el.attrib = {name: _chars(value) for name, value in el.attrib.items()}
    return _one_line(tostring(root, encoding="utf-8", xml_declaration=False))


#: What XML 1.0 2.2 ("Char") does not allow in a document, not even as a character reference: C0
#: controls other than tab, LF and CR, lone surrogates, U+FFFE and U+FFFF.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _chars(value: str) -> str:
    """``value`` with each character XML 1.0 does not allow written as its escape text (``\\x01``,
    ``\\ud800``, as pacsguard's events write a lone surrogate): a Patient ID or a query key with
    a control byte, as the gateway saw it, is still evidence, and ElementTree would write it as it
    is (or as a character reference to it), making the whole message no XML."""
    if _NOT_XML.search(value) is None:
        return value
    return _NOT_XML.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), value)


#: XML 1.0 2.8: the declaration as ElementTree writes it, without the line feed it puts after it.
_DECLARATION = b"<?xml version='1.0' encoding='utf-8'?>"
#: Line breaks and tabs of text content, as character references (XML 1.0 4.1): the same text.
_CONTROLS = {b"\n": b"&#10;", b"\r": b"&#13;", b"\t": b"&#9;"}


def _one_line(body: bytes) -> bytes:
    """The document on one line: a syslog relay escapes a control character it receives (rsyslog
    writes a line feed as ``#012`` by default), and an escaped one between the declaration and the
    root element is no XML. ElementTree writes those only in text content (attribute values it
    escapes already), where a character reference means the same (XML 1.0 2.11: a literal CR
    would even be read as LF)."""
    for char, ref in _CONTROLS.items():
        body = body.replace(char, ref)
    return _DECLARATION + body


def _code(parent: Element, name: str, code: Code) -> None:
    SubElement(parent, name, _attrs(**{"csd-code": code.code, "codeSystemName": code.system or "DCM",
                                       "originalText": code.meaning or code.code}))


def _attrs(**values: str | None) -> dict[str, str]:
    return {k: v for k, v in values.items() if v is not None}
