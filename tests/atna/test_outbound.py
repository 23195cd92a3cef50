"""Outbound: pacsguard's own events as PS3.15 A.5 messages over RFC 5425 TLS to a second pacsguard
(`atna listen`) acting as the external repository, stopped mid-stream and restarted: every message
arrives exactly once, and each passes the A.5.1 check."""

from __future__ import annotations

import base64
import io
import re
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from receiver import Repository, free_port

from pacsguard.atna.dedupe import delivery_of
from pacsguard.atna.ingest import Sender, frame_event
from pacsguard.atna.message import codes, dicom_xml, schema
from pacsguard.atna.message.build import to_xml
from pacsguard.atna.outbound.forwarder import Forwarder
from pacsguard.atna.outbound.mapping import to_record
from pacsguard.atna.outbound.sender import OutboundSender, frame
from pacsguard.atna.outbound.spool import Spool
from pacsguard.dicom import dimse
from pacsguard.dicom.dataset import peek_identifiers
from pacsguard.dicom.dimse import CommandSet
from pacsguard.dicom.events import DimseCommand, DimseDatasetStart
from pacsguard.events.model import Event, Outcome, Party, Severity
from pacsguard.records.dicom import AssociationRecord
from pacsguard.store import EventQuery, EventStore
from pacsguard.tls import client_context, make_ca, make_cert

DEADLINE = 60.0
CT, PACS = Party("CT01", "10.20.0.9", 104), Party("PACS", "10.20.0.2", 104)


def own_events(n: int) -> list[Event]:
    """What the gateway records when a CT stores n images of one patient."""
    return [Event(kind="dicom.dimse.c-store", component="gateway", actor=CT, target=PACS,
                  patient_ids=("PID-7",), study_uids=("1.2.3.4.5",), sop_instance_count=1,
                  details={"route": "main", "message_id": i, "sop_class": "1.2.840.10008.5.1.4.1.1.2",
                           "duration_ms": 1.0, "status": "0x0000"}) for i in range(1, n + 1)]


def test_every_mapped_kind_passes_the_a51_check() -> None:
    events = [
        own_events(1)[0],
        Event(kind="dicom.dimse.c-find", component="gateway", actor=CT, target=PACS,
              details={"route": "main", "message_id": 1, "sop_class": "1.2.840.10008.5.1.4.1.2.2.1",
                       "duration_ms": 2.0, "status": "0x0000", "query": {"PatientName": "DOE*"}}),
        Event(kind="dicom.association.rejected", component="gateway", actor=CT, severity=Severity.WARNING,
              outcome=Outcome.MINOR_FAILURE, details={"route": "main"}),
        Event(kind="ids.alert.dicom-brute", component="ids", actor=Party(host="10.66.0.13"),
              severity=Severity.WARNING, details={}),
        Event(kind="gateway.quarantine.added", component="gateway", actor=Party(user="admin"),
              details={"target": "10.66.0.13", "reason": "scan"}),
        Event(kind="pacsguard.service.started", component="serve", details={"config": "x"}),
        Event(kind="console.login.succeeded", component="console", actor=Party(user="admin", host="10.1.1.1")),
    ]
    expected = ["110104", "110112", "110113", "110113", "110113", "110100", "110114"]
    records = [to_record(e, "site-a") for e in events]
    assert [r.event_id.code if r else None for r in records] == expected
    for r in records:
        assert r is not None
        assert schema.check(dicom_xml.parse_xml(to_xml(r))) == [], r.event_id
    assert to_record(Event(kind="dicom.association.released", component="gateway"), "site-a") is None


FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve - FIND
MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
GET = "1.2.840.10008.5.1.4.1.2.2.3"


def message_objects(record: Any) -> list[dict[str, Any]]:
    """The participant objects of a record as a pacsguard repository stores them (its reader's JSON)."""
    framed = frame("site-a", 1, to_xml(record), "gw")
    stored = frame_event(Sender("127.0.0.1", 4000, "tls", "octet-counting"), framed.split(b" ", 1)[1])
    assert stored.kind == "atna.audit.instances-transferred" or stored.kind == "atna.audit.query", stored.kind
    objects: list[dict[str, Any]] = stored.details["objects"]
    return objects


