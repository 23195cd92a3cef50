"""FHIR R4 AuditEvent (http://hl7.org/fhir/R4/auditevent.html) as IHE Basic Audit Log Patterns
(BALP) and the DICOM mapping of the AuditEvent page ("Mappings: DICOM") use it: type = event ID,
subtype = event type codes, agent = active participants, source = audit source, entity =
participant objects. Reading (POST /AuditEvent, syslog IHE+FHIR) and writing (ITI-81 Bundle).
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime, timezone
from typing import Any, Mapping

from pacsguard.atna.message import codes
from pacsguard.atna.message.dicom_xml import AuditMessageError
from pacsguard.atna.message.fhir_shape import ROOT, array, as_object, boolean, items, json_type, obj, text
from pacsguard.atna.message.mapping import is_patient
from pacsguard.atna.message.patient import PatientId
from pacsguard.atna.message.record import AuditRecord, Code, Observer, Participant, ParticipantObject

DCM = "http://dicom.nema.org/resources/ontology/DCM"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
LIFECYCLE = "http://terminology.hl7.org/CodeSystem/dicom-audit-lifecycle"
NETWORK_TYPE = "http://terminology.hl7.org/CodeSystem/network-type"  # R4 uses the plain codes 1-5
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
#: Where DICOM's ParticipantObjectIDTypeCode goes: the entity's identifier type.
_SYSTEMS = {"DCM": DCM, "RFC-3881": "http://terminology.hl7.org/CodeSystem/v2-0203"}
_NAMES = {v: k for k, v in _SYSTEMS.items()}
#: DICOM's coding scheme by its OID (PS3.16 8: DCM is 1.2.840.10008.2.16.4), as RFC 3881 senders name it.
_DCM_OIDS = ("1.2.840.10008.2.16.4", "urn:oid:1.2.840.10008.2.16.4")
#: The code systems FHIR R4 binds AuditEvent.outcome and .action to (required bindings: their codes
#: are A.5.1's EventOutcomeIndicator and EventActionCode); a token names them so, or by the
#: terminology.hl7.org URIs later FHIR versions and IHE BALP use for the same codes.
OUTCOME = "http://hl7.org/fhir/audit-event-outcome"
ACTION = "http://hl7.org/fhir/audit-event-action"
_ALIASES = {"http://terminology.hl7.org/CodeSystem/audit-event-outcome": OUTCOME,
            "http://terminology.hl7.org/CodeSystem/audit-event-action": ACTION}
#: The codes DICOM itself defines that codes.py knows (PS3.16 CID 400-404: event IDs, event types,
#: participant roles, DICOM's object ID types): a code of these received without a system is DICOM's.
_DICOM_CODES = frozenset({*codes.EVENT_IDS, *(c for types in codes.EVENT_TYPES.values() for c in types),
                          *codes.ROLE_IDS, *(c for c in codes.OBJECT_ID_TYPES if c.startswith("110"))})
#: RFC 3881 5.4's audit source types 1-9 (PS3.15 A.5.1.2.1): FHIR R4's security-source-type codes.
_SOURCE_TYPES = frozenset(str(n) for n in range(1, 10))


def system_uri(system: str) -> str:
    """A code system as FHIR names it: DICOM's ``DCM`` (or its OID) and RFC 3881's names as their
    URIs, any other system as it is; so that a stored code and a search token compare."""
    return DCM if system in _DCM_OIDS else _ALIASES.get(system, _SYSTEMS.get(system, system))


def answered_system(code: str, system: str | None, bare: str = "") -> str:
    """The system ITI-81 answers a stored code under (FHIR R4 Coding.system, 0..1), "" for none:
    the one it was received with (`system_uri`); for a code received without one (an RFC 3881
    EventTypeCode of ``code=`` alone), DICOM's only when the code is one DICOM defines (`_DICOM_CODES`),
    else ``bare`` (the system a context fixes: RFC 3881's audit source types), else none: a code
    DICOM never defined is not answered as DICOM's. The search (query.CodeToken) compares this
    system, so a token finds what the answer shows."""
    if system:
        return system_uri(system)
    return DCM if _token(code) in _DICOM_CODES else bare


def parse(resource: Mapping[str, Any]) -> AuditRecord:
    """An AuditEvent resource (JSON object) as an AuditRecord; AuditMessageError("not-fhir") if it is not one.
    Each element is read as the JSON type FHIR R4 gives it (AuditEvent, JSON representation:
    json.html) through fhir_shape, and one of another type is refused naming its path and the JSON
    type found ("AuditEvent.agent[0].who is a JSON string, not an object")."""
    if not isinstance(resource, Mapping) or resource.get("resourceType") != "AuditEvent":
        raise AuditMessageError("not-fhir", "not a FHIR AuditEvent resource (resourceType)")
    type_ = resource.get("type")
    # A code of white space only is none (FHIR R4 2.24.0.1, code: [^\s]+(\s[^\s]+)*): kept, it was
    # answered as a Coding of no code, which this endpoint itself refuses.
    if not isinstance(type_, Mapping) or not type_.get("code") or str(type_["code"]).isspace():
        raise AuditMessageError("not-fhir", "AuditEvent.type (a Coding) is required")
    recorded = resource.get("recorded")
    if not isinstance(recorded, str):
        raise AuditMessageError("not-fhir", "AuditEvent.recorded (an instant) is required")
    when = parse_instant(recorded)
    agents = resource.get("agent")
    if not isinstance(agents, list) or not agents:
        raise AuditMessageError("not-fhir", "AuditEvent.agent (1..*) is required")
    source = resource.get("source")
    if not isinstance(source, Mapping) or not isinstance(source.get("observer"), Mapping):
        raise AuditMessageError("not-fhir", "AuditEvent.source.observer is required")
    observer, at = source["observer"], f"{ROOT}.source.observer"
    try:
        typed_agents = items(resource, "agent", ROOT)
        return AuditRecord(
            syntax="fhir", event_id=_coding(type_, f"{ROOT}.type"), action=text(resource, "action", ROOT), time=when,
            outcome=text(resource, "outcome", ROOT) or "",
            event_types=tuple(_coding(c, p) for p, c in items(resource, "subtype", ROOT)),
            outcome_description=text(resource, "outcomeDesc", ROOT),
            purposes=_purposes(resource, typed_agents), participants=tuple(_agent(a, p) for p, a in typed_agents),
            source_id=_reference_text(observer, at), source_id_system=_reference_system(observer, at),
            source_observer=_observer(observer, at),
            source_site=text(source, "site", f"{ROOT}.source"),
            source_types=tuple(_coding(c, p) for p, c in items(source, "type", f"{ROOT}.source")),
            objects=_entities(resource))
    except (AttributeError, TypeError, KeyError):
        # Last resort: every element is read typed (fhir_shape), so this is a reader's bug, not the
        # sender's; still refused as not-fhir, and said without Python's exception text.
        raise AuditMessageError("not-fhir", "AuditEvent: an element is not of the JSON type FHIR R4 gives it "
                                "(AuditEvent, JSON representation)") from None


#: A FHIR R4 instant (R4 2.24.0.1, instant: its regular expression): a whole date and time to the
#: second, a fraction optional, a zone required (Z, or +/-hh:mm up to 14:00), second 60 (a leap
#: second) allowed.
_INSTANT = re.compile(r"(?P<date>[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01]))"
                      r"T(?P<hour>[01][0-9]|2[0-3]):(?P<minute>[0-5][0-9]):(?P<second>[0-5][0-9]|60)"
                      r"(?:\.(?P<fraction>[0-9]{1,9}))?(?P<zone>Z|[+-](?:(?:0[0-9]|1[0-3]):[0-5][0-9]|14:00))")
_INSTANT_FORM = "YYYY-MM-DDThh:mm:ss[.fff] with a zone, Z or +hh:mm (FHIR R4 instant)"


def parse_instant(text: str) -> datetime:
    """A FHIR R4 instant (AuditEvent.recorded) in UTC; AuditMessageError("not-fhir") naming what is
    wrong for any other form. A zone is required: a time without one, taken as UTC, would be hours
    off for a sender writing local time. A leap second (23:59:60) is taken as the last instant of
    its minute, as Python's datetime has no second 60."""
    found = _INSTANT.fullmatch(text)
    if found is None:
        raise AuditMessageError("not-fhir", f"AuditEvent.recorded {text[:40]!r} is not an instant: expected "
                                f"{_INSTANT_FORM}")
    leap = found["second"] == "60"
    fraction = found["fraction"] or ""
    zone = found["zone"].replace("Z", "+00:00")
    second = "59" if leap else found["second"]
    try:
        value = datetime.fromisoformat(f"{found['date']}T{found['hour']}:{found['minute']}:{second}{zone}")
        value = value.replace(microsecond=int(fraction[:6].ljust(6, "0")))
        value = value.astimezone(timezone.utc)
    except (ValueError, OverflowError) as exc:  # 31 February; an offset out of the years 1-9999
        raise AuditMessageError("not-fhir", f"AuditEvent.recorded {text[:40]!r} is no time there is ({exc})") from None
    if leap and (value.hour, value.minute) != (23, 59):
        # A leap second is the 61st second of the last minute of a UTC day (ITU-R TF.460): 23:59:60Z,
        # or that instant in another zone (00:59:60+01:00); second 60 of any other minute is none.
        raise AuditMessageError("not-fhir", f"AuditEvent.recorded {text[:40]!r} is no time there is (second 60 "
                                "only ends a UTC day: 23:59:60Z)")
    return value.replace(microsecond=999_999) if leap else value


#: A FHIR R4 literal reference (2.3.0.1, References: [base]/Type/id[/_history/version]): a relative
#: or absolute URL ending in a resource type and a logical id (1-64 of [A-Za-z0-9-.]).
_LITERAL = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$")
#: HL7 v2.5 2.7.4 escape sequences for the delimiters a CX component may hold (\ first).
_HL7_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))


