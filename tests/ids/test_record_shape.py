"""One record per DICOM association (DESIGN.md, "Seams"): the same PDU bytes relayed by the gateway
(the in-memory relay of tests/gateway/playbook.py) and captured by the passive sensor (a crafted
capture read through the capture layer) give the same Events: the same kinds in the same order,
the same patients and studies, the same details keys and values, except what only one of them
knows (the sensor's `capture`, `flow` and `sensor`, the gateway's `route`) and durations."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gateway"))

from capture_craft import Flow as TcpFlow
from capture_craft import eth_frames, pcap_bytes
from playbook import (
    CT_STORAGE,
    STUDY_FIND,
    VERIFICATION,
    Playbook,
    associate_ac,
    associate_rq,
    echo_rq,
    request,
    response,
    route_config,
)

from pacsguard.dicom import dimse
from pacsguard.dicom import pdu as P
from pacsguard.events import Event
from pacsguard.ids import passive

Exchange = list[tuple[bool, bytes]]  # (from the client, PDUs)
ONE_SIDED = {"capture", "flow", "sensor", "route"}
DURATIONS = {"duration_ms"}


def implicit_le(**attrs: str) -> bytes:
    """A data set in Implicit VR Little Endian, the only transfer syntax the playbook proposes."""
    ds = Dataset()
    for k, v in attrs.items():
        setattr(ds, k, v)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    return fp.getvalue()


def store(message_id: int, patient: str, study: str) -> tuple[bytes, bytes]:
    uid = f"1.2.826.0.1.3680043.2.1125.{message_id}"
    command = dimse.CommandSet(dimse.C_STORE_RQ, message_id=message_id, affected_sop_class_uid=CT_STORAGE,
                               affected_sop_instance_uid=uid, priority=0, command_data_set_type=0)
    data = implicit_le(SOPClassUID=CT_STORAGE, SOPInstanceUID=uid, PatientID=patient, StudyInstanceUID=study)
    rq = request(command, data + b"\x00" * 30000, context_id=3)
    return rq, response(rq, context_id=3)


def wildcard_find(message_id: int, matches: list[tuple[str, str]]) -> tuple[bytes, list[bytes]]:
    """A C-FIND with `PatientID=*` (PS3.4 C.2.2.2.4) and the upstream's matches, then success."""
    command = dimse.CommandSet(dimse.C_FIND_RQ, message_id=message_id, affected_sop_class_uid=STUDY_FIND,
                               priority=0, command_data_set_type=0)
    rq = request(command, implicit_le(QueryRetrieveLevel="STUDY", PatientID="*", StudyInstanceUID=""), context_id=5)
    answers = []
    for patient, study in matches:
        pending = dimse.CommandSet(dimse.C_FIND_RSP, message_id_being_responded_to=message_id,
                                   affected_sop_class_uid=STUDY_FIND, status=0xFF00, command_data_set_type=0)
        answers.append(request(pending, implicit_le(QueryRetrieveLevel="STUDY", PatientID=patient,
                                                    StudyInstanceUID=study), context_id=5))
    return rq, answers + [response(rq, context_id=5)]


def opening() -> Exchange:
    return [(True, associate_rq("WS1", "PACSGUARD", VERIFICATION, CT_STORAGE, STUDY_FIND)),
            (False, associate_ac(0, 0, 0))]


def released_exchange() -> Exchange:
    echo = echo_rq(1)
    st_rq, st_rsp = store(2, "PAT1", "1.2.3.1")
    find_rq, find_rsps = wildcard_find(3, [("PAT_A", "1.2.3.7"), ("PAT_B", "1.2.3.8")])
    return [*opening(), (True, echo), (False, response(echo)), (True, st_rq), (False, st_rsp),
            (True, find_rq), *((False, r) for r in find_rsps),
            (True, P.encode_release_rq()), (False, P.encode_release_rp())]