@pytest.mark.parametrize("event", [
    # A de-identified CT: no Patient ID in the object, so none in the event.
    Event(kind="dicom.dimse.c-store", component="gateway", actor=CT, target=PACS, study_uids=("1.2.3",),
          sop_instance_count=1, details={"route": "main", "message_id": 1, "sop_class": "1.2.840.10008.5.1.4.1.1.2",
                                         "duration_ms": 1.0, "status": "0x0000"}),
    # A malformed object: neither Patient ID nor Study Instance UID.
    Event(kind="dicom.dimse.c-store", component="gateway", actor=CT, target=PACS, sop_instance_count=1,
          details={"route": "main", "message_id": 2, "sop_class": "1.2.840.10008.5.1.4.1.1.2", "duration_ms": 1.0,
                   "status": "0x0000"}),
    # A C-MOVE at STUDY level names the study, not the patient.
    Event(kind="dicom.dimse.c-move", component="gateway", actor=PACS, target=CT, study_uids=("1.2.3",),
          sop_instance_count=3, details={"route": "main", "message_id": 3, "sop_class": MOVE, "duration_ms": 1.0,
                                         "status": "0x0000", "level": "STUDY",
                                         "query": {"StudyInstanceUID": "1.2.3"}, "move_destination": "CT01"}),
    # A C-GET at PATIENT level names the patient, not the studies.
    Event(kind="dicom.dimse.c-get", component="gateway", actor=PACS, target=CT, patient_ids=("PID-7",),
          sop_instance_count=2, details={"route": "main", "message_id": 4, "sop_class": GET, "duration_ms": 1.0,
                                         "status": "0x0000", "level": "PATIENT", "query": {"PatientID": "PID-7"}}),
], ids=["c-store-no-patient", "c-store-no-patient-no-study", "c-move-study-level", "c-get-patient-level"])
def test_a_transfer_naming_no_patient_or_study_is_still_audited(event: Event) -> None:
    """PS3.15 A.5.3.7 requires the Patient and the Studies participant objects, so a transfer whose
    patient or study is unknown names them with an empty ParticipantObjectID. Once, it was not sent."""
    record = to_record(event, "site-a")
    assert record is not None and record.event_id.code == "110104"
    assert record.action == ("C" if event.kind.endswith("c-store") else "R")
    assert schema.check(dicom_xml.parse_xml(to_xml(record))) == []
    patients = [o.object_id for o in record.objects if o.id_type.code == "2"]
    studies = [o.object_id for o in record.objects if o.id_type.code == "110180"]
    assert patients == (list(event.patient_ids) or [""])
    assert studies == (list(event.study_uids) or [""])
    # A pacsguard repository stores the message without inventing a patient or a study for it.
    objects = message_objects(record)
    assert [o["id"] for o in objects if o["id_type"]["code"] == "2"] == patients


def find_event(query: dict[str, str], level: str = "STUDY") -> Event:
    return Event(kind="dicom.dimse.c-find", component="gateway", actor=CT, target=PACS,
                 details={"route": "main", "message_id": 1, "sop_class": FIND, "duration_ms": 2.0,
                          "status": "0x0000", "level": level, "query": query})


def query_of(objects: list[dict[str, Any]]) -> Dataset:
    """The identifier a Query message carries (PS3.15 A.5.3.10): the SOP Queried object's
    ParticipantObjectQuery, read in the transfer syntax its TransferSyntax detail names."""
    (queried,) = [o for o in objects if o["id_type"]["code"] == "110181"]
    (syntax,) = [base64.b64decode(d["value"]).decode() for d in queried["details"] if d["type"] == "TransferSyntax"]
    assert syntax == ExplicitVRLittleEndian
    return read_dataset(io.BytesIO(base64.b64decode(queried["query"])), is_implicit_VR=False, is_little_endian=True)


