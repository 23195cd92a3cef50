"""Round 10, helper I: the system of an agent's and of a non-patient entity's identifier (FHIR R4
AuditEvent.agent.who.identifier, .entity.what.identifier: Identifier.system) is kept as received.

1. A BALP AuditEvent naming its user ``urn:oid:...|value`` lost the system when stored: ITI-81
   answered the agent with its value alone, and ``agent-identifier=system|value`` found no agent.
   Now the answer gives the system back, and the token compares it as FHIR R4 search (token) has
   it: ``system|value`` that system, ``|value`` none, ``value`` any.
2. ``entity-identifier=system|value`` found an entity that is no patient by its value whatever the
   system: a document identified under another system came back. An entity whose identifier had a
   system is now found only under it (``|value`` finds it no more); one without (A.5's study UIDs)
   as before, and messages stored before the system was kept are answered and searched as before.

The repository runs with TCP and its RESTful endpoint; curl POSTs one AuditEvent, util-linux
``logger`` sends another AuditEvent and an A.5 message over syslog TCP, curl and fhirpy search;
every Bundle is validated with fhir.resources. Loopback 127.0.109.0/24."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from receiver import curl_fhir, running, three_received

from pacsguard.events.model import Event, new_event_id
from peers.dcmtk import free_port
from store_helpers import new_store

HOST = "127.0.109.21"
TOKEN = "r10i-identifier-systems-0123456789"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
#: The hospital's user directory and a second one (another facility's) naming a user of the same login.
USERS = "urn:oid:1.2.3.109.1"
OTHER_USERS = "urn:oid:1.2.3.109.9"
DOCUMENTS = "urn:oid:1.2.3.109.2"
PATIENTS = "urn:oid:1.2.3.109.3"

#: A PS3.15 A.5.3 Patient Record read by r10i.jones (a UserID has no system in A.5), naming a study.
A5 = ('<?xml version="1.0" encoding="UTF-8"?><AuditMessage>'
      '<EventIdentification EventActionCode="R" EventDateTime="2026-12-05T09:10:00Z" EventOutcomeIndicator="0">'
      '<EventID csd-code="110110" codeSystemName="DCM" originalText="Patient Record"/></EventIdentification>'
      '<ActiveParticipant UserID="r10i.jones" UserIsRequestor="true" NetworkAccessPointID="10.109.0.7" '
      'NetworkAccessPointTypeCode="2"/>'
      '<ActiveParticipant UserID="RIS109" UserIsRequestor="false" NetworkAccessPointID="10.109.0.2" '
      'NetworkAccessPointTypeCode="2"><RoleIDCode csd-code="110153" codeSystemName="DCM" '
      'originalText="Source Role ID"/></ActiveParticipant>'
      '<AuditSourceIdentification AuditSourceID="RIS109"/>'
      '<ParticipantObjectIdentification ParticipantObjectID="R10I-P9" ParticipantObjectTypeCode="1" '
      'ParticipantObjectTypeCodeRole="1"><ParticipantObjectIDTypeCode csd-code="2" codeSystemName="RFC-3881" '
      'originalText="Patient Number"/></ParticipantObjectIdentification>'
      '<ParticipantObjectIdentification ParticipantObjectID="1.2.3.109.5" ParticipantObjectTypeCode="2" '
      'ParticipantObjectTypeCodeRole="3"><ParticipantObjectIDTypeCode csd-code="110180" codeSystemName="DCM" '
      'originalText="Study Instance UID"/></ParticipantObjectIdentification></AuditMessage>')


def _balp_read(users: str, recorded: str, document: str) -> dict[str, Any]:
    """An IHE BALP patient-specific read (Basic Audit Log Patterns): the client (110153, its
    identifier without a system), the server (110152), the user named in the directory ``users``;
    the patient by its identifier; a document (type 2, role 3) identified under DOCUMENTS."""
    return {
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
        "action": "R", "recorded": recorded, "outcome": "0",
        "agent": [{"type": {"coding": [{"system": DCM, "code": "110153"}]},
                   "who": {"identifier": {"value": "ehr-r10i"}}, "requestor": False,
                   "network": {"address": "10.109.0.30", "type": "2"}},
                  {"type": {"coding": [{"system": DCM, "code": "110152"}]},
                   "who": {"display": "fhir-server-r10i"}, "requestor": False},
                  {"who": {"identifier": {"system": users, "value": "r10i.jones"}, "display": "Dr Jones"},
                   "requestor": True}],
        "source": {"observer": {"display": "fhir-server-r10i"}},
        "entity": [{"what": {"identifier": {"system": PATIENTS, "value": "R10I-P1"}},
                    "type": {"system": ENTITY_TYPE, "code": "1"}, "role": {"system": OBJECT_ROLE, "code": "1"}},
                   {"what": {"identifier": {"system": DOCUMENTS, "value": document}},
                    "type": {"system": ENTITY_TYPE, "code": "2"}, "role": {"system": OBJECT_ROLE, "code": "3"}}],
    }


def _as_stored_before(event: Event) -> Event:
    """The same message as a version that did not keep identifier systems stored it (its details
    without ``user_id_system`` and ``id_system``), under an id of its own."""
    details = dict(event.details)
    details["participants"] = [{k: v for k, v in p.items() if k != "user_id_system"}
                               for p in details["participants"]]
    details["objects"] = [{k: v for k, v in o.items() if k != "id_system"} for o in details["objects"]]
    return dataclasses.replace(event, id=new_event_id(), details=details)


@pytest.fixture
def endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The repository holding four messages: ``posted`` (curl POST, user of USERS), ``syslog`` (logger,
    the same login in OTHER_USERS, another document), ``a5`` (logger) and ``old`` (``posted`` as an
    earlier version stored it). Yields the search (names found, Bundle), the base URL, the names by
    AuditEvent id and the resource the POST answered."""
    monkeypatch.setenv("ATNA_R10I_TOKEN", TOKEN)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    tcp, http = free_port(HOST), free_port(HOST)
    section = {"tcp": {"host": HOST, "port": tcp},
               "http": {"host": HOST, "port": http, "token": {"env": "ATNA_R10I_TOKEN"}}}
    base = f"http://{HOST}:{http}/AuditEvent"
    try:
        with running(section, store) as rx:
            created, audits, posted = three_received(
                rx, tcp, base, TOKEN, _balp_read(USERS, "2026-12-05T09:20:00Z", "DOC-R10I-1"),
                _balp_read(OTHER_USERS, "2026-12-05T09:30:00Z", "DOC-R10I-2"), A5)
            old = _as_stored_before(posted)
            store.append([*audits, old])  # what serve's bus does with what the service publishes
            names = {posted.id: "posted", old.id: "old"}
            names.update({e.id: "a5" if e.details["syntax"] == "dicom" else "syslog" for e in audits
                          if e.id != posted.id})

            def search(query: str) -> tuple[list[str], dict[str, Any]]:
                status, bundle = curl_fhir(TOKEN, "-G", *[a for part in query.split("&")
                                                          for a in ("--data-urlencode", part)], base)
                assert status == 200, bundle
                Bundle.model_validate(bundle)  # FHIR R4 (fhir.resources)
                found = sorted(names[e["resource"]["id"]] for e in bundle["entry"]
                               if e["resource"]["resourceType"] == "AuditEvent")
                return found, bundle

            yield search, base, names, created
    finally:
        store.close()


