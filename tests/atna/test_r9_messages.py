"""Audit messages of non-DICOM IHE actors and BALP FHIR AuditEvents (outside round 9, area E).

The XML messages are written here after the audit message definitions of the IHE ITI Technical
Framework, Volume 2 (ITI-8 Patient Identity Feed, ITI-9 PIX Query, ITI-18 Registry Stored Query,
ITI-21 Patient Demographics Query, ITI-41 Provide and Register, ITI-43 Retrieve Document Set): an
XDS.b consumer, repository and source, a PIX/PDQ manager. The FHIR ones follow IHE Basic Audit Log
Patterns (BALP) 1.1: agents typed Source Role ID (the client), Destination Role ID (the server) and
the user; a patient entity by reference, identifier or contained resource; the purpose of use on
the user's agent; meta.profile, extensions and a text narrative as FHIR servers write them. Every
FHIR resource used is checked against FHIR R4 (fhir.resources) before it is sent.
"""

from __future__ import annotations

import base64
import copy
import json
import subprocess
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from receiver import free_port, running
from typer.testing import CliRunner

from pacsguard.atna import daily
from pacsguard.atna.ingest import Sender, frame_event, payload_event
from pacsguard.atna.message import fhir, mapping
from pacsguard.atna.query import AuditQuery
from pacsguard.cli import main
from pacsguard.events.model import Event
from store_helpers import new_store

SYSLOG = Sender("127.0.105.9", 50123, "tls", "octet-counting")
HTTPS = Sender("127.0.105.10", 50124, "https")
DCM = "http://dicom.nema.org/resources/ontology/DCM"
ANONYMOUS = "http://www.w3.org/2005/08/addressing/anonymous"  # the wsa:ReplyTo of a synchronous SOAP call


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def syslog_event(xml: str) -> Event:
    return frame_event(SYSLOG, b"<85>1 2026-12-05T09:30:16Z xds1 audit - IHE+RFC-3881 - " + xml.encode())


def posted(resource: dict[str, Any]) -> Event:
    """The Event a FHIR AuditEvent POSTed (or sent over syslog) becomes; it is valid FHIR R4 first."""
    AuditEvent.model_validate(resource)
    return payload_event({"sender": HTTPS.to_dict()}, json.dumps(resource).encode(), [], HTTPS)


def found(event: Event, **params: str) -> bool:
    """Whether the ITI-81 search ``params`` finds ``event``."""
    return AuditQuery.parse({k.replace("_", "-"): [v] for k, v in params.items()}).matches(event)


def participant(user: str, requestor: bool, role: str | None = None, host: str | None = None,
                extra: str = "") -> str:
    attrs = f'UserID="{user}" UserIsRequestor="{"true" if requestor else "false"}" {extra}'
    if host:
        attrs += f' NetworkAccessPointID="{host}" NetworkAccessPointTypeCode="{"2" if host[0].isdigit() else "1"}"'
    roles = {"110153": "Source Role ID", "110152": "Destination Role ID"}
    inner = f'<RoleIDCode csd-code="{role}" codeSystemName="DCM" originalText="{roles[role]}"/>' if role else ""
    return f"<ActiveParticipant {attrs}>{inner}</ActiveParticipant>"


def patient(cx: str, detail: str = "") -> str:
    return (f'<ParticipantObjectIdentification ParticipantObjectID="{cx}" ParticipantObjectTypeCode="1" '
            'ParticipantObjectTypeCodeRole="1"><ParticipantObjectIDTypeCode csd-code="2" '
            f'codeSystemName="RFC-3881" originalText="Patient Number"/>{detail}</ParticipantObjectIdentification>')


