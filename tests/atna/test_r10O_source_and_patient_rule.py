"""Round 10, helper O: ITI-81's ``source`` compares the observer's identifier system, and a FHIR
entity is a patient by the rule the Event and the searches use (PS3.15 A.5.1).

1. A FHIR AuditEvent's ``source.observer.identifier.system`` was not kept (A.5's AuditSourceID has
   no system): ``source=system|value`` found the source under any system, and the answer named the
   observer by its display alone. It is now kept, answered back, and ``source`` is a FHIR R4 token
   search: ``system|value`` that system, ``|value`` none, ``value`` (or ``Device/ID``) any. A source
   stored without a system (A.5, a message stored before) is found by its ID as before.
2. A FHIR entity of type 2 (System Object) whose identifier type is 2 (Patient Number) and that had
   a system was stored as a patient (CX form, the system taken for its authority), yet the Event
   and the searches (mapping.is_patient: ID type 2 names a patient only on a person, type 1, or an
   untyped object; RFC 3881 5.5.4 gives Patient Number to Person objects) took it for no patient:
   ``patient=`` never found it, and ``entity-identifier=system|value`` neither. Both syntaxes now
   agree: such an object is no patient, found by ``entity-identifier`` under its system, and the
   Event's patient_ids, ``patient=`` and ``audit patient`` name the same patients.

curl POSTs one AuditEvent, util-linux ``logger`` sends another and an A.5 message over syslog TCP;
curl searches and every Bundle is validated with fhir.resources; ``audit patient`` (the CLI) reads
the store. Loopback 127.0.115.0/24."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from receiver import curl_fhir, running, three_received
from typer.testing import CliRunner

from pacsguard.atna.message.mapping import is_patient
from pacsguard.cli import main
from pacsguard.events.model import Event, new_event_id
from peers.dcmtk import free_port
from store_helpers import new_store

HOST = "127.0.115.21"
TOKEN = "r10o-source-patient-rule-0123456789"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
ID_TYPES = "http://terminology.hl7.org/CodeSystem/v2-0203"
#: The hospital's register of audit sources, and another facility's naming a source the same.
SOURCES = "urn:oid:1.2.3.115.1"
OTHER_SOURCES = "urn:oid:1.2.3.115.9"
PATIENTS = "urn:oid:1.2.3.115.3"
#: The namespace of the system object identified by a "Patient Number" ID type.
OBJECTS = "urn:oid:1.2.3.115.4"

#: A PS3.15 A.5.3 Patient Record read from the source RIS115 (an AuditSourceID has no system),
#: naming the patient (type 1, role 1) and a system object (type 2, role 3 Report) whose
#: ParticipantObjectIDTypeCode is 2, Patient Number.
A5 = ('<?xml version="1.0" encoding="UTF-8"?><AuditMessage>'
      '<EventIdentification EventActionCode="R" EventDateTime="2026-12-05T10:10:00Z" EventOutcomeIndicator="0">'
      '<EventID csd-code="110110" codeSystemName="DCM" originalText="Patient Record"/></EventIdentification>'
      '<ActiveParticipant UserID="r10o.jones" UserIsRequestor="true" NetworkAccessPointID="10.115.0.7" '
      'NetworkAccessPointTypeCode="2"/>'
      '<ActiveParticipant UserID="RIS115" UserIsRequestor="false" NetworkAccessPointID="10.115.0.2" '
      'NetworkAccessPointTypeCode="2"><RoleIDCode csd-code="110153" codeSystemName="DCM" '
      'originalText="Source Role ID"/></ActiveParticipant>'
      '<AuditSourceIdentification AuditSourceID="RIS115"/>'
      '<ParticipantObjectIdentification ParticipantObjectID="R10O-P1" ParticipantObjectTypeCode="1" '
      'ParticipantObjectTypeCodeRole="1"><ParticipantObjectIDTypeCode csd-code="2" codeSystemName="RFC-3881" '
      'originalText="Patient Number"/></ParticipantObjectIdentification>'
      '<ParticipantObjectIdentification ParticipantObjectID="R10O-X2" ParticipantObjectTypeCode="2" '
      'ParticipantObjectTypeCodeRole="3"><ParticipantObjectIDTypeCode csd-code="2" codeSystemName="RFC-3881" '
      'originalText="Patient Number"/></ParticipantObjectIdentification></AuditMessage>')


def _read(sources: str, recorded: str, thing: str) -> dict[str, Any]:
    """A patient record read (IHE BALP style) whose source is RIS115 of the register ``sources``;
    the patient R10O-P1 of PATIENTS, and a system object (type 2, role 3) identified under OBJECTS
    with an identifier of type 2 (Patient Number)."""
    return {
        "resourceType": "AuditEvent",
        "type": {"system": DCM, "code": "110110"},
        "action": "R", "recorded": recorded, "outcome": "0",
        "agent": [{"type": {"coding": [{"system": DCM, "code": "110153"}]},
                   "who": {"identifier": {"value": "ehr-r10o"}}, "requestor": False,
                   "network": {"address": "10.115.0.30", "type": "2"}},
                  {"who": {"identifier": {"value": "r10o.jones"}}, "requestor": True}],
        "source": {"observer": {"identifier": {"system": sources, "value": "RIS115"}}},
        "entity": [{"what": {"identifier": {"system": PATIENTS, "value": "R10O-P1"}},
                    "type": {"system": ENTITY_TYPE, "code": "1"}, "role": {"system": OBJECT_ROLE, "code": "1"}},
                   {"what": {"identifier": {"type": {"coding": [{"system": ID_TYPES, "code": "2"}]},
                                            "system": OBJECTS, "value": thing}},
                    "type": {"system": ENTITY_TYPE, "code": "2"}, "role": {"system": OBJECT_ROLE, "code": "3"}}],
    }


def _as_stored_before(event: Event) -> Event:
    """The same message as a version that did not keep the source's system stored it."""
    details = dict(event.details)
    details["source"] = {k: v for k, v in details["source"].items() if k != "id_system"}
    return dataclasses.replace(event, id=new_event_id(), details=details)