def aborted_exchange() -> Exchange:
    st_rq, _ = store(1, "PAT9", "1.2.3.9")
    return [*opening(), (True, st_rq), (True, P.encode_abort(0, 0))]


def rejected_exchange() -> Exchange:
    return [(True, associate_rq("WS1", "PACSGUARD", VERIFICATION)), (False, P.encode_associate_rj(1, 1, 7))]


def relayed(exchange: Exchange) -> list[Event]:
    pb = Playbook(route_config())

    async def run() -> None:
        pb.connect()
        try:
            for from_client, pdus in exchange:
                await (pb.client(pdus) if from_client else pb.upstream(pdus))
        finally:
            pb.close()

    asyncio.run(run())
    return [e for e in pb.events if e.kind.startswith("dicom.")]


def captured(exchange: Exchange) -> list[Event]:
    tcp = TcpFlow(client="10.1.2.3", server="10.9.8.7", cport=40000, sport=11112, ts=1_700_000_000_000_000)
    pkts = tcp.handshake()
    for from_client, pdus in exchange:
        pkts += tcp.send(from_client, pdus, 1460)
    pkts += tcp.fin()
    out: list[Event] = []
    passive.read(pcap_bytes(eth_frames(pkts)), engine=passive.build_engine(), publish=out.append)
    return [e for e in out if e.kind.startswith("dicom.")]


def shape(event: Event) -> dict[str, Any]:
    """What a SIEM reads the same whoever recorded it."""
    details = {k: v for k, v in event.details.items() if k not in ONE_SIDED | DURATIONS}
    return {"kind": event.kind, "severity": event.severity, "outcome": event.outcome, "message": event.message,
            "patient_ids": event.patient_ids, "study_uids": event.study_uids,
            "sop_instance_count": event.sop_instance_count, "actor_ae": event.actor.ae_title, "details": details}


@pytest.mark.parametrize("exchange", [released_exchange, aborted_exchange, rejected_exchange])
def test_relayed_and_captured_associations_have_one_shape(exchange) -> None:
    gateway, sensor = relayed(exchange()), captured(exchange())
    assert [e.kind for e in sensor] == [e.kind for e in gateway]
    for g, s in zip(gateway, sensor, strict=True):
        assert (g.component, s.component) == ("gateway", "ids")
        assert s.details["sensor"] == "passive" and s.details["flow"] and s.details["route"] is None
        assert set(s.details) - set(g.details) <= ONE_SIDED and set(g.details) - set(s.details) <= ONE_SIDED
        assert shape(s) == shape(g)
    assert "capture" in sensor[-1].details and all("capture" not in e.details for e in sensor[:-1])


def test_released_exchange_names_only_disclosed_patients() -> None:
    """A wildcard C-FIND captured passively names the patients of its matches, never `*`."""
    sensor = captured(released_exchange())
    assert [e.kind for e in sensor] == ["dicom.association.requested", "dicom.association.accepted",
                                        "dicom.dimse.c-echo", "dicom.dimse.c-store", "dicom.dimse.c-find",
                                        "dicom.association.released"]
    find = sensor[4]
    assert find.patient_ids == ("PAT_A", "PAT_B") and find.study_uids == ("1.2.3.7", "1.2.3.8")
    assert find.details["query"]["PatientID"] == "*" and find.details["responses"] == 2
    assert sensor[3].patient_ids == ("PAT1",) and sensor[3].sop_instance_count == 1
    assert all(not e.patient_ids for e in sensor if e.kind.startswith("dicom.association."))


def test_abort_cuts_off_the_request_in_flight_in_both() -> None:
    for events in (relayed(aborted_exchange()), captured(aborted_exchange())):
        cut = [e for e in events if e.kind == "dicom.dimse.c-store"]
        assert len(cut) == 1 and cut[0].details["decision"] == "aborted" and cut[0].patient_ids == ("PAT9",)
        assert events[-1].details["by"] == "client"