def message(event_id: str, meaning: str, action: str, transaction: str, name: str, body: str,
            outcome: str = "0") -> str:
    return (f'<?xml version="1.0" encoding="UTF-8"?><AuditMessage><EventIdentification EventActionCode="{action}" '
            f'EventDateTime="2026-12-05T09:30:15.120+01:00" EventOutcomeIndicator="{outcome}">'
            f'<EventID csd-code="{event_id}" codeSystemName="DCM" originalText="{meaning}"/>'
            f'<EventTypeCode csd-code="{transaction}" codeSystemName="IHE Transactions" originalText="{name}"/>'
            f"</EventIdentification>{body}</AuditMessage>")


ADHOC = '<query:AdhocQueryRequest><query:AdhocQuery id="urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"/>'

#: ITI-18 as the Document Consumer records it (ITI TF-2 3.18.6.1.1): the consumer (Source Role ID,
#: its UserID the wsa:ReplyTo of the request, a requestor), the Human Requestor known from XUA (a
#: requestor too), the registry (Destination Role ID), the patient, and the query: the stored
#: query's UUID, the AdhocQueryRequest in base64 and its QueryEncoding.
ITI18 = message("110112", "Query", "E", "ITI-18", "Registry Stored Query", "".join([
    participant(ANONYMOUS, True, "110153", "10.105.2.3", 'AlternativeUserID="4711"'),
    participant("dr.ames&lt;ames@hosp.example&gt;", True, extra='UserName="Dana Ames"'),
    participant("https://registry.hosp.example/xds/registry", False, "110152", "registry.hosp.example"),
    '<AuditSourceIdentification AuditSourceID="XDSCONSUMER1"/>',
    patient("E9-P1^^^&amp;1.3.6.1.4.1.21367.2005.13.20.1000&amp;ISO"),
    '<ParticipantObjectIdentification ParticipantObjectID="urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d" '
    'ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="24"><ParticipantObjectIDTypeCode '
    'csd-code="ITI-18" codeSystemName="IHE Transactions" originalText="Registry Stored Query"/>'
    f'<ParticipantObjectQuery>{b64(ADHOC)}</ParticipantObjectQuery>'
    f'<ParticipantObjectDetail type="QueryEncoding" value="{b64("UTF-8")}"/></ParticipantObjectIdentification>']))


def document(unique_id: str, repository: str) -> str:
    return (f'<ParticipantObjectIdentification ParticipantObjectID="{unique_id}" ParticipantObjectTypeCode="2" '
            'ParticipantObjectTypeCodeRole="3"><ParticipantObjectIDTypeCode csd-code="9" codeSystemName="RFC-3881" '
            'originalText="Report Number"/>'
            f'<ParticipantObjectDetail type="Repository Unique Id" value="{b64(repository)}"/>'
            f'<ParticipantObjectDetail type="ihe:homeCommunityID" value="{b64("urn:oid:1.2.3.105.1")}"/>'
            "</ParticipantObjectIdentification>")


#: ITI-43 as the Document Repository records it (ITI TF-2 3.43.6.1.2, Export): the repository as
#: Source Role ID (not the requestor), the consumer as Destination Role ID and requestor, the
#: Human Requestor after it, the patient and two documents with their repository unique ID.
ITI43 = message("110106", "Export", "R", "ITI-43", "Retrieve Document Set", "".join([
    participant("https://repo.hosp.example/xds/repository", False, "110153", "repo.hosp.example"),
    participant(ANONYMOUS, True, "110152", "10.105.2.4"),
    participant("nurse.kim", True),
    '<AuditSourceIdentification AuditSourceID="REPO1"/>',
    patient("E9-P2^^^HOSP&amp;1.2.3.105&amp;ISO"),
    document("1.2.3.105.7.1", "1.2.3.105.99"), document("1.2.3.105.7.2", "1.2.3.105.99")]))


# --- IHE ITI actors: the user is the Human Requestor, not the application's SOAP address -------------------


