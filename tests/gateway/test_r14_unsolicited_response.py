"""A response the client (the association requestor) sends that answers no request of the PACS
(PS3.7 9.1, 9.3: a response answers an outstanding request of the other side): refused as the
`unsolicited-response` protocol deviation (docs/gateway.md "Protocol deviations"): A-ABORT to both
legs, `dicom.protocol.violation` naming the command and the Message ID, the IDS's
`dicom-protocol-state-violation` rule told, and nothing forwarded. A client's C-STORE-RSP that
answers a C-GET sub-operation of the PACS is an answer, and passes.

The in-memory relay first (playbook), then a real `pacsguard serve` with raw clients on sockets, a
recording upstream that shows what reached the PACS, and pynetdicom C-ECHO, C-STORE and C-GET on
another association."""

from __future__ import annotations

import socket
import struct
from typing import Any, Iterator

import pytest
from gateway_under_test import route
from playbook import CT_STORAGE, MAX_PDU, VERIFICATION, Playbook, play, request, route_config, split
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)
from pynetdicom.sop_class import Verification as VerificationClass  # type: ignore[attr-defined]
from test_bad_input import GATEWAY_ABORT, LOCALHOST, RECORDER_AE, RecordingUpstream, associate_rq, read_pdu

from dicom_corpus import el_implicit
from pacsguard.dicom import dimse
from pacsguard.dicom import events as V
from pacsguard.dicom import pdu as P
from pacsguard.gateway.violations import VIOLATIONS, Handling
from peers.dcmtk import free_port

pytestmark = pytest.mark.timeout(60)

STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
CODE = V.VIOLATION_UNSOLICITED_RESPONSE


def _command(**fields: Any) -> bytes:
    return dimse.encode_command_set(dimse.CommandSet(**fields))


def find_rsp_pending(context_id: int = 1) -> bytes:
    """The outside tester's C-FIND-RSP (Pending) answering Message ID 42, with a patient's data set."""
    command = _command(command_field=dimse.C_FIND_RSP, affected_sop_class_uid=VERIFICATION,
                       message_id_being_responded_to=42, command_data_set_type=0x0000, status=0xFF00)
    data = el_implicit(0x00100010, b"EVIL^PATIENT") + el_implicit(0x00100020, b"X666")
    return b"".join(P.encode_dimse_message(context_id, command, data, MAX_PDU))


def store_rsp(message_id: int = 9, context_id: int = 1) -> bytes:
    """A C-STORE-RSP (Success) answering *message_id*."""
    command = _command(command_field=dimse.C_STORE_RSP, affected_sop_class_uid=VERIFICATION,
                       message_id_being_responded_to=message_id, command_data_set_type=0x0101, status=0,
                       affected_sop_instance_uid="1.2.3")
    return b"".join(P.encode_dimse_message(context_id, command, None, MAX_PDU))


def echo_rsp(message_id: int = 1, context_id: int = 1) -> bytes:
    command = _command(command_field=dimse.C_ECHO_RSP, affected_sop_class_uid=VERIFICATION,
                       message_id_being_responded_to=message_id, command_data_set_type=0x0101, status=0)
    return b"".join(P.encode_dimse_message(context_id, command, None, MAX_PDU))


HOSTILE = {
    "C-FIND-RSP": (find_rsp_pending(), 42),
    "C-STORE-RSP": (store_rsp(9), 9),
    "C-ECHO-RSP": (echo_rsp(1), 1),
}


def test_the_code_aborts_in_the_table() -> None:
    assert VIOLATIONS[CODE].handling is Handling.ABORT


