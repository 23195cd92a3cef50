"""Outbound (round 8): Begin Transferring DICOM Instances (PS3.15 A.5.3.5, event ID 110102). The
first transfer (C-STORE, C-MOVE, C-GET) of each patient within one association is preceded, in the
spool, by one Begin Transferring naming that patient, the studies (with their SOP class), the
source and the destination; the per-operation Instances Transferred messages (A.5.3.7) stay. The
events come from the gateway's own association record (records/dicom.py), as serve stores them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from pacsguard.atna.ingest import Sender, frame_event
from pacsguard.atna.message import dicom_xml, schema
from pacsguard.atna.outbound import forwarder as forwarder_module
from pacsguard.atna.outbound.forwarder import Forwarder
from pacsguard.atna.outbound.sender import frame
from pacsguard.atna.outbound.spool import Spool
from pacsguard.dicom import dimse
from pacsguard.dicom.dataset import peek_identifiers
from pacsguard.dicom.dimse import CommandSet
from pacsguard.dicom.events import DimseCommand, DimseDatasetStart
from pacsguard.events.model import Event, Party
from pacsguard.records.dicom import AssociationRecord

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
GET = "1.2.840.10008.5.1.4.1.2.2.3"
PACS = Party("PACS", "10.20.0.2", 104)


def element(group: int, elem: int, value: str, vr: bytes = b"UI") -> bytes:
    """One Explicit VR Little Endian element with a short VR (PS3.5 7.1.2)."""
    raw = value.encode() + b" " * (len(value) % 2)
    return group.to_bytes(2, "little") + elem.to_bytes(2, "little") + vr + len(raw).to_bytes(2, "little") + raw


class Association:
    """One association through the gateway, recorded as the relay records it (AssociationRecord)."""

    def __init__(self, events: list[Event], client_port: int, *, sensor: str | None = None) -> None:
        client = Party("CT01", "10.20.0.9", client_port)
        self.record = AssociationRecord(events.append, component="ids" if sensor else "gateway", client=client,
                                        server=PACS, route=None if sensor else "main", called_ae="PACS",
                                        sensor=sensor)
        self.message_id = 0

    def store(self, patient: str, study: str, *, from_requestor: bool = True) -> None:
        """One C-STORE answered with success; from the acceptor: a C-GET's sub-operation (PS3.4 C.4.3)."""
        self.message_id += 1
        request = CommandSet(command_field=dimse.C_STORE_RQ, message_id=self.message_id,
                             affected_sop_class_uid=CT_IMAGE, command_data_set_type=0x0000)
        self.record.command(DimseCommand(from_requestor, 1, CT_IMAGE, ExplicitVRLittleEndian, request))
        data = element(0x10, 0x20, patient, b"LO") + element(0x20, 0x0D, study)
        self.record.dataset_start(DimseDatasetStart(from_requestor, 1, self.message_id,
                                                    peek_identifiers(data, ExplicitVRLittleEndian, final=True)))
        response = CommandSet(command_field=dimse.C_STORE_RSP, message_id_being_responded_to=self.message_id,
                              status=dimse.STATUS_SUCCESS, command_data_set_type=0x0101)
        self.record.command(DimseCommand(not from_requestor, 1, None, None, response))

    def released(self) -> None:
        self.record.ended("released")


def spooled(spool: Spool) -> list[tuple[str, tuple[str, ...]]]:
    """Each spooled message as (event ID, the patients it names), in spool order; each one checked
    against PS3.15 A.5.1 on the way."""
    out = []
    for _, message in spool.after(0, limit=100_000):
        root = dicom_xml.parse_xml(message)
        assert schema.check(root) == [], message
        event_id = root.find("EventIdentification/EventID")
        assert event_id is not None
        patients = tuple(o.get("ParticipantObjectID", "") for o in root.iter("ParticipantObjectIdentification")
                         if o.get("ParticipantObjectTypeCode") == "1")
        out.append((str(event_id.get("csd-code")), patients))
    return out


def forward_all(tmp_path: Path, events: list[Event]) -> tuple[Forwarder, Spool]:
    spool = Spool(tmp_path / "spool.db")
    forward = Forwarder(spool, "site-a")
    for event in events:
        forward(event)
    return forward, spool


BEGIN, MOVED = "110102", "110104"