def test_the_human_requestor_of_a_registry_stored_query_is_its_user() -> None:
    """ITI-18: the consumer application and the Human Requestor are both requestors. The user was the
    application's wsa:ReplyTo address (every consumer's, the same anonymous URI), and the person who
    asked became the "target"; now the user is the person, the host the consumer's, the target the
    registry."""
    event = syslog_event(ITI18)
    assert event.kind == "atna.audit.query"
    assert event.actor.user == "dr.ames<ames@hosp.example>"
    assert event.actor.host == "10.105.2.3"
    assert event.target.user == "https://registry.hosp.example/xds/registry"
    assert event.target.host == "registry.hosp.example"
    assert mapping.user_of(event) == "dr.ames<ames@hosp.example>"
    assert mapping.user_name_of(event) == "Dana Ames"
    assert "dr.ames" in event.message and ANONYMOUS not in event.message
    assert found(event, agent_name="dr.ames")  # ITI-81's agent-name: any agent (FHIR R4 AuditEvent)
    # The patient in CX form with its assigning authority, found either way; the query kept as sent.
    assert found(event, patient="urn:oid:1.3.6.1.4.1.21367.2005.13.20.1000|E9-P1")
    assert "E9-P1" in event.patient_ids
    query = next(o for o in event.details["objects"] if o.get("role") == "24")
    assert base64.b64decode(query["query"]).decode() == ADHOC
    assert query["details"] == [{"type": "QueryEncoding", "value": b64("UTF-8")}]
    assert query["id_type"]["code"] == "ITI-18"
    assert event.details["raw"].endswith(ITI18)
    assert event.time == datetime(2026, 12, 5, 8, 30, 15, 120000, tzinfo=timezone.utc)


def test_a_retrieve_at_the_repository_names_the_nurse_and_the_consumer(tmp_path: Path) -> None:
    """ITI-43 at the repository (Export): the consumer is the Destination Role ID and a requestor,
    the nurse after it. The report listed the consumer's SOAP address as who accessed the patient."""
    event = syslog_event(ITI43)
    assert event.kind == "atna.audit.export"
    assert (event.actor.user, event.actor.host) == ("nurse.kim", "10.105.2.4")
    assert (event.target.user, event.target.host) == ("https://repo.hosp.example/xds/repository",
                                                      "repo.hosp.example")
    assert found(event, entity_identifier="1.2.3.105.7.2")
    assert found(event, patient="E9-P2^^^HOSP")
    target = str(tmp_path / "store.db")
    store, _ = new_store(target, tmp_path)
    try:
        store.append([event])
        store.checkpoint()
    finally:
        store.close()
    out = CliRunner().invoke(main.app, ["audit", "patient", "E9-P2", "--store", target, "--format", "json"])
    assert out.exit_code == 0, out.output
    [row] = json.loads(out.stdout)["events"]
    assert (row["user"], row["host"]) == ("nurse.kim", "10.105.2.4")
    # The daily report counts the nurse among its users, not the anonymous address.
    summary = daily.summarise([event], date(2026, 12, 5))
    assert summary["top_users"] == [("nurse.kim", 1)]


