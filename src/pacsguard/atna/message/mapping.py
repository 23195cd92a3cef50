"""An audit message (PS3.15 A.5.1) as an Event and back (docs/audit.md "What is stored"): patients,
studies, the requesting user as the actor, the other participant as the target, outcome and
severity; the whole record in ``details`` so the RESTful query and the outbound sender can rebuild
it. The Event is made from that stored form (event_of), which the XML reader builds directly and
an AuditRecord (FHIR) is turned into (record_details)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping, Sequence

from pacsguard.atna.message import codes
from pacsguard.atna.message.patient import PatientId
from pacsguard.atna.message.record import AuditRecord, Code, Observer, Participant, ParticipantObject, SopClass
from pacsguard.events.model import Event, Outcome, Party, Severity, utc_now

_SEVERITY = {"0": Severity.INFO, "4": Severity.NOTICE, "8": Severity.WARNING, "12": Severity.ERROR}


#: The Event kind of each audit event ID (CID 400), made once.
_KINDS = {code: "atna.audit." + codes.slug(meaning) for code, (meaning, _) in codes.EVENT_IDS.items()}


def kind_of(event_id: str) -> str:
    return _KINDS.get(event_id, "atna.audit.other")


def is_patient(obj: Mapping[str, Any]) -> bool:
    """A participant object naming a patient: type 1 (person) with role 1 (patient), or ID type 2
    (PS3.15 A.5.1, RFC 3881 5.5)."""
    type_code = obj.get("type_code")
    if type_code == "1" and obj.get("role") == "1":
        return True
    return bool(obj["id_type"]["code"] == "2" and type_code in (None, "1"))


def patients_of(objects: Sequence[Mapping[str, Any]]) -> list[PatientId]:
    return [PatientId.parse(o["id"]) for o in objects if is_patient(o) and o["id"].strip()]


def studies_of(objects: Sequence[Mapping[str, Any]]) -> list[str]:
    found = [o["id"] for o in objects if o["id_type"]["code"] == codes.STUDY_UID_TYPE and o["id"]]
    found += [uid for o in objects for uid in o.get("studies", ()) if uid]
    return list(dict.fromkeys(uid[:64] for uid in found))


def identity_of(p: Mapping[str, Any]) -> str | None:
    """Who an ActiveParticipant is: its UserID, the user's unique identity (PS3.15 A.5.2.1, RFC 3881
    5.2.1: the login, as the staff directory and other messages name the user); UserName, a display
    name two users may share, only when there is no UserID. The display name stays in the stored
    participant (``user_name``) for reports."""
    return p.get("user_id") or p.get("user_name") or None


def party_of(p: Mapping[str, Any] | None) -> Party:
    """An ActiveParticipant as a Party: its AE title (AlternativeUserID "AETITLES=A;B", PS3.15
    A.5.2.2), its host when the access point is a machine name or an IP address, its user
    (identity_of: the UserID)."""
    if p is None:
        return Party()
    kind = p.get("access_point_type")
    host = p.get("access_point") if kind in (None, "1", "2") else None
    alternative = p.get("alternative_user_id") or ""
    titles = [a for a in alternative[9:].split(";") if a] if alternative.upper().startswith("AETITLES=") else []
    return Party(ae_title=titles[0][:64] if titles else None, host=host or None, user=identity_of(p))


#: CID 402 roles of a machine or a medium, not of a person (PS3.16): Application, Application
#: Launcher, Destination and Source Role ID, Destination and Source Media.
_MACHINE_ROLES = frozenset({"110150", "110151", "110152", "110153", "110154", "110155"})


def _is_machine(p: Mapping[str, Any]) -> bool:
    return any(r.get("code") in _MACHINE_ROLES for r in p.get("roles", ()))


def acting(participants: Sequence[Mapping[str, Any]], syntax: str | None = None) -> Mapping[str, Any] | None:
    """The participant a message's user is: the first requestor (UserIsRequestor) that is a person,
    else the first requestor. IHE ITI messages mark both the requesting application (role 110153,
    its UserID the SOAP ReplyTo address or an HL7 application) and the Human Requestor (ITI TF-2
    3.18.6, 3.43.6: the user, when known) as requestors, in either order: the user is the person,
    not the address every consumer shares. A FHIR AuditEvent without a requestor (BALP's events of
    no known user) is the client's, its Source Role ID agent (``syntax`` "fhir").

    An A.5 or RFC 3881 message naming no requestor and a single participant is that participant's:
    PS3.15 A.5.3.6 (DICOM Instances Accessed) names the "person and or process manipulating the
    data" and leaves UserIsRequestor unspecialized, so an archive auditing its own access names
    itself alone, false. With several participants and no requestor (A.5.3.3, A.5.3.7: the process
    sending and the one receiving the data, the requestor a third party that may be left out) no
    one is the user: none is chosen (`no_requestor`; event_of names them all)."""
    first = None
    for p in participants:  # one pass, no list: this is on every received message's path
        if p.get("requestor"):
            if not _is_machine(p):
                return p
            if first is None:
                first = p
    if first is None and syntax == "fhir":
        first = next((p for p in participants if _has_role(p, "110153")), None)
    if first is None and len(participants) == 1 and syntax != "fhir":
        return participants[0]
    return first


def no_requestor(participants: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a message names no requestor (no ActiveParticipant with UserIsRequestor true)."""
    return not any(p.get("requestor") for p in participants)