def reference_id(reference: str) -> str:
    """The logical id a FHIR literal reference names (``Patient/PX1``,
    ``http://ehr.example.org/fhir/Patient/PX2``, ``Patient/PX3/_history/2``: PX1, PX2, PX3); another
    reference (``urn:uuid:...``, a fragment) after its first ``/``, as it is."""
    found = _LITERAL.search(reference)
    return found.group(2) if found else reference.split("/", 1)[-1]


#: The resources FHIR R4 lets AuditEvent.source.observer name: Reference(PractitionerRole |
#: Practitioner | Organization | Device | Patient | RelatedPerson).
OBSERVER_TYPES = frozenset({"PractitionerRole", "Practitioner", "Organization", "Device", "Patient", "RelatedPerson"})


def observer_reference(text: str) -> tuple[str, str] | None:
    """The resource type and logical id of a FHIR literal reference (2.3.0.1) to a resource an
    audit source may be (`OBSERVER_TYPES`): ``Device/pacs1`` or its URL, ("Device", "pacs1"); None
    for any other text (``hospital/pacs1``, an A.5 AuditSourceID, is no reference)."""
    found = _LITERAL.search(text)
    return (found.group(1), found.group(2)) if found and found.group(1) in OBSERVER_TYPES else None


def hl7_escape(text: str) -> str:
    """``text`` as one component of an HL7 v2 field (HL7 v2.5 2.7.4): a FHIR identifier value ``123^45``
    is ``123\\S\\45`` in CX form, as ITI-20 senders write the same patient."""
    for char, escape in _HL7_ESCAPES:
        text = text.replace(char, escape)
    return text


