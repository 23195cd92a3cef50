"""pacsguard's own Events as DICOM audit messages (PS3.15 A.5.3): a stored or retrieved object as
DICOM Instances Transferred (A.5.3.4), a C-FIND as Query (A.5.3.12), a refused association, a failed
TLS handshake, an IDS alert or a quarantine as Security Alert (A.5.3.13, the device as a Node ID
participant object), serve's start and stop as Application Activity (A.5.3.1), a login as User
Authentication (A.5.3.14). Events with no A.5 counterpart are not sent."""

from __future__ import annotations

import base64
import json

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


def _patients(event: Event) -> tuple[ParticipantObject, ...]:
    # An event lists a patient's IDs and their CX forms; one participant object per patient.
    ids = [p for p in event.patient_ids if "^" not in p] or list(event.patient_ids[:1])
    return tuple(ParticipantObject(p, Code("2", "RFC-3881", "Patient Number"), type_code="1", role="1")
                 for p in dict.fromkeys(ids))


def _studies(event: Event) -> tuple[ParticipantObject, ...]:
    sop = event.details.get("sop_class")
    classes = (SopClass(str(sop), event.sop_instance_count or 1),) if sop else ()
    return tuple(ParticipantObject(uid, Code("110180", "DCM", "Study Instance UID"), type_code="2", role="3",
                                   sop_classes=classes) for uid in event.study_uids)


def _node(target: str) -> ParticipantObject:
    return ParticipantObject(target, Code("110182", "DCM", "Node ID"), type_code="2", role="13")


def to_record(event: Event, source_id: str) -> AuditRecord | None:
    """The A.5 record of one of pacsguard's Events, or None when A.5 has no message for it."""
    kind = event.kind
    actor, target = event.actor, event.target
    outcome = _OUTCOME.get(event.outcome, "4")
    base = {"syntax": "dicom", "time": event.time, "outcome": outcome, "source_id": source_id,
            "source_types": (_SOURCE_TYPE,)}
    me = Participant(source_id, requestor=False, roles=(_APPLICATION,))
    if kind in ("dicom.dimse.c-store", "dicom.dimse.c-move", "dicom.dimse.c-get") and event.patient_ids \
            and event.study_uids:
        action = "C" if kind.endswith("c-store") else "R"
        return AuditRecord(event_id=_event_id("110104"), action=action,
                           participants=(_participant(actor, True, _SOURCE), _participant(target, False, _DEST)),
                           objects=(*_patients(event), *_studies(event)), **base)  # type: ignore[arg-type]
    if kind == "dicom.dimse.c-find":
        query = json.dumps(event.details.get("query") or {}, sort_keys=True).encode()
        sop = str(event.details.get("sop_class") or "1.2.840.10008.5.1.4.1.2.2.1")
        return AuditRecord(event_id=_event_id("110112"), action="E",
                           participants=(_participant(actor, True, _SOURCE), _participant(target, False, _DEST)),
                           objects=(*_patients(event), ParticipantObject(
                               sop, Code("110181", "DCM", "SOP Class UID"), type_code="2", role="3",
                               query=base64.b64encode(query).decode("ascii"))), **base)  # type: ignore[arg-type]
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
