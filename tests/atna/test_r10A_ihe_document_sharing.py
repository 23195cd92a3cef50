"""Round 10, helper A (3): IHE XDS audit messages are PS3.15 A.5 messages the schema check takes.

The A.5.1/A.5.3 check refused the Provide and Register Document Set-b message of a Document Source
(IHE ITI TF-2 3.41.5.1.1: Export, EventTypeCode ITI-41): it names a submission set (object type 2,
role 20, ID type EV("urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd", "IHE XDS Metadata",
"submission set classificationNode")) where A.5.3 asks a DICOM Export for its study, and A.5.1's
ParticipantObjectIDTypeCode is a coded value of any scheme. The Register Document Set-b messages
(ITI-42, the repository's Export and the registry's Import) the same; the Retrieve Document Set
message (ITI-43) names the patient only when it is known (0..1), and was refused without one.
util-linux ``logger`` sends the ITI-41 message, curl asks ITI-81 for it. Loopback 127.0.101.0/24."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from receiver import running

from pacsguard.atna.message import dicom_xml, schema
from peers.dcmtk import free_port
from store_helpers import new_store

HOST = "127.0.101.21"
TOKEN = "r10a-xds-token-0123456789abcdef"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
# Checked in round 11 against the published tables (IHE ITI TF-2b, PDF era: 3.41.5.1.1 Document
# Source, 3.42.5.1.1/3.42.5.1.2 Repository and Registry, 3.43.6.1.2 Repository; now the HTML
# profiles.ihe.net/ITI/TF/Volume2/ITI-41.html, -42, -43 "Security Considerations") and three
# independent implementations that build these messages: dcm4che's XDS audit (dcm4chee-xds2
# XDSAudit: createExport/createImport, createPatient, createSubmissionSet, addDocuments), the
# Open Health Tools auditor (IHETransactionParticipantObjectIDTypeCodes.SubmissionSet) and IPF
# (XdsRetrieveAuditStrategy30: ITI-43's Source is the repository, not the requestor). Every value
# below agrees with them; nothing was changed but these citations.
# The submission set's ID type: EV("urn:uuid:a54d6aa5-...", "IHE XDS Metadata", "submission set
# classificationNode"), the XDSSubmissionSet classification node of the metadata (ITI TF-3 4.2).
SUBMISSION_SET = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
SET_UID = "1.3.6.1.4.1.21367.2026.101.41"
REPLY_TO = "http://www.w3.org/2005/08/addressing/anonymous"


# EventID: a sender's Export EV(110106, DCM) with action R, a receiver's Import EV(110107, DCM) with
# action C; EventTypeCode EV("ITI-4x", "IHE Transactions", the transaction's name): "Provide and
# Register Document Set-b", "Register Document Set-b", "Retrieve Document Set" (dcm4che's
# AuditMessages.EventTypeCode ITI_41/42/43 spell them so).
def _event(event_id: str, meaning: str, action: str, transaction: str, name: str) -> str:
    return (f'<EventIdentification EventActionCode="{action}" EventDateTime="2026-12-05T09:41:00.250+01:00" '
            f'EventOutcomeIndicator="0"><EventID csd-code="{event_id}" codeSystemName="DCM" originalText="{meaning}"/>'
            f'<EventTypeCode csd-code="{transaction}" codeSystemName="IHE Transactions" originalText="{name}"/>'
            "</EventIdentification>")


def _participant(user: str, requestor: bool, role: str = "", host: str = "", extra: str = "") -> str:
    where = f' NetworkAccessPointID="{host}" NetworkAccessPointTypeCode="{"2" if host[0].isdigit() else "1"}"' \
        if host else ""
    return (f'<ActiveParticipant UserID="{user}" UserIsRequestor="{"true" if requestor else "false"}"{where}{extra}>'
            f"{role}</ActiveParticipant>")


# RoleIDCode of the Source and the Destination: EV(110153, DCM) and EV(110152, DCM) (PS3.16 CID 402).
SOURCE = '<RoleIDCode csd-code="110153" codeSystemName="DCM" originalText="Source Role ID"/>'
DESTINATION = '<RoleIDCode csd-code="110152" codeSystemName="DCM" originalText="Destination Role ID"/>'
#: A Human Requestor's role: one of the access control roles of the affinity domain (any scheme).
PHYSICIAN = '<RoleIDCode csd-code="PHYS" codeSystemName="1.2.3.101.77" originalText="Physician"/>'
# Patient: type 1 (Person), role 1 (Patient), ID type EV(2, RFC-3881, "Patient Number"), the ID in CX form.
PATIENT = ('<ParticipantObjectIdentification ParticipantObjectID="R10A-X1^^^&amp;1.2.3.101.1&amp;ISO" '
           'ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1"><ParticipantObjectIDTypeCode '
           'csd-code="2" codeSystemName="RFC-3881" originalText="Patient Number"/></ParticipantObjectIdentification>')
# Submission set: type 2 (System Object), role 20 (Job), its uniqueId as the ID.
SUBMISSION = (f'<ParticipantObjectIdentification ParticipantObjectID="{SET_UID}" ParticipantObjectTypeCode="2" '
              f'ParticipantObjectTypeCodeRole="20"><ParticipantObjectIDTypeCode csd-code="{SUBMISSION_SET}" '
              'codeSystemName="IHE XDS Metadata" originalText="submission set classificationNode"/>'
              "</ParticipantObjectIdentification>")
# ITI-43's document: type 2, role 3 (Report), ID type EV(9, RFC-3881, "Report Number"), the
# DocumentUniqueId as the ID, its repositoryUniqueId in a detail of type "Repository Unique Id".
DOCUMENT = ('<ParticipantObjectIdentification ParticipantObjectID="1.3.6.1.4.1.21367.2026.101.43.1" '
            'ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="3"><ParticipantObjectIDTypeCode '
            'csd-code="9" codeSystemName="RFC-3881" originalText="Report Number"/><ParticipantObjectDetail '
            'type="Repository Unique Id" value="MS4zLjYuMS40LjEuMjEzNjcuMjAyNi4xMDEuOQ=="/>'
            "</ParticipantObjectIdentification>")
AUDIT_SOURCE = '<AuditSourceIdentification AuditSourceID="{}"/>'


def iti41_source(objects: str = PATIENT + SUBMISSION) -> str:
    """ITI-41 as the Document Source records it (ITI TF-2 3.41.5.1.1): Export (R); the source (Source
    Role ID, its UserID the wsa:ReplyTo, AlternativeUserID its process ID, its machine), the Human
    Requestor, the Document Repository (Destination Role ID, its UserID the SOAP endpoint), the
    audit source, the patient (CX) and the submission set (its uniqueId)."""
    return ('<?xml version="1.0" encoding="UTF-8"?><AuditMessage>'
            + _event("110106", "Export", "R", "ITI-41", "Provide and Register Document Set-b")
            + _participant(REPLY_TO, True, SOURCE, "10.101.41.5", ' AlternativeUserID="2231"')
            + _participant("dr.r10a", True, PHYSICIAN, extra=' UserName="Dana R10A"')
            + _participant("https://repository.r10a.example/xds/iti41", False, DESTINATION, "repository.r10a.example")
            + AUDIT_SOURCE.format("XDSSOURCE101") + objects + "</AuditMessage>")


def iti42(event_id: str, meaning: str, action: str, audit_source: str) -> str:
    """ITI-42 (ITI TF-2 3.42.5.1.1 and 3.42.5.1.2): the Document Repository's Export and the Document
    Registry's Import of the same registration: the repository (Source Role ID) asks the registry
    (Destination Role ID), naming the patient and the submission set."""
    return ('<?xml version="1.0" encoding="UTF-8"?><AuditMessage>'
            + _event(event_id, meaning, action, "ITI-42", "Register Document Set-b")
            + _participant("https://repository.r10a.example/xds/iti42", True, SOURCE, "10.101.42.5",
                           ' AlternativeUserID="4711"')
            + _participant("https://registry.r10a.example/xds/iti42", False, DESTINATION, "registry.r10a.example")
            + AUDIT_SOURCE.format(audit_source) + PATIENT + SUBMISSION + "</AuditMessage>")


def iti43_repository() -> str:
    """ITI-43 as the Document Repository records it (ITI TF-2 3.43.6.1.2): Export (R); the repository
    (Source Role ID), the consumer (Destination Role ID, the requestor), the document retrieved; no
    patient (0..1: the repository knows the document by its ID)."""
    return ('<?xml version="1.0" encoding="UTF-8"?><AuditMessage>'
            + _event("110106", "Export", "R", "ITI-43", "Retrieve Document Set")
            + _participant("https://repository.r10a.example/xds/iti43", False, SOURCE, "repository.r10a.example",
                           ' AlternativeUserID="4712"')
            + _participant(REPLY_TO, True, DESTINATION, "10.101.43.7")
            + AUDIT_SOURCE.format("XDSREPO101") + DOCUMENT + "</AuditMessage>")


def _check(message: str) -> list[str]:
    return schema.check(dicom_xml.parse_xml(message.encode()))


@pytest.mark.parametrize("message", [iti41_source(), iti42("110106", "Export", "R", "XDSREPO101"),
                                     iti42("110107", "Import", "C", "XDSREGISTRY101"), iti43_repository()],
                         ids=["iti41-source-export", "iti42-repository-export", "iti42-registry-import",
                              "iti43-repository-export-no-patient"])
def test_ihe_xds_audit_messages_pass_the_schema_check(message: str) -> None:
    assert _check(message) == []


def test_what_an_ihe_message_must_still_name() -> None:
    """A submission set stands for the study only in an IHE transaction's message; an ITI-41 message
    naming neither is told what it lacks; a DICOM Export naming a submission set still lacks its
    study, and its patient, which only ITI-43's retrieve may leave out."""
    assert _check(iti41_source(PATIENT)) == [
        f"Export: a submission set participant object (ID type {SUBMISSION_SET}) is required"]
    assert _check(iti41_source(SUBMISSION)) == ["Export: a patient participant object (ID type 2) is required"]
    dicom = iti41_source().replace('<EventTypeCode csd-code="ITI-41" codeSystemName="IHE Transactions" '
                                   'originalText="Provide and Register Document Set-b"/>', "")
    assert _check(dicom) == ["Export: a study participant object (ID type 110180) is required"]
    assert _check(dicom.replace(PATIENT, "")) == ["Export: a patient participant object (ID type 2) is required",
                                                  "Export: a study participant object (ID type 110180) is required"]