def _is_cx(value: str) -> bool:
    """Whether an identifier value is a whole CX naming its assigning authority (ID^^^AUTHORITY)."""
    return PatientId.parse(value).authority is not None


def _coding(c: Mapping[str, Any], path: str) -> Code:
    """A Coding (FHIR R4 2.24.0.13) at ``path``: its code, system and display JSON strings, else
    not-fhir: a number would be stored as text a search by the code never finds as sent."""
    system = text(c, "system", path)
    return Code(text(c, "code", path) or "", _NAMES.get(system, system) if system is not None else None,
                text(c, "display", path))


def _codings(concepts: list[tuple[str, Mapping[str, Any]]]) -> list[Code]:
    """The Codings of CodeableConcepts (FHIR R4 2.24.0.12: coding 0..*, a JSON array), in order."""
    return [_coding(c, p) for at, concept in concepts for p, c in items(concept, "coding", at)]


def _reference_text(ref: Mapping[str, Any], path: str) -> str:
    """Who a Reference at ``path`` names (source.observer): its identifier's value, display or
    reference, each a JSON string (else not-fhir)."""
    ident = obj(ref, "identifier", path)
    return (text(ident, "value", f"{path}.identifier") or text(ref, "display", path) or text(ref, "reference", path)
            or "")


def _reference_system(ref: Mapping[str, Any], path: str) -> str | None:
    """The system of the identifier a Reference names (source.observer.identifier.system, FHIR R4
    2.24.0.16), None when the value `_reference_text` took is not that identifier's or it has none
    (an empty system, which no FHIR string may be, R4 2.6.2, is none)."""
    ident, at = obj(ref, "identifier", path), f"{path}.identifier"
    return (text(ident, "system", at) or None) if text(ident, "value", at) else None


def _observer(ref: Mapping[str, Any], path: str) -> Observer | None:
    """How source.observer (a FHIR R4 Reference, 2.3.0) named the source: its reference, type and
    display as received, and whether it had an identifier (whose value `_reference_text` took);
    each a JSON string (else not-fhir). An empty string, which no FHIR string may be (R4
    2.6.2), is none. None for an identifier with a system and nothing else: the source's ID and its
    system alone answer it as it came (`_out_observer`), as for messages stored before."""
    ident, at = obj(ref, "identifier", path), f"{path}.identifier"
    observer = Observer(reference=text(ref, "reference", path) or None, type=text(ref, "type", path) or None,
                        display=text(ref, "display", path) or None, identified=bool(text(ident, "value", at)))
    if observer == Observer(identified=True) and text(ident, "system", at):
        return None
    return observer


