"""Round 14 (outside tester): a FHIR R4 AuditEvent with a JSON value of the wrong type in some
elements (entity null, an agent that is a number, agent.who a string, agent.network true,
entity.detail or agent.role null, ...) was refused as not-fhir with a Python exception's text as
its reason ("AuditEvent structure: 'NoneType' object is not iterable"), naming neither the
element nor what was wrong. Every element the reader reads is now read as the JSON type FHIR R4
gives it (json.html: a complex element is a JSON object, one of cardinality ..* a JSON array, a
string a JSON string), and a wrong one is refused naming its path and the JSON type found:
"AuditEvent.agent[0].who is a JSON string, not an object". Valid AuditEvents read as before."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from atna_corpus import fhir_patient_read

from pacsguard.atna.ingest import read_fhir
from pacsguard.atna.message import fhir
from pacsguard.atna.message.dicom_xml import AuditMessageError

#: Python's words for a wrong type (its exception texts); "not an object" is the good wording.
PYTHON_WORDS = ("object has no attribute", "object is not iterable", "NoneType", "not subscriptable",
                "has no attribute", "is not iterable", "unhashable", "KeyError", "'int'", "'str'", "'list'",
                "'dict'", "'bool'", "'float'", "AuditEvent structure")

Path = tuple[str | int, ...]


def _set(resource: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(resource)
    element: Any = out
    for step in path[:-1]:
        element = element[step]
    element[path[-1]] = value
    return out


def _refusal(resource: Any) -> AuditMessageError:
    with pytest.raises(AuditMessageError) as refused:
        fhir.parse(resource)
    return refused.value


def _contained(contained: Any, entity: dict[str, Any] | None = None) -> dict[str, Any]:
    """The corpus event with its entity naming the contained Patient "#p"."""
    resource = fhir_patient_read()
    resource["contained"] = contained
    resource["entity"] = [entity or {"what": {"reference": "#p"}}]
    return resource


A = "AuditEvent"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
E0, G0 = "AuditEvent.entity[0]", "AuditEvent.agent[0]"
#: (element set, its value, the message): the tester's cases (/tmp/probe/h3.out, every one flagged
#: there), then every other element the reader now reads typed.
CASES: list[tuple[Path, Any, str]] = [
    # The tester's first eight (repro_fhir_type_msgs.py).
    (("entity",), None, f"{A}.entity is a JSON null, not an array"),
    (("entity",), "x", f"{A}.entity is a JSON string, not an array"),
    (("entity", 0), None, f"{E0} is a JSON null, not an object"),
    (("agent", 0), 5, f"{G0} is a JSON int, not an object"),
    (("agent", 0, "who"), "x", f"{G0}.who is a JSON string, not an object"),
    (("agent", 0, "network"), True, f"{G0}.network is a JSON boolean, not an object"),
    (("entity", 0, "detail"), None, f"{E0}.detail is a JSON null, not an array"),
    (("agent", 0, "role"), None, f"{G0}.role is a JSON null, not an array"),
    # entity
    (("entity",), 5, f"{A}.entity is a JSON int, not an array"),
    (("entity",), True, f"{A}.entity is a JSON boolean, not an array"),
    (("entity",), {}, f"{A}.entity is a JSON object, not an array"),
    (("entity",), [None], f"{E0} is a JSON null, not an object"),
    (("entity", 0), 5, f"{E0} is a JSON int, not an object"),
    (("entity", 0), "x", f"{E0} is a JSON string, not an object"),
    (("entity", 0), [], f"{E0} is a JSON array, not an object"),
    (("entity", 0), True, f"{E0} is a JSON boolean, not an object"),
    (("entity", 0, "what"), 5, f"{E0}.what is a JSON int, not an object"),
    (("entity", 0, "what"), [None], f"{E0}.what is a JSON array, not an object"),
    (("entity", 0, "what", "identifier"), "x", f"{E0}.what.identifier is a JSON string, not an object"),
    (("entity", 0, "what", "identifier", "value"), 5, f"{E0}.what.identifier.value is a JSON int, not a string"),
    (("entity", 0, "what", "identifier", "system"), {}, f"{E0}.what.identifier.system is a JSON object, not a string"),
    (("entity", 0, "what", "identifier", "type"), "x", f"{E0}.what.identifier.type is a JSON string, not an object"),
    (("entity", 0, "what", "identifier", "type"), {"coding": "x"},
     f"{E0}.what.identifier.type.coding is a JSON string, not an array"),
    (("entity", 0, "what", "identifier", "type"), {"coding": [5]},
     f"{E0}.what.identifier.type.coding[0] is a JSON int, not an object"),
    (("entity", 0, "what", "identifier", "type"), {"coding": [{"code": 5}]},
     f"{E0}.what.identifier.type.coding[0].code is a JSON int, not a string"),
    (("entity", 0, "what", "reference"), 7, f"{E0}.what.reference is a JSON int, not a string"),
    (("entity", 0, "type"), "x", f"{E0}.type is a JSON string, not an object"),
    (("entity", 0, "type", "code"), 1, f"{E0}.type.code is a JSON int, not a string"),
    (("entity", 0, "type", "system"), True, f"{E0}.type.system is a JSON boolean, not a string"),
    (("entity", 0, "role"), [], f"{E0}.role is a JSON array, not an object"),
    (("entity", 0, "role", "code"), [1], f"{E0}.role.code is a JSON array, not a string"),
    (("entity", 0, "detail"), 5, f"{E0}.detail is a JSON int, not an array"),
    (("entity", 0, "detail"), "x", f"{E0}.detail is a JSON string, not an array"),
    (("entity", 0, "detail"), True, f"{E0}.detail is a JSON boolean, not an array"),
    (("entity", 0, "detail"), {}, f"{E0}.detail is a JSON object, not an array"),
    (("entity", 0, "detail"), [None], f"{E0}.detail[0] is a JSON null, not an object"),
    (("entity", 0, "detail"), [{"type": 5, "valueString": "v"}], f"{E0}.detail[0].type is a JSON int, not a string"),
    (("entity", 0, "detail"), [{"type": "t", "valueString": 5}],
     f"{E0}.detail[0].valueString is a JSON int, not a string"),
    (("entity", 0, "detail"), [{"type": "t", "valueBase64Binary": []}],
     f"{E0}.detail[0].valueBase64Binary is a JSON array, not a string"),
    (("entity", 0, "lifecycle"), True, f"{E0}.lifecycle is a JSON boolean, not an object"),
    (("entity", 0, "lifecycle"), {"code": 6}, f"{E0}.lifecycle.code is a JSON int, not a string"),
    (("entity", 0, "name"), 1.5, f"{E0}.name is a JSON number, not a string"),
    (("entity", 0, "query"), {}, f"{E0}.query is a JSON object, not a string"),
    # agent
    (("agent", 0), None, f"{G0} is a JSON null, not an object"),
    (("agent", 0), "x", f"{G0} is a JSON string, not an object"),
    (("agent", 0), [], f"{G0} is a JSON array, not an object"),
    (("agent", 0), [None], f"{G0} is a JSON array, not an object"),
    (("agent", 0), True, f"{G0} is a JSON boolean, not an object"),
    (("agent", 0, "who"), 5, f"{G0}.who is a JSON int, not an object"),
    (("agent", 0, "who"), [], f"{G0}.who is a JSON array, not an object"),
    (("agent", 0, "who"), [None], f"{G0}.who is a JSON array, not an object"),
    (("agent", 0, "who"), True, f"{G0}.who is a JSON boolean, not an object"),
    (("agent", 0, "who", "identifier"), 5, f"{G0}.who.identifier is a JSON int, not an object"),
    (("agent", 0, "who", "identifier"), "x", f"{G0}.who.identifier is a JSON string, not an object"),
    (("agent", 0, "who", "identifier"), [], f"{G0}.who.identifier is a JSON array, not an object"),
    (("agent", 0, "who", "identifier"), True, f"{G0}.who.identifier is a JSON boolean, not an object"),
    (("agent", 0, "who", "identifier", "value"), 5, f"{G0}.who.identifier.value is a JSON int, not a string"),
    (("agent", 0, "who", "identifier", "system"), 5, f"{G0}.who.identifier.system is a JSON int, not a string"),
    (("agent", 0, "who", "display"), False, f"{G0}.who.display is a JSON boolean, not a string"),
    (("agent", 0, "who"), {"reference": {}}, f"{G0}.who.reference is a JSON object, not a string"),
    (("agent", 0, "network"), 5, f"{G0}.network is a JSON int, not an object"),
    (("agent", 0, "network"), "x", f"{G0}.network is a JSON string, not an object"),
    (("agent", 0, "network"), [], f"{G0}.network is a JSON array, not an object"),
    (("agent", 0, "network", "address"), 5, f"{G0}.network.address is a JSON int, not a string"),
    (("agent", 0, "network", "type"), 2, f"{G0}.network.type is a JSON int, not a string"),
    (("agent", 0, "requestor"), "false", f"{G0}.requestor is a JSON string, not a boolean"),
    (("agent", 0, "role"), 5, f"{G0}.role is a JSON int, not an array"),
    (("agent", 0, "role"), "x", f"{G0}.role is a JSON string, not an array"),
    (("agent", 0, "role"), True, f"{G0}.role is a JSON boolean, not an array"),
    (("agent", 0, "role"), {}, f"{G0}.role is a JSON object, not an array"),
    (("agent", 0, "role"), [None], f"{G0}.role[0] is a JSON null, not an object"),
    (("agent", 0, "role"), [{"coding": "x"}], f"{G0}.role[0].coding is a JSON string, not an array"),
    (("agent", 0, "role"), [{"coding": [5]}], f"{G0}.role[0].coding[0] is a JSON int, not an object"),
    (("agent", 0, "role"), [{"coding": [{"code": 110153}]}],
     f"{G0}.role[0].coding[0].code is a JSON int, not a string"),
    (("agent", 0, "type"), "x", f"{G0}.type is a JSON string, not an object"),
    (("agent", 0, "type"), {"coding": {}}, f"{G0}.type.coding is a JSON object, not an array"),
    (("agent", 0, "type"), {"coding": [{"system": 1, "code": "x"}]},
     f"{G0}.type.coding[0].system is a JSON int, not a string"),
    (("agent", 0, "purposeOfUse"), None, f"{G0}.purposeOfUse is a JSON null, not an array"),
    (("agent", 0, "purposeOfUse"), "x", f"{G0}.purposeOfUse is a JSON string, not an array"),
    (("agent", 0, "purposeOfUse"), {}, f"{G0}.purposeOfUse is a JSON object, not an array"),
    (("agent", 0, "purposeOfUse"), [None], f"{G0}.purposeOfUse[0] is a JSON null, not an object"),
    (("agent", 0, "purposeOfUse"), [{"coding": [{"display": 5}]}],
     f"{G0}.purposeOfUse[0].coding[0].display is a JSON int, not a string"),
    (("agent", 0, "name"), 5, f"{G0}.name is a JSON int, not a string"),
    (("agent", 0, "altId"), True, f"{G0}.altId is a JSON boolean, not a string"),
    # source
    (("source", "site"), 5, f"{A}.source.site is a JSON int, not a string"),
    (("source", "type"), None, f"{A}.source.type is a JSON null, not an array"),
    (("source", "type"), 5, f"{A}.source.type is a JSON int, not an array"),
    (("source", "type"), "x", f"{A}.source.type is a JSON string, not an array"),
    (("source", "type"), {}, f"{A}.source.type is a JSON object, not an array"),
    (("source", "type"), [None], f"{A}.source.type[0] is a JSON null, not an object"),
    (("source", "type"), [{"code": 4}], f"{A}.source.type[0].code is a JSON int, not a string"),
    (("source", "observer", "identifier"), "x", f"{A}.source.observer.identifier is a JSON string, not an object"),
    (("source", "observer", "identifier"), {"value": 42},
     f"{A}.source.observer.identifier.value is a JSON int, not a string"),
    (("source", "observer", "display"), 5, f"{A}.source.observer.display is a JSON int, not a string"),
    (("source", "observer", "reference"), [], f"{A}.source.observer.reference is a JSON array, not a string"),
    (("source", "observer", "type"), 5, f"{A}.source.observer.type is a JSON int, not a string"),
    # the event
    (("type", "code"), 5, f"{A}.type.code is a JSON int, not a string"),
    (("type", "display"), False, f"{A}.type.display is a JSON boolean, not a string"),
    (("subtype",), None, f"{A}.subtype is a JSON null, not an array"),
    (("subtype",), 5, f"{A}.subtype is a JSON int, not an array"),
    (("subtype",), "x", f"{A}.subtype is a JSON string, not an array"),
    (("subtype",), True, f"{A}.subtype is a JSON boolean, not an array"),
    (("subtype",), {}, f"{A}.subtype is a JSON object, not an array"),
    (("subtype",), [None], f"{A}.subtype[0] is a JSON null, not an object"),
    (("subtype",), [{"code": 110120}], f"{A}.subtype[0].code is a JSON int, not a string"),
    (("action",), 5, f"{A}.action is a JSON int, not a string"),
    (("outcome",), [], f"{A}.outcome is a JSON array, not a string"),
    (("outcomeDesc",), {}, f"{A}.outcomeDesc is a JSON object, not a string"),
    (("purposeOfEvent",), None, f"{A}.purposeOfEvent is a JSON null, not an array"),
    (("purposeOfEvent",), 5, f"{A}.purposeOfEvent is a JSON int, not an array"),
    (("purposeOfEvent",), "x", f"{A}.purposeOfEvent is a JSON string, not an array"),
    (("purposeOfEvent",), {}, f"{A}.purposeOfEvent is a JSON object, not an array"),
    (("purposeOfEvent",), [None], f"{A}.purposeOfEvent[0] is a JSON null, not an object"),
    (("purposeOfEvent",), [{"coding": None}], f"{A}.purposeOfEvent[0].coding is a JSON null, not an array"),
    (("purposeOfEvent",), [{"coding": [True]}], f"{A}.purposeOfEvent[0].coding[0] is a JSON boolean, not an object"),
]


@pytest.mark.parametrize(("path", "value", "message"), CASES,
                         ids=[f"{'.'.join(map(str, p))}={orjson.dumps(v).decode()}" for p, v, _ in CASES])
def test_a_wrong_json_type_is_refused_naming_the_element_and_the_type(path: Path, value: Any, message: str) -> None:
    refused = _refusal(_set(fhir_patient_read(), path, value))
    assert refused.problem == "not-fhir"
    assert str(refused) == message
    assert not [word for word in PYTHON_WORDS if word in str(refused)], str(refused)


#: A contained Patient the entity names (FHIR R4 2.3.0, "#p"): the contained resources and its
#: identifiers are read typed too.
CONTAINED: list[tuple[str, dict[str, Any], str]] = [
    ("not an array", _contained("x"), f"{A}.contained is a JSON string, not an array"),
    ("null", _contained(None), f"{A}.contained is a JSON null, not an array"),
    # Said as it was before (tests/atna/test_r11S_contained.py), with where.
    ("an item no object", _contained([7, {"resourceType": "Patient", "id": "p"}]),
     f"{A}.contained[0] is a JSON int where an object is expected"),
    ("an id no string", _contained([{"resourceType": "Patient", "id": 1}]),
     f"{A}.contained[0].id is a JSON int, not a string"),
    ("identifier not an array", _contained([{"resourceType": "Patient", "id": "p", "identifier": {}}]),
     f"{A}.contained[0].identifier is a JSON object, not an array"),
    ("an identifier no object", _contained([{"resourceType": "Patient", "id": "p", "identifier": [5]}]),
     f"{A}.contained[0].identifier[0] is a JSON int, not an object"),
    ("an identifier's value no string",
     _contained([{"resourceType": "Patient", "id": "p", "identifier": [{"value": 5}]}]),
     f"{A}.contained[0].identifier[0].value is a JSON int, not a string"),
    ("an identifier's type no object",
     _contained([{"resourceType": "Patient", "id": "p", "identifier": [{"value": "P1", "type": "MR"}]}]),
     f"{A}.contained[0].identifier[0].type is a JSON string, not an object"),
    ("an identifier's system no string",
     _contained([{"resourceType": "Patient", "id": "p", "identifier": [{"value": "P1", "system": 1}]}]),
     f"{A}.contained[0].identifier[0].system is a JSON int, not a string"),
]


@pytest.mark.parametrize(("resource", "message"), [(r, m) for _, r, m in CONTAINED], ids=[n for n, _, _ in CONTAINED])
def test_a_contained_patient_of_a_wrong_json_type_is_refused_naming_where(resource: dict[str, Any],
                                                                          message: str) -> None:
    refused = _refusal(resource)
    assert refused.problem == "not-fhir"
    assert str(refused) == message
    assert not [word for word in PYTHON_WORDS if word in str(refused)], str(refused)


#: The tester's sweep (/tmp/probe/h3.py): each of these elements set to each of these values.
SWEPT: list[Path] = [
    ("entity",), ("entity", 0), ("entity", 0, "what"), ("entity", 0, "what", "identifier"),
    ("entity", 0, "what", "identifier", "value"), ("entity", 0, "type"), ("entity", 0, "role"), ("entity", 0, "detail"),
    ("entity", 0, "lifecycle"), ("entity", 0, "securityLabel"), ("entity", 0, "name"), ("entity", 0, "query"),
    ("agent", 0), ("agent", 0, "who"), ("agent", 0, "who", "identifier"), ("agent", 0, "network"),
    ("agent", 0, "network", "address"), ("agent", 0, "role"), ("agent", 0, "type"), ("agent", 0, "purposeOfUse"),
    ("agent", 0, "name"), ("agent", 0, "altId"), ("agent", 0, "policy"), ("agent", 0, "media"),
    ("agent", 0, "location"), ("source",), ("source", "observer"), ("source", "site"), ("source", "type"), ("type",),
    ("type", "code"), ("subtype",), ("action",), ("outcome",), ("outcomeDesc",), ("purposeOfEvent",), ("period",),
    ("contained",), ("meta",), ("text",), ("extension",), ("id",)]
SWEPT_VALUES: list[Any] = [None, 5, 1.5, "x", [], {}, [None], [5], {"x": 1}, True]


def test_no_wrong_json_type_in_the_sweep_is_said_in_python_words() -> None:
    """Every refusal of the sweep is not-fhir and says where in FHIR's terms."""
    for path in SWEPT:
        for value in SWEPT_VALUES:
            try:
                fhir.parse(_set(fhir_patient_read(), path, value))
            except AuditMessageError as refused:
                where = f"{'.'.join(map(str, path))} = {value!r}"
                assert refused.problem == "not-fhir", where
                assert str(refused).startswith("AuditEvent"), (where, str(refused))
                assert not [word for word in PYTHON_WORDS if word in str(refused)], (where, str(refused))


