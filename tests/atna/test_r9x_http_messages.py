"""Outside round 9, wave 3 (W9, issue #18): small gaps of the audit repository's HTTP side and of
its messages. Loopback 127.0.119.0/24.

1. curl speaking plain HTTP to the HTTPS endpoint read an empty reply (curl: "Empty reply from
   server"); it is answered a short plain 400 telling it to use https, as nginx does, and nothing
   else in clear, and still recorded as a failed handshake.
2. HTTPS answers carry Strict-Transport-Security (RFC 9325 3.2, RFC 6797), plain HTTP ones not
   (RFC 6797 7.2).
3. A FHIR AuditEvent's agent.type came back under agent.role in ITI-81 answers; it comes back as
   agent.type, as received, the roles under agent.role (FHIR R4 AuditEvent.agent).
4. The PS3.15 A.5.1/A.5.3 schema check refused IHE ITI-43's Export (and Import): they name
   documents (IHE ITI TF-2 3.43.6), not the study A.5.3 asks of DICOM's Export.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from receiver import running

from pacsguard.atna.message import dicom_xml, schema
from pacsguard.tls import make_ca, make_cert
from peers.dcmtk import free_port
from store_helpers import new_store

HOST = "127.0.119.4"
TOKEN = "w9-token-0123456789abcdef"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ROLE_CLASS = "http://terminology.hl7.org/CodeSystem/v3-RoleClass"


def _curl() -> str:
    curl = shutil.which("curl")
    assert curl, "curl is needed (Debian package curl)"
    return curl


def _https(tmp_path: Path) -> tuple[dict[str, Any], Path, int]:
    """An HTTPS endpoint's section (token, no client certificate), its CA and port."""
    pki = tmp_path / "pki"
    ca, ca_key = make_ca(pki, "ATNA W9 CA", 2)
    cert, key = make_cert(pki, "localhost", ca, ca_key, hosts=["localhost", HOST], server=True, days=1)
    port = free_port(HOST)
    return {"http": {"host": HOST, "port": port, "cert_file": cert, "key_file": key,
                     "token": {"env": "ATNA_TOKEN"}}}, ca, port


# --- 1. plain HTTP to the HTTPS port ---------------------------------------------------------------------


