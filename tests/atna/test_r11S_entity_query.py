"""Round 11, helper S (outside fuzzing of the FHIR AuditEvent reader): entity.query is a FHIR R4
base64Binary. A POSTed AuditEvent (or an A.5 message) whose query is text that is no base64 was
stored, and ITI-81 answered it in an AuditEvent that fhir.resources (R4B, whose AuditEvent is
R4's in what is checked here) refuses: the query is now left out of the answer, as an action
outside its value set is, and a base64 query (line-wrapped too) is still answered as received."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from pacsguard.atna.ingest import Sender, payload_event, raw_fields
from pacsguard.atna.message import fhir
from pacsguard.atna.message.mapping import record_from_event
from pacsguard.events.model import Event

DCM = "http://dicom.nema.org/resources/ontology/DCM"


def _posted(query: str) -> bytes:
    return orjson.dumps({
        "resourceType": "AuditEvent", "type": {"system": DCM, "code": "110112"}, "action": "E",
        "recorded": "2026-12-05T11:00:00Z", "outcome": "0",
        "agent": [{"who": {"identifier": {"value": "r11s.user"}}, "requestor": True}],
        "source": {"observer": {"display": "r11s-pacs"}},
        "entity": [{"what": {"identifier": {"value": "1.2.3.4"}}, "type": {"code": "2"}, "role": {"code": "24"},
                    "query": query}]})


def _a5(query: str) -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8"?><AuditMessage><EventIdentification EventActionCode="E" '
            'EventDateTime="2026-12-05T11:00:00Z" EventOutcomeIndicator="0"><EventID csd-code="110112" '
            'codeSystemName="DCM" originalText="Query"/></EventIdentification>'
            '<ActiveParticipant UserID="r11s.user" UserIsRequestor="true"/>'
            '<AuditSourceIdentification AuditSourceID="r11s-pacs"/>'
            '<ParticipantObjectIdentification ParticipantObjectID="1.2.840.10008.5.1.4.1.2.2.1" '
            'ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="3"><ParticipantObjectIDTypeCode '
            'csd-code="110181" codeSystemName="DCM" originalText="SOP Class UID"/>'
            f'<ParticipantObjectQuery>{query}</ParticipantObjectQuery></ParticipantObjectIdentification>'
            '</AuditMessage>').encode()


def _answered(body: bytes) -> dict[str, Any]:
    """What ITI-81 answers for the message once stored: read as a POST's body is, its Event stored
    as JSON, read back and rendered (http.py's path), validated as an R4 AuditEvent."""
    sender = Sender("127.0.0.1", 40000, "http")
    event = payload_event({"sender": sender.to_dict(), "received": "2026-12-05T11:00:01+00:00", **raw_fields(body)},
                          body, [], sender)
    assert event.kind.startswith("atna.audit."), event.details.get("error")
    stored = Event.from_json(event.to_json())
    answer = fhir.render(record_from_event(stored), stored.id)
    AuditEvent.model_validate(answer)  # raises when fhir.resources refuses it
    return answer


@pytest.mark.parametrize("body", [_posted("110110"), _posted("   "), _a5("not base64!")], ids=["fhir", "blank", "a5"])
def test_a_query_that_is_no_base64_is_left_out_of_a_valid_answer(body: bytes) -> None:
    answer = _answered(body)
    assert [e.get("query") for e in answer["entity"]] == [None]


@pytest.mark.parametrize("query", ["cXVlcnk=", "AAAA\r\nAAAA"])
def test_a_base64_query_is_answered_as_received(query: str) -> None:
    assert [e.get("query") for e in _answered(_posted(query))["entity"]] == [query]
