"""pacsguard's own Events as DICOM audit messages (PS3.15 A.5.3): a stored or retrieved object as
DICOM Instances Transferred (A.5.3.7), preceded, at the first transfer of each patient within an
association, by Begin Transferring DICOM Instances (A.5.3.5, begin_record), a C-FIND as Query
(A.5.3.10), a refused association, a failed TLS handshake, an IDS alert or a quarantine as
Security Alert (A.5.3.11, the device as a Node ID participant object), serve's start and stop as
Application Activity (A.5.3.1), a login as User Authentication (A.5.3.12). Events with no A.5
counterpart are not sent."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import STR_VR

from pacsguard.atna.message import codes
from pacsguard.atna.message.record import AuditRecord, Code, Participant, ParticipantObject, SopClass
from pacsguard.events.model import Event, Outcome, Party

_OUTCOME = {Outcome.SUCCESS: "0", Outcome.MINOR_FAILURE: "4", Outcome.SERIOUS_FAILURE: "8",
            Outcome.MAJOR_FAILURE: "12", Outcome.UNKNOWN: "4"}
_SOURCE = Code("110153", "DCM", "Source Role ID")
_DEST = Code("110152", "DCM", "Destination Role ID")
_APPLICATION = Code("110150", "DCM", "Application")
#: AuditSourceTypeCode 4: Application Server process tier (PS3.15 A.5.1 / RFC 3881 5.4).
_SOURCE_TYPE = Code("4", "DCM", "Application Server")


def _event_id(code: str) -> Code:
    return Code(code, "DCM", codes.EVENT_IDS[code][0])


def _type(event_id: str, code: str) -> Code:
    return Code(code, "DCM", codes.EVENT_TYPES[event_id][code])


def _participant(party: Party, requestor: bool, role: Code | None = None) -> Participant:
    ae = party.ae_title
    user_id = party.user or (f"{ae}@{party.host}" if ae and party.host else ae or party.host or "unknown")
    return Participant(user_id, alternative_user_id=f"AETITLES={ae}" if ae else None, user_name=party.user,
                       requestor=requestor, access_point=party.host, access_point_type="2" if party.host else None,
                       roles=(role,) if role else ())


def _transfer_participants(event: Event) -> tuple[Participant, ...]:
    """Who sent and who received a transfer's objects (PS3.15 A.5.3.7 and A.5.3.5: Source, Role ID
    110153, the sender of data; Destination, 110152, the receiver), the actor being the requestor
    (UserIsRequestor). A C-STORE's requestor sends the object; a C-GET's acceptor sends the
    objects back to the requestor on the same association (PS3.4 C.4.3); a C-MOVE's acceptor
    sends them to the Move Destination AE (PS3.4 C.4.2, ``details.move_destination``), so its
    requestor is another participant with no role, unless it named itself the destination."""
    actor, target = event.actor, event.target
    if event.kind == "dicom.dimse.c-get":
        return _participant(target, False, _SOURCE), _participant(actor, True, _DEST)
    if event.kind == "dicom.dimse.c-move":
        destination = str(event.details.get("move_destination") or "").strip()
        if destination and destination == (actor.ae_title or "").strip():
            return _participant(target, False, _SOURCE), _participant(actor, True, _DEST)
        # Only the destination's AE title is known: the acceptor resolves it to an address.
        receiver = Participant(destination or "unknown", requestor=False, roles=(_DEST,),
                               alternative_user_id=f"AETITLES={destination}" if destination else None)
        return _participant(target, False, _SOURCE), receiver, _participant(actor, True)
    return _participant(actor, True, _SOURCE), _participant(target, False, _DEST)


def _patients(event: Event, *, required: bool = False) -> tuple[ParticipantObject, ...]:
    """One Patient participant object per patient the event names (PS3.15 A.5.3.7 "Patient").
    ``required``: the message must name a patient (A.5.3.7: Patient is M, and ParticipantObjectID a
    required attribute, PS3.15 A.5.1), so an event without a Patient ID (a de-identified or
    malformed object) gets one with an empty ID: DICOM's own encoding of an unknown Patient ID
    (Type 2, zero length, PS3.5 7.4), which no real ID can collide with, unlike "UNKNOWN"."""
    # An event lists a patient's IDs and their CX forms; one participant object per patient.
    ids = [p for p in event.patient_ids if "^" not in p] or list(event.patient_ids[:1])
    if not ids and required:
        ids = [""]
    return tuple(ParticipantObject(p, Code("2", "RFC-3881", "Patient Number"), type_code="1", role="1")
                 for p in dict.fromkeys(ids))


def _studies(event: Event, *, required: bool = False) -> tuple[ParticipantObject, ...]:
    """One Study participant object per Study Instance UID (PS3.15 A.5.3.7 "Studies being
    transferred", 1..N); ``required``: an empty ID when none is known (a C-STORE of an object
    without one, a C-MOVE at PATIENT level), as for the patient."""
    sop = event.details.get("sop_class")
    classes = (SopClass(str(sop), event.sop_instance_count or 1),) if sop else ()
    uids = list(event.study_uids) or ([""] if required else [])
    return tuple(ParticipantObject(uid, Code("110180", "DCM", "Study Instance UID"), type_code="2", role="3",
                                   sop_classes=classes) for uid in uids)


def _identifier(details: Mapping[str, Any]) -> bytes:
    """The C-FIND request's Identifier (PS3.4 C.4.1.1.3) rebuilt from what the gateway recorded
    (``details.level``, the Query/Retrieve Level, and ``details.query``, keyword -> value), as a
    data set in Explicit VR Little Endian (PS3.5 A.2): what PS3.15 A.5.3.10 puts, base64-encoded,
    in the SOP Queried object's ParticipantObjectQuery."""
    keys: dict[str, str] = {}
    query = details.get("query")
    if isinstance(query, Mapping):
        keys.update({str(k): v for k, v in query.items() if isinstance(v, str)})
    level = details.get("level")
    if isinstance(level, str):
        keys["QueryRetrieveLevel"] = level
    # The recorded values are decoded text: any outside ASCII needs a Specific Character Set that
    # holds them, UTF-8 (ISO_IR 192, PS3.3 C.12.1.1.2) holds all.
    charset = None if all(v.isascii() for v in keys.values()) else "ISO_IR 192"
    if charset:
        keys["SpecificCharacterSet"] = charset
    encoded: dict[int, bytes] = {}
    for keyword, value in keys.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            continue  # not a keyword pydicom knows (private or misspelt): no tag to encode it under
        vr = dictionary_VR(tag)
        # A binary VR (US, AT, SQ, ...) or one that depends on other attributes ("US or SS"): the
        # recorded text is not its value. The gateway records only text keys anyway.
        if vr not in STR_VR:
            continue
        # The values are what the requestor sent, valid or not (a wildcard in a UI, an overlong
        # key): the audit must carry them, so pydicom's VR checks are off for them.
        ds = Dataset()
        ds.add(DataElement(tag, vr, value, validation_mode=pydicom_config.IGNORE))
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        try:
            write_dataset(fp, ds, parent_encoding=charset or "iso8859")
        # How pydicom reports a value it cannot encode; TypeError too: a value of a VR outside the
        # character set's reach (CS, UI, DA: PS3.5 6.1.2.3) with a character beyond Latin-1 fails
        # as UnicodeEncodeError, which pydicom's re-raise naming the tag cannot rebuild.
        except (OSError, ValueError, TypeError):
            continue  # that key is left out rather than the whole message lost
        encoded[tag] = fp.getvalue()
    # A data set is its elements in ascending tag order (PS3.5 7.1), each encoded on its own above.
    return b"".join(encoded[tag] for tag in sorted(encoded))