def test_the_corpus_audit_event_reads_to_the_same_event_fields() -> None:
    reading = read_fhir(orjson.dumps(fhir_patient_read()))
    assert str(reading.time) == "2026-12-03 11:00:00+00:00"
    assert reading.fields == {
        "action": "R", "syntax": "fhir", "outcome_indicator": "0",
        "event_id": {"code": "110110", "meaning": "Patient Record", "system": "DCM"},
        "objects": [{"id": "PID-0042^^^&1.2.840.99999.1&ISO", "id_type": {"code": ""}, "role": "1",
                     "role_system": "http://terminology.hl7.org/CodeSystem/object-role", "type_code": "1",
                     "type_system": "http://terminology.hl7.org/CodeSystem/audit-entity-type"}],
        "participants": [{"access_point": "10.30.1.4", "access_point_type": "2", "requestor": True,
                          "user_id": "nurse.kim", "user_name": "Kim"}],
        "source": {"id": "portal", "observer": {"display": "portal"}, "site": "STMARY"}}


def _rich() -> dict[str, Any]:
    """A valid AuditEvent reading every element the reader reads typed (corpus event plus BALP's
    parts): subtypes, purposes, agent roles and types, a contained Patient, details."""
    return {
        "resourceType": "AuditEvent", "id": "r14",
        "type": {"system": DCM, "code": "110106", "display": "Export"},
        "subtype": [{"system": DCM, "code": "110120", "display": "Application Start"}, {"code": "ITI-20"}],
        "action": "R", "recorded": "2026-12-04T09:30:15.250+01:00", "outcome": "4", "outcomeDesc": "partly",
        "purposeOfEvent": [{"coding": [{"system": REASON, "code": "TREAT"}]}],
        "agent": [
            {"type": {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]},
             "role": [{"coding": [{"system": DCM, "code": "110152"}]}, {"coding": []}],
             "who": {"identifier": {"system": "urn:oid:1.2.3", "value": "dr.lee"}, "display": "Dr Lee"},
             "altId": "AE_LEE", "name": "Lee", "requestor": True,
             "network": {"address": "10.1.2.3", "type": "2"},
             "purposeOfUse": [{"coding": [{"code": "BTG"}, {"system": REASON, "code": "TREAT"}]}]},
            {"who": {"reference": "Device/pacs1"}, "requestor": False},
            {"who": {"display": "someone"}},
            {},
        ],
        "source": {"site": "HOSP",
                   "observer": {"identifier": {"system": "urn:oid:9.8", "value": "PACS"}, "type": "Device"},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"},
                            {"code": "1"}]},
        "contained": [{"resourceType": "Patient", "id": "p",
                       "identifier": [{"value": "C1", "system": "urn:oid:2.2"}, {"value": "C2"}, {"system": "x"}]},
                      {"resourceType": "Organization", "id": "o"}],
        "entity": [
            {"what": {"identifier": {"value": "1.2.840.1", "type": {"coding": [
                {"system": DCM, "code": "110180", "display": "Study Instance UID"}, {"code": "z"}]}}},
             "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
             "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "3"},
             "lifecycle": {"system": "http://terminology.hl7.org/CodeSystem/dicom-audit-lifecycle", "code": "6"},
             "name": "study", "query": "aGVsbG8=",
             "detail": [{"type": "ContainsSOPClass", "valueBase64Binary": "MS4yLjM="},
                        {"type": "note", "valueString": "hi"}, {}]},
            {"what": {"reference": "#p"}},
            {"what": {"reference": "Patient/PX9", "identifier": {"value": "PX-9", "system": "urn:oid:3.3"}}},
            {"what": {"reference": "#o"}, "type": {"code": "2"}},
            {"what": {"identifier": {"value": "A^^^HOSP"}}, "type": {"code": "1"}, "role": {"code": "1"}},
            {},
        ],
    }


