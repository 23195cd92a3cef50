"""Round 8, area H1: who sent what in a C-GET and a C-MOVE.

1. A C-GET at STUDY level (its identifier names only the Study Instance UID) discloses the
   patients of the objects its C-STORE sub-operations carry on the same association (PS3.4
   C.4.3.3): its own Event names them (bounded by MAX_IDS_PER_EVENT), so its DICOM Instances
   Transferred message (PS3.15 A.5.3.7) does not name an empty Patient.
2. In Instances Transferred (A.5.3.7) and Begin Transferring (A.5.3.5) messages, Source (Role ID
   110153) is the sender of the objects and Destination (110152) their receiver: a C-STORE's
   requestor sends; a C-GET's acceptor sends to the requestor; a C-MOVE's acceptor sends to the
   Move Destination AE, the requestor being a third participant with no role.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from test_r8_outbound_begin import CT_IMAGE, GET, PACS, Association, element

from pacsguard.atna.message import dicom_xml, schema
from pacsguard.atna.message.build import to_xml
from pacsguard.atna.message.record import AuditRecord
from pacsguard.atna.outbound.mapping import begin_record, to_record
from pacsguard.dicom import dimse
from pacsguard.dicom.dataset import peek_identifiers
from pacsguard.dicom.dimse import CommandSet
from pacsguard.dicom.events import DimseCommand, DimseDatasetStart
from pacsguard.events.model import Event, Party
from pacsguard.records import dicom as records_dicom

MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
WS = Party("WS", "10.20.0.7", 40100)


def c_get(a: Association, message_id: int, identifier: bytes) -> None:
    request = CommandSet(command_field=dimse.C_GET_RQ, message_id=message_id, affected_sop_class_uid=GET,
                         command_data_set_type=0x0000)
    a.record.command(DimseCommand(True, 1, GET, ExplicitVRLittleEndian, request))
    a.record.dataset_start(DimseDatasetStart(True, 1, message_id, peek_identifiers(identifier, ExplicitVRLittleEndian,
                                                                                   final=True)))


def sub_store(a: Association, message_id: int, patient: str, study: str, originator: int | None = None) -> None:
    """One C-STORE sub-operation from the acceptor (PS3.4 C.4.3.3), answered with success."""
    request = CommandSet(command_field=dimse.C_STORE_RQ, message_id=message_id, affected_sop_class_uid=CT_IMAGE,
                         command_data_set_type=0x0000, move_originator_message_id=originator)
    a.record.command(DimseCommand(False, 3, CT_IMAGE, ExplicitVRLittleEndian, request))
    data = element(0x10, 0x20, patient, b"LO") + element(0x20, 0x0D, study)
    a.record.dataset_start(DimseDatasetStart(False, 3, message_id,
                                             peek_identifiers(data, ExplicitVRLittleEndian, final=True)))
    response = CommandSet(command_field=dimse.C_STORE_RSP, message_id_being_responded_to=message_id,
                          status=dimse.STATUS_SUCCESS, command_data_set_type=0x0101)
    a.record.command(DimseCommand(True, 3, None, None, response))


def get_done(a: Association, message_id: int, completed: int) -> None:
    response = CommandSet(command_field=dimse.C_GET_RSP, message_id_being_responded_to=message_id,
                          status=dimse.STATUS_SUCCESS, completed_suboperations=completed, failed_suboperations=0,
                          warning_suboperations=0, command_data_set_type=0x0101)
    a.record.command(DimseCommand(False, 1, None, None, response))


STUDY_LEVEL = element(0x08, 0x52, "STUDY", b"CS") + element(0x20, 0x0D, "1.2.3.4")


def test_a_study_level_c_get_names_the_patients_its_sub_operations_carried() -> None:
    events: list[Event] = []
    a = Association(events, 40101)
    c_get(a, 1, STUDY_LEVEL)
    sub_store(a, 7, "PID-4", "1.2.3.4")
    sub_store(a, 8, "PID-4", "1.2.3.4")
    get_done(a, 1, 2)
    (get,) = [e for e in events if e.kind == "dicom.dimse.c-get"]
    assert get.patient_ids == ("PID-4",) and get.study_uids == ("1.2.3.4",)
    record = to_record(get, "GW-A")
    assert record is not None
    assert [o.object_id for o in record.objects if o.id_type.code == "2"] == ["PID-4"]


def test_the_patients_a_c_get_names_are_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(records_dicom, "MAX_IDS_PER_EVENT", 3)
    events: list[Event] = []
    a = Association(events, 40102)
    c_get(a, 1, element(0x08, 0x52, "STUDY", b"CS") + element(0x20, 0x0D, "1.2.3.*"))
    for i in range(6):
        sub_store(a, 10 + i, f"PID-{i}", f"1.2.3.{i}")
    get_done(a, 1, 6)
    (get,) = [e for e in events if e.kind == "dicom.dimse.c-get"]
    assert get.patient_ids == ("PID-0", "PID-1", "PID-2")
    assert get.study_uids == ("1.2.3.0", "1.2.3.1", "1.2.3.2")


def test_a_move_originator_message_id_tells_concurrent_c_gets_apart() -> None:
    """Asynchronous operations (PS3.7 D.3.3.3): two C-GETs in flight; a sub-operation naming its
    C-GET by Move Originator Message ID (PS3.7 9.1.1.1) is that C-GET's only."""
    events: list[Event] = []
    a = Association(events, 40103)
    c_get(a, 1, STUDY_LEVEL)
    c_get(a, 2, element(0x08, 0x52, "STUDY", b"CS") + element(0x20, 0x0D, "1.2.3.5"))
    sub_store(a, 7, "PID-4", "1.2.3.4", originator=1)
    sub_store(a, 8, "PID-5", "1.2.3.5", originator=2)
    get_done(a, 1, 1)
    get_done(a, 2, 1)
    gets = {e.details["message_id"]: e for e in events if e.kind == "dicom.dimse.c-get"}
    assert gets[1].patient_ids == ("PID-4",) and gets[2].patient_ids == ("PID-5",)


