"""Outbound (round 8): pacsguard's own events carrying what a hostile or broken peer sent (a control
byte in a Patient ID, a lone surrogate, U+FFFF, a code string beyond Latin-1) still become
well-formed PS3.15 A.5.1 messages that a repository stores with the right patient; none is lost."""

from __future__ import annotations

import base64
import io
import logging
import struct

import pytest
from pydicom.filereader import read_dataset

from pacsguard.atna.ingest import Sender, frame_event
from pacsguard.atna.message import dicom_xml, schema
from pacsguard.atna.outbound.forwarder import Forwarder
from pacsguard.atna.outbound.sender import frame
from pacsguard.atna.outbound.spool import Spool
from pacsguard.dicom.dataset import peek_identifiers
from pacsguard.events.model import Event, Outcome, Party, Severity

FIND = "1.2.840.10008.5.1.4.1.2.2.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
#: Characters XML 1.0 (2.2) does not allow, each as pacsguard writes it instead (its escape text).
HOSTILE = [("PID\x01\x1b[31m", "PID\\x01\\x1b[31m"), ("X\ud800Y", "X\\ud800Y"), ("a\uffffb", "a\\uffffb"),
           ("\x00", "\\x00"), ("\ufffe<&>\"'", "\\ufffe<&>\"'")]


def stored(message: bytes) -> Event:
    """The Event a pacsguard repository makes of ``message`` (its syslog reader)."""
    framed = frame("site-a", 1, message, "gw")
    return frame_event(Sender("127.0.0.1", 4000, "tls", "octet-counting"), framed.split(b" ", 1)[1])


def events(value: str) -> list[Event]:
    """One Event of each kind issue #18 names, ``value`` wherever a peer's text goes."""
    peer = Party(value, value, 104, user=value)
    pacs = Party("PACS", "10.20.0.2", 104)
    return [
        Event(kind="dicom.dimse.c-store", component="gateway", actor=peer, target=pacs, patient_ids=(value,),
              study_uids=(value,), sop_instance_count=1,
              details={"route": "main", "message_id": 1, "sop_class": CT_IMAGE, "status": "0x0000"}),
        Event(kind="dicom.dimse.c-find", component="gateway", actor=peer, target=pacs, patient_ids=(value,),
              details={"route": "main", "message_id": 2, "sop_class": FIND, "status": "0x0000", "level": "STUDY",
                       "query": {"PatientID": value, "PatientName": value}}),
        Event(kind="dicom.association.rejected", component="gateway", actor=peer, severity=Severity.WARNING,
              outcome=Outcome.MINOR_FAILURE, message=f"calling AE {value} not allowed"),
        Event(kind="ids.alert.dicom-brute", component="ids", actor=peer, severity=Severity.WARNING, message=value),
        Event(kind="gateway.quarantine.added", component="gateway", actor=peer, details={"target": value}),
        Event(kind="console.login.failed", component="console", actor=peer, outcome=Outcome.MINOR_FAILURE),
    ]


@pytest.mark.parametrize(("value", "written"), HOSTILE, ids=["c0-controls", "lone-surrogate", "uffff", "nul",
                                                            "ufffe-and-xml-specials"])
def test_hostile_text_keeps_every_message_well_formed(value: str, written: str) -> None:
    forward = Forwarder.__new__(Forwarder)  # only its mapping is used: no spool
    forward.source_id = "site-a"
    for event in events(value):
        message = forward.message(event)
        assert message is not None, event.kind
        assert schema.check(dicom_xml.parse_xml(message)) == [], event.kind
        got = stored(message)
        assert got.kind.startswith("atna.audit."), (event.kind, got.kind, got.details.get("problem"))
        if event.patient_ids:  # the right patient, as the gateway saw it, readably
            assert got.patient_ids == (written,), event.kind
        if event.kind == "dicom.dimse.c-store":
            assert got.study_uids == (written,)
        if event.kind in ("dicom.association.rejected", "ids.alert.dicom-brute"):  # the device, readably
            assert [o["id"] for o in got.details["objects"]] == [written]
        if event.kind == "console.login.failed":
            assert got.details["participants"][0]["user_id"] == written


def element(group: int, elem: int, value: bytes) -> bytes:
    value += b" " * (len(value) % 2)
    return struct.pack("<HHI", group, elem, len(value)) + value


def test_a_stored_object_with_a_control_byte_in_its_patient_id_reaches_the_repository(tmp_path: object) -> None:
    """The gateway takes the Patient ID of a C-STORE as the object holds it (a broken modality
    writing \\x01); the repository must still get an XML message naming that patient."""
    peek = peek_identifiers(element(0x10, 0x20, b"PID\x017") + element(0x20, 0x0D, b"1.2.3.4"),
                            "1.2.840.10008.1.2", final=True)
    assert peek.patient_id == "PID\x017"
    event = Event(kind="dicom.dimse.c-store", component="gateway", actor=Party("CT01", "10.20.0.9", 104),
                  target=Party("PACS", "10.20.0.2", 104), patient_ids=(peek.patient_id,),
                  study_uids=(str(peek.study_instance_uid),), sop_instance_count=1,
                  details={"route": "main", "message_id": 1, "sop_class": CT_IMAGE, "status": "0x0000"})
    forward = Forwarder.__new__(Forwarder)
    forward.source_id = "site-a"
    message = forward.message(event)
    assert message is not None
    got = stored(message)
    assert got.kind == "atna.audit.instances-transferred", got.details.get("problem")
    assert got.patient_ids == ("PID\\x017",) and got.study_uids == ("1.2.3.4",)


@pytest.mark.parametrize("key", ["level", "Modality", "StudyInstanceUID"])
def test_a_code_string_beyond_latin1_loses_only_that_key(key: str, tmp_path: object,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A CS or UI value with a character beyond Latin-1 cannot be encoded under any character set
    (PS3.5 6.1.2.3): that key is left out of the identifier, the Query message is still spooled."""
    from pathlib import Path

    details: dict[str, object] = {"route": "main", "message_id": 2, "sop_class": FIND, "status": "0x0000",
                                  "level": "STUDY", "query": {"PatientID": "PID-7", "PatientName": "DOE^J"}}
    if key == "level":
        details["level"] = "\u0405TUDY"  # a Cyrillic DZE for the S
    else:
        details["query"] = {**details["query"], key: "\u0421T"}  # type: ignore[dict-item]
    event = Event(kind="dicom.dimse.c-find", component="gateway", actor=Party("WS1", "10.20.0.5", 104),
                  target=Party("PACS", "10.20.0.2", 104), patient_ids=("PID-7",), details=details)
    spool = Spool(Path(str(tmp_path)) / "spool.db")
    try:
        with caplog.at_level(logging.WARNING):
            Forwarder(spool, "site-a")(event)
        rows = spool.after(0)
    finally:
        spool.close()
    assert len(rows) == 1 and "Traceback" not in caplog.text
    message = rows[0][1]
    assert schema.check(dicom_xml.parse_xml(message)) == []
    got = stored(message)
    assert got.kind == "atna.audit.query" and got.patient_ids == ("PID-7",)
    query = next(o["query"] for o in got.details["objects"] if o.get("query"))
    identifier = read_dataset(io.BytesIO(base64.b64decode(query)), is_implicit_VR=False, is_little_endian=True)
    assert identifier.PatientID == "PID-7" and str(identifier.PatientName) == "DOE^J"