# --- the in-memory relay ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_an_unsolicited_response_is_aborted_recorded_and_never_forwarded(name: str) -> None:
    frames, message_id = HOSTILE[name]

    async def scenario(pb: Playbook) -> None:
        await pb.associate(VERIFICATION)
        await pb.client(frames)

    pb = play(route_config(), scenario)
    violation, = [e for e in pb.events if e.kind == "dicom.protocol.violation"]
    assert violation.details["code"] == CODE and violation.details["from"] == "client"
    assert f"{name} answers Message ID {message_id}" in violation.message, violation.message
    assert pb.to_client()[-1].name == "A-ABORT"
    assert [s.name for s in pb.to_upstream()][-1:] == ["A-ABORT"]
    assert "P-DATA-TF" not in [s.name for s in pb.to_upstream()]
    aborted = [e for e in pb.events if e.kind == "dicom.association.aborted"]
    assert aborted and aborted[-1].details["cause"] == "protocol"
    assert not [e for e in pb.events if e.kind.startswith("dicom.dimse.")]


def test_a_response_of_another_command_under_the_pacs_message_id_is_refused() -> None:
    """The PACS's C-STORE-RQ 5 is outstanding: a C-ECHO-RSP answering 5 is no answer to it."""
    sub = request(dimse.CommandSet(dimse.C_STORE_RQ, message_id=5, affected_sop_class_uid=CT_STORAGE,
                                   affected_sop_instance_uid="1.2.3.4", priority=0, command_data_set_type=0),
                  el_implicit(0x00080018, b"1.2.3.4\x00"))

    async def scenario(pb: Playbook) -> None:
        await pb.associate(CT_STORAGE)
        await pb.upstream(sub)
        await pb.client(echo_rsp(5))

    pb = play(route_config(), scenario)
    violation, = [e for e in pb.events if e.kind == "dicom.protocol.violation"]
    assert violation.details["code"] == CODE
    assert "C-ECHO-RSP answers Message ID 5" in violation.message and "C-STORE-RQ" in violation.message
    assert "P-DATA-TF" not in [s.name for s in pb.to_upstream()]


def test_the_answer_to_a_request_of_the_pacs_passes() -> None:
    """A C-GET's sub-operation (PS3.4 C.4.3): the PACS's C-STORE-RQ, the client's C-STORE-RSP."""
    sub = request(dimse.CommandSet(dimse.C_STORE_RQ, message_id=5, affected_sop_class_uid=CT_STORAGE,
                                   affected_sop_instance_uid="1.2.3.4", priority=0, command_data_set_type=0),
                  el_implicit(0x00080018, b"1.2.3.4\x00"))
    answer = store_rsp(5)

    async def scenario(pb: Playbook) -> None:
        await pb.associate(CT_STORAGE)
        await pb.upstream(sub)
        await pb.client(answer)

    pb = play(route_config(), scenario)
    assert not [e for e in pb.events if e.kind == "dicom.protocol.violation"], [e.message for e in pb.events]
    assert split(bytes(pb.upstream_wire.out))[-1] == answer
    assert pb.relay is not None and pb.relay.state == "established"


# --- a real gateway, raw clients on sockets -----------------------------------------------------


class Pacs:
    """pynetdicom as the PACS: C-ECHO, CT storage, and CT served by C-GET."""

    def __init__(self) -> None:
        self.port = free_port()
        self.stored: list[str] = []
        self.ct = dcmread(get_testdata_file("CT_small.dcm"))
        ae = AE(ae_title="PYPACS")
        ae.add_supported_context(VerificationClass)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
        # Both roles: the modality stores to it (C-STORE), and it stores to the modality (C-GET).
        ae.add_supported_context(CTImageStorage, scu_role=True, scp_role=True)
        self.server = ae.start_server((LOCALHOST, self.port), block=False, evt_handlers=[
            (evt.EVT_C_GET, self._get), (evt.EVT_C_STORE, self._store)])

    def _get(self, event: Any) -> Iterator[Any]:
        yield 1
        yield 0xFF00, self.ct

    def _store(self, event: Any) -> int:
        self.stored.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def upstreams() -> Iterator[tuple[RecordingUpstream, Pacs]]:
    recorder, pacs = RecordingUpstream(), Pacs()
    yield recorder, pacs
    recorder.close()
    pacs.close()


