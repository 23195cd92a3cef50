"""Round 10, helper A: ITI-81's token parameters compare the system (FHIR R4 search, token), and a
code received without a system is answered without one.

1. ``entity-type``, ``entity-role``, ``outcome``, ``action`` and ``agent-identifier`` took
   ``system|code`` and compared the code alone: ``entity-type=http://loinc.org|2`` found every
   system object. Now ``system|code`` finds only values the answer gives under that system,
   ``|code`` only those it gives without one, ``code`` any; ``agent-role`` (FHIR R4 AuditEvent's
   token on agent.role) is taken, not ignored as an unknown parameter (which answered every event).
4. An RFC 3881 EventTypeCode sent as ``code=`` alone came back under DICOM's system, as if DICOM had
   defined it. It comes back without a system, unless it is one of DICOM's own codes (CID 401).

util-linux ``logger`` sends the A.5 and RFC 3881 messages over TCP, curl POSTs a FHIR AuditEvent and
searches. Loopback 127.0.101.0/24."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from receiver import curl_fhir, logger_send, running

from peers.dcmtk import free_port
from store_helpers import new_store

HOST = "127.0.101.11"
TOKEN = "r10a-token-systems-0123456789"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
OUTCOME = "http://hl7.org/fhir/audit-event-outcome"
ACTION = "http://hl7.org/fhir/audit-event-action"

#: A PS3.15 A.5.3 Patient Record read (110110) by a user at a RIS, naming the patient and a study
#: (ParticipantObjectTypeCode 2, role 3): A.5's codes, answered under audit-entity-type and object-role.
A5 = ('<?xml version="1.0" encoding="UTF-8"?><AuditMessage>'
      '<EventIdentification EventActionCode="R" EventDateTime="2026-12-05T08:10:00Z" EventOutcomeIndicator="0">'
      '<EventID csd-code="110110" codeSystemName="DCM" originalText="Patient Record"/></EventIdentification>'
      '<ActiveParticipant UserID="r10a.jsmith" UserIsRequestor="true" NetworkAccessPointID="10.101.0.7" '
      'NetworkAccessPointTypeCode="2"/>'
      '<ActiveParticipant UserID="RIS101" UserIsRequestor="false" NetworkAccessPointID="10.101.0.2" '
      'NetworkAccessPointTypeCode="2"><RoleIDCode csd-code="110153" codeSystemName="DCM" '
      'originalText="Source Role ID"/></ActiveParticipant>'
      '<AuditSourceIdentification AuditSourceID="RIS101"/>'
      '<ParticipantObjectIdentification ParticipantObjectID="R10A-P1" ParticipantObjectTypeCode="1" '
      'ParticipantObjectTypeCodeRole="1"><ParticipantObjectIDTypeCode csd-code="2" codeSystemName="RFC-3881" '
      'originalText="Patient Number"/></ParticipantObjectIdentification>'
      '<ParticipantObjectIdentification ParticipantObjectID="1.2.3.101.5" ParticipantObjectTypeCode="2" '
      'ParticipantObjectTypeCodeRole="3"><ParticipantObjectIDTypeCode csd-code="110180" codeSystemName="DCM" '
      'originalText="Study Instance UID"/></ParticipantObjectIdentification></AuditMessage>')

#: An RFC 3881 login (a legacy sender's): its event types given as ``code=`` alone, one DICOM's
#: (110122 Login, CID 401), one the sender's own.
RFC3881 = ('<?xml version="1.0" encoding="UTF-8"?><AuditMessage>'
           '<EventIdentification EventActionCode="E" EventDateTime="2026-12-05T08:20:00Z" EventOutcomeIndicator="0">'
           '<EventID code="110114" codeSystemName="DCM" displayName="User Authentication"/>'
           '<EventTypeCode code="110122" displayName="Login"/>'
           '<EventTypeCode code="BADGE-LOGIN" displayName="Badge login"/></EventIdentification>'
           '<ActiveParticipant UserID="r10a.legacy" UserIsRequestor="true" NetworkAccessPointID="10.101.0.8" '
           'NetworkAccessPointTypeCode="2"/>'
           '<AuditSourceIdentification AuditSourceID="LEGACY101"/></AuditMessage>')


def _fhir_read() -> dict[str, Any]:
    """A FHIR AuditEvent (IHE BALP style) with an entity of type 2 sent without a system and one of a
    local system, and a user agent identified by an identifier with a system."""
    return {
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "action": "R", "recorded": "2026-12-05T08:30:00Z", "outcome": "0",
        "agent": [{"type": {"coding": [{"system": DCM, "code": "110153"}]},
                   "who": {"identifier": {"value": "ehr-r10a"}}, "requestor": False},
                  {"who": {"identifier": {"system": "urn:oid:1.2.3.101", "value": "r10a.dr"}}, "requestor": True}],
        "source": {"observer": {"display": "fhir-r10a"}},
        "entity": [{"what": {"reference": "Patient/R10A-P2"}},
                   {"what": {"identifier": {"value": "list-r10a"}}, "type": {"code": "2"},
                    "role": {"system": "urn:oid:1.2.3.101.9", "code": "3"}}],
    }


def _curl(*args: str) -> tuple[int, Any]:
    return curl_fhir(TOKEN, *args)


@pytest.fixture
def endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The repository with TCP and the RESTful endpoint, the three messages received and stored: a
    function searching ITI-81 (curl GET) that returns the names of the messages found, and the
    Bundle."""
    monkeypatch.setenv("ATNA_R10A_TOKEN", TOKEN)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    tcp, http = free_port(HOST), free_port(HOST)
    section = {"tcp": {"host": HOST, "port": tcp},
               "http": {"host": HOST, "port": http, "token": {"env": "ATNA_R10A_TOKEN"}}}
    base = f"http://{HOST}:{http}/AuditEvent"
    try:
        with running(section, store) as rx:
            logger_send(HOST, tcp, A5)
            logger_send(HOST, tcp, RFC3881)
            status, posted = _curl("--data-binary", json.dumps(_fhir_read()), base)
            assert status == 201, posted
            audits = rx.wait(lambda evs: len([e for e in evs if e.kind.startswith("atna.audit.")]) == 3,
                             "the three audit messages received")
            # What serve's bus does: each received message into the store, which ITI-81 searches.
            store.append([e for e in audits if e.kind.startswith("atna.audit.")])
            names = {"atna.audit.patient-record": "a5", "atna.audit.user-authentication": "rfc3881",
                     "atna.audit.other": "fhir"}
            by_id = {e.id: names[e.kind] for e in audits if e.kind in names}

            def search(query: str) -> tuple[list[str], dict[str, Any]]:
                status, bundle = _curl("-G", *[a for part in query.split("&") for a in ("--data-urlencode", part)],
                                       base)
                assert status == 200, bundle
                Bundle.model_validate(bundle)  # FHIR R4 (fhir.resources)
                found = sorted(by_id[e["resource"]["id"]] for e in bundle["entry"]
                               if e["resource"]["resourceType"] == "AuditEvent")
                return found, bundle

            yield search
    finally:
        store.close()