def _has_role(p: Mapping[str, Any], code: str | None) -> bool:
    return any(r.get("code") == code for r in p.get("roles", ()))


def requestor_of(event: Event) -> Mapping[str, Any] | None:
    """The requesting participant (`acting`) of a received audit message, None for none or for
    another Event."""
    if not event.kind.startswith("atna.audit."):
        return None
    return acting(event.details.get("participants", ()), event.details.get("syntax"))


def user_of(event: Event) -> str | None:
    """The identity of an Event's user: for a received audit message, its requesting participant's
    identity_of, read from the stored message, so that a message stored while the actor's user was
    the UserName is judged by its UserID too; for any other Event, its actor's user."""
    if event.kind.startswith("atna.audit."):
        p = requestor_of(event)
        return identity_of(p) if p is not None else None
    return event.actor.user


def user_name_of(event: Event) -> str | None:
    """The requesting user's display name (UserName, FHIR agent.name), for a reader; None when the
    message gives none or only the identity itself."""
    p = requestor_of(event)
    name = p.get("user_name") if p is not None else None
    return name if name and name != identity_of(p or {}) else None


def to_event(record: AuditRecord, received: Mapping[str, Any], *, time: datetime | None = None) -> Event:
    """The Event of one received record; ``received`` holds sender, syslog header, raw bytes, flags."""
    details = dict(received)
    details.update(record_details(record))
    return event_of(details, time or record.time)


def event_of(details: dict[str, Any], time: datetime | None) -> Event:
    """The Event of one received message whose ``details`` hold how it came (sender, syslog header,
    raw bytes, flags) and what it says in its stored form (record_details); the patients are added
    to them. ``time`` is the message's EventDateTime (None: now)."""
    participants = details["participants"]
    objects = details["objects"]
    patients = patients_of(objects)
    requestor = acting(participants, details.get("syntax"))
    # An A.5 or RFC 3881 message naming no requestor is flagged so, whatever the Event's actor
    # (its only participant, or no one): a privacy officer sees that no user was named.
    unnamed = details.get("syntax") != "fhir" and no_requestor(participants)
    if unnamed:
        details["flags"] = [*details.get("flags", ()), "no-requestor"]
    actor = party_of(requestor)
    via = requestor
    if requestor is not None and not requestor.get("access_point"):
        # A user named without an access point (IHE's Human Requestor, BALP's user agent) acted
        # through the machine that asked: another requestor with one, else, in a FHIR AuditEvent,
        # the Source Role ID agent (BALP's client; in A.5 the source is the data's, as the archive
        # of a C-MOVE is). The Event names that host and AE title: where the access came from.
        client = "110153" if details.get("syntax") == "fhir" else None
        via = next((p for p in participants if p.get("requestor") and p.get("access_point")), None) or next(
            (p for p in participants if p.get("access_point") and _has_role(p, client)), requestor)
        machine = party_of(via)
        actor = Party(ae_title=actor.ae_title or machine.ae_title, host=machine.host, user=actor.user)
    # The other side: the first participant that did not ask (the registry queried, the repository
    # retrieved from), else the first other one.
    others = [p for p in participants if p is not requestor and p is not via]
    other = next((p for p in others if not p.get("requestor")), others[0] if others else None)
    target = party_of(other) if other is not None else None
    if requestor is None and unnamed:
        # Several participants and no requestor: the data went from the Source Role ID process to
        # the Destination one (A.5.3.3, A.5.3.7). The Event names those machines, and no user.
        actor, target = _unrequested(participants)
    indicator = details["outcome_indicator"]
    outcome = codes.OUTCOMES.get(indicator, Outcome.UNKNOWN)
    severity = _SEVERITY.get(indicator, Severity.NOTICE)
    event_id = details["event_id"]
    code = event_id["code"]
    if code == "110113":  # Security Alert
        severity = min(severity, Severity.WARNING)
    entry = codes.EVENT_IDS.get(code)
    meaning = entry[0] if entry else (event_id.get("meaning") or code)
    instances = sum(s["instances"] or len(s["instance_uids"]) for o in objects for s in o.get("sop_classes", ()))
    text = meaning
    action = details.get("action")
    if action:
        text += f" ({codes.ACTIONS.get(action, action)})"
    text += _by(actor, participants, requestor, unnamed)
    if patients:
        details["patients"] = [p.to_dict() for p in patients]
        text += f", patient {', '.join(p.id for p in patients)}"
    keys = [k for p in patients for k in p.search_keys()]
    return Event(
        kind=kind_of(code), time=time or utc_now(),
        component="atna", severity=severity, outcome=outcome, actor=actor, target=target or Party(),
        patient_ids=tuple(dict.fromkeys(keys)), study_uids=tuple(studies_of(objects)),
        sop_instance_count=instances, details=details, message=text)