@dataclasses.dataclass
class Repo:
    """The running repository a test asks: its ITI-81 search (names found, Bundle), the received
    Events by name, the store (and its path), the POST's answer, the endpoint's URL, what the
    service published."""

    search: Callable[..., tuple[list[str], dict[str, Any]]]
    events: dict[str, Event]
    target: str
    created: dict[str, Any]
    store: Any
    base: str
    rx: Any


@pytest.fixture
def endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The repository holding four messages: ``posted`` (curl POST, source of SOURCES, object
    R10O-X1), ``syslog`` (logger, source of OTHER_SOURCES, object R10O-X3), ``a5`` (logger) and
    ``old`` (``posted`` as an earlier version stored it). Yields the search, the received Events
    by name, the store's path and the resource the POST answered."""
    monkeypatch.setenv("ATNA_R10O_TOKEN", TOKEN)
    target = str(tmp_path / "store.db")
    store, _ = new_store(target, tmp_path)
    tcp, http = free_port(HOST), free_port(HOST)
    section = {"tcp": {"host": HOST, "port": tcp},
               "http": {"host": HOST, "port": http, "token": {"env": "ATNA_R10O_TOKEN"}}}
    base = f"http://{HOST}:{http}/AuditEvent"
    try:
        with running(section, store) as rx:
            created, audits, posted = three_received(
                rx, tcp, base, TOKEN, _read(SOURCES, "2026-12-05T10:20:00Z", "R10O-X1"),
                _read(OTHER_SOURCES, "2026-12-05T10:30:00Z", "R10O-X3"), A5)
            old = _as_stored_before(posted)
            store.append([*audits, old])  # what serve's bus does with what the service publishes
            store.checkpoint()
            events = {"posted": posted, "old": old}
            events.update({"a5" if e.details["syntax"] == "dicom" else "syslog": e for e in audits if e is not posted})
            names = {e.id: n for n, e in events.items()}

            def search(query: str, *, split: bool = True) -> tuple[list[str], dict[str, Any]]:
                parts = query.split("&") if split else [query]  # a CX holds "&": one parameter then
                status, bundle = curl_fhir(TOKEN, "-G", *[a for part in parts for a in ("--data-urlencode", part)],
                                           base)
                assert status == 200, bundle
                Bundle.model_validate(bundle)  # FHIR R4 (fhir.resources)
                found = sorted(names.get(e["resource"]["id"], e["resource"]["id"]) for e in bundle["entry"]
                               if e["resource"]["resourceType"] == "AuditEvent")
                return found, bundle

            yield Repo(search, events, target, created, store, base, rx)
    finally:
        store.close()