def test_the_query_is_the_identifier_as_a_dicom_data_set() -> None:
    """ParticipantObjectQuery holds the C-FIND identifier as a DICOM data set (Explicit VR Little
    Endian), with a TransferSyntax ParticipantObjectDetail (PS3.15 A.5.3.10). Once, it was JSON
    of the recorded keys, with no TransferSyntax."""
    event = find_event({"PatientName": "MÜLLER^JÖRG*", "PatientID": "", "StudyInstanceUID": "",
                        "AccessionNumber": "A-17", "NotADicomKeyword": "x"})
    record = to_record(event, "site-a")
    assert record is not None and record.event_id.code == "110112"
    xml = to_xml(record)
    assert schema.check(dicom_xml.parse_xml(xml)) == []
    assert re.search(rb'<ParticipantObjectDetail type="TransferSyntax" value="MS4yLjg0MC4xMDAwOC4xLjIuMQ=="', xml)
    ds = query_of(message_objects(record))
    # The keys pydicom knows, the level, and the character set the non-ASCII name needs, in tag
    # order; the unknown keyword is left out.
    assert [e.keyword for e in ds] == ["SpecificCharacterSet", "AccessionNumber", "QueryRetrieveLevel",
                                       "PatientName", "PatientID", "StudyInstanceUID"]
    assert (ds.SpecificCharacterSet, ds.QueryRetrieveLevel, ds.AccessionNumber, str(ds.PatientName),
            ds.PatientID, ds.StudyInstanceUID) == ("ISO_IR 192", "STUDY", "A-17", "MÜLLER^JÖRG*", "", "")
    # Without any non-ASCII value, no character set is added.
    plain = to_record(find_event({"PatientID": "PID-7"}, level="PATIENT"), "site-a")
    assert plain is not None
    assert [e.keyword for e in query_of(message_objects(plain))] == ["QueryRetrieveLevel", "PatientID"]


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    base = tmp_path / "pki"
    ca, ca_key = make_ca(base, "ATNA Test CA", 2)
    cert, key = make_cert(base, "localhost", ca, ca_key, hosts=["localhost", "127.0.0.1"], server=True, days=1)
    client, client_key = make_cert(base, "gateway-a", ca, ca_key, hosts=["gateway-a"], client=True, days=1)
    return {"ca": ca, "cert": cert, "key": key, "client": client, "client_key": client_key}


@pytest.mark.parametrize("readers", [0, 2])
def test_exactly_once_across_the_repository_stopping(tmp_path: Path, pki: dict[str, Path], readers: int) -> None:
    port = free_port()
    repo = Repository(tmp_path, port, pki, readers=readers)
    repo.start()
    spool = Spool(tmp_path / "spool.db")
    delivered: list[tuple[int, int, bool]] = []
    context = client_context(ca_file=pki["ca"], cert_file=pki["client"], key_file=pki["client_key"])
    sender = OutboundSender(spool, "site-a", "127.0.0.1", port, context, server_name="localhost", retry=0.2,
                            confirm_after=0.5, on_delivered=lambda a, b, r: delivered.append((a, b, r)))
    forward = Forwarder(spool, "site-a")
    events = own_events(400)
    sent = len(events) + 1  # and, first, the Begin Transferring of their patient (PS3.15 A.5.3.5)
    sender.start()
    try:
        def produce() -> None:
            for i, ev in enumerate(events):
                forward(ev)
                if i % 5 == 4:
                    time.sleep(0.05)

        producer = threading.Thread(target=produce)
        producer.start()
        end = time.monotonic() + DEADLINE
        while spool.delivered() < 60 and time.monotonic() < end:
            time.sleep(0.02)
        repo.stop()  # mid-stream: the producer goes on, the spool holds what cannot be sent
        time.sleep(1.0)
        repo.start()
        producer.join(DEADLINE)
        while spool.delivered() < sent and time.monotonic() < end:
            time.sleep(0.05)
        assert spool.delivered() == sent and spool.pending() == 0
    finally:
        sender.stop()
        spool.close()
        repo.stop()
    assert sender.connections >= 2 and any(r for _, _, r in delivered)
    store = EventStore.open(str(repo.store))
    try:
        got = [s.event for s in store.search(EventQuery(kind="atna.audit.*", limit=None))]
    finally:
        store.close()
    seqs = [delivery_of(e.details["syslog"].get("structured_data")) for e in got]
    assert sorted(s[1] for s in seqs if s) == list(range(1, sent + 1))  # each once, none lost
    assert got[0].kind == "atna.audit.begin-transferring-instances" and got[0].patient_ids == ("PID-7",)
    first = got[1]
    assert first.kind == "atna.audit.instances-transferred" and first.patient_ids == ("PID-7",)
    assert first.details["sender"]["certificate"].endswith("CN=gateway-a") or "gateway-a" in \
        first.details["sender"]["certificate"]
    xml = first.details["raw"].split("] ", 1)[1].encode()
    assert schema.check(dicom_xml.parse_xml(xml)) == []
    assert first.details["event_id"]["meaning"] == codes.EVENT_IDS["110104"][0]
    assert first.time <= datetime.now(timezone.utc)


