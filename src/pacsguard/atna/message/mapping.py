"""An AuditRecord as an Event and back (docs/audit.md "What is stored"): patients, studies, the
requesting user as the actor, the other participant as the target, outcome and severity; the whole
record in ``details`` so the RESTful query and the outbound sender can rebuild it."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

from pacsguard.atna.message import codes
from pacsguard.atna.message.patient import PatientId
from pacsguard.atna.message.record import AuditRecord, Code, Participant, ParticipantObject, SopClass
from pacsguard.events.model import Event, Outcome, Party, Severity, utc_now

_SEVERITY = {"0": Severity.INFO, "4": Severity.NOTICE, "8": Severity.WARNING, "12": Severity.ERROR}


#: The Event kind of each audit event ID (CID 400), made once.
_KINDS = {code: "atna.audit." + codes.slug(meaning) for code, (meaning, _) in codes.EVENT_IDS.items()}


def kind_of(record: AuditRecord) -> str:
    return _KINDS.get(record.event_id.code, "atna.audit.other")


def patients_of(record: AuditRecord) -> list[PatientId]:
    return [PatientId.parse(o.object_id) for o in record.objects if o.is_patient and o.object_id.strip()]


def studies_of(record: AuditRecord) -> list[str]:
    found = [o.object_id for o in record.objects if o.is_study and o.object_id]
    found += [uid for o in record.objects for uid in o.studies if uid]
    return list(dict.fromkeys(uid[:64] for uid in found))


def party_of(p: Participant | None) -> Party:
    if p is None:
        return Party()
    host = p.access_point if p.access_point_type in (None, "1", "2") else None
    titles = p.ae_titles
    return Party(ae_title=titles[0][:64] if titles else None, host=host or None, user=p.user_name or p.user_id or None)


def to_event(record: AuditRecord, received: Mapping[str, Any], *, time: datetime | None = None) -> Event:
    """The Event of one received record; ``received`` holds sender, syslog header, raw bytes, flags."""
    patients = patients_of(record)
    requestor = record.requestor
    actor = party_of(requestor)
    target = next((party_of(p) for p in record.participants if p is not requestor), None)
    outcome = codes.OUTCOMES.get(record.outcome, Outcome.UNKNOWN)
    severity = _SEVERITY.get(record.outcome, Severity.NOTICE)
    if record.event_id.code == "110113":  # Security Alert
        severity = min(severity, Severity.WARNING)
    entry = codes.EVENT_IDS.get(record.event_id.code)
    meaning = entry[0] if entry else (record.event_id.meaning or record.event_id.code)
    instances = sum(s.instances or len(s.instance_uids) for o in record.objects for s in o.sop_classes)
    details = dict(received)
    details.update(record_details(record))
    text = meaning
    if record.action:
        text += f" ({codes.ACTIONS.get(record.action, record.action)})"
    text += f" by {actor.label()}"
    if patients:
        details["patients"] = [p.to_dict() for p in patients]
        text += f", patient {', '.join(p.id for p in patients)}"
    keys = [k for p in patients for k in p.search_keys()]
    return Event(
        kind=kind_of(record), time=time or record.time or utc_now(),
        component="atna", severity=severity, outcome=outcome, actor=actor, target=target or Party(),
        patient_ids=tuple(dict.fromkeys(keys)), study_uids=tuple(studies_of(record)),
        sop_instance_count=instances, details=details, message=text)


def record_details(record: AuditRecord) -> dict[str, Any]:
    out: dict[str, Any] = {"syntax": record.syntax, "event_id": record.event_id.to_dict(),
                           "outcome_indicator": record.outcome}
    if record.action:
        out["action"] = record.action
    if record.event_types:
        out["event_types"] = [c.to_dict() for c in record.event_types]
    if record.outcome_description:
        out["outcome_description"] = record.outcome_description
    if record.purposes:
        out["purposes"] = [c.to_dict() for c in record.purposes]
    out["participants"] = [p.to_dict() for p in record.participants]
    source: dict[str, Any] = {}
    if record.source_id:
        source["id"] = record.source_id
    if record.source_site:
        source["site"] = record.source_site
    if record.source_types:
        source["types"] = [c.to_dict() for c in record.source_types]
    out["source"] = source
    out["objects"] = [o.to_dict() for o in record.objects]
    return out


def record_from_event(event: Event) -> AuditRecord:
    """The AuditRecord a stored atna.audit.* Event was made from (its details)."""
    d = event.details
    source = d.get("source") or {}
    return AuditRecord(
        syntax=d.get("syntax", "dicom"), event_id=_code(d["event_id"]), action=d.get("action"), time=event.time,
        outcome=d.get("outcome_indicator", ""), event_types=tuple(_code(c) for c in d.get("event_types", ())),
        outcome_description=d.get("outcome_description"), purposes=tuple(_code(c) for c in d.get("purposes", ())),
        participants=tuple(Participant(
            user_id=p.get("user_id", ""), alternative_user_id=p.get("alternative_user_id"),
            user_name=p.get("user_name"), requestor=bool(p.get("requestor")), access_point=p.get("access_point"),
            access_point_type=p.get("access_point_type"), roles=tuple(_code(r) for r in p.get("roles", ())))
            for p in d.get("participants", ())),
        source_id=source.get("id"), source_site=source.get("site"),
        source_types=tuple(_code(c) for c in source.get("types", ())),
        objects=tuple(ParticipantObject(
            object_id=o.get("id", ""), id_type=_code(o.get("id_type") or {"code": ""}), type_code=o.get("type_code"),
            role=o.get("role"), life_cycle=o.get("life_cycle"), name=o.get("name"), query=o.get("query"),
            details=tuple((x.get("type", ""), x.get("value", "")) for x in o.get("details", ())),
            sop_classes=tuple(SopClass(s.get("uid", ""), s.get("instances"), tuple(s.get("instance_uids", ())))
                              for s in o.get("sop_classes", ())),
            accessions=tuple(o.get("accessions", ())), studies=tuple(o.get("studies", ())))
            for o in d.get("objects", ())))


def _code(data: Mapping[str, Any]) -> Code:
    return Code(str(data.get("code", "")), data.get("system"), data.get("meaning"))