def _resource(bundle: dict[str, Any], event: Event) -> dict[str, Any]:
    resource: dict[str, Any] = next(e["resource"] for e in bundle["entry"] if e["resource"]["id"] == event.id)
    return resource


def test_source_is_a_token_of_the_observer_identifier(endpoint: Repo) -> None:
    """``source=system|value`` finds the source of that register only (the same name in another
    is another source), ``|value`` those named without a system, ``value`` and ``Device/ID`` all;
    A.5's AuditSourceID and a message stored before the system was kept are found by the ID
    whatever the system, as before. The answer gives the observer's identifier back with its
    system."""
    search, events, created = endpoint.search, endpoint.events, endpoint.created
    everyone = ["a5", "old", "posted", "syslog"]
    assert search("source=RIS115")[0] == everyone
    assert search("source=Device/RIS115")[0] == everyone
    found, bundle = search(f"source={SOURCES}|RIS115")
    assert found == ["a5", "old", "posted"]
    assert _resource(bundle, events["posted"])["source"]["observer"] == {
        "identifier": {"system": SOURCES, "value": "RIS115"}}
    assert _resource(bundle, events["old"])["source"]["observer"] == {"display": "RIS115"}
    assert _resource(bundle, events["a5"])["source"]["observer"] == {"display": "RIS115"}
    found, bundle = search(f"source={OTHER_SOURCES}|RIS115")
    assert found == ["a5", "old", "syslog"]
    assert _resource(bundle, events["syslog"])["source"]["observer"]["identifier"]["system"] == OTHER_SOURCES
    assert search("source=|RIS115")[0] == ["a5", "old"]
    assert search("source=urn:oid:1.2.3.115.8|RIS115")[0] == ["a5", "old"]
    assert search(f"source={SOURCES}|RIS999")[0] == []
    # Listed with a comma (or), given twice (and).
    assert search(f"source={SOURCES}|RIS115,{OTHER_SOURCES}|RIS115")[0] == everyone
    assert search(f"source={SOURCES}|RIS115&source=|RIS115")[0] == ["a5", "old"]
    # Stored as received; the POST's answer is the resource as stored.
    assert events["posted"].details["source"] == {"id": "RIS115", "id_system": SOURCES}
    assert "id_system" not in events["a5"].details["source"]
    assert created["source"]["observer"] == {"identifier": {"system": SOURCES, "value": "RIS115"}}


def _audit_patient(target: str, patient: str) -> list[str]:
    """The times of the events ``pacsguard audit patient`` lists for ``patient`` (its rows have no id)."""
    out = CliRunner().invoke(main.app, ["audit", "patient", patient, "--store", target, "--format", "json"])
    assert out.exit_code == 0, out.output
    return sorted(r["time"] for r in json.loads(out.stdout)["events"])