def test_the_repository_drops_what_it_already_stored(tmp_path: Path) -> None:
    from pacsguard.atna.dedupe import Deduplicator
    from pacsguard.atna.ingest import Sender, frame_event
    from pacsguard.atna.outbound.sender import frame

    message = to_xml(to_record(own_events(1)[0], "site-a"))  # type: ignore[arg-type]
    # Only an authenticated sender's resends are dropped (tests/atna/test_outside_round4_feed.py).
    sender = Sender("127.0.0.1", 4000, "tls", "octet-counting", certificate="CN=gateway-a")

    def received(origin: str, seq: int) -> Event:
        framed = frame(origin, seq, message, "gw")
        return frame_event(sender, framed.split(b" ", 1)[1])

    store = EventStore.open(str(tmp_path / "r.db"), create=True)
    store.append([received("site-a", 1), received("site-a", 2), received("site-b", 7)])
    records: list[Event] = []
    dedupe = Deduplicator(records.append)
    dedupe.learn(store)  # a restarted repository: it learns the highest seqs from its store
    verdicts = [dedupe.fresh(received(o, s)) for o, s in
                [("site-a", 2), ("site-a", 3), ("site-a", 3), ("site-a", 1), ("site-b", 7), ("site-b", 8),
                 ("site-c", 1)]]
    store.close()
    assert verdicts == [False, True, False, False, False, True, True]
    assert dedupe.dropped == 4
    # One record per resend (site-a's run of two, then site-b's), naming the sender and the origin.
    assert [(r.kind, r.details["origin"], r.details["seq"]) for r in records] == [
        ("atna.delivery.duplicate", "site-a", 2), ("atna.delivery.duplicate", "site-a", 3),
        ("atna.delivery.duplicate", "site-b", 7)]


def test_another_sender_naming_an_origin_cannot_suppress_it(tmp_path: Path) -> None:
    """An origin is compared only with what the same sender (certificate subject, else address)
    delivered. Once, any sender's datagram naming the origin with a huge seq dropped all of the real
    origin's messages, without a trace."""
    from pacsguard.atna.dedupe import Deduplicator
    from pacsguard.atna.ingest import Sender, frame_event
    from pacsguard.atna.outbound.sender import frame

    message = to_xml(to_record(own_events(1)[0], "site-a"))  # type: ignore[arg-type]
    real = Sender("10.0.0.5", 4000, "tls", "octet-counting", certificate="CN=gateway-a")
    forger = Sender("10.0.0.66", 514, "udp")

    def received(sender: Sender, seq: int) -> Event:
        return frame_event(sender, frame("site-a", seq, message, "gw").split(b" ", 1)[1])

    records: list[Event] = []
    dedupe = Deduplicator(records.append)
    assert dedupe.fresh(received(forger, 10**12))
    assert [dedupe.fresh(received(real, s)) for s in (1, 2, 3)] == [True, True, True]
    # Nor is anything from an unauthenticated sender ever dropped: the forger's datagram is stored too.
    assert dedupe.fresh(received(forger, 5)) and records == []
    assert delivery_of('[pacsguard@32473 origin="a\\"b\\]" seq="5"]') == ('a"b]', 5)