def test_curl_speaking_plain_http_to_the_https_port_is_told_to_use_https(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    section, ca, port = _https(tmp_path)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    with running(section, store) as rx:
        done = subprocess.run([_curl(), "-sS", "-i", "-m", "10", "-H", f"Authorization: Bearer {TOKEN}",
                               f"http://{HOST}:{port}/metadata"], capture_output=True, timeout=20)
        said = done.stdout.decode(errors="replace")
        assert done.returncode == 0, done.stderr.decode(errors="replace")  # was 52: empty reply from server
        assert said.startswith("HTTP/1.1 400 Bad Request\r\n"), said
        assert "use https://" in said and "Strict-Transport-Security" not in said, said
        # Nothing else in clear: the 400 alone, no TLS alert before it, nothing of the endpoint's.
        with socket.create_connection((HOST, port), timeout=10) as raw:
            raw.sendall(b"POST /AuditEvent HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            answer = b""
            while chunk := raw.recv(4096):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"Connection: close" in head, answer
        assert f"Content-Length: {len(body)}".encode() in head and body.startswith(b"This port takes HTTPS only"), \
            answer
        # HTTPS itself is served as before.
        served = subprocess.run([_curl(), "-sS", "-m", "10", "--cacert", str(ca), "-H",
                                 f"Authorization: Bearer {TOKEN}", f"https://{HOST}:{port}/metadata"],
                                capture_output=True, timeout=20)
        assert json.loads(served.stdout)["resourceType"] == "CapabilityStatement", served.stderr
        failed = rx.wait(lambda evs: sum(e.details.get("problem") == "tls-handshake-failed" for e in evs) == 2,
                         "both plain HTTP requests recorded")
    store.close()
    errors = [e.details["error"] for e in failed if e.details.get("problem") == "tls-handshake-failed"]
    assert all("HTTP_REQUEST" in r and "plain HTTP sent to the HTTPS port" in r for r in errors), errors
    assert {r.split("(a ", 1)[1].split(" ", 1)[0] for r in errors} == {"GET", "POST"}, errors


# --- 2. HSTS -----------------------------------------------------------------------------------------------


def test_https_answers_carry_hsts_and_plain_http_ones_do_not(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    section, ca, port = _https(tmp_path)
    plain = free_port(HOST)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    with running(section, store):
        secure = subprocess.run([_curl(), "-sS", "-i", "-m", "10", "--cacert", str(ca), "-H",
                                 f"Authorization: Bearer {TOKEN}", f"https://{HOST}:{port}/metadata"],
                                capture_output=True, timeout=20)
        refused = subprocess.run([_curl(), "-sS", "-i", "-m", "10", "--cacert", str(ca),
                                  f"https://{HOST}:{port}/metadata"], capture_output=True, timeout=20)
    for done, status in ((secure, "200"), (refused, "401")):  # a refusal too: HSTS is of the host
        head = done.stdout.decode(errors="replace").partition("\r\n\r\n")[0]
        assert head.startswith(f"HTTP/1.1 {status} "), head
        assert "\r\nStrict-Transport-Security: max-age=86400\r\n" in head + "\r\n", head
    with running({"http": {"host": HOST, "port": plain, "token": {"env": "ATNA_TOKEN"}}}, store):
        clear = subprocess.run([_curl(), "-sS", "-i", "-m", "10", "-H", f"Authorization: Bearer {TOKEN}",
                                f"http://{HOST}:{plain}/metadata"], capture_output=True, timeout=20)
    store.close()
    head = clear.stdout.decode(errors="replace").partition("\r\n\r\n")[0]
    assert head.startswith("HTTP/1.1 200 ") and "strict-transport-security" not in head.lower(), head


# --- 3. agent.type rendered as received --------------------------------------------------------------------


def _typed_agents() -> dict[str, Any]:
    """A BALP-like read: the client typed Source Role ID (agent.type), the user typed information
    recipient with a role of its own (agent.role), the server typed Destination Role ID."""
    return {
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
        "action": "R", "recorded": "2026-12-05T09:00:00Z", "outcome": "0",
        "agent": [
            {"type": {"coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]},
             "who": {"display": "fhir.hosp.example"}, "requestor": False},
            {"type": {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]},
             "who": {"reference": "Device/viewer9"}, "requestor": False,
             "network": {"address": "ws09.hosp.example", "type": "1"}},
            {"type": {"coding": [{"system": PARTICIPATION, "code": "IRCP", "display": "information recipient"}]},
             "role": [{"coding": [{"system": ROLE_CLASS, "code": "PROV", "display": "healthcare provider"}]}],
             "who": {"identifier": {"value": "w9.user"}}, "requestor": True}],
        "source": {"observer": {"display": "fhir.hosp.example"}},
        "entity": [{"what": {"reference": "Patient/W9-P1"}, "type": {"code": "1"}, "role": {"code": "1"}}],
    }


def test_agent_type_comes_back_as_agent_type_in_iti81_answers(tmp_path: Path, monkeypatch: Any) -> None:
    """POSTed and searched with curl over HTTPS; the answer is valid FHIR R4 (fhir.resources), each
    agent's type as sent, its roles apart. Before, every type was under agent.role."""
    monkeypatch.setenv("ATNA_TOKEN", TOKEN)
    section, ca, port = _https(tmp_path)
    resource = _typed_agents()
    AuditEvent.model_validate(resource)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    base = f"https://{HOST}:{port}"
    auth = ["--cacert", str(ca), "-H", f"Authorization: Bearer {TOKEN}", "-H", "Content-Type: application/fhir+json"]
    with running(section, store) as rx:
        sent = subprocess.run([_curl(), "-sS", "-m", "10", *auth, "--data-binary", json.dumps(resource),
                               f"{base}/AuditEvent"], capture_output=True, timeout=20)
        assert json.loads(sent.stdout)["resourceType"] == "AuditEvent", sent.stdout
        events = rx.wait(lambda evs: any(e.kind.startswith("atna.audit.") for e in evs), "the AuditEvent")
    [event] = [e for e in events if e.kind.startswith("atna.audit.")]
    store.append([event])  # as the service's pipeline stores it
    with running(section, store):
        searched = subprocess.run([_curl(), "-sS", "-m", "10", *auth, f"{base}/AuditEvent?patient=Patient/W9-P1"],
                                  capture_output=True, timeout=20)
    store.close()
    bundle = Bundle.model_validate_json(searched.stdout)
    assert bundle.total == 1, searched.stdout
    [answer] = json.loads(searched.stdout)["entry"]
    AuditEvent.model_validate(answer["resource"])
    agents = answer["resource"]["agent"]
    assert [a["type"]["coding"] for a in agents] == [a["type"]["coding"] for a in resource["agent"]], agents
    assert [a.get("role") for a in agents] == [None, None, resource["agent"][2]["role"]], agents
    # The Event still reads the client's and the server's roles (the user, the client's host).
    assert (event.actor.user, event.actor.host) == ("w9.user", "ws09.hosp.example")
    assert event.details["participants"][2]["types"] == [
        {"code": "IRCP", "system": PARTICIPATION, "meaning": "information recipient"}]


# --- 4. IHE transactions' documents where A.5.3 wants a study ----------------------------------------------


def _message(event_id: str, meaning: str, action: str, type_code: str, objects: str) -> bytes:
    """An IHE ITI-43 audit message (ITI TF-2 3.43.6): EventTypeCode the transaction; the repository
    (Source Role ID), the consumer (Destination Role ID, requestor), the patient, then ``objects``."""
    return (f'<AuditMessage><EventIdentification EventActionCode="{action}" EventDateTime="2026-12-05T09:30:15Z" '
            f'EventOutcomeIndicator="0"><EventID csd-code="{event_id}" codeSystemName="DCM" originalText="{meaning}"/>'
            f"{type_code}</EventIdentification>"
            '<ActiveParticipant UserID="https://repo.example/xds" UserIsRequestor="false">'
            '<RoleIDCode csd-code="110153" codeSystemName="DCM" originalText="Source Role ID"/></ActiveParticipant>'
            '<ActiveParticipant UserID="consumer9" UserIsRequestor="true" NetworkAccessPointID="10.119.0.9" '
            'NetworkAccessPointTypeCode="2"><RoleIDCode csd-code="110152" codeSystemName="DCM" '
            'originalText="Destination Role ID"/></ActiveParticipant>'
            '<AuditSourceIdentification AuditSourceID="REPO9"/>'
            '<ParticipantObjectIdentification ParticipantObjectID="W9-P2^^^&amp;1.2.3.119&amp;ISO" '
            'ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1"><ParticipantObjectIDTypeCode '
            'csd-code="2" codeSystemName="RFC-3881" originalText="Patient Number"/></ParticipantObjectIdentification>'
            f"{objects}</AuditMessage>").encode()


ITI43 = '<EventTypeCode csd-code="ITI-43" codeSystemName="IHE Transactions" originalText="Retrieve Document Set"/>'
DOCUMENT = ('<ParticipantObjectIdentification ParticipantObjectID="1.2.3.119.7.1" ParticipantObjectTypeCode="2" '
            'ParticipantObjectTypeCodeRole="3"><ParticipantObjectIDTypeCode csd-code="9" codeSystemName="RFC-3881" '
            'originalText="Report Number"/><ParticipantObjectDetail type="Repository Unique Id" '
            'value="MS4yLjMuMTE5Ljk5"/></ParticipantObjectIdentification>')
STUDY = ('<ParticipantObjectIdentification ParticipantObjectID="1.2.3.119.5" ParticipantObjectTypeCode="2" '
         'ParticipantObjectTypeCodeRole="3"><ParticipantObjectIDTypeCode csd-code="110180" codeSystemName="DCM" '
         'originalText="Study Instance UID"/></ParticipantObjectIdentification>')


@pytest.mark.parametrize(("event_id", "meaning", "action"), [("110106", "Export", "R"), ("110107", "Import", "C")])
def test_an_ihe_retrieve_names_a_document_where_a_study_is_asked(event_id: str, meaning: str, action: str) -> None:
    assert schema.check(dicom_xml.parse_xml(_message(event_id, meaning, action, ITI43, DOCUMENT))) == []
    assert schema.check(dicom_xml.parse_xml(_message(event_id, meaning, action, ITI43, STUDY))) == []
    # An IHE transaction naming neither is still refused, and told what would do.
    assert schema.check(dicom_xml.parse_xml(_message(event_id, meaning, action, ITI43, ""))) == [
        f"{meaning}: a study participant object (ID type 110180) (or, for an IHE transaction, a document: "
        "ID type 9) is required"]


def test_dicom_exports_still_need_their_study() -> None:
    """Only an IHE transaction's message may name a document instead: a DICOM Export (no event type,
    or one of DICOM's) naming a document alone still lacks its study (PS3.15 A.5.3.6)."""
    for type_code in ("", '<EventTypeCode csd-code="110180" codeSystemName="DCM" originalText="x"/>'):
        problems = schema.check(dicom_xml.parse_xml(_message("110106", "Export", "R", type_code, DOCUMENT)))
        assert problems == ["Export: a study participant object (ID type 110180) is required"], problems