def _resource(bundle: dict[str, Any], names: dict[str, str], name: str) -> dict[str, Any]:
    resource: dict[str, Any] = next(e["resource"] for e in bundle["entry"] if names.get(e["resource"]["id"]) == name)
    return resource


def test_agent_identifier_system_is_answered_and_searched(endpoint: Any) -> None:
    """``agent-identifier`` as FHIR R4 token search: ``system|value`` finds the agent of that
    directory only (the same login in another is another user), ``|value`` those named without a
    system (A.5's UserID, a message stored before), ``value`` all; each AuditEvent gives the system
    back as received, the client's identifier (sent without one) without one."""
    search, _, names, _ = endpoint
    assert search("agent-identifier=r10i.jones")[0] == ["a5", "old", "posted", "syslog"]
    found, bundle = search(f"agent-identifier={USERS}|r10i.jones")
    assert found == ["posted"]
    agents = _resource(bundle, names, "posted")["agent"]
    assert agents[2]["who"]["identifier"] == {"system": USERS, "value": "r10i.jones"}
    assert agents[0]["who"]["identifier"] == {"value": "ehr-r10i"}
    found, bundle = search(f"agent-identifier={OTHER_USERS}|r10i.jones")
    assert found == ["syslog"]
    assert _resource(bundle, names, "syslog")["agent"][2]["who"]["identifier"]["system"] == OTHER_USERS
    found, bundle = search("agent-identifier=|r10i.jones")
    assert found == ["a5", "old"]
    assert _resource(bundle, names, "old")["agent"][2]["who"]["identifier"] == {"value": "r10i.jones"}
    assert search("agent-identifier=urn:oid:1.2.3.109.4|r10i.jones")[0] == []
    # The client, identified without a system: found by |value and value, not under a system.
    assert search("agent-identifier=|ehr-r10i")[0] == ["old", "posted", "syslog"]
    assert search(f"agent-identifier={USERS}|ehr-r10i")[0] == []
    # Listed with a comma (or) and given twice (and).
    assert search(f"agent-identifier={USERS}|r10i.jones,{OTHER_USERS}|r10i.jones")[0] == ["posted", "syslog"]
    assert search(f"agent-identifier={USERS}|r10i.jones&agent-identifier=|ehr-r10i")[0] == ["posted"]