EXPECTED_RICH: dict[str, Any] = {
    "action": "R",
    "event_id": {"code": "110106", "meaning": "Export", "system": "DCM"},
    "event_types": [{"code": "110120", "meaning": "Application Start", "system": "DCM"}, {"code": "ITI-20"}],
    "objects": [{"details": [{"type": "ContainsSOPClass", "value": "MS4yLjM="},
                             {"type": "note", "value": "hi"},
                             {"type": "", "value": ""}],
                 "id": "1.2.840.1",
                 "id_type": {"code": "110180", "meaning": "Study Instance UID", "system": "DCM"},
                 "life_cycle": "6",
                 "name": "study",
                 "query": "aGVsbG8=",
                 "role": "3",
                 "role_system": "http://terminology.hl7.org/CodeSystem/object-role",
                 "type_code": "2",
                 "type_system": "http://terminology.hl7.org/CodeSystem/audit-entity-type"},
                {"id": "C1^^^&2.2&ISO", "id_type": {"code": ""}, "role": "1", "type_code": "1"},
                {"id": "C2", "id_type": {"code": ""}, "role": "1", "type_code": "1"},
                {"id": "PX-9^^^&3.3&ISO", "id_type": {"code": ""}, "role": "1", "type_code": "1"},
                {"id": "PX9", "id_type": {"code": ""}, "role": "1", "type_code": "1"},
                {"id": "#o", "id_type": {"code": ""}, "type_code": "2", "type_system": ""},
                {"id": "A^^^HOSP",
                 "id_type": {"code": ""},
                 "role": "1",
                 "role_system": "",
                 "type_code": "1",
                 "type_system": ""},
                {"id": "", "id_type": {"code": ""}}],
    "outcome_description": "partly",
    "outcome_indicator": "4",
    "participants": [{"access_point": "10.1.2.3",
                      "access_point_type": "2",
                      "alternative_user_id": "AE_LEE",
                      "requestor": True,
                      "roles": [{"code": "110153", "meaning": "Source Role ID", "system": "DCM"},
                                {"code": "110152", "system": "DCM"}],
                      "types": [{"code": "110153", "meaning": "Source Role ID", "system": "DCM"}],
                      "user_id": "dr.lee",
                      "user_id_system": "urn:oid:1.2.3",
                      "user_name": "Lee"},
                     {"requestor": False, "user_id": "Device/pacs1"},
                     {"requestor": False, "user_id": "someone"},
                     {"requestor": False, "user_id": ""}],
    "purposes": [{"code": "TREAT", "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason"}, {"code": "BTG"}],
    "source": {"id": "PACS",
               "id_system": "urn:oid:9.8",
               "observer": {"identified": True, "type": "Device"},
               "site": "HOSP",
               "types": [{"code": "4", "system": "http://terminology.hl7.org/CodeSystem/security-source-type"},
                         {"code": "1"}]},
    "syntax": "fhir",
}


def test_a_rich_valid_audit_event_reads_to_the_same_event_fields() -> None:
    """Every element read typed, as read before (the fields the unchanged reader gave)."""
    reading = read_fhir(orjson.dumps(_rich()))
    assert str(reading.time) == "2026-12-04 08:30:15.250000+00:00"
    assert reading.fields == EXPECTED_RICH