def test_a_system_object_of_id_type_2_is_no_patient_in_either_syntax(endpoint: Repo) -> None:
    """A system object (ParticipantObjectTypeCode 2) whose ID type is 2: no patient in the Event, in
    ``patient=`` or in ``audit patient``, whether sent as A.5 or as a FHIR AuditEvent; found by
    ``entity-identifier`` (under its system, for the FHIR one) and answered with that system. The
    patient (type 1, role 1) is found by all three, in both syntaxes."""
    search, events, target = endpoint.search, endpoint.events, endpoint.target
    posted, a5 = events["posted"], events["a5"]
    thing = next(o for o in posted.details["objects"] if o["type_code"] == "2")
    assert (thing["id"], thing.get("id_system"), is_patient(thing)) == ("R10O-X1", OBJECTS, False)
    for name in ("posted", "a5", "syslog"):
        assert not any("R10O-X" in key for key in events[name].patient_ids), events[name].patient_ids
        assert any(key.startswith("R10O-P1") for key in events[name].patient_ids)
    for thing_id in ("R10O-X1", "R10O-X2", "R10O-X3"):
        assert search(f"patient={thing_id}")[0] == []
        assert _audit_patient(target, thing_id) == []
    found, bundle = search(f"entity-identifier={OBJECTS}|R10O-X1")
    assert found == ["old", "posted"]
    entity = next(e for e in _resource(bundle, posted)["entity"] if e["role"]["code"] == "3")
    assert entity["what"]["identifier"]["system"] == OBJECTS
    assert entity["what"]["identifier"]["value"] == "R10O-X1"
    assert entity["type"] == {"system": ENTITY_TYPE, "code": "2"}
    assert search("entity-identifier=urn:oid:1.2.3.115.8|R10O-X1")[0] == []
    assert search("entity-identifier=R10O-X3")[0] == ["syslog"]
    assert search("entity-identifier=R10O-X2")[0] == ["a5"]
    # The patient: the Event, ITI-81 and the CLI agree.
    assert search("patient=R10O-P1")[0] == ["a5", "old", "posted", "syslog"]
    assert search(f"patient={PATIENTS}|R10O-P1")[0] == ["old", "posted", "syslog"]
    assert _audit_patient(target, "R10O-P1") == sorted(e.time.isoformat().replace("+00:00", "Z")
                                                       for e in events.values())
    assert [p["id"] for p in a5.details["patients"]] == ["R10O-P1"]


def test_an_object_stored_in_cx_form_before_is_still_found(endpoint: Repo) -> None:
    """The system object as an earlier version stored it (its identifier in CX form, its system
    the authority, no id_system; its Event naming no patient, as now): found by
    ``entity-identifier=system|value`` as the Event's own search rule has it, not by ``patient=``."""
    search, events, store = endpoint.search, endpoint.events, endpoint.store
    details = dict(events["posted"].details)
    cx = "R10O-X1^^^&1.2.3.115.4&ISO"
    details["objects"] = [{**{k: v for k, v in o.items() if k != "id_system"}, "id": cx}
                          if o["type_code"] == "2" else o for o in details["objects"]]
    stored = dataclasses.replace(events["posted"], id=new_event_id(), details=details)
    store.append([stored])
    assert search(f"entity-identifier={OBJECTS}|R10O-X1")[0] == sorted(["old", "posted", stored.id])
    assert search("entity-identifier=urn:oid:1.2.3.115.8|R10O-X1")[0] == []
    assert search(f"patient={cx}", split=False)[0] == []


def test_an_observer_named_by_reference_is_found_by_it(endpoint: Repo) -> None:
    """A source named by a literal reference alone (``"observer": {"reference": "Device/RIS115-D"}``)
    is found by ``source=Device/RIS115-D``, by its URL and by its id, as the others are: it was
    stored as the whole reference, and compared with the reference's id, it was never found."""
    search, base = endpoint.search, endpoint.base
    resource = _read(SOURCES, "2026-12-05T10:40:00Z", "R10O-X4")
    resource["source"] = {"observer": {"reference": "Device/RIS115-D"}}
    status, created = curl_fhir(TOKEN, "--data-binary", json.dumps(resource), base)
    assert status == 201, created
    AuditEvent.model_validate(created)
    assert "identifier" not in created["source"]["observer"]
    made = endpoint.rx.wait(lambda evs: any(e.id == created["id"] for e in evs), "the POSTed message received")
    endpoint.store.append([e for e in made if e.id == created["id"]])
    for query in ("source=Device/RIS115-D", "source=http://ehr.example.org/fhir/Device/RIS115-D",
                  "source=RIS115-D"):
        assert created["id"] in search(query)[0], query
    assert created["id"] not in search(f"source={SOURCES}|RIS115")[0]


def test_patient_ids_and_patient_search_agree_for_every_object(endpoint: Repo) -> None:
    """For every object of every message: the Event names it as a patient exactly when
    ``patient=`` (by the ID as stored) finds the message."""
    search, events = endpoint.search, endpoint.events
    for name, event in events.items():
        for obj in event.details["objects"]:
            named = any(key == obj["id"] or key.startswith(obj["id"]) for key in event.patient_ids)
            found = name in search(f"patient={obj['id']}", split=False)[0]
            assert named == found == is_patient(obj), (name, obj)