def _purposes(resource: Mapping[str, Any], agents: list[tuple[str, Mapping[str, Any]]]) -> tuple[Code, ...]:
    """The event's purposes of use: purposeOfEvent's, then each agent's purposeOfUse (FHIR R4
    AuditEvent.agent.purposeOfUse; BALP gives the user's there, a break-glass ``BTG`` too), each
    once. A.5 has one PurposeOfUse list, of the event (PS3.15 A.5.1): the agent's are its own."""
    found = _codings(items(resource, "purposeOfEvent", ROOT))
    found += [c for at, a in agents for c in _codings(items(a, "purposeOfUse", at))]
    unique: dict[tuple[str | None, str], Code] = {}
    for code in found:  # the same code in both places (a display in one only) is one purpose
        unique.setdefault((code.system, code.code), code)
    return tuple(unique.values())


def _agent(a: Mapping[str, Any], path: str) -> Participant:
    """An agent as an ActiveParticipant. UserID is the user's identity (PS3.15 A.5.2.1: unique
    within the enterprise, as the mapping of AuditEvent.agent.who gives it): who.identifier.value,
    else who.reference; who.display, a name as anyone may bear it, only when there is nothing else.
    UserName is the display name: agent.name, else who.display. The identifier's system (the
    namespace of that value: BALP's ``urn:oid:`` of the user directory) is kept beside it, as
    received, for ITI-81's answer and its ``agent-identifier`` token (FHIR R4 search, token)."""
    network = obj(a, "network", path)
    # agent.type and agent.role are both RoleIDCode (FHIR R4 AuditEvent, DICOM mapping): the roles
    # hold both, as the rules and the acting user's choice read them; ``types`` tells agent.type's.
    types = _codings([(f"{path}.type", obj(a, "type", path))])
    roles = types + _codings(items(a, "role", path))
    who = obj(a, "who", path)
    ident, at = obj(who, "identifier", f"{path}.who"), f"{path}.who.identifier"
    display = text(who, "display", f"{path}.who")
    value = text(ident, "value", at)
    user_id = value or text(who, "reference", f"{path}.who") or ""
    # The system names the identifier's value only: a UserID taken from elsewhere has none. An empty
    # system (no FHIR string may be empty, R4 2.6.2) is none.
    system = text(ident, "system", at) if value else None
    return Participant(user_id=user_id or display or "", user_id_system=system or None,
                       alternative_user_id=text(a, "altId", path),
                       user_name=text(a, "name", path) or (display if user_id else None),
                       requestor=boolean(a, "requestor", path),
                       access_point=text(network, "address", f"{path}.network"),
                       access_point_type=text(network, "type", f"{path}.network"), roles=tuple(roles),
                       types=tuple(types))


#: Identifiers of contained Patients read for the entities that name them, in all (each entity
#: naming one reads all its identifiers, and makes an object of each): past it, the message is
#: refused. A patient named by a few identifiers from a few entities reads a handful; without a
#: bound, a body of some 50 KB naming one patient of 1,000 identifiers from 1,000 entities made a
#: million participant objects.
MOST_CONTAINED_NAMES = 10_000


def _entities(resource: Mapping[str, Any]) -> tuple[ParticipantObject, ...]:
    """The participant objects of every entity (`_entity`), the contained resources indexed once."""
    contained = _Contained(resource)
    return tuple(o for at, e in items(resource, "entity", ROOT) for o in _entity(e, at, contained))


class _Contained:
    """The resources contained in an AuditEvent (FHIR R4 2.3.0, "contained"), by id, indexed when
    first needed: one pass, where a search per entity costs entities times resources. What a
    search would have met is said as it would have said it: a contained that is no array, or an
    item before the one named (or any, none named) that is no object or has an id of another
    JSON type, is not-fhir naming it (AuditEvent.contained[n]). Counts the identifiers of contained
    Patients read for the entities (MOST_CONTAINED_NAMES)."""

    def __init__(self, resource: Mapping[str, Any]) -> None:
        self.resource = resource
        self.by_id: dict[str | None, tuple[int, Mapping[str, Any]]] | None = None
        self.wrong: tuple[int, AuditMessageError] | None = None  # the first item that is no resource with an id
        self.names = 0

    def named(self, reference: str) -> tuple[str, Mapping[str, Any]] | None:
        """The contained resource a local reference ("#id") names, with its path (AuditEvent.contained[n]),
        None for none; the first of that id."""
        if self.by_id is None:
            self.by_id = self._index()
        found = self.by_id.get(reference[1:])
        if self.wrong is not None and (found is None or self.wrong[0] < found[0]):
            raise self.wrong[1]
        return (f"{ROOT}.contained[{found[0]}]", found[1]) if found is not None else None

    def _index(self) -> dict[str | None, tuple[int, Mapping[str, Any]]]:
        by_id: dict[str | None, tuple[int, Mapping[str, Any]]] = {}
        for position, item in enumerate(array(self.resource, "contained", ROOT)):
            at = f"{ROOT}.contained[{position}]"
            if not isinstance(item, Mapping):
                # Worded as it always was ("a JSON int where an object is expected"), now naming where.
                self.wrong = self.wrong or (position, AuditMessageError(
                    "not-fhir", f"{at} is {json_type(item)} where an object is expected"))
                continue
            try:
                key = text(item, "id", at)
            except AuditMessageError as exc:
                self.wrong = self.wrong or (position, exc)
                continue
            by_id.setdefault(key, (position, item))
        return by_id

    def read(self, count: int) -> None:
        """``count`` more identifiers of a contained Patient read for an entity; AuditMessageError
        (not-fhir) past MOST_CONTAINED_NAMES in all."""
        self.names += count
        if self.names > MOST_CONTAINED_NAMES:
            raise AuditMessageError("not-fhir", f"AuditEvent.entity: the entities name contained Patients by more "
                                    f"than {MOST_CONTAINED_NAMES:,} identifiers in all (each entity naming a "
                                    "contained Patient is one participant object per identifier)")


