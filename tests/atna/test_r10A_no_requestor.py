"""Round 10, helper A (2): an A.5 message naming no requestor still names who took part.

PS3.15 leaves UserIsRequestor "not specialized" in DICOM Instances Accessed (A.5.3.6: the person
and or process manipulating the data, 1..2) and in the transfers (A.5.3.3, A.5.3.7: the process
sending and the one receiving the data; the requestor a third party that may not be known): an
archive may audit its own access naming itself alone, or a transfer naming source and destination,
every UserIsRequestor false. Such a message made an Event of no actor: `audit patient` and the
daily report named nobody. Now the only participant is the Event's actor; with several, the Event
names their machines (source as actor, destination as target), no user, and lists them all; either
way the Event is flagged ``no-requestor``. The schema check asks for a requestor only where PS3.15
does (A.5.3.4 Export, A.5.3.5 Import). util-linux ``logger`` sends the messages over TCP, curl asks
ITI-81. Loopback 127.0.101.0/24."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from receiver import running
from typer.testing import CliRunner

from pacsguard.atna.message import dicom_xml, schema
from pacsguard.cli import main
from pacsguard.events.model import Event
from peers.dcmtk import free_port
from store_helpers import new_store

HOST = "127.0.101.31"
TOKEN = "r10a-no-requestor-0123456789"


def _message(event_id: str, meaning: str, action: str, participants: str) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?><AuditMessage>'
            f'<EventIdentification EventActionCode="{action}" EventDateTime="2026-12-05T10:05:00Z" '
            f'EventOutcomeIndicator="0"><EventID csd-code="{event_id}" codeSystemName="DCM" '
            f'originalText="{meaning}"/></EventIdentification>{participants}'
            '<AuditSourceIdentification AuditSourceID="ARCHIVE101"/>'
            '<ParticipantObjectIdentification ParticipantObjectID="1.2.3.101.31.5" ParticipantObjectTypeCode="2" '
            'ParticipantObjectTypeCodeRole="3"><ParticipantObjectIDTypeCode csd-code="110180" codeSystemName="DCM" '
            'originalText="Study Instance UID"/><SOPClass UID="1.2.840.10008.5.1.4.1.1.2" NumberOfInstances="3"/>'
            '</ParticipantObjectIdentification>'
            '<ParticipantObjectIdentification ParticipantObjectID="R10A-N1" ParticipantObjectTypeCode="1" '
            'ParticipantObjectTypeCodeRole="1"><ParticipantObjectIDTypeCode csd-code="2" codeSystemName="RFC-3881" '
            'originalText="Patient Number"/></ParticipantObjectIdentification></AuditMessage>')


ARCHIVE = ('<ActiveParticipant UserID="ARCHIVE101" AlternativeUserID="AETITLES=ARCH101" UserIsRequestor="false" '
           'NetworkAccessPointID="10.101.3.5" NetworkAccessPointTypeCode="2">{}</ActiveParticipant>')
VIEWER = ('<ActiveParticipant UserID="VIEWER101" AlternativeUserID="AETITLES=VIEW101" UserIsRequestor="false" '
          'NetworkAccessPointID="10.101.3.9" NetworkAccessPointTypeCode="2"><RoleIDCode csd-code="110152" '
          'codeSystemName="DCM" originalText="Destination Role ID"/></ActiveParticipant>')
SOURCE_ROLE = '<RoleIDCode csd-code="110153" codeSystemName="DCM" originalText="Source Role ID"/>'
#: DICOM Instances Accessed (A.5.3.6) as an archive audits its own read: itself alone, no requestor.
ACCESSED = _message("110103", "DICOM Instances Accessed", "R", ARCHIVE.format(""))
#: DICOM Instances Transferred (A.5.3.7) from the archive to a viewer, neither the requestor.
TRANSFERRED = _message("110104", "DICOM Instances Transferred", "R", ARCHIVE.format(SOURCE_ROLE) + VIEWER)
#: A Data Import (A.5.3.5) naming no requestor: PS3.15 asks for one there.
IMPORTED = _message("110107", "Import", "C", ARCHIVE.format(SOURCE_ROLE) + VIEWER)


def test_the_schema_check_asks_for_a_requestor_only_where_ps315_does() -> None:
    assert schema.check(dicom_xml.parse_xml(ACCESSED.encode())) == []
    assert schema.check(dicom_xml.parse_xml(TRANSFERRED.encode())) == []
    assert schema.check(dicom_xml.parse_xml(IMPORTED.encode())) == [
        "Import: no ActiveParticipant is the requestor (UserIsRequestor=true; PS3.15 A.5.3.4, A.5.3.5)"]


def _received(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Event], list[dict[str, Any]], str]:
    """The two messages sent by logger over TCP, stored, and what ITI-81 (curl) answers for their
    patient; the store's path."""
    logger = shutil.which("logger") or "/usr/bin/logger"
    curl = shutil.which("curl")
    if not Path(logger).exists() or curl is None:
        pytest.fail("logger (util-linux) and curl are needed")
    monkeypatch.setenv("ATNA_R10A_NOREQ", TOKEN)
    target = str(tmp_path / "store.db")
    store, _ = new_store(target, tmp_path)
    tcp, http = free_port(HOST), free_port(HOST)
    section = {"tcp": {"host": HOST, "port": tcp},
               "http": {"host": HOST, "port": http, "token": {"env": "ATNA_R10A_NOREQ"}}}
    try:
        with running(section, store) as rx:
            for message in (ACCESSED, TRANSFERRED):
                subprocess.run([logger, "--rfc5424", "--msgid", "IHE+RFC-3881", "--size", "300000", "-n", HOST,
                                "-T", "--octet-count", "-P", str(tcp), message], check=True, timeout=15)
            audits = [e for e in rx.wait(lambda evs: len([e for e in evs if e.kind.startswith("atna.audit.")]) == 2,
                                         "the two audit messages") if e.kind.startswith("atna.audit.")]
            store.append(audits)
            store.checkpoint()
            done = subprocess.run([curl, "-sS", "--fail-with-body", "-m", "15", "-H", f"Authorization: Bearer {TOKEN}",
                                   f"http://{HOST}:{http}/AuditEvent?patient=R10A-N1"],
                                  capture_output=True, text=True, timeout=20)
            assert done.returncode == 0, done.stdout + done.stderr
            bundle = json.loads(done.stdout)
            Bundle.model_validate(bundle)
    finally:
        store.close()
    return {e.kind: e for e in audits}, [e["resource"] for e in bundle["entry"]], target