def test_pix_pdq_and_xds_source_messages_give_their_events() -> None:
    """ITI-8 (a feed to the PIX manager: Patient Record, create; the CX with its identifier type
    code), ITI-9 (PIX Query, with the MSH-10 detail), ITI-21 (PDQ, two patients found, the QPD
    query), ITI-41 (Provide and Register at the source: the submission set by its classification
    node UUID)."""
    feed = syslog_event(message("110110", "Patient Record", "C", "ITI-8", "Patient Identity Feed", "".join([
        participant("ADT|HOSP", True, "110153", "10.105.2.5", 'AlternativeUserID="2202"'),
        participant("PIXMGR|HOSP", False, "110152", "pix.hosp.example"),
        '<AuditSourceIdentification AuditSourceID="PIXMGR"/>',
        patient("E9-P4^^^HOSP&amp;1.2.3.105&amp;ISO^PI",
                f'<ParticipantObjectDetail type="MSH-10" value="{b64("M42")}"/>')])))
    assert (feed.kind, feed.details["action"], feed.outcome) == ("atna.audit.patient-record", "C", "success")
    assert (feed.actor.user, feed.actor.host, feed.target.user) == ("ADT|HOSP", "10.105.2.5", "PIXMGR|HOSP")
    assert found(feed, patient="urn:oid:1.2.3.105|E9-P4") and found(feed, patient="E9-P4^^^HOSP")
    pix = syslog_event(message("110112", "Query", "E", "ITI-9", "PIX Query", "".join([
        participant("PIXC|WARD5", True, "110153", "10.105.2.6"),
        participant("PIXMGR|HOSP", False, "110152", "pix.hosp.example"),
        '<AuditSourceIdentification AuditSourceID="PIXMGR"/>', patient("E9-P4^^^HOSP"),
        '<ParticipantObjectIdentification ParticipantObjectID="" ParticipantObjectTypeCode="2" '
        'ParticipantObjectTypeCodeRole="24"><ParticipantObjectIDTypeCode csd-code="ITI-9" '
        'codeSystemName="IHE Transactions" originalText="PIX Query"/>'
        f'<ParticipantObjectQuery>{b64("QPD|IHE PIX Query|Q9|E9-P4^^^HOSP")}</ParticipantObjectQuery>'
        f'<ParticipantObjectDetail type="MSH-10" value="{b64("M43")}"/></ParticipantObjectIdentification>'])))
    assert (pix.kind, pix.actor.user, pix.target.host) == ("atna.audit.query", "PIXC|WARD5", "pix.hosp.example")
    assert found(pix, patient="E9-P4") and found(pix, entity_type="2")
    pdq = syslog_event(message("110112", "Query", "E", "ITI-21", "Patient Demographics Query", "".join([
        participant("PDQC|WARD5", True, "110153", "10.105.2.7"),
        participant("PDQS|HOSP", False, "110152", "pdq.hosp.example"),
        '<AuditSourceIdentification AuditSourceID="PDQS"/>', patient("E9-P5^^^HOSP"), patient("E9-P6^^^HOSP"),
        '<ParticipantObjectIdentification ParticipantObjectID="" ParticipantObjectTypeCode="2" '
        'ParticipantObjectTypeCodeRole="24"><ParticipantObjectIDTypeCode csd-code="ITI-21" '
        'codeSystemName="IHE Transactions" originalText="Patient Demographics Query"/>'
        f'<ParticipantObjectQuery>{b64("QPD|IHE PDQ Query|Q21|@PID.5.1.1^SMITH")}</ParticipantObjectQuery>'
        "</ParticipantObjectIdentification>"]), outcome="4"))
    assert pdq.outcome == "minor-failure"
    assert found(pdq, patient="E9-P5") and found(pdq, patient="E9-P6^^^HOSP")
    provide = syslog_event(message("110106", "Export", "R", "ITI-41", "Provide and Register Document Set-b", "".join([
        participant(ANONYMOUS, True, "110153", "src.hosp.example"),
        participant("https://repo.hosp.example/xds/repository", False, "110152", "repo.hosp.example"),
        '<AuditSourceIdentification AuditSourceID="SRC1"/>', patient("E9-P3^^^&amp;1.2.3.105&amp;ISO"),
        '<ParticipantObjectIdentification ParticipantObjectID="1.2.3.105.8.1" ParticipantObjectTypeCode="2" '
        'ParticipantObjectTypeCodeRole="20"><ParticipantObjectIDTypeCode '
        'csd-code="urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd" codeSystemName="IHE XDS Metadata" '
        'originalText="submission set classificationNode"/></ParticipantObjectIdentification>'])))
    assert (provide.actor.host, provide.target.host) == ("src.hosp.example", "repo.hosp.example")
    assert found(provide, entity_identifier="1.2.3.105.8.1") and found(provide, patient="E9-P3")


# --- BALP FHIR AuditEvents --------------------------------------------------------------------------------

ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