def _entity(e: Mapping[str, Any], path: str, contained_resources: _Contained) -> tuple[ParticipantObject, ...]:
    """An entity as its participant objects (`_named`). Its ``what`` may name a resource contained in
    the AuditEvent (FHIR R4 2.3.0, "#id"): a contained Patient is named by its identifiers, one
    object each ("#p1" means nothing outside the resource). An entity without a role, of no type or
    type 1 (Person), whose ``what`` is a Patient is the patient (role 1 Patient, as A.5 tells one):
    FHIR R4's ``patient`` search parameter is every entity.what that is a Patient, so ITI-81's
    ``patient=`` and `audit patient` find it."""
    what, at = obj(e, "what", path), f"{path}.what"
    kind, role_coding = obj(e, "type", path), obj(e, "role", path)
    type_code = text(kind, "code", f"{path}.type")
    role = text(role_coding, "code", f"{path}.role")
    # Their code systems, kept as sent: BALP's entity types (XrequestId, ...) and FHIR resource
    # types are no audit-entity-type codes, and ITI-81 gives each back under its own system.
    systems = (_system(kind, f"{path}.type"), _system(role_coding, f"{path}.role"))
    reference = text(what, "reference", at) or ""
    contained = contained_resources.named(reference) if reference.startswith("#") else None
    named = _LITERAL.search(reference)
    if type_code in (None, "1") and role is None and (
            (contained[1] if contained else {}).get("resourceType") == "Patient"
            or (named is not None and named[1] == "Patient")):
        type_code = role = "1"
        systems = (systems[0] if systems[0] else None, None)  # told as A.5 tells a patient
    if contained is not None and contained[1].get("resourceType") == "Patient":
        patient_at, patient = contained
        identifiers = array(patient, "identifier", patient_at)
        contained_resources.read(len(identifiers))
        # Each identifier is read where it is (AuditEvent.contained[n].identifier[m]), as the
        # entity's what.identifier would be.
        found = [o for m, i in enumerate(identifiers)
                 if text(as_object(i, f"{patient_at}.identifier[{m}]"), "value", f"{patient_at}.identifier[{m}]")
                 for o in _named(e, path, {"identifier": i}, type_code, role, systems,
                                 ident_at=f"{patient_at}.identifier[{m}]")]
        if found:
            return tuple(found)
    return _named(e, path, what, type_code, role, systems)


def _system(coding: Mapping[str, Any], path: str) -> str | None:
    """A Coding's system as sent, "" for a code without one, None for no code (nothing to keep)."""
    if text(coding, "code", path) is None:
        return None
    return text(coding, "system", path) or ""


