"""Outside round 9, the relay with behaviours of real peers the suite had not used.

1. Asynchronous operations (PS3.7 D.3.3.3): the archive's own requests on the association (a
   storage commitment report, PS3.4 J.3.3; a C-GET's C-STORE sub-operations, PS3.4 C.4.3.3) share
   Message ID numbers with the workstation's requests, since each side numbers its own (PS3.7
   9.1.1). A C-FIND match answering the workstation's request 1 while the archive's request 1 is
   unanswered is recorded on the C-FIND (the patient it disclosed, its count of responses), not on
   the archive's request. Playbook tests: the exact PDUs, in memory.
2. A PACS that closes its connection right after its A-RELEASE-RP (pynetdicom does) while that
   A-RELEASE-RP waits for records (docs/gateway.md, "Nothing acknowledged without its record"): the
   client still gets it, in memory and through `pacsguard serve` on 127.0.101.x. The PACS's A-ABORT
   waits for no record: the client gets it, with its source and reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from playbook import CT_STORAGE, STUDY_FIND, Playbook, Seen, play, request, response, route_config
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from test_durable import STORE_ACK, DurablePlaybook, Gate, associate, run, store_rq, until

from dicom_corpus import el_implicit
from pacsguard.dicom import dimse
from pacsguard.dicom import pdu as P
from pacsguard.events import Event
from peers.dcmtk import free_port, stop_process_group, wait_for_port

#: This module's loopback addresses (outside round 9, area A).
GATEWAY_HOST = "127.0.101.1"
PACS_HOST = "127.0.101.2"
CLIENT_HOSTS = ("127.0.101.3", "127.0.101.4", "127.0.101.5")

COMMITMENT = "1.2.840.10008.1.20.1"
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
DISCLOSED = "PAT-DISCLOSED"
STORED = "PAT-STORED"


def identifier(patient: bytes) -> bytes:
    """A STUDY level identifier (Implicit VR Little Endian): Query/Retrieve Level, Patient ID."""
    return el_implicit(0x00080052, b"STUDY ") + el_implicit(0x00100020, patient)


def find_rq(message_id: int) -> bytes:
    return request(dimse.CommandSet(dimse.C_FIND_RQ, message_id=message_id, affected_sop_class_uid=STUDY_FIND,
                                    priority=0, command_data_set_type=0), identifier(b""), 1)


def find_rsp(message_id: int, status: int, patient: str | None = None) -> bytes:
    data = identifier(patient.encode().ljust(len(patient) + len(patient) % 2)) if patient else None
    return request(dimse.CommandSet(dimse.C_FIND_RSP, message_id_being_responded_to=message_id,
                                    affected_sop_class_uid=STUDY_FIND, status=status,
                                    command_data_set_type=0 if data else 0x0101), data, 1)


def dimse_events(pb: Playbook, kind: str) -> list[Event]:
    return [e for e in pb.events if e.kind == kind]


def test_a_match_is_the_c_finds_while_the_archives_commitment_report_of_that_number_waits() -> None:
    """The archive reports storage commitment (N-EVENT-REPORT-RQ, its Message ID 1) on the
    association while the workstation's C-FIND 1 runs; the match that follows answers the C-FIND."""
    report = request(dimse.CommandSet(dimse.N_EVENT_REPORT_RQ, message_id=1, affected_sop_class_uid=COMMITMENT,
                                      affected_sop_instance_uid=COMMITMENT_INSTANCE, event_type_id=1,
                                      command_data_set_type=0), el_implicit(0x00081195, b"1.2.3.4"), 3)
    report_rsp = request(dimse.CommandSet(dimse.N_EVENT_REPORT_RSP, message_id_being_responded_to=1,
                                          affected_sop_class_uid=COMMITMENT,
                                          affected_sop_instance_uid=COMMITMENT_INSTANCE, event_type_id=1,
                                          status=0, command_data_set_type=0x0101), None, 3)

    async def scenario(pb: Playbook) -> None:
        await pb.associate(STUDY_FIND, COMMITMENT)
        await pb.client(find_rq(1))
        await pb.upstream(report, find_rsp(1, dimse.STATUS_PENDING, DISCLOSED))
        await pb.client(report_rsp)
        await pb.upstream(find_rsp(1, dimse.STATUS_SUCCESS))
        # Everything passed, in order: the gateway only records.
        commands = [s.fields[0][0] for s in pb.to_client() if s.name == "P-DATA-TF" and s.fields[0][0] != "data"]
        assert commands == ["N-EVENT-REPORT-RQ", "C-FIND-RSP", "C-FIND-RSP"]

    pb = play(route_config(policy={"services": ["C-FIND", "storage-commitment"]}), scenario)
    (find,) = dimse_events(pb, "dicom.dimse.c-find")
    assert find.patient_ids == (DISCLOSED,)
    assert find.details["responses"] == 1
    (report_event,) = dimse_events(pb, "dicom.dimse.n-event-report")
    assert report_event.patient_ids == ()
    assert report_event.details["bytes"] == len(el_implicit(0x00081195, b"1.2.3.4"))


