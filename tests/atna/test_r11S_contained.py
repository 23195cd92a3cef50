"""Round 11, helper S (outside fuzzing of the FHIR AuditEvent reader): an entity naming a
resource contained in the AuditEvent ("#id", FHIR R4 2.3.0).

1. Each entity searched the contained resources from the first: a POST of 2,000 entities and
   2,000 contained resources, all naming the last (some 150 KB, under the 1 MiB a message may be) took seconds of
   the repository's time, quadratic in the body. The contained resources are now indexed once.
2. A contained Patient is named by its identifiers, one participant object each, for every
   entity naming it: 300 entities naming a Patient of 300 identifiers (some 15 KB) made 90,000
   participant objects, 1,000 of each (45 KB) a million. Past MOST_CONTAINED_NAMES identifiers
   read in all the message is refused (not-fhir, stored raw as every refusal is)."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from pacsguard.atna.ingest import read_payload
from pacsguard.atna.message.dicom_xml import AuditMessageError

DCM = "http://dicom.nema.org/resources/ontology/DCM"


def _event(contained: list[Any], entities: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({
        "resourceType": "AuditEvent", "type": {"system": DCM, "code": "110110"}, "action": "R",
        "recorded": "2026-12-05T11:00:00Z", "outcome": "0",
        "agent": [{"who": {"identifier": {"value": "r11s.user"}}, "requestor": True}],
        "source": {"observer": {"display": "r11s-pacs"}}, "contained": contained, "entity": entities})


def _patients(reading: Any) -> list[str]:
    return [o["id"] for o in reading.fields["objects"]]


def test_many_entities_and_contained_resources_are_read_in_linear_time() -> None:
    count = 2000  # each entity names the last contained resource: all were searched, each time
    body = _event([{"resourceType": "Patient", "id": f"p{n}", "identifier": [{"value": f"R11S-{n}"}]}
                   for n in range(count)], [{"what": {"reference": f"#p{count - 1}"}} for n in range(count)])
    started = time.perf_counter()
    reading = read_payload(body)
    took = time.perf_counter() - started
    assert len(reading.fields["objects"]) == count and _patients(reading)[0] == f"R11S-{count - 1}"
    assert took < 1.0, f"{count} entities naming {count} contained resources read in {took:.2f} s"


def test_entities_naming_a_patient_of_many_identifiers_are_refused_past_the_bound() -> None:
    many = 300
    body = _event([{"resourceType": "Patient", "id": "p", "identifier": [{"value": f"R11S-{n}"} for n in range(many)]}],
                  [{"what": {"reference": "#p"}, "name": f"entity {n}"} for n in range(many)])
    with pytest.raises(AuditMessageError, match="more than 10,000 identifiers") as refused:
        read_payload(body)
    assert refused.value.problem == "not-fhir"


def test_a_contained_patient_named_by_a_few_entities_is_read_as_before() -> None:
    # The first resource of the id named; a wrong item after it is not met, one before it is.
    patient = {"resourceType": "Patient", "id": "p", "identifier": [{"value": "R11S-A"}, {"value": "R11S-B"}]}
    entities = [{"what": {"reference": "#p"}} for _ in range(3)]
    assert _patients(read_payload(_event([patient, {"resourceType": "Patient", "id": "p"}, 7], entities))) \
        == ["R11S-A", "R11S-B"] * 3
    with pytest.raises(AuditMessageError, match="a JSON int where an object is expected"):
        read_payload(_event([7, patient], entities))
    with pytest.raises(AuditMessageError, match="id is a JSON int"):
        read_payload(_event([{"resourceType": "Patient", "id": 1}], entities))