def _named(e: Mapping[str, Any], path: str, what: Mapping[str, Any], type_code: str | None, role: str | None,
           systems: tuple[str | None, str | None] = (None, None), ident_at: str | None = None,
           ) -> tuple[ParticipantObject, ...]:
    """An entity (at ``path``) as its participant object; a patient entity naming the patient both by
    a literal reference and by an identifier (a Reference may carry both, FHIR R4 2.3.0) as two, one
    per name, so that a search by either (``patient=Patient/ID`` or ``system|value``) finds it.
    ``ident_at`` is where the identifier is when it is not the entity's what.identifier (a contained
    Patient's), for the messages."""
    at = f"{path}.what"
    ident = obj(what, "identifier", at)
    ident_at = ident_at or f"{at}.identifier"
    # Only the first Coding of the identifier's type is read (A.5's ParticipantObjectIDTypeCode is one).
    id_types = array(obj(ident, "type", ident_at), "coding", f"{ident_at}.type")
    # No ID type is made up for an entity without one: a patient is told by its type (1, Person)
    # and role (1, Patient), as ParticipantObjectTypeCode and its role are in A.5 (mapping.is_patient).
    first = f"{ident_at}.type.coding[0]"
    id_type = _coding(as_object(id_types[0], first), first) if id_types else Code("")
    value = text(ident, "value", ident_at)
    object_id = value or reference_id(text(what, "reference", at) or "")
    system = text(ident, "system", ident_at) or ""
    # One rule with the Event's and the search's (mapping.is_patient, PS3.15 A.5.1): ID type 2
    # (Patient Number) names a patient only on a person or an untyped entity; a system object
    # (type 2) of that ID type is no patient, its identifier kept with its system as received.
    patient = is_patient({"type_code": type_code, "role": role, "id_type": {"code": id_type.code}})
    if patient and value and (system or not _is_cx(value)):
        # Identifier.value is an ID, never a CX: its delimiters are escaped (HL7 v2.5 2.7.4), as
        # ITI-20 senders write them, or "123^45" would be read as patient 123. Without a system, a
        # value that is a whole CX with its authority is taken as sent (senders copying ITI-20).
        object_id = hl7_escape(value)
        if system:
            # The system is the patient's assigning authority: kept in CX form, as ITI-20 writes a
            # patient ID, so a search names it as it names any other (patient.PatientId).
            object_id = PatientId.of_system(hl7_escape(system), object_id).key()
    named = ParticipantObject(
        object_id=object_id, id_type=id_type, type_code=type_code, role=role, type_system=systems[0],
        role_system=systems[1], id_system=system if value and system and not patient else None,
        life_cycle=text(obj(e, "lifecycle", path), "code", f"{path}.lifecycle"), name=text(e, "name", path),
        query=text(e, "query", path),
        details=tuple((text(d, "type", p) or "", text(d, "valueBase64Binary", p) or text(d, "valueString", p) or "")
                      for p, d in items(e, "detail", path)))
    reference = text(what, "reference", at)
    also = reference_id(reference) if patient and value and reference else None
    if also is None or also == object_id:
        return (named,)
    return named, ParticipantObject(object_id=also, id_type=Code(""), type_code=type_code, role=role,
                                    type_system=systems[0], role_system=systems[1])


def render(record: AuditRecord, resource_id: str, time: datetime | None = None) -> dict[str, Any]:
    """The AuditEvent of a record (what ITI-81 returns for a stored event). FHIR R4 forbids empty
    strings (R4 2.6.2, "string values SHALL NOT be empty", and every element needs a value or
    children, ele-1): an A.5 attribute present but empty (a 110104's Patient without an ID, an empty
    UserID or code) leaves its element out; a detail with an empty type or value, both required in
    entity.detail, is left out whole. The raw message keeps them."""
    when = record.time or time
    out: dict[str, Any] = {
        "resourceType": "AuditEvent", "id": resource_id, "type": _out_coding(record.event_id),
        "recorded": when.isoformat().replace("+00:00", "Z") if when else None,
        "agent": [_out_agent(p) for p in record.participants] or [
            {"requestor": False, "who": {"display": "unknown"}}],
        "source": {"observer": _out_observer(record)},
    }
    if subtypes := _out_codings(record.event_types):
        out["subtype"] = subtypes
    # action and outcome are bound to their value sets (required, FHIR R4 AuditEvent; A.5.1's
    # enumerations): a value of neither, as a lenient sender wrote it, is left out (the raw keeps it).
    if record.action in codes.ACTIONS:
        out["action"] = record.action
    if record.outcome in codes.OUTCOMES:
        out["outcome"] = record.outcome
    if record.outcome_description:
        out["outcomeDesc"] = record.outcome_description
    if purposes := _out_codings(record.purposes):
        out["purposeOfEvent"] = [{"coding": [c]} for c in purposes]
    if record.source_site:
        out["source"]["site"] = record.source_site
    # RFC 3881's source types 1-9 sent without a system are FHIR's security-source-type codes.
    if source_types := [_out_coding(c, SOURCE_TYPE if _token(c.code) in _SOURCE_TYPES else "")
                        for c in record.source_types if _token(c.code) or c.meaning]:
        out["source"]["type"] = source_types
    # An entity with nothing left (every attribute empty) would be an empty element (ele-1).
    if entities := [e for e in (_out_entity(o, record.syntax) for o in record.objects) if e]:
        out["entity"] = entities
    return out