def _query_object(event: Event) -> ParticipantObject:
    """The SOP Queried object of PS3.15 A.5.3.10 (Table A.5.3.10-1): the SOP Class UID as its ID,
    the identifier data set, base64, as ParticipantObjectQuery, and a ParticipantObjectDetail of
    type "TransferSyntax" naming the transfer syntax of that data set (its value base64 like every
    ParticipantObjectDetail value, xs:base64Binary in PS3.15 A.5.1), the detail dcm4chee-arc
    sends too."""
    sop = str(event.details.get("sop_class") or "1.2.840.10008.5.1.4.1.2.2.1")
    query = base64.b64encode(_identifier(event.details)).decode("ascii")
    syntax = base64.b64encode(str(ExplicitVRLittleEndian).encode("ascii")).decode("ascii")
    return ParticipantObject(sop, Code("110181", "DCM", "SOP Class UID"), type_code="2", role="3", query=query,
                             details=(("TransferSyntax", syntax),))


def _node(target: str) -> ParticipantObject:
    return ParticipantObject(target, Code("110182", "DCM", "Node ID"), type_code="2", role="13")


#: The Events of a transfer of DICOM instances (PS3.15 A.5.3.5, A.5.3.7).
TRANSFERS = frozenset({"dicom.dimse.c-store", "dicom.dimse.c-move", "dicom.dimse.c-get"})

#: Which association an Event is of: who recorded it, where (route, sensor) and its two ends.
AssociationKey = tuple[str, str | None, str | None, frozenset[tuple[str | None, str | None]]]


def _text(value: object) -> str | None:
    """A key part as text: a stored Event's fields are not type-checked when read back, and an
    unhashable one (a list) must not stop the feed."""
    return None if value is None else str(value)