def gateway_find_event(identifier: Dataset) -> Event:
    """The c-find Event the gateway's association record makes of a C-FIND carrying ``identifier``
    (encoded Implicit VR Little Endian, as most SCUs send it) and answered with success."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, identifier)
    events: list[Event] = []
    record = AssociationRecord(events.append, component="gateway", client=CT, server=PACS, route="main",
                               called_ae="PACSGUARD")
    request = CommandSet(command_field=dimse.C_FIND_RQ, message_id=5, affected_sop_class_uid=FIND,
                         command_data_set_type=0x0000)  # type: ignore[call-arg]
    record.command(DimseCommand(True, 1, FIND, ImplicitVRLittleEndian, request))
    record.dataset_start(DimseDatasetStart(True, 1, 5, peek_identifiers(fp.getvalue(), ImplicitVRLittleEndian,
                                                                        final=True)))
    response = CommandSet(command_field=dimse.C_FIND_RSP, message_id_being_responded_to=5,
                          status=dimse.STATUS_SUCCESS, command_data_set_type=0x0101)  # type: ignore[call-arg]
    record.command(DimseCommand(False, 1, None, None, response))
    (find,) = events
    assert find.kind == "dicom.dimse.c-find"
    return find


def test_a_real_repository_stores_the_query_as_a_data_set(tmp_path: Path, pki: dict[str, Path]) -> None:
    """A gateway C-FIND and a C-STORE without a patient, mapped, spooled and sent over mutual TLS to
    `pacsguard atna listen`: the stored Query's ParticipantObjectQuery decodes as a DICOM data set
    holding the keys the gateway recorded, with their values; the transfer is stored with no patient."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientName = "DOE^J*"
    identifier.PatientID = ""
    identifier.StudyInstanceUID = ""
    identifier.AccessionNumber = "A-17"
    identifier.StudyDate = "20240101-"  # not a key the gateway records
    find = gateway_find_event(identifier)
    recorded = {**find.details["query"], "QueryRetrieveLevel": find.details["level"]}
    assert recorded == {"QueryRetrieveLevel": "STUDY", "PatientName": "DOE^J*", "PatientID": "",
                        "StudyInstanceUID": "", "AccessionNumber": "A-17"}
    anonymous = Event(kind="dicom.dimse.c-store", component="gateway", actor=CT, target=PACS,
                      study_uids=("1.2.3",), sop_instance_count=1,
                      details={"route": "main", "message_id": 6, "sop_class": "1.2.840.10008.5.1.4.1.1.2",
                               "duration_ms": 1.0, "status": "0x0000"})
    port = free_port()
    repo = Repository(tmp_path, port, pki)
    repo.start()
    spool = Spool(tmp_path / "spool.db")
    context = client_context(ca_file=pki["ca"], cert_file=pki["client"], key_file=pki["client_key"])
    sender = OutboundSender(spool, "site-a", "127.0.0.1", port, context, server_name="localhost", retry=0.2,
                            confirm_after=0.3)
    forward = Forwarder(spool, "site-a")
    sender.start()
    try:
        forward(find)
        forward(anonymous)
        end = time.monotonic() + DEADLINE
        # the transfer's Begin Transferring (PS3.15 A.5.3.5) too: 3
        while spool.delivered() < 3 and time.monotonic() < end:
            time.sleep(0.05)
        assert spool.delivered() == 3
    finally:
        sender.stop()
        spool.close()
        repo.stop()
    store = EventStore.open(str(repo.store))
    try:
        (begin,) = [s.event for s in store.search(EventQuery(kind="atna.audit.begin-transferring-instances"))]
        assert begin.patient_ids == () and begin.study_uids == ("1.2.3",)
        (query,) = [s.event for s in store.search(EventQuery(kind="atna.audit.query"))]
        (transfer,) = [s.event for s in store.search(EventQuery(kind="atna.audit.instances-transferred"))]
    finally:
        store.close()
    ds = query_of(query.details["objects"])
    assert {e.keyword: e.value for e in ds} == recorded
    assert all(identifier[keyword].value == value for keyword, value in recorded.items())
    assert transfer.patient_ids == () and transfer.study_uids == ("1.2.3",)
    assert [o["id"] for o in transfer.details["objects"] if o["id_type"]["code"] == "2"] == [""]
    for event in (query, transfer):
        assert schema.check(dicom_xml.parse_xml(event.details["raw"].split("] ", 1)[1].encode())) == []