def _out_observer(record: AuditRecord) -> dict[str, Any]:
    """source.observer (FHIR R4 AuditEvent, a Reference, 2.3.0) as a FHIR AuditEvent sent it
    (`_sent_observer`): a reference stays a reference, an identifier an identifier (with the system
    it came with), a display a display. Else (A.5's AuditSourceID, PS3.15 A.5.1, a FHIR message
    stored before the form was kept): the source's identifier with its system when it had one
    (what ``source=system|value`` compares), otherwise its ID as the display, as before."""
    if record.source_observer is not None and (sent := _sent_observer(record, record.source_observer)):
        return sent
    if record.source_id and record.source_id_system:
        return {"identifier": _out_identifier(record.source_id_system, record.source_id)}
    return {"display": record.source_id or "unknown"}


def _sent_observer(record: AuditRecord, observer: Observer) -> dict[str, Any]:
    """The parts of source.observer a FHIR AuditEvent sent, {} when none is left to name the source.
    A local reference (``#dev``, FHIR R4 References: a contained resource) names one the answer
    does not carry: it is left out (ref-1), and the source named as before."""
    out: dict[str, Any] = {}
    if observer.reference and not observer.reference.startswith("#"):
        out["reference"] = observer.reference
    if observer.identified and record.source_id:
        out["identifier"] = _out_identifier(record.source_id_system, record.source_id)
    if observer.display:
        out["display"] = observer.display
    if out and observer.type:
        out["type"] = observer.type
    return out


def _out_coding(code: Code, bare: str = "") -> dict[str, str]:
    """A Coding under the system `answered_system` gives (none for a code received without one that
    DICOM does not define); an empty code is left out (the display, if any, remains). One left with
    nothing, an empty EventID of no system (AuditEvent.type is required, and a Coding needs a value,
    ele-1), is answered as ``unknown``, as an agent naming no one is."""
    out = {"system": system} if (system := answered_system(code.code, code.system, bare)) else {}
    if value := _token(code.code):
        out["code"] = value
    if code.meaning:
        out["display"] = code.meaning
    return out or {"display": "unknown"}


def _out_codings(codes: tuple[Code, ...]) -> list[dict[str, str]]:
    """The Codings of optional coded elements; one with neither a code nor a meaning says nothing
    and is left out."""
    return [_out_coding(c) for c in codes if _token(c.code) or c.meaning]


def _token(text: str | None) -> str:
    """A code as FHIR's ``code`` type allows it (no leading, trailing or repeated whitespace, R4
    2.24.0.1): A.5's codes are ``xs:token`` (PS3.15 A.5.1), whose value is whitespace-collapsed
    anyway, so " 110110 " is 110110; "" for none."""
    return " ".join((text or "").split())


def _out_agent(p: Participant) -> dict[str, Any]:
    out: dict[str, Any] = {"requestor": p.requestor}
    if p.user_id:  # agent.who is optional (0..1); an empty UserID names no one
        out["who"] = {"identifier": _out_identifier(p.user_id_system, p.user_id)}
    # agent.type as received (one CodeableConcept, its Codings), the other roles as agent.role.
    if types := _out_codings(p.types):
        out["type"] = {"coding": types}
    roles = list(p.roles)
    for kind in p.types:
        if kind in roles:
            roles.remove(kind)
    if role_codings := _out_codings(tuple(roles)):
        out["role"] = [{"coding": [r]} for r in role_codings]
    if p.alternative_user_id:
        out["altId"] = p.alternative_user_id
    if p.user_name:
        out["name"] = p.user_name
    if p.access_point:
        out["network"] = {"address": p.access_point}
        if p.access_point_type in ("1", "2", "3", "4", "5"):
            out["network"]["type"] = p.access_point_type
    return out


def _out_entity(o: ParticipantObject, syntax: str) -> dict[str, Any]:
    # An empty ParticipantObjectID (pacsguard's own 110104 for an object without Patient ID): the
    # identifier keeps its type (a patient number, not known) and has no value.
    ident: dict[str, Any] = _out_identifier(o.id_system, o.object_id) if o.object_id else {}
    if _token(o.id_type.code):
        ident["type"] = {"coding": [_out_coding(o.id_type)]}
    out: dict[str, Any] = {"what": {"identifier": ident}} if ident else {}
    if type_code := _token(o.type_code):
        out["type"] = _entity_coding(o.type_system, ENTITY_TYPE, type_code)
    if role := _token(o.role):
        out["role"] = _entity_coding(o.role_system, OBJECT_ROLE, role)
    if life_cycle := _token(o.life_cycle):
        out["lifecycle"] = {"system": LIFECYCLE, "code": life_cycle}
    if o.name:
        out["name"] = o.name
    # entity.query is a base64Binary (FHIR R4 AuditEvent; A.5's ParticipantObjectQuery is
    # xs:base64Binary too, PS3.15 A.5.1): a lenient sender's text that is no base64 ("110110")
    # would make the answer no valid AuditEvent. Left out, as an action outside its value set
    # is; the raw message keeps it.
    if o.query and _is_base64_binary(o.query):
        out["query"] = o.query
    if details := [_out_detail(t, v, syntax) for t, v in o.details if t and v]:
        out["detail"] = details
    return out