def test_one_begin_transferring_per_patient_and_association(tmp_path: Path) -> None:
    events: list[Event] = []
    a, b = Association(events, 40001), Association(events, 40002)
    a.store("PID-1", "1.2.3.1")
    b.store("PID-1", "1.2.3.1")  # another association at the same time: its own Begin Transferring
    a.store("PID-1", "1.2.3.1")
    a.store("PID-2", "1.2.3.2")
    a.store("PID-1", "1.2.3.3")  # the same patient, another study: already begun in this association
    a.released()
    b.released()
    again = Association(events, 40001)  # the same ends, after the release: a new association
    again.store("PID-1", "1.2.3.1")
    again.released()
    _, spool = forward_all(tmp_path, events)
    try:
        assert spooled(spool) == [
            (BEGIN, ("PID-1",)), (MOVED, ("PID-1",)),
            (BEGIN, ("PID-1",)), (MOVED, ("PID-1",)),
            (MOVED, ("PID-1",)),
            (BEGIN, ("PID-2",)), (MOVED, ("PID-2",)),
            (MOVED, ("PID-1",)),
            (BEGIN, ("PID-1",)), (MOVED, ("PID-1",)),
        ]
    finally:
        spool.close()


def test_a_repository_stores_the_begin_transferring_with_its_patient_study_and_roles(tmp_path: Path) -> None:
    events: list[Event] = []
    a = Association(events, 40003)
    a.store("PID-9", "1.2.3.9")
    _, spool = forward_all(tmp_path, events)
    try:
        (_, begin), _ = spool.after(0, limit=10)
    finally:
        spool.close()
    sender = Sender("127.0.0.1", 4000, "tls", "octet-counting", certificate="CN=gateway-a")
    got = frame_event(sender, frame("site-a", 1, begin, "gw").split(b" ", 1)[1])
    assert got.kind == "atna.audit.begin-transferring-instances", got.details.get("problem")
    assert got.patient_ids == ("PID-9",) and got.study_uids == ("1.2.3.9",)
    assert got.details["event_id"]["code"] == "110102" and got.details["action"] == "E"
    (study,) = [o for o in got.details["objects"] if o["id_type"]["code"] == "110180"]
    assert [s["uid"] for s in study["sop_classes"]] == [CT_IMAGE]
    roles = {p["user_id"]: [r["code"] for r in p.get("roles", ())] for p in got.details["participants"]}
    assert roles == {"CT01@10.20.0.9": ["110153"], "PACS@10.20.0.2": ["110152"]}


@pytest.mark.parametrize("level", ["PATIENT", "STUDY"])
def test_a_c_get_and_its_sub_operations_are_one_association(tmp_path: Path, level: str) -> None:
    """A C-GET's C-STOREs travel from the acceptor on the requestor's association (PS3.4 C.4.3):
    their Events name the acceptor as actor, and are still of that association. At STUDY level the
    C-GET's own Event names the patient its sub-operations carried, begun by them, so no Begin
    Transferring follows (getscu through serve once got one of an unknown patient)."""
    from pacsguard.atna.outbound.mapping import association_of

    events: list[Event] = []
    a = Association(events, 40004)
    a.message_id = 10
    request = CommandSet(command_field=dimse.C_GET_RQ, message_id=1, affected_sop_class_uid=GET,
                         command_data_set_type=0x0000)
    a.record.command(DimseCommand(True, 1, GET, ExplicitVRLittleEndian, request))
    key = element(0x10, 0x20, "PID-4", b"LO") if level == "PATIENT" else element(0x20, 0x0D, "1.2.3.4")
    identifier = element(0x08, 0x52, level, b"CS") + key
    a.record.dataset_start(DimseDatasetStart(True, 1, 1, peek_identifiers(identifier, ExplicitVRLittleEndian,
                                                                          final=True)))
    a.store("PID-4", "1.2.3.4", from_requestor=False)
    a.store("PID-4", "1.2.3.4", from_requestor=False)
    response = CommandSet(command_field=dimse.C_GET_RSP, message_id_being_responded_to=1,
                          status=dimse.STATUS_SUCCESS, completed_suboperations=2, failed_suboperations=0,
                          warning_suboperations=0, command_data_set_type=0x0101)
    a.record.command(DimseCommand(False, 1, None, None, response))
    assert [e.kind for e in events] == ["dicom.dimse.c-store", "dicom.dimse.c-store", "dicom.dimse.c-get"]
    assert len({association_of(e) for e in events}) == 1
    _, spool = forward_all(tmp_path, events)
    try:
        ids = [event_id for event_id, _ in spooled(spool)]
    finally:
        spool.close()
    assert ids == [BEGIN, MOVED, MOVED, MOVED]