def _curl(url: str, *args: str) -> dict[str, Any]:
    curl = shutil.which("curl")
    assert curl, "curl is needed (Debian package curl)"
    done = subprocess.run([curl, "-sS", "--fail-with-body", "-m", "15", "-H", f"Authorization: Bearer {TOKEN}",
                           "-G", *args, url], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stdout + done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def test_an_iti41_message_sent_by_logger_is_found_by_its_submission_set(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The ITI-41 message, sent as a Document Source's syslog client would (logger, RFC 5424 over
    TCP, octet counting), passes the check as received, is the Human Requestor's Export, and ITI-81
    finds it by its submission set: the object's type and role under audit-entity-type and
    object-role, its ID type under IHE's scheme."""
    logger = shutil.which("logger") or "/usr/bin/logger"
    if not Path(logger).exists():
        pytest.fail("logger (util-linux) is missing")
    monkeypatch.setenv("ATNA_R10A_XDS", TOKEN)
    store, _ = new_store(str(tmp_path / "store.db"), tmp_path)
    tcp, http = free_port(HOST), free_port(HOST)
    section = {"tcp": {"host": HOST, "port": tcp}, "http": {"host": HOST, "port": http,
                                                           "token": {"env": "ATNA_R10A_XDS"}}}
    try:
        with running(section, store) as rx:
            subprocess.run([logger, "--rfc5424", "--msgid", "IHE+RFC-3881", "--size", "300000", "-n", HOST, "-T",
                            "--octet-count", "-P", str(tcp), iti41_source()], check=True, timeout=15)
            [event] = [e for e in rx.wait(lambda evs: any(e.kind.startswith("atna.audit.") for e in evs),
                                          "the ITI-41 message") if e.kind.startswith("atna.audit.")]
            raw = event.details["raw"]  # the syslog message as received: its MSG is the audit message
            assert _check(raw[raw.index("<?xml"):]) == []
            assert event.kind == "atna.audit.export"
            assert (event.actor.user, event.actor.host) == ("dr.r10a", "10.101.41.5")
            store.append([event])
            base = f"http://{HOST}:{http}/AuditEvent"
            bundle = _curl(base, "--data-urlencode", f"entity-type={ENTITY_TYPE}|2",
                           "--data-urlencode", f"entity-role={OBJECT_ROLE}|20")
            Bundle.model_validate(bundle)
            [entry] = bundle["entry"]
            assert entry["resource"]["id"] == event.id
            [submission] = [e for e in entry["resource"]["entity"] if e.get("role", {}).get("code") == "20"]
            assert submission["what"]["identifier"]["value"] == SET_UID
            assert submission["what"]["identifier"]["type"]["coding"] == [
                {"system": "IHE XDS Metadata", "code": SUBMISSION_SET, "display": "submission set classificationNode"}]
            assert [e["resource"]["id"] for e in _curl(base, "--data-urlencode",
                                                       f"entity-identifier={SET_UID}")["entry"]] == [event.id]
    finally:
        store.close()