def test_a_read_answers_the_agent_and_entity_systems(endpoint: Any) -> None:
    """The POST's answer (the resource as stored, FHIR R4 3.1.0.7.1) and a FHIR read (GET
    /AuditEvent/ID) give the same identifiers as the search."""
    _, base, names, created = endpoint
    assert created["agent"][2]["who"]["identifier"] == {"system": USERS, "value": "r10i.jones"}
    posted = next(i for i, n in names.items() if n == "posted")
    status, resource = curl_fhir(TOKEN, f"{base}/{posted}")
    assert status == 200, resource
    AuditEvent.model_validate(resource)
    assert resource["agent"][2]["who"]["identifier"] == {"system": USERS, "value": "r10i.jones"}
    document = next(e for e in resource["entity"] if e["role"]["code"] == "3")
    assert document["what"]["identifier"] == {"system": DOCUMENTS, "value": "DOC-R10I-1"}


def test_entity_identifier_compares_a_non_patient_identifier_system(endpoint: Any) -> None:
    """A document identified under DOCUMENTS is found by ``system|value`` of that system only and by
    ``value``, not by ``|value``; the A.5 study UID (no system kept) by its UID under any system, as
    before; the message stored before the system was kept as before. Patients are unchanged: their
    system is the CX's assigning authority."""
    search, _, names, _ = endpoint
    found, bundle = search(f"entity-identifier={DOCUMENTS}|DOC-R10I-1")
    assert found == ["old", "posted"]
    assert search("entity-identifier=urn:oid:1.2.3.109.8|DOC-R10I-1")[0] == ["old"]
    assert search("entity-identifier=|DOC-R10I-1")[0] == ["old"]
    assert search("entity-identifier=DOC-R10I-1")[0] == ["old", "posted"]
    assert search(f"entity.identifier={DOCUMENTS}|DOC-R10I-2")[0] == ["syslog"]
    assert search("entity-identifier=urn:oid:1.2.3.109.8|1.2.3.109.5")[0] == ["a5"]
    assert search("entity-identifier=|1.2.3.109.5")[0] == ["a5"]
    assert search(f"entity-identifier={PATIENTS}|R10I-P1")[0] == ["old", "posted", "syslog"]
    assert search(f"patient={PATIENTS}|R10I-P1")[0] == ["old", "posted", "syslog"]
    assert search("entity-identifier=|R10I-P1")[0] == []
    assert search("entity-identifier=R10I-P1")[0] == ["old", "posted", "syslog"]
    document = next(e for e in _resource(bundle, names, "posted")["entity"] if e["role"]["code"] == "3")
    assert document["what"]["identifier"] == {"system": DOCUMENTS, "value": "DOC-R10I-1"}


def test_fhirpy_finds_an_agent_by_its_system(endpoint: Any) -> None:
    """fhirpy (PyPI), an Audit Consumer: its token search by system|value finds the user of that
    directory, and the resources it reads back carry the system."""
    from fhirpy import SyncFHIRClient

    _, base, names, _ = endpoint
    client = SyncFHIRClient(base.rsplit("/", 1)[0], authorization=f"Bearer {TOKEN}")
    found = client.resources("AuditEvent").search(**{"agent-identifier": f"{OTHER_USERS}|r10i.jones"}).fetch_all()
    assert [names[r["id"]] for r in found] == ["syslog"]
    AuditEvent.model_validate(dict(found[0]))
    assert found[0]["agent"][2]["who"]["identifier"] == {"system": OTHER_USERS, "value": "r10i.jones"}
    unsystemed = client.resources("AuditEvent").search(**{"agent-identifier": "|r10i.jones"}).fetch_all()
    assert sorted(names[r["id"]] for r in unsystemed) == ["a5", "old"]