def balp_patient_read() -> dict[str, Any]:
    """A BALP PatientRead as a FHIR server writes it: meta.profile and lastUpdated, a generated
    narrative, an extension; the server, the client (a Device reference, with its network) and the
    user (an identifier, a display, the purpose of use) as agents; an Observation and its patient."""
    return {
        "resourceType": "AuditEvent", "id": "r9e-read",
        "meta": {"versionId": "1", "lastUpdated": "2026-12-05T09:00:01.000+00:00",
                 "profile": ["https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientRead"]},
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">read Observation</div>'},
        "extension": [{"url": "http://example.org/fhir/StructureDefinition/trace-id", "valueString": "4af7"}],
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
                 "display": "Restful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read", "display": "read"}],
        "action": "R", "recorded": "2026-12-05T09:00:00.000Z", "outcome": "0",
        "agent": [
            {"type": {"coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]},
             "who": {"display": "fhir.hosp.example"}, "requestor": False,
             "network": {"address": "10.105.9.1", "type": "2"}},
            {"type": {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]},
             "who": {"reference": "Device/viewer7"}, "requestor": False,
             "network": {"address": "ws07.hosp.example", "type": "1"}},
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                  "code": "IRCP", "display": "information recipient"}]},
             "who": {"identifier": {"system": "urn:oid:1.2.3.105.50", "value": "jsmith"}, "display": "John Smith"},
             "requestor": True,
             "purposeOfUse": [{"coding": [{"system": ACT_REASON, "code": "TREAT"}]}]}],
        "source": {"site": "fhir.hosp.example", "observer": {"reference": "Device/fhir1"},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}]},
        "entity": [
            {"what": {"reference": "Observation/obs1/_history/2"},
             "type": {"system": fhir.ENTITY_TYPE, "code": "2"}, "role": {"system": fhir.OBJECT_ROLE, "code": "4"}},
            {"what": {"reference": "Patient/E9-F1"},
             "type": {"system": fhir.ENTITY_TYPE, "code": "1"}, "role": {"system": fhir.OBJECT_ROLE, "code": "1"}}],
    }


def test_a_balp_read_names_the_user_the_client_host_and_the_purpose() -> None:
    """BALP: the user's agent has no network; the client (Source Role ID) has. The Event had no host
    (the report could not say from where), and the user's purposeOfUse was dropped."""
    event = posted(balp_patient_read())
    assert (event.actor.user, event.actor.host) == ("jsmith", "ws07.hosp.example")
    assert (event.target.user, event.target.host) == ("fhir.hosp.example", "10.105.9.1")
    assert [p["code"] for p in event.details["purposes"]] == ["TREAT"]
    assert found(event, patient="Patient/E9-F1") and found(event, agent_name="John")
    assert found(event, entity_type="2") and found(event, entity_type="1")
    assert event.details["action"] == "R" and event.outcome == "success"


def test_a_balp_event_of_no_known_user_is_the_clients() -> None:
    """BALP's events with no user agent: the client (Source Role ID) and the server, neither a
    requestor. The Event had no actor at all ("by -"): the patient report named no user and no host
    for an update of the patient's data, and the daily report's top hosts missed it."""
    resource = balp_patient_read()
    del resource["agent"][2]
    resource["subtype"][0].update(code="update", display="update")
    resource["action"] = "U"
    event = posted(resource)
    assert (event.actor.user, event.actor.host) == ("Device/viewer7", "ws07.hosp.example")
    assert (event.target.user, event.target.host) == ("fhir.hosp.example", "10.105.9.1")
    assert daily.summarise([event], date(2026, 12, 5))["top_hosts"] == [("ws07.hosp.example", 1)]
    # An A.5 message without a requestor keeps none: its Source Role ID is where the data came from.
    xml = ITI43.replace('UserIsRequestor="true"', 'UserIsRequestor="false"')
    assert syslog_event(xml).actor.user is None