def _unrequested(participants: Sequence[Mapping[str, Any]]) -> tuple[Party, Party | None]:
    """The Event's actor and target of a message naming several participants and no requestor:
    the machine (host, AE title; never a user: none was named) of the Source Role ID participant
    (110153), and the Destination Role ID one (110152), else the first other participant."""
    source = next((p for p in participants if _has_role(p, "110153")), None)
    dest = next((p for p in participants if _has_role(p, "110152") and p is not source), None)
    dest = dest or next((p for p in participants if p is not source), None)
    machine = party_of(source)
    return Party(ae_title=machine.ae_title, host=machine.host), party_of(dest) if dest is not None else None


def _by(actor: Party, participants: Sequence[Mapping[str, Any]], requestor: Mapping[str, Any] | None,
        unnamed: bool) -> str:
    """Who the Event's text says acted: the actor; for a message naming no requestor, that it named
    none, and every participant with its role, so that the reader sees who took part."""
    if not unnamed:
        return f" by {actor.label()}"
    if requestor is not None:
        return f" by {actor.label()} (its only participant; no requestor named)"
    named = "; ".join(_participant_label(p) for p in participants) or "none"
    return f", no requestor named (participants: {named})"


def _participant_label(p: Mapping[str, Any]) -> str:
    """A participant as the Event's text names it: its identity, machine and roles."""
    party = party_of(p)
    where = party.label() if party.ae_title or party.host else (party.user or "-")
    # A RoleIDCode without its meaning is named by CID 402's (PS3.16), else by its code.
    roles = [r.get("meaning") or codes.ROLE_IDS.get(r.get("code") or "") or r.get("code") for r in p.get("roles", ())]
    shown = [r for r in roles if r]
    return f"{where} [{', '.join(shown)}]" if shown else where


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
        if record.source_id_system:
            source["id_system"] = record.source_id_system
    if record.source_observer is not None and (observer := record.source_observer.to_dict()):
        # A FHIR source.observer's form (a reference, a display, an identifier), so ITI-81 answers
        # it as it came (fhir._out_observer) and ``source=Device/ID`` knows a reference from an ID.
        source["observer"] = observer
    if record.source_site:
        source["site"] = record.source_site
    if record.source_types:
        source["types"] = [c.to_dict() for c in record.source_types]
    out["source"] = source
    out["objects"] = [o.to_dict() for o in record.objects]
    return out


def record_from_event(event: Event) -> AuditRecord:
    """The AuditRecord a stored atna.audit.* Event was made from (its details)."""
    return record_from_details(event.details, event.time)


def record_from_details(d: Mapping[str, Any], time: datetime | None) -> AuditRecord:
    """The AuditRecord of a message's stored form (record_details's) and its time."""
    source = d.get("source") or {}
    return AuditRecord(
        syntax=d.get("syntax", "dicom"), event_id=_code(d["event_id"]), action=d.get("action"), time=time,
        outcome=d.get("outcome_indicator", ""), event_types=tuple(_code(c) for c in d.get("event_types", ())),
        outcome_description=d.get("outcome_description"), purposes=tuple(_code(c) for c in d.get("purposes", ())),
        participants=tuple(Participant(
            user_id=p.get("user_id", ""), alternative_user_id=p.get("alternative_user_id"),
            user_id_system=p.get("user_id_system"),
            user_name=p.get("user_name"), requestor=bool(p.get("requestor")), access_point=p.get("access_point"),
            access_point_type=p.get("access_point_type"), roles=tuple(_code(r) for r in p.get("roles", ())),
            types=tuple(_code(t) for t in p.get("types", ())))
            for p in d.get("participants", ())),
        source_id=source.get("id"), source_id_system=source.get("id_system"), source_site=source.get("site"),
        source_observer=Observer.of(source.get("observer")),
        source_types=tuple(_code(c) for c in source.get("types", ())),
        objects=tuple(ParticipantObject(
            object_id=o.get("id", ""), id_type=_code(o.get("id_type") or {"code": ""}), type_code=o.get("type_code"),
            role=o.get("role"), type_system=o.get("type_system"), role_system=o.get("role_system"),
            id_system=o.get("id_system"),
            life_cycle=o.get("life_cycle"), name=o.get("name"), query=o.get("query"),
            details=tuple((x.get("type", ""), x.get("value", "")) for x in o.get("details", ())),
            sop_classes=tuple(SopClass(s.get("uid", ""), s.get("instances"), tuple(s.get("instance_uids", ())))
                              for s in o.get("sop_classes", ())),
            accessions=tuple(o.get("accessions", ())), studies=tuple(o.get("studies", ())))
            for o in d.get("objects", ())))


def _code(data: Mapping[str, Any]) -> Code:
    return Code(str(data.get("code", "")), data.get("system"), data.get("meaning"))