def test_no_requestor_names_the_participants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events, answered, target = _received(tmp_path, monkeypatch)
    accessed, transferred = events["atna.audit.instances-accessed"], events["atna.audit.instances-transferred"]
    # The archive alone: it is who manipulated the data, the Event's actor; flagged, not a requestor.
    assert (accessed.actor.user, accessed.actor.ae_title, accessed.actor.host) == ("ARCHIVE101", "ARCH101",
                                                                                   "10.101.3.5")
    assert "no-requestor" in accessed.details["flags"]
    assert "no requestor named" in accessed.message
    assert accessed.details["participants"][0]["requestor"] is False
    # Source and destination: no user is made up; the machines are named, and every participant.
    assert transferred.actor.user is None
    assert (transferred.actor.ae_title, transferred.actor.host) == ("ARCH101", "10.101.3.5")
    assert (transferred.target.user, transferred.target.ae_title) == ("VIEWER101", "VIEW101")
    assert "no-requestor" in transferred.details["flags"]
    assert "no requestor named" in transferred.message
    assert "ARCHIVE101" in transferred.message and "VIEWER101" in transferred.message
    assert "Destination Role ID" in transferred.message
    # ITI-81 answers both, every agent as received (requestor false).
    assert len(answered) == 2 and all(a["requestor"] is False for r in answered for a in r["agent"])
    runner = CliRunner()
    out = runner.invoke(main.app, ["audit", "patient", "R10A-N1", "--store", target, "--format", "json"])
    assert out.exit_code == 0, out.output
    rows = {r["kind"]: r for r in json.loads(out.stdout)["events"]}
    assert rows["atna.audit.instances-accessed"]["user"] == "ARCHIVE101"
    moved = rows["atna.audit.instances-transferred"]
    assert (moved["user"], moved["host"], moved["ae_title"]) == (None, "10.101.3.5", "ARCH101")
    assert moved["target"] == "VIEW101@10.101.3.9 (VIEWER101)"
    out = runner.invoke(main.app, ["audit", "report", "--day", "2026-12-05", "--time-zone", "UTC", "--store", target,
                                   "--format", "json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["top_users"] == [["archive101", 1]]  # the transfer counts no user: none was named
    assert report["top_hosts"] == [["10.101.3.5", 2]]