def test_entity_type_and_role_tokens_compare_the_system_the_answer_gives(endpoint: Any) -> None:
    """The A.5 study is answered as audit-entity-type 2 and object-role 3, the FHIR entity as type 2
    without a system and role 3 of a local system: each token finds what its answer shows."""
    search = endpoint
    assert search("entity-type=2")[0] == ["a5", "fhir"]
    found, bundle = search(f"entity-type={ENTITY_TYPE}|2")
    assert found == ["a5"]
    shown = [e["type"] for e in bundle["entry"][0]["resource"]["entity"] if e["type"]["code"] == "2"]
    assert shown == [{"system": ENTITY_TYPE, "code": "2"}]  # the answer agrees with the search
    assert search("entity-type=|2")[0] == ["fhir"]
    assert search("entity-type=http://loinc.org|2")[0] == []
    assert search(f"entity-role={OBJECT_ROLE}|3")[0] == ["a5"]
    assert search("entity-role=urn:oid:1.2.3.101.9|3")[0] == ["fhir"]
    assert search("entity-role=|3")[0] == []
    # The FHIR entity naming a Patient without a type or role is the patient, answered as A.5 tells one.
    assert search(f"entity-type={ENTITY_TYPE}|1&entity-role={OBJECT_ROLE}|1")[0] == ["a5", "fhir"]


def test_outcome_action_and_agent_tokens_compare_their_system(endpoint: Any) -> None:
    """outcome and action are FHIR codes bound to their code systems (FHIR R4 AuditEvent): found under
    those (R4's URI or terminology.hl7.org's), never under another or none; an agent's identifier is
    answered and searched under the system it was sent with; agent-role is searched."""
    search = endpoint
    assert search("outcome=0")[0] == ["a5", "fhir", "rfc3881"]
    assert search(f"outcome={OUTCOME}|0")[0] == ["a5", "fhir", "rfc3881"]
    assert search("outcome=http://terminology.hl7.org/CodeSystem/audit-event-outcome|0")[0] == [
        "a5", "fhir", "rfc3881"]
    assert search("outcome=http://loinc.org|0")[0] == [] and search("outcome=|0")[0] == []
    assert search(f"action={ACTION}|R")[0] == ["a5", "fhir"] and search(f"action={DCM}|R")[0] == []
    assert search("agent-identifier=r10a.dr")[0] == ["fhir"]
    assert search("agent-identifier=|r10a.dr")[0] == []
    assert search("agent-identifier=urn:oid:1.2.3.101|r10a.dr")[0] == ["fhir"]
    found, bundle = search(f"agent-role={DCM}|110153")
    assert found == ["a5"]  # the FHIR client's 110153 is its agent.type, not a role
    assert all("system" in r["coding"][0] for a in bundle["entry"][0]["resource"]["agent"] for r in a.get("role", ()))
    assert search("agent-role=|110153")[0] == []


def test_a_code_sent_without_a_system_is_answered_without_one(endpoint: Any) -> None:
    """An RFC 3881 EventTypeCode of ``code=`` alone: DICOM's 110122 (CID 401) under DCM, the sender's
    own BADGE-LOGIN under no system (FHIR R4 Coding.system is 0..1); searched the same way."""
    search = endpoint
    found, bundle = search("type=110114")
    assert found == ["rfc3881"]
    resource = bundle["entry"][0]["resource"]
    assert resource["subtype"] == [{"system": DCM, "code": "110122", "display": "Login"},
                                   {"code": "BADGE-LOGIN", "display": "Badge login"}]
    assert search("subtype=|BADGE-LOGIN")[0] == ["rfc3881"]
    assert search(f"subtype={DCM}|BADGE-LOGIN")[0] == [] and search("subtype=DCM|BADGE-LOGIN")[0] == []
    assert search(f"subtype={DCM}|110122")[0] == ["rfc3881"] and search("subtype=|110122")[0] == []
    assert search("subtype=BADGE-LOGIN")[0] == ["rfc3881"]
