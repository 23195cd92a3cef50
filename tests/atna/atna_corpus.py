"""A corpus of audit messages: one PS3.15 A.5 message per event ID (110100-110114), built as the
standard's A.5.3 describes each, plus hand-written ones in the forms real senders use."""

from __future__ import annotations

import base64
from datetime import datetime, timezone

from pacsguard.atna.message import codes
from pacsguard.atna.message.build import to_xml
from pacsguard.atna.message.record import AuditRecord, Code, Participant, ParticipantObject, SopClass

WHEN = datetime(2026, 12, 3, 9, 30, 15, tzinfo=timezone.utc)
PATIENT_CX = "PID-0042^^^STMARY&1.2.840.99999.1&ISO"
STUDY = "1.2.826.0.1.3680043.9.7777.1"
CT = "1.2.840.10008.5.1.4.1.1.2"

_SOURCE = Code("110153", "DCM", "Source Role ID")
_DEST = Code("110152", "DCM", "Destination Role ID")


def _patient() -> ParticipantObject:
    return ParticipantObject(PATIENT_CX, Code("2", "RFC-3881", "Patient Number"), type_code="1", role="1",
                             name="DOE^JANE")


def _study(count: int = 3) -> ParticipantObject:
    return ParticipantObject(STUDY, Code("110180", "DCM", "Study Instance UID"), type_code="2", role="3",
                             sop_classes=(SopClass(CT, count),), accessions=("ACC99",))


def _user(name: str = "jsmith", host: str = "10.20.0.7") -> Participant:
    return Participant(name, user_name=name, requestor=True, access_point=host, access_point_type="2")


def _node(ae: str, host: str, role: Code, requestor: bool = False) -> Participant:
    return Participant(f"{ae}@{host}", alternative_user_id=f"AETITLES={ae}", requestor=requestor,
                       access_point=host, access_point_type="2", roles=(role,))


def record(event_id: str) -> AuditRecord:
    """The message PS3.15 A.5.3 describes for ``event_id``."""
    meaning, actions = codes.EVENT_IDS[event_id]
    types = tuple(Code(c, "DCM", m) for c, m in list(codes.EVENT_TYPES.get(event_id, {}).items())[:1])
    participants = (_user(), _node("CT01", "10.20.0.9", _SOURCE), _node("PACS", "10.20.0.2", _DEST))
    objects: tuple[ParticipantObject, ...] = ()
    if event_id in ("110102", "110103", "110104", "110105", "110106", "110107"):
        objects = (_patient(), _study())
    elif event_id in ("110109", "110110", "110111"):
        objects = (_patient(),)
    elif event_id == "110112":
        query = base64.b64encode(b"\x08\x00\x52\x00\x06\x00STUDY ").decode()
        objects = (ParticipantObject(CT, Code("110181", "DCM", "SOP Class UID"), type_code="2", role="3",
                                     query=query, details=(("TransferSyntax", base64.b64encode(b"1.2.840.10008.1.2")
                                                            .decode()),)),)
    elif event_id == "110113":
        objects = (ParticipantObject("10.66.0.13", Code("110182", "DCM", "Node ID"), type_code="2", role="13"),)
    elif event_id == "110101":
        objects = (ParticipantObject("pacsguard audit", Code("12", "RFC-3881", "URI"), type_code="2", role="13"),)
    return AuditRecord("dicom", Code(event_id, "DCM", meaning), actions[0], WHEN, "0", types,
                       purposes=(Code("TREAT", "v3-ActReason", "treatment"),), participants=participants,
                       source_id="VNA1", source_site="STMARY", source_types=(Code("4", "DCM", "Application Server"),),
                       objects=objects)


def every_event_id() -> dict[str, bytes]:
    return {event_id: to_xml(record(event_id)) for event_id in codes.EVENT_IDS}


#: An RFC 3881 message as older modalities send it (code= attributes, AuditSourceTypeCode as text).
LEGACY_RFC3881 = b"""<?xml version="1.0"?>
<AuditMessage xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <EventIdentification EventActionCode="E" EventDateTime="2026-12-03T08:15:00.000+01:00" EventOutcomeIndicator="4">
    <EventID code="110114" codeSystemName="DCM" displayName="User Authentication"/>
    <EventTypeCode code="110122" codeSystemName="DCM" displayName="Login"/>
  </EventIdentification>
  <ActiveParticipant UserID="tech7" UserIsRequestor="true" NetworkAccessPointID="ws-ct-3"
   NetworkAccessPointTypeCode="1"/>
  <AuditSourceIdentification AuditSourceID="CTSCANNER3"><AuditSourceTypeCode code="1"/></AuditSourceIdentification>
</AuditMessage>"""

BILLION_LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                  + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
                             for i in range(1, 10))
                  + b']><AuditMessage>&lol9;</AuditMessage>')

EXTERNAL_ENTITY = (b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                   b'<AuditMessage>&x;</AuditMessage>')


def fhir_patient_read() -> dict[str, object]:
    """A BALP-style FHIR R4 AuditEvent: a patient record read by a user of a portal."""
    return {
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110",
                 "display": "Patient Record"},
        "action": "R", "recorded": "2026-12-03T11:00:00Z", "outcome": "0",
        "agent": [{"requestor": True, "who": {"identifier": {"value": "nurse.kim"}}, "name": "Kim",
                   "network": {"address": "10.30.1.4", "type": "2"}}],
        "source": {"site": "STMARY", "observer": {"display": "portal"}},
        "entity": [{"what": {"identifier": {"value": "PID-0042", "system": "urn:oid:1.2.840.99999.1"}},
                    "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
                    "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}}],
    }