def test_a_match_is_the_c_finds_while_a_c_get_sub_operation_of_that_number_waits() -> None:
    """A C-GET (Message ID 2) and a C-FIND (Message ID 1) in flight; the archive's first sub-operation,
    its C-STORE-RQ numbered 1, is unanswered when the C-FIND's match comes. The match names its patient
    on the C-FIND; the C-STORE and the C-GET name the stored object's patient, not the match's."""
    store = request(dimse.CommandSet(dimse.C_STORE_RQ, message_id=1, affected_sop_class_uid=CT_STORAGE,
                                     affected_sop_instance_uid="1.2.3.4.5", priority=0, command_data_set_type=0),
                    el_implicit(0x00080016, CT_STORAGE.encode() + b"\0") + el_implicit(0x00100020, STORED.encode())
                    + el_implicit(0x0020000D, b"1.2.3.4") + el_implicit(0x0020000E, b"1.2.3.4.1"), 5)
    store_rsp = request(dimse.CommandSet(dimse.C_STORE_RSP, message_id_being_responded_to=1,
                                         affected_sop_class_uid=CT_STORAGE, affected_sop_instance_uid="1.2.3.4.5",
                                         status=0, command_data_set_type=0x0101), None, 5)
    get = request(dimse.CommandSet(dimse.C_GET_RQ, message_id=2, affected_sop_class_uid=STUDY_GET, priority=0,
                                   command_data_set_type=0), identifier(STORED.encode() + b" "), 3)
    get_rsp = request(dimse.CommandSet(dimse.C_GET_RSP, message_id_being_responded_to=2,
                                       affected_sop_class_uid=STUDY_GET, status=0, command_data_set_type=0x0101,
                                       remaining_suboperations=0, completed_suboperations=1,
                                       failed_suboperations=0, warning_suboperations=0), None, 3)

    async def scenario(pb: Playbook) -> None:
        await pb.associate(STUDY_FIND, STUDY_GET, CT_STORAGE)
        await pb.client(find_rq(1), get)
        await pb.upstream(store, find_rsp(1, dimse.STATUS_PENDING, DISCLOSED), find_rsp(1, dimse.STATUS_SUCCESS))
        await pb.client(store_rsp)
        await pb.upstream(get_rsp)
        assert Seen("P-DATA-TF", (("C-GET-RSP", 0),)) in pb.to_client()

    pb = play(route_config(policy={"services": ["C-FIND", "C-GET", "C-STORE"]}), scenario)
    (find,) = dimse_events(pb, "dicom.dimse.c-find")
    assert find.patient_ids == (DISCLOSED,)
    assert find.details["responses"] == 1
    (store_event,) = dimse_events(pb, "dicom.dimse.c-store")
    assert store_event.patient_ids == (STORED,)
    (get_event,) = dimse_events(pb, "dicom.dimse.c-get")
    assert get_event.patient_ids == (STORED,)


# --- the A-RELEASE-RP of a PACS that closes its connection at once ---------------------------------


async def _stored_then_refused_undurable(pb: DurablePlaybook, gate: Gate) -> None:
    """One C-STORE through to the PACS and back, then a second the gateway refuses itself (its
    requests_per_minute) while the refusal's record is not durable yet (``gate`` shut)."""
    await associate(pb)
    first = store_rq(1)
    await pb.client(first)
    await pb.upstream(response(first))
    assert await until(pb.to_client) == [STORE_ACK]
    pb.to_upstream()
    gate.shut()
    await pb.client(store_rq(2))
    assert await until(pb.to_client) == [Seen("P-DATA-TF", (("C-STORE-RSP", dimse.STATUS_OUT_OF_RESOURCES),))]