def _out_identifier(system: str | None, value: str) -> dict[str, str]:
    """An Identifier (FHIR R4 2.24.0.16: system 0..1, value) as received: its system, when the
    message gave one (agent.who and a non-patient entity's what), then its value."""
    return {"system": system, "value": value} if system else {"value": value}


def _entity_coding(system: str | None, fixed: str, code: str) -> dict[str, str]:
    """entity.type or entity.role (FHIR R4 AuditEvent, Coding): under the system the received
    AuditEvent named (none, if it named none), else under the one A.5's code belongs to
    (ParticipantObjectTypeCode and its role, PS3.15 A.5.1: audit-entity-type and object-role)."""
    if system is None:
        return {"system": fixed, "code": code}
    return {"system": system, "code": code} if system else {"code": code}


def _out_detail(kind: str, value: str, syntax: str) -> dict[str, str]:
    """A ParticipantObjectDetail as entity.detail (FHIR R4 AuditEvent.entity.detail.value[x]). In
    A.5 and RFC 3881 its value is xs:base64Binary (PS3.15 A.5.1, RFC 3881 5.5.9): valueBase64Binary,
    unless a sender wrote text that is not base64. A FHIR message's value is kept as it was read, of
    either kind: valueString, as before."""
    if syntax != "fhir" and _is_base64(value):
        return {"type": kind, "valueBase64Binary": value}
    return {"type": kind, "valueString": value}


def _is_base64_binary(text: str) -> bool:
    """Whether ``text`` is a FHIR R4 base64Binary (2.24.0.1: groups of four base64 characters, white
    space between them allowed): at least one group, its padding right."""
    packed = "".join(text.split())
    return bool(packed) and _is_base64(packed)


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def bundle(resources: list[dict[str, Any]], base: str, *, total: int | None = None, self_url: str | None = None,
           next_url: str | None = None, warnings: list[str] | None = None) -> dict[str, Any]:
    """A searchset Bundle (FHIR R4 Bundle, as ITI-81 answers): ``total`` when it is known, a
    ``self`` link with the parameters the search used (FHIR R4 search: the server SHALL return
    them there), a ``next`` link to the following page (FHIR R4 3.1.1.4.8) when there may be one,
    and the ``warnings`` (parameters ignored) as an OperationOutcome entry of search mode "outcome"."""
    out: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        out["total"] = total
    links = [{"relation": relation, "url": url} for relation, url in (("next", next_url), ("self", self_url)) if url]
    if links:
        out["link"] = links
    out["entry"] = [{"fullUrl": f"{base}/AuditEvent/{r['id']}", "resource": r, "search": {"mode": "match"}}
                    for r in resources]
    if warnings:
        issues = [{"severity": "warning", "code": "not-supported", "diagnostics": w} for w in warnings]
        out["entry"].append({"resource": {"resourceType": "OperationOutcome", "issue": issues},
                             "search": {"mode": "outcome"}})
    return out


def capability_statement(base: str, version: str, now: datetime, search_parameters: Mapping[str, str],
                         documentation: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What the endpoint serves, as a FHIR R4 CapabilityStatement (GET /metadata, FHIR R4 3.1.0.10.1):
    AuditEvent search (ITI-81) with ``search_parameters`` (name -> FHIR search type), each with its
    ``documentation`` when it takes more than its type says (searchParam.documentation), and create
    (ITI-20's RESTful option), and batch and transaction at the base (its FHIR feed of Bundles). FHIR
    clients ask for it first (HAPI's, by default, before their
    first request)."""
    documented = documentation or {}
    params = [{"name": name, "type": kind, **({"documentation": documented[name]} if name in documented else {})}
              for name, kind in search_parameters.items()]
    return {
        "resourceType": "CapabilityStatement", "status": "active", "kind": "instance",
        "date": now.isoformat(timespec="seconds"), "fhirVersion": "4.0.1", "format": ["json"],
        "software": {"name": "pacsguard", "version": version},
        "implementation": {"description": "pacsguard Audit Record Repository (IHE RESTful ATNA)", "url": base},
        "rest": [{
            "mode": "server",
            "security": {"description": "a bearer token or a client certificate (mutual TLS)"},
            # A batch or transaction Bundle of AuditEvent creates at the base (ITI-20's FHIR feed).
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
            "resource": [{
                "type": "AuditEvent",
                "interaction": [{"code": "read"}, {"code": "search-type"}, {"code": "create"}],
                "searchParam": params,
            }],
        }],
    }
