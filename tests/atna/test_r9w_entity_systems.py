"""Outside round 9, wave 2 (W1, issue #18): ITI-81 gave every entity.type and entity.role back
under audit-entity-type and object-role, though a FHIR AuditEvent (IHE BALP) names its own: a
BALP ``XrequestId`` (BasicAuditEntityType) or a ``resource-types#DocumentReference`` came back as
an audit-entity-type code that does not exist. The systems a received AuditEvent named are kept
beside the codes and rendered (FHIR R4 AuditEvent.entity.type and .role, Coding); an A.5 message's
codes keep theirs (PS3.15 A.5.1 ParticipantObjectTypeCode and its role). curl posts and searches,
as a BALP client would. Loopback 127.0.111.0/24."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from atna_corpus import every_event_id
from fhir.resources.R4B.bundle import Bundle
from receiver import curl_fhir, running

from pacsguard.atna.ingest import Sender, frame_event
from peers.dcmtk import free_port
from store_helpers import new_store

HOST = "127.0.111.6"
TOKEN = "w1-entity-systems-token-0123456789"
BALP = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
LOCAL_ROLES = "urn:oid:1.2.3.4.5.6.7"


def _balp_read() -> dict[str, Any]:
    """A BALP patient-specific RESTful read (Basic Audit Log Patterns, "PatientRead"), with its
    request id entity, the resource read, and an entity coded by a local role system and a type
    code without a system (a FHIR Coding's system is 0..1)."""
    return {
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
        "action": "R", "recorded": "2026-12-05T10:15:00Z", "outcome": "0",
        "agent": [{"type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM",
                                        "code": "110153"}]},
                   "who": {"identifier": {"value": "ehr-client-w1"}}, "requestor": False},
                  {"type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM",
                                        "code": "110152"}]},
                   "who": {"identifier": {"value": "dr-w1"}}, "requestor": True}],
        "source": {"observer": {"display": "fhir-server-w1"}},
        "entity": [
            {"what": {"reference": "Patient/PX-W1"},
             "type": {"system": ENTITY_TYPE, "code": "1"}, "role": {"system": OBJECT_ROLE, "code": "1"}},
            {"what": {"identifier": {"value": "req-7f3a"}}, "type": {"system": BALP, "code": "XrequestId"}},
            {"what": {"reference": "DocumentReference/doc-w1"},
             "type": {"system": RESOURCE_TYPES, "code": "DocumentReference"},
             "role": {"system": OBJECT_ROLE, "code": "4"}},
            {"what": {"identifier": {"value": "list-w1"}}, "type": {"code": "2"},
             "role": {"system": LOCAL_ROLES, "code": "reviewed"}},
        ],
    }


def _curl(*args: str) -> tuple[int, Any]:
    return curl_fhir(TOKEN, *args)


def _codings(resource: dict[str, Any]) -> list[tuple[Any, Any]]:
    return [(e.get("type"), e.get("role")) for e in resource.get("entity", ())]


EXPECTED = [({"system": ENTITY_TYPE, "code": "1"}, {"system": OBJECT_ROLE, "code": "1"}),
            ({"system": BALP, "code": "XrequestId"}, None),
            ({"system": RESOURCE_TYPES, "code": "DocumentReference"}, {"system": OBJECT_ROLE, "code": "4"}),
            ({"code": "2"}, {"system": LOCAL_ROLES, "code": "reviewed"})]


def test_a_balp_event_comes_back_under_the_systems_it_was_sent_with(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("ATNA_W1_TOKEN", TOKEN)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    # An A.5 message beside it: its ParticipantObjectTypeCode and role stay audit-entity-type and
    # object-role codes.
    a5 = frame_event(Sender("10.20.0.9", 40000, "tcp", "octet-counting"),
                     b"<85>1 - h a - IHE+RFC-3881 - " + every_event_id()["110110"])
    store.append([a5])
    port = free_port(HOST)
    with running({"http": {"host": HOST, "port": port, "token": {"env": "ATNA_W1_TOKEN"}}}, store) as rx:
        base = f"http://{HOST}:{port}/AuditEvent"
        status, created = _curl("--data-binary", orjson.dumps(_balp_read()).decode(), base)
        assert status == 201, created
        assert _codings(created) == EXPECTED
        # What serve's bus does: the received message into the store, which ITI-81 searches.
        store.append(rx.wait(lambda evs: len(evs) == 1, "the posted AuditEvent recorded"))
        status, bundle = _curl(f"{base}?patient=PX-W1")
        assert status == 200 and bundle["total"] == 1, bundle
        Bundle.model_validate(bundle)  # FHIR R4 structure (fhir.resources)
        assert _codings(bundle["entry"][0]["resource"]) == EXPECTED
        status, read = _curl(bundle["entry"][0]["fullUrl"])
        assert status == 200 and _codings(read) == EXPECTED
        status, dicom = _curl(f"{base}?type=110110")
        assert status == 200 and dicom["total"] == 1, dicom
    store.close()
    entities = dicom["entry"][0]["resource"]["entity"]
    assert entities and all(e["type"]["system"] == ENTITY_TYPE for e in entities if "type" in e)
    assert all(e["role"]["system"] == OBJECT_ROLE for e in entities if "role" in e)