def test_a_break_glass_purpose_on_the_user_agent_is_a_break_glass_access() -> None:
    """BALP puts the user's purpose of use on its agent: a BTG there was no purpose at all, and the
    daily report's break-glass list missed the access."""
    resource = balp_patient_read()
    resource["agent"][2]["purposeOfUse"] = [{"coding": [{"system": ACT_REASON, "code": "BTG",
                                                         "display": "break the glass"}]}]
    resource["purposeOfEvent"] = [{"coding": [{"system": ACT_REASON, "code": "TREAT"}]}]
    event = posted(resource)
    assert [p["code"] for p in event.details["purposes"]] == ["TREAT", "BTG"]
    summary = daily.summarise([event], date(2026, 12, 5))
    assert summary["counts"]["break_glass"] == 1
    # The same code in both places is one purpose.
    resource["purposeOfEvent"] = [{"coding": [{"system": ACT_REASON, "code": "BTG"}]}]
    assert [p["code"] for p in posted(resource).details["purposes"]] == ["BTG"]


def test_a_contained_patient_is_found_by_its_identifiers() -> None:
    """entity.what "#p1" naming a contained Patient was stored as patient "#p1": no search found it."""
    resource = balp_patient_read()
    resource["contained"] = [{"resourceType": "Patient", "id": "p1", "identifier": [
        {"system": "urn:oid:1.2.3.105", "value": "E9-C1"}, {"system": "urn:oid:1.2.3.106", "value": "X-77"}]}]
    resource["entity"][1]["what"] = {"reference": "#p1"}
    event = posted(resource)
    assert "#p1" not in event.patient_ids
    assert found(event, patient="urn:oid:1.2.3.105|E9-C1") and found(event, patient="E9-C1")
    assert found(event, patient="urn:oid:1.2.3.106|X-77")
    assert not found(event, patient="urn:oid:1.2.3.106|E9-C1")


def test_an_entity_that_is_a_patient_by_its_reference_alone_is_the_patient() -> None:
    """FHIR R4's ``patient`` search parameter is every entity.what that is a Patient; an entity with
    no type and no role (both optional in R4) naming Patient/ID was no patient for pacsguard."""
    resource = balp_patient_read()
    resource["entity"][1] = {"what": {"reference": "https://fhir.hosp.example/fhir/Patient/E9-R1"}}
    event = posted(resource)
    assert event.patient_ids == ("E9-R1",)
    assert found(event, patient="Patient/E9-R1")
    resource["entity"][1]["type"] = {"system": fhir.ENTITY_TYPE, "code": "1"}  # a Person, of no role
    assert posted(resource).patient_ids == ("E9-R1",)
    # A typed entity keeps its type: an Observation entity is not made a patient.
    assert not found(posted(balp_patient_read()), patient="Patient/obs1")