def test_the_passive_sensor_s_associations_get_theirs_too(tmp_path: Path) -> None:
    events: list[Event] = []
    seen = Association(events, 40005, sensor="span-1")
    seen.store("PID-5", "1.2.3.5")
    seen.store("PID-5", "1.2.3.5")
    relayed = Association(events, 40005)  # the gateway's record of the same ends is another recorder's
    relayed.store("PID-5", "1.2.3.5")
    _, spool = forward_all(tmp_path, events)
    try:
        assert [event_id for event_id, _ in spooled(spool)] == [BEGIN, MOVED, MOVED, BEGIN, MOVED]
    finally:
        spool.close()


def test_a_transfer_naming_no_patient_begins_with_an_unknown_one(tmp_path: Path) -> None:
    move = Event(kind="dicom.dimse.c-move", component="gateway", actor=Party("WS", "10.20.0.7", 40006),
                 target=PACS, study_uids=("1.2.3.6",), sop_instance_count=3,
                 details={"route": "main", "message_id": 3, "sop_class": "1.2.840.10008.5.1.4.1.2.2.2",
                          "status": "0x0000", "level": "STUDY", "move_destination": "WS"})
    other = Event(kind=move.kind, component=move.component, actor=move.actor, target=move.target,
                  study_uids=("1.2.3.7",), sop_instance_count=1, details=move.details)
    _, spool = forward_all(tmp_path, [move, move, other])  # another study of an unknown patient: anyone's
    try:
        assert spooled(spool) == [(BEGIN, ("",)), (MOVED, ("",)), (MOVED, ("",)), (BEGIN, ("",)), (MOVED, ("",))]
    finally:
        spool.close()


def test_what_the_forwarder_remembers_is_bounded(tmp_path: Path, monkeypatch: Any) -> None:
    """At most MAX_ASSOCIATIONS associations, the least recently active forgotten first; at most
    MAX_REMEMBERED patients and studies each. Forgotten: a repeated Begin Transferring, never a
    missing one."""
    monkeypatch.setattr(forwarder_module, "MAX_ASSOCIATIONS", 3)
    monkeypatch.setattr(forwarder_module, "MAX_REMEMBERED", 3)
    events: list[Event] = []
    first = Association(events, 41000)
    first.store("PID-0", "1.2.3")
    others = [Association(events, 41001 + i) for i in range(3)]
    for other in others:
        other.store("PID-0", "1.2.3")
    first.store("PID-0", "1.2.3")  # forgotten: the 3 others were active since
    many = others[-1]
    for patient in ("PID-1", "PID-2", "PID-0"):  # PID-0 was the oldest of 3 patients: forgotten
        many.store(patient, "1.2.3")
    forward, spool = forward_all(tmp_path, events)
    try:
        ids = [event_id for event_id, _ in spooled(spool)]
        assert ids == [BEGIN, MOVED] * 5 + [BEGIN, MOVED] * 3
        assert len(forward._begun) == 3 and all(len(p) <= 3 for p in forward._begun.values())
    finally:
        spool.close()


def test_a_stored_event_with_odd_typed_ends_does_not_stop_the_feed(tmp_path: Path) -> None:
    """An Event read back from the store is not type-checked (Event.from_dict): a port that is a
    list must not make the association key unhashable and the feed's thread die."""
    odd = Event.from_dict({"id": "0" * 32, "time": "2026-12-05T11:00:00+00:00", "severity": "info",
                           "outcome": "success", "kind": "dicom.dimse.c-store", "component": "gateway",
                           "actor": {"ae_title": "CT01", "host": "10.20.0.9", "port": [1, 2]},
                           "target": {"ae_title": "PACS", "host": "10.20.0.2", "port": 104},
                           "patient_ids": ["PID-7"], "study_uids": ["1.2.3"], "sop_instance_count": 1,
                           "details": {"route": ["main"], "message_id": 1, "sop_class": CT_IMAGE}})
    _, spool = forward_all(tmp_path, [odd, odd])
    try:
        assert spooled(spool) == [(BEGIN, ("PID-7",)), (MOVED, ("PID-7",)), (MOVED, ("PID-7",))]
    finally:
        spool.close()