def test_a_requestor_s_c_store_is_no_c_get_s_sub_operation() -> None:
    events: list[Event] = []
    a = Association(events, 40104)
    c_get(a, 1, STUDY_LEVEL)
    a.message_id = 20
    a.store("PID-9", "1.2.3.9")  # the requestor's own C-STORE, meanwhile
    get_done(a, 1, 0)
    (get,) = [e for e in events if e.kind == "dicom.dimse.c-get"]
    assert get.patient_ids == () and get.study_uids == ("1.2.3.4",)


def roles(record: AuditRecord) -> list[tuple[str, bool, tuple[str, ...]]]:
    """(UserID, UserIsRequestor, Role ID codes) of each active participant, checked against PS3.15
    A.5.1 on the way."""
    assert schema.check(dicom_xml.parse_xml(to_xml(record))) == []
    return [(p.user_id, p.requestor, tuple(r.code for r in p.roles)) for p in record.participants]


def transfer(kind: str, **details: Any) -> Event:
    sop = {"dicom.dimse.c-get": GET, "dicom.dimse.c-move": MOVE}.get(kind, CT_IMAGE)
    return Event(kind=kind, component="gateway", actor=WS, target=PACS, patient_ids=("PID-1",),
                 study_uids=("1.2.3",), sop_instance_count=2,
                 details={"route": "main", "message_id": 1, "sop_class": sop, "status": "0x0000", **details})


@pytest.mark.parametrize(("event", "want"), [
    # A C-STORE: the requestor sends the object.
    (transfer("dicom.dimse.c-store"), [("WS@10.20.0.7", True, ("110153",)), ("PACS@10.20.0.2", False, ("110152",))]),
    # A C-GET: the PACS sends the objects back to the requestor.
    (transfer("dicom.dimse.c-get", level="STUDY"),
     [("PACS@10.20.0.2", False, ("110153",)), ("WS@10.20.0.7", True, ("110152",))]),
    # A C-MOVE to a third AE: the PACS sends to it; the requestor only asked.
    (transfer("dicom.dimse.c-move", level="STUDY", move_destination="VIEWER"),
     [("PACS@10.20.0.2", False, ("110153",)), ("VIEWER", False, ("110152",)), ("WS@10.20.0.7", True, ())]),
    # A C-MOVE to the requestor itself: it is the destination.
    (transfer("dicom.dimse.c-move", level="STUDY", move_destination="WS"),
     [("PACS@10.20.0.2", False, ("110153",)), ("WS@10.20.0.7", True, ("110152",))]),
], ids=["c-store", "c-get", "c-move-elsewhere", "c-move-to-itself"])
def test_source_sends_and_destination_receives(event: Event, want: list[tuple[str, bool, tuple[str, ...]]]) -> None:
    moved = to_record(event, "GW-A")
    assert moved is not None and moved.event_id.code == "110104"
    assert roles(moved) == want
    assert roles(begin_record(event, "GW-A", "PID-1")) == want
    if event.details.get("move_destination") == "VIEWER":
        (viewer,) = [p for p in moved.participants if p.user_id == "VIEWER"]
        assert viewer.alternative_user_id == "AETITLES=VIEWER"