def test_balp_events_of_every_pattern_are_read_and_rendered_as_valid_fhir() -> None:
    """Create, Read, Update, Delete, Query and PatientQuery (the query in base64, role 24), the
    patient by identifier and who as reference and identifier: each read, found, and rendered back
    (ITI-81) as a valid FHIR R4 AuditEvent."""
    patterns = [("create", "C"), ("read", "R"), ("update", "U"), ("delete", "D"), ("search-type", "E")]
    for subtype, action in patterns:
        resource = balp_patient_read()
        resource["subtype"][0].update(code=subtype, display=subtype)
        resource["action"] = action
        resource["agent"][2]["who"] = {"reference": "Practitioner/prac-9", "identifier": {"value": "jdoe"}}
        resource["entity"][1]["what"] = {"identifier": {"system": "urn:oid:1.2.3.105", "value": f"E9-{action}"}}
        if action == "E":
            resource["entity"][0] = {"type": {"system": fhir.ENTITY_TYPE, "code": "2"},
                                     "role": {"system": fhir.OBJECT_ROLE, "code": "24"},
                                     "query": b64("GET /fhir/Observation?patient=E9-E")}
        event = posted(resource)
        assert event.kind == "atna.audit.other" and event.details["action"] == action
        assert (event.actor.user, event.actor.host) == ("jdoe", "ws07.hosp.example")
        assert found(event, patient=f"urn:oid:1.2.3.105|E9-{action}") and found(event, agent_name="jdoe")
        rendered = fhir.render(mapping.record_from_event(event), "r9e")
        AuditEvent.model_validate(rendered)
        assert rendered["action"] == action
        assert rendered["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"
    copied = copy.deepcopy(balp_patient_read())
    assert posted(copied).details["syntax"] == "fhir"


# --- real senders and ITI-81 over HTTP ----------------------------------------------------------------------

TOKEN = "round9-messages-token-0123456789"
CURL = "/usr/bin/curl"
LOGGER = "/usr/bin/logger"
HOST = "127.0.105.20"


def curl(*args: str) -> Any:
    if not Path(CURL).exists():
        pytest.fail(f"{CURL} is missing")
    out = subprocess.run([CURL, "-sS", "--fail-with-body", "--max-time", "10", "-H", f"Authorization: Bearer {TOKEN}",
                          *args], check=True, timeout=15, capture_output=True)
    return json.loads(out.stdout)


def test_logger_and_curl_senders_are_found_by_iti81_patient_agent_name_and_entity_type(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """util-linux `logger` sends the ITI-43 message over TCP, curl POSTs a BALP PatientRead naming a
    contained patient; ITI-81 (curl GET /AuditEvent) finds each by its patient, its user and its
    entity type, and returns valid FHIR R4."""
    if not Path(LOGGER).exists():
        pytest.fail(f"{LOGGER} (util-linux) is missing")
    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    tcp, http = free_port(), free_port()
    section = {"tcp": {"host": HOST, "port": tcp}, "http": {"host": HOST, "port": http, "token": {"env": "ATNA_TOKEN"}}}
    resource = balp_patient_read()
    resource["contained"] = [{"resourceType": "Patient", "id": "p1",
                              "identifier": [{"system": "urn:oid:1.2.3.105", "value": "E9-C2"}]}]
    resource["entity"][1]["what"] = {"reference": "#p1"}
    AuditEvent.model_validate(resource)
    body = tmp_path / "balp.json"
    body.write_text(json.dumps(resource))
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    try:
        with running(section, store) as rx:
            subprocess.run([LOGGER, "--rfc5424", "--msgid", "IHE+RFC-3881", "--size", "300000", "-n", HOST, "-T",
                            "--octet-count", "-P", str(tcp), ITI43], check=True, timeout=15)
            curl("-H", "Content-Type: application/fhir+json", "--data-binary", f"@{body}",
                 f"http://{HOST}:{http}/AuditEvent")
            events = rx.wait(lambda evs: len([e for e in evs if e.kind.startswith("atna.audit.")]) >= 2, "two audits")
        audits = sorted((e for e in events if e.kind.startswith("atna.audit.")), key=lambda e: e.kind)
        assert [e.kind for e in audits] == ["atna.audit.export", "atna.audit.other"]
        store.append(audits)
        with running({"http": section["http"]}, store):
            base = f"http://{HOST}:{http}/AuditEvent"

            def search(**params: str) -> list[dict[str, Any]]:
                args = [a for k, v in params.items() for a in ("--data-urlencode", f"{k.replace('_', '-')}={v}")]
                answer = curl("-G", *args, base)
                Bundle.model_validate(answer)
                return [e["resource"] for e in answer["entry"] if e["resource"]["resourceType"] == "AuditEvent"]

            [found_nurse] = search(patient="E9-P2", agent_name="nurse")
            assert found_nurse["type"]["code"] == "110106"
            assert {"nurse.kim", ANONYMOUS} <= {a.get("who", {}).get("identifier", {}).get("value")
                                                for a in found_nurse["agent"]}
            [found_balp] = search(patient="urn:oid:1.2.3.105|E9-C2", agent_name="jsmith")
            assert found_balp["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"
            assert len(search(entity_type="1", agent_name="jsmith")) == 1
            assert search(patient="E9-C2", agent_name="nurse") == []
    finally:
        store.close()