def association_of(event: Event) -> AssociationKey | None:
    """The association a ``dicom.association.*`` or ``dicom.dimse.*`` Event is of, None for any
    other Event. One association is one TCP connection (PS3.8 9.1.1), so its two ends (host and
    port) tell it apart from every other live one of the same recorder (route, or passive sensor);
    the ends, not actor and target, because a DIMSE request of the acceptor (a C-GET's C-STORE
    sub-operations, PS3.4 C.4.3) names the acceptor as its actor."""
    if not event.kind.startswith(("dicom.association.", "dicom.dimse.")):
        return None
    ends = frozenset((_text(party.host), _text(party.port)) for party in (event.actor, event.target))
    return (str(event.component), _text(event.details.get("route")), _text(event.details.get("sensor")), ends)


def transferred_patients(event: Event) -> tuple[str, ...]:
    """The Patient IDs a transfer's Instances Transferred message names (an empty one for an
    unknown patient, as there)."""
    return tuple(obj.object_id for obj in _patients(event, required=True))


def begin_record(event: Event, source_id: str, patient_id: str) -> AuditRecord:
    """Begin Transferring DICOM Instances (PS3.15 A.5.3.5, Table A.5.3.5-1) of ``patient_id`` at
    the transfer ``event``: the same participants (source 110153, destination 110152), the Patient
    and the Studies being transferred (with their SOP Class) as its Instances Transferred message,
    action E, the transfer's time and outcome."""
    patient = ParticipantObject(patient_id, Code("2", "RFC-3881", "Patient Number"), type_code="1", role="1")
    return AuditRecord(event_id=_event_id("110102"), action="E", syntax="dicom", time=event.time,
                       outcome=_OUTCOME.get(event.outcome, "4"), source_id=source_id,
                       source_types=(_SOURCE_TYPE,),
                       participants=_transfer_participants(event),
                       objects=(patient, *_studies(event, required=True)))


def to_record(event: Event, source_id: str) -> AuditRecord | None:
    """The A.5 record of one of pacsguard's Events, or None when A.5 has no message for it."""
    kind = event.kind
    actor, target = event.actor, event.target
    outcome = _OUTCOME.get(event.outcome, "4")
    base = {"syntax": "dicom", "time": event.time, "outcome": outcome, "source_id": source_id,
            "source_types": (_SOURCE_TYPE,)}
    me = Participant(source_id, requestor=False, roles=(_APPLICATION,))
    if kind in TRANSFERS:
        # Every transfer is audited, even one naming no patient or study (PS3.15 A.5.3.7).
        action = "C" if kind.endswith("c-store") else "R"
        return AuditRecord(event_id=_event_id("110104"), action=action, participants=_transfer_participants(event),
                           objects=(*_patients(event, required=True), *_studies(event, required=True)),
                           **base)  # type: ignore[arg-type]
    if kind == "dicom.dimse.c-find":
        return AuditRecord(event_id=_event_id("110112"), action="E",
                           participants=(_participant(actor, True, _SOURCE), _participant(target, False, _DEST)),
                           objects=(*_patients(event), _query_object(event)), **base)  # type: ignore[arg-type]
    alert: tuple[str, str] | None = None
    if kind in ("dicom.association.rejected", "tls.handshake.failed"):
        alert = ("110126", actor.host or actor.ae_title or "unknown")
    elif kind.startswith("ids.alert."):
        alert = ("110132", actor.host or actor.ae_title or "unknown")
    elif kind.startswith("gateway.quarantine."):
        alert = ("110128", str(event.details.get("target") or actor.host or "unknown"))
    if alert is not None:
        code, device = alert
        return AuditRecord(event_id=_event_id("110113"), action="E", event_types=(_type("110113", code),),
                           outcome_description=(event.message or kind)[:1024],
                           participants=(Participant(source_id, requestor=True, roles=(_APPLICATION,)),
                                         *((_participant(actor, False),) if actor.host or actor.ae_title else ())),
                           objects=(_node(device),), **base)  # type: ignore[arg-type]
    if kind in ("pacsguard.service.started", "pacsguard.service.stopped"):
        code = "110120" if kind.endswith("started") else "110121"
        return AuditRecord(event_id=_event_id("110100"), action="E", event_types=(_type("110100", code),),
                           participants=(Participant(source_id, requestor=True, roles=(_APPLICATION,)),),
                           **base)  # type: ignore[arg-type]
    if kind in ("console.login.succeeded", "console.login.failed", "console.logout"):
        code = "110123" if kind.endswith("logout") else "110122"
        return AuditRecord(event_id=_event_id("110114"), action="E", event_types=(_type("110114", code),),
                           participants=(_participant(actor, True), me), **base)  # type: ignore[arg-type]
    return None