def p_data_received(raw: bytes) -> list[int]:
    """The type of each PDU in *raw* (what the recording upstream received)."""
    types, pos = [], 0
    while pos + 6 <= len(raw):
        types.append(raw[pos])
        pos += 6 + struct.unpack(">I", raw[pos + 2:pos + 6])[0]
    return types


def test_a_real_client_sending_unsolicited_responses_is_aborted_and_others_still_work(gateway, upstreams) -> None:
    recorder, pacs = upstreams
    gw = gateway(route("rec", recorder.port, upstream_ae=RECORDER_AE),
                 route("pacs", pacs.port, upstream_ae="PYPACS"))
    for n, (name, (frames, message_id)) in enumerate(sorted(HOSTILE.items())):
        calling = f"EVIL{n}"
        with socket.create_connection((LOCALHOST, gw.port("rec")), timeout=5) as sock:
            sock.sendall(associate_rq(calling, ((1, VERIFICATION), (3, STUDY_FIND))))
            ac = read_pdu(sock)
            assert ac is not None and ac[0] == P.PDU_ASSOCIATE_AC
            sock.sendall(frames)
            if name == "C-FIND-RSP":
                sock.sendall(store_rsp(9))  # as the outside tester did: never reached
            answers: list[bytes] = []
            sock.settimeout(5)
            while (frame := read_pdu(sock)) is not None:
                answers.append(frame)
        assert answers == [GATEWAY_ABORT], answers
        violation, = gw.wait_for("dicom.protocol.violation", where=lambda e, c=calling: e.actor.ae_title == c)
        assert violation.details["code"] == CODE and violation.details["from"] == "client"
        assert f"{name} answers Message ID {message_id}" in violation.message, violation.message
        aborted, = gw.wait_for("dicom.association.aborted", where=lambda e, c=calling: e.actor.ae_title == c)
        assert aborted.details["cause"] == "protocol" and aborted.details["by"] == "gateway"
        # The PACS got the A-ASSOCIATE-RQ and the gateway's A-ABORT: no P-DATA-TF at all.
        leg = recorder.by_calling_ae(calling)
        assert leg.closed.wait(5)
        assert p_data_received(bytes(leg.received)) == [P.PDU_ASSOCIATE_RQ, P.PDU_ABORT]
        assert b"EVIL^PATIENT" not in leg.received
    assert not [e for e in gw.events() if e.kind.startswith("dicom.dimse.") and e.details.get("route") == "rec"]
    # The inline IDS heard of each as of any state violation.
    alerts = gw.wait_for("ids.alert.dicom-protocol-state-violation", count=len(HOSTILE))
    assert {a.details["observation"]["code"] for a in alerts} == {CODE}, [a.details for a in alerts]

    # Another association, on the other route: C-ECHO, C-STORE and C-GET (whose sub-operation the
    # modality answers with a C-STORE-RSP to the PACS's C-STORE-RQ) still work.
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    modality = AE(ae_title="CT1")
    modality.add_requested_context(VerificationClass)
    modality.add_requested_context(CTImageStorage)
    modality.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    modality.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = modality.associate(LOCALHOST, gw.port("pacs"), ae_title="PACSGUARD",
                               ext_neg=[build_role(CTImageStorage, scu_role=True, scp_role=True)],
                               evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
        assert assoc.send_c_store(pacs.ct).Status == 0
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = pacs.ct.StudyInstanceUID
        final = [s for s, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet) if s][-1]
        assert final.Status == 0 and final.NumberOfCompletedSuboperations == 1
    finally:
        assoc.release()
        modality.shutdown()
    assert received == [pacs.ct.SOPInstanceUID] and pacs.stored == [pacs.ct.SOPInstanceUID]
    assert gw.wait_for("dicom.association.released", where=lambda e: e.actor.ae_title == "CT1")
    assert [e for e in gw.events("dicom.protocol.violation") if e.actor.ae_title == "CT1"] == []
    get, = gw.wait_for("dicom.dimse.c-get")
    assert get.details["status"] == "0x0000", get.details