def test_the_release_reaches_the_client_when_the_pacs_closes_while_it_waits_for_its_records() -> None:
    """A request the gateway refuses itself (its answer waits for nothing), then an A-RELEASE-RQ at
    once: the PACS's A-RELEASE-RP waits for the refusal's record, and the PACS closes its connection
    meanwhile, as pynetdicom does. The client still gets its A-RELEASE-RP, not a closed connection."""

    async def scenario(pb: DurablePlaybook, gate: Gate) -> None:
        await _stored_then_refused_undurable(pb, gate)
        await pb.client(P.encode_release_rq())
        assert pb.to_upstream() == [Seen("A-RELEASE-RQ")]
        await pb.upstream(P.encode_release_rp())
        assert pb.relay is not None
        pb.relay.connection_lost(False, None)  # the PACS hangs up right after its A-RELEASE-RP
        gate.open.set()
        assert await until(pb.to_client) == [Seen("A-RELEASE-RP")]
        await until(lambda: pb.relay is not None and pb.relay.closed)

    pb = run(route_config(limits={"requests_per_minute": 1}), scenario)
    assert [e.kind for e in pb.events][-1] == "dicom.association.released"


def test_the_pacss_a_abort_reaches_the_client_while_a_record_is_not_yet_durable() -> None:
    """The PACS aborts (source 2, reason 6: invalid PDU parameter value, PS3.8 Table 9-26) just after
    the gateway refused a request itself, whose record is not durable yet: the A-ABORT acknowledges
    nothing, so the client gets it with its source and reason instead of a bare closed connection."""

    async def scenario(pb: DurablePlaybook, gate: Gate) -> None:
        await _stored_then_refused_undurable(pb, gate)
        await pb.upstream(P.encode_abort(P.ABORT_SOURCE_SERVICE_PROVIDER, P.ABORT_REASON_INVALID_PDU_PARAMETER_VALUE))
        assert await until(pb.to_client) == [Seen("A-ABORT", (P.ABORT_SOURCE_SERVICE_PROVIDER,))]
        gate.open.set()
        await until(lambda: pb.relay is not None and pb.relay.closed)

    pb = run(route_config(limits={"requests_per_minute": 1}), scenario)
    (aborted,) = [e for e in pb.events if e.kind == "dicom.association.aborted"]
    assert aborted.details["by"] == "upstream"
    assert aborted.details["reason_code"] == P.ABORT_REASON_INVALID_PDU_PARAMETER_VALUE


@pytest.mark.peers
@pytest.mark.timeout(120)
def test_pynetdicom_releases_after_a_refused_request_through_serve(tmp_path: Path) -> None:
    """The same with real peers through `pacsguard serve` (records held for durability, the default):
    pynetdicom as the workstation and as the PACS (which closes at once after its A-RELEASE-RP), on
    127.0.101.x. Each association's second C-ECHO is refused 0xA700 by `limits.requests_per_minute`,
    then the workstation releases: it must see the association released, not aborted."""
    pacs = AE(ae_title="UPSTREAM")
    pacs.add_supported_context(Verification)
    pacs_port = free_port(PACS_HOST)
    server = pacs.start_server((PACS_HOST, pacs_port), block=False)
    gateway_port = free_port(GATEWAY_HOST)
    config = {"store": {"url": "var/pacsguard.db"},
              "gateway": {"routes": [{"name": "main",
                                      "listen": {"host": GATEWAY_HOST, "port": gateway_port, "ae_title": "GW"},
                                      "upstream": {"host": PACS_HOST, "port": pacs_port, "ae_title": "UPSTREAM",
                                                   "connect_timeout": 5},
                                      "limits": {"requests_per_minute": 1}}]}}
    (tmp_path / "pacsguard.yaml").write_text(yaml.safe_dump(config))
    cli = [sys.executable, "-m", "pacsguard.cli"]
    env = {**os.environ, "PACSGUARD_KEY_DIR": str(tmp_path / "keys")}
    init = subprocess.run([*cli, "init", "--no-demo"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert init.returncode == 0, init.stdout + init.stderr
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([*cli, "serve"], cwd=tmp_path, env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert wait_for_port(GATEWAY_HOST, gateway_port, 30, proc), log.read_text()
        outcomes = []
        for host in CLIENT_HOSTS:  # a fresh source each time: the rate window is per host
            workstation = AE(ae_title="WS1")
            workstation.add_requested_context(Verification)
            workstation.acse_timeout = workstation.dimse_timeout = 10
            assoc = workstation.associate(GATEWAY_HOST, gateway_port, ae_title="GW", bind_address=(host, 0))
            assert assoc.is_established
            statuses = [assoc.send_c_echo().Status for _ in range(2)]
            assert statuses == [0x0000, 0xA700]
            assoc.release()
            outcomes.append((assoc.is_released, assoc.is_aborted))
        assert outcomes == [(True, False)] * len(CLIENT_HOSTS), log.read_text()[-3000:]
    finally:
        stop_process_group(proc)
        server.shutdown()
