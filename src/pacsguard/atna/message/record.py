"""The neutral form of one audit message, whatever its syntax (PS3.15 A.5 XML, RFC 3881 XML, FHIR
AuditEvent): the elements of PS3.15 A.5.1, named as there."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Code:
    """A coded value (PS3.15 A.5.1 CodedValueType: csd-code, codeSystemName, originalText)."""

    code: str
    system: str | None = None
    meaning: str | None = None

    def to_dict(self) -> dict[str, str]:
        out = {"code": self.code}
        if self.system:
            out["system"] = self.system
        if self.meaning:
            out["meaning"] = self.meaning
        return out


@dataclass(frozen=True, slots=True)
class Participant:
    """ActiveParticipant: a user, process or node that took part."""

    user_id: str
    alternative_user_id: str | None = None
    user_name: str | None = None
    requestor: bool = False
    access_point: str | None = None
    access_point_type: str | None = None
    roles: tuple[Code, ...] = ()
    #: Those of the roles a FHIR AuditEvent gave as agent.type, not agent.role: both are RoleIDCode
    #: in FHIR R4's DICOM mapping of AuditEvent, and each is rendered back where it was received.
    types: tuple[Code, ...] = ()
    #: The system of the identifier a FHIR AuditEvent named the agent by (FHIR R4
    #: AuditEvent.agent.who.identifier.system, the namespace of its value, the UserID), as received:
    #: ITI-81 answers it back and ``agent-identifier=system|value`` compares it. None when none was
    #: given (A.5 and RFC 3881 have none; messages stored before it was kept have none either).
    user_id_system: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"user_id": self.user_id, "requestor": self.requestor}
        for name in ("user_id_system", "alternative_user_id", "user_name", "access_point", "access_point_type"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.roles:
            out["roles"] = [r.to_dict() for r in self.roles]
        if self.types:
            out["types"] = [t.to_dict() for t in self.types]
        return out


@dataclass(frozen=True, slots=True)
class SopClass:
    uid: str
    instances: int | None = None
    instance_uids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ParticipantObject:
    """ParticipantObjectIdentification: a patient, study, query, node or other object touched."""

    object_id: str
    id_type: Code
    type_code: str | None = None
    role: str | None = None
    life_cycle: str | None = None
    name: str | None = None
    query: str | None = None  # base64, as sent
    details: tuple[tuple[str, str], ...] = ()
    sop_classes: tuple[SopClass, ...] = ()
    accessions: tuple[str, ...] = ()
    studies: tuple[str, ...] = ()  # ParticipantObjectContainsStudy
    #: The code systems of type_code and role as a FHIR AuditEvent's entity.type and entity.role
    #: named them ("" for a Coding without one); None where A.5 fixes them (PS3.15 A.5.1,
    #: ParticipantObjectTypeCode and its role: audit-entity-type and object-role in FHIR).
    type_system: str | None = None
    role_system: str | None = None
    #: The system of a FHIR entity's identifier (entity.what.identifier.system) when the entity is
    #: no patient, as received: ITI-81 answers it back and ``entity-identifier=system|value``
    #: compares it. None when none was given; a patient's system is its assigning authority, kept
    #: in the CX form of object_id instead (fhir._named).
    id_system: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.object_id, "id_type": self.id_type.to_dict()}
        if self.id_system is not None:
            out["id_system"] = self.id_system
        for name in ("type_code", "type_system", "role", "role_system", "life_cycle", "name", "query"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.details:
            out["details"] = [{"type": t, "value": v} for t, v in self.details]
        if self.sop_classes:
            out["sop_classes"] = [{"uid": s.uid, "instances": s.instances, "instance_uids": list(s.instance_uids)}
                                  for s in self.sop_classes]
        if self.accessions:
            out["accessions"] = list(self.accessions)
        if self.studies:
            out["studies"] = list(self.studies)
        return out


@dataclass(frozen=True, slots=True)
class Observer:
    """How a FHIR AuditEvent named its source (source.observer, a FHIR R4 Reference, 2.3.0), so that
    ITI-81 answers it as it came: its literal ``reference`` (``Device/abc``), its ``type`` (a
    resource type's URI), its ``display``, and whether it had an ``identifier`` (whose value and
    system are AuditRecord.source_id and source_id_system). A.5 and RFC 3881 have none: an
    AuditSourceID is no reference (PS3.15 A.5.1)."""

    reference: str | None = None
    type: str | None = None
    display: str | None = None
    identified: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k in ("reference", "type", "display") if (v := getattr(self, k)) is not None}
        if self.identified:
            out["identified"] = True
        return out

    @classmethod
    def of(cls, data: Any) -> Observer | None:
        """The Observer a stored ``details.source.observer`` holds (`to_dict`), None for none."""
        if not isinstance(data, dict):
            return None
        def text(key: str) -> str | None:
            value = data.get(key)
            return value if isinstance(value, str) and value else None

        return cls(text("reference"), text("type"), text("display"), data.get("identified") is True)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit message: EventIdentification, ActiveParticipants, AuditSourceIdentification and
    ParticipantObjectIdentifications (PS3.15 A.5.1), and its syntax (dicom, rfc3881 or fhir)."""

    syntax: str
    event_id: Code
    action: str | None
    time: datetime | None
    outcome: str  # EventOutcomeIndicator: 0, 4, 8, 12
    event_types: tuple[Code, ...] = ()
    outcome_description: str | None = None
    purposes: tuple[Code, ...] = ()
    participants: tuple[Participant, ...] = ()
    source_id: str | None = None
    source_site: str | None = None
    source_types: tuple[Code, ...] = ()
    objects: tuple[ParticipantObject, ...] = field(default=())
    #: The system of the identifier a FHIR AuditEvent named its source by (FHIR R4
    #: AuditEvent.source.observer.identifier.system, the namespace of source_id), as received:
    #: ITI-81 answers it back and ``source=system|value`` compares it. None when none was given
    #: (A.5's AuditSourceID has none, PS3.15 A.5.1; messages stored before it was kept neither).
    source_id_system: str | None = None
    #: How a FHIR AuditEvent's source.observer named the source (`Observer`), None for A.5, RFC
    #: 3881 and FHIR messages stored before it was kept.
    source_observer: Observer | None = None

