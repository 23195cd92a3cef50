"""Round 11, helper F: an association whose TCP connection ends while its release is under way,
after the A-RELEASE-RQ and before the A-RELEASE-RP (PS3.8 9.2.3, state Sta7: a transport close
there is an A-P-ABORT, action AA-4).

The relay ends its record as it does for a connection lost while established: the association is
recorded aborted (`cause: connection-lost`, the message says "during release"), a request still
waiting for its final response gets its event (`decision: aborted`), and a C-MOVE's entry in the
gateway's ledger of open C-MOVEs (records.moves) is closed with it.

- In memory (playbook): both legs, and the ledger.
- Real peers through `pacsguard serve` on 127.0.116.x: pynetdicom as a workstation with a C-MOVE
  in flight releases, and a PACS (raw sockets) resets the connection instead of answering; a
  raw-socket workstation with a C-FIND in flight sends A-RELEASE-RQ and resets its connection.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_under_test import RunningGateway, serving
from playbook import IMPLICIT_LE, STUDY_FIND, STUDY_MOVE, Playbook, play, request, route_config
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove  # type: ignore[attr-defined]

from dicom_corpus import el_implicit
from pacsguard.dicom import dimse
from pacsguard.dicom import pdu as P
from pacsguard.events import Event
from pacsguard.records.moves import MoveLedger
from peers.dcmtk import free_port
from peers.listener import Listener

HOST = "127.0.116.1"  # the gateway's route
PACS_HOST = "127.0.116.2"
MOVER_HOST = "127.0.116.3"  # pynetdicom, C-MOVE then A-RELEASE-RQ; the PACS resets
FINDER_HOST = "127.0.116.4"  # raw sockets, C-FIND then A-RELEASE-RQ, then resets itself
MOVER, FINDER = "R11FMOVER", "R11FFINDER"
STUDY = "1.2.826.0.1.3680043.10.116.1"
WAIT = 10.0  # every socket wait of the peers below is bounded by it
POLICY = {"services": ["C-FIND", "C-MOVE"], "move_destinations": ["DEST"]}


def identifier() -> bytes:
    """A STUDY level identifier (Implicit VR Little Endian): Query/Retrieve Level, Study UID."""
    return bytes(el_implicit(0x00080052, b"STUDY ") + el_implicit(0x0020000D, STUDY.encode() + b"\0"))


def move_rq(message_id: int = 5) -> bytes:
    return request(dimse.CommandSet(dimse.C_MOVE_RQ, message_id=message_id, affected_sop_class_uid=STUDY_MOVE,
                                    priority=0, move_destination="DEST", command_data_set_type=0), identifier())


def find_rq(message_id: int = 3) -> bytes:
    return request(dimse.CommandSet(dimse.C_FIND_RQ, message_id=message_id, affected_sop_class_uid=STUDY_FIND,
                                    priority=0, command_data_set_type=0), identifier())


def ending(events: list[Event]) -> list[tuple[str, str | None, str | None]]:
    """What the record says after the association was accepted: kind, decision, cause."""
    return [(e.kind, e.details.get("decision"), e.details.get("cause")) for e in events
            if e.kind not in ("dicom.association.requested", "dicom.association.accepted")]


# --- in memory ------------------------------------------------------------------------------------


@pytest.mark.parametrize("client_drops", [False, True], ids=["upstream-drops", "client-drops"])
def test_a_connection_lost_during_release_ends_the_record_and_the_move(client_drops: bool) -> None:
    """A C-MOVE in flight, the client's A-RELEASE-RQ forwarded, then one leg is reset."""
    ledger = MoveLedger()

    async def scenario(pb: Playbook) -> None:
        pb.moves = ledger  # type: ignore[attr-defined]  # the RouteView's ledger (getattr in the relay)
        await pb.associate(STUDY_MOVE)
        await pb.client(move_rq())
        await pb.client(P.encode_release_rq())
        assert [s.name for s in pb.to_upstream()][-1] == "A-RELEASE-RQ"
        assert len(ledger) == 1
        assert pb.relay is not None
        pb.relay.connection_lost(client_drops, ConnectionResetError(104, "Connection reset by peer"))
        assert pb.relay.closed

    pb = play(route_config(policy=POLICY), scenario)
    assert ending(pb.events) == [("dicom.dimse.c-move", "aborted", None),
                                 ("dicom.association.aborted", None, "connection-lost")]
    who = "client" if client_drops else "upstream"
    assert f"{who} closed the connection during release" in pb.events[-1].message
    assert len(ledger) == 0  # the C-MOVE's entry closed with its record


# --- real peers -----------------------------------------------------------------------------------


def read_pdu(conn: socket.socket) -> bytes | None:
    """One whole PDU (PS3.8 9.3.1: type, reserved, 4-byte length), or None once the peer is gone."""
    header = read_exactly(conn, 6)
    if header is None:
        return None
    body = read_exactly(conn, struct.unpack(">I", header[2:6])[0])
    return None if body is None else header + body


def read_exactly(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    try:
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            if not chunk:
                return None
            data += chunk
    except OSError:
        return None
    return data


def reset(conn: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashing peer's kernel does."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


class ResettingPacs(Listener):
    """A PACS on raw sockets: accepts every proposed context; answers a C-MOVE with one Pending
    response and never a final one; never answers a C-FIND. On an A-RELEASE-RQ from MOVER it
    resets the connection; from anyone else it stays silent until the gateway closes."""

    def __init__(self) -> None:
        self.release_seen: dict[str, threading.Event] = defaultdict(threading.Event)
        super().__init__(PACS_HOST, join_for=WAIT)

    def serve(self, conn: socket.socket) -> None:
        conn.settimeout(WAIT)
        calling, max_length = "", 16384
        while (pdu := read_pdu(conn)) is not None:
            if pdu[0] == P.PDU_ASSOCIATE_RQ:
                rq = P.parse_associate_rq(pdu)
                calling, max_length = rq.calling_ae_title, rq.max_length or 16384
                contexts = [P.PresentationContextAC(pc.context_id, P.PC_ACCEPTANCE, pc.transfer_syntaxes[0])
                            for pc in rq.presentation_contexts]
                info = P.UserInformation.build(max_length=16384, implementation_class_uid="1.2.826.0.1.3680043.10.116")
                conn.sendall(P.encode_associate_ac(P.AssociateAC(rq.called_ae_title, calling, contexts, info)))
            elif pdu[0] == P.PDU_P_DATA_TF:
                for context_id, mch, start, end in P.pdv_spans(pdu):
                    if mch & 0x03 != 0x03:  # only a whole command set in one PDV (both peers send so)
                        continue
                    command = dimse.decode_command_set(pdu[start:end])
                    if command.command_field == dimse.C_MOVE_RQ:
                        pending = dimse.CommandSet(
                            dimse.C_MOVE_RSP, message_id_being_responded_to=command.message_id,
                            affected_sop_class_uid=command.affected_sop_class_uid, status=dimse.STATUS_PENDING,
                            command_data_set_type=0x0101, remaining_suboperations=1, completed_suboperations=0,
                            failed_suboperations=0, warning_suboperations=0)
                        conn.sendall(b"".join(P.encode_dimse_message(
                            context_id, dimse.encode_command_set(pending), None, max_length)))
            elif pdu[0] == P.PDU_RELEASE_RQ:
                self.release_seen[calling].set()
                if calling == MOVER:
                    reset(conn)
                    return
        conn.close()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[RunningGateway, ResettingPacs]]:
    pacs = ResettingPacs()
    routes = [{"name": "main", "listen": {"host": HOST, "port": free_port(HOST), "ae_title": "PACSGUARD"},
               "upstream": {"host": PACS_HOST, "port": pacs.port, "ae_title": "RESETTER", "connect_timeout": 5},
               "policy": POLICY}]
    try:
        with serving(tmp_path, routes, [sys.executable, "-m", "pacsguard.cli"]) as gw:
            yield gw, pacs
    finally:
        pacs.close()


def pynetdicom_moves_then_releases(port: int) -> tuple[bool, bool]:
    """MOVER's C-MOVE gets its Pending response; MOVER releases with it in flight: (released, aborted)."""
    ae = AE(ae_title=MOVER)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = WAIT
    assoc = ae.associate(HOST, port, ae_title="PACSGUARD", bind_address=(MOVER_HOST, 0))
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = STUDY
    responses = assoc.send_c_move(query, "DEST", StudyRootQueryRetrieveInformationModelMove)
    status, _ = next(responses)
    assert status.Status == dimse.STATUS_PENDING
    assoc.release()
    return assoc.is_released, assoc.is_aborted


def raw_finds_releases_then_resets(port: int, pacs: ResettingPacs) -> None:
    """FINDER: A-ASSOCIATE-RQ, a C-FIND the PACS never answers, A-RELEASE-RQ, and once the PACS has
    that A-RELEASE-RQ, a reset instead of waiting for the A-RELEASE-RP."""
    conn = socket.create_connection((HOST, port), timeout=WAIT, source_address=(FINDER_HOST, 0))
    rq = P.AssociateRQ(called_ae_title="PACSGUARD", calling_ae_title=FINDER,
                       presentation_contexts=[P.PresentationContextRQ(1, STUDY_FIND, [IMPLICIT_LE])],
                       user_information=P.UserInformation.build(max_length=16384,
                                                                implementation_class_uid="1.2.826.0.1.3680043.10.116"))
    conn.sendall(P.encode_associate_rq(rq))
    answer = read_pdu(conn)
    assert answer is not None and answer[0] == P.PDU_ASSOCIATE_AC, answer
    conn.sendall(find_rq() + P.encode_release_rq())
    assert pacs.release_seen[FINDER].wait(WAIT), "the gateway did not pass the A-RELEASE-RQ on"
    reset(conn)


def test_real_peers_cut_the_connection_during_release(setup: tuple[RunningGateway, ResettingPacs]) -> None:
    gw, pacs = setup
    assert pynetdicom_moves_then_releases(gw.port()) == (False, True)
    assert pacs.release_seen[MOVER].is_set()
    raw_finds_releases_then_resets(gw.port(), pacs)
    for calling, dimse_kind, who in ((MOVER, "dicom.dimse.c-move", "upstream"),
                                     (FINDER, "dicom.dimse.c-find", "client")):
        def theirs(e: Event, calling: str = calling) -> bool:
            return calling in (e.actor.ae_title, e.target.ae_title)

        (aborted,) = gw.wait_for("dicom.association.aborted", where=theirs, timeout=WAIT)
        assert aborted.details["cause"] == "connection-lost"
        assert f"{who} closed the connection during release" in aborted.message
        (request_event,) = [e for e in gw.events(dimse_kind) if theirs(e)]
        assert request_event.details["decision"] == "aborted"
        assert not [e for e in gw.events("dicom.association.released") if theirs(e)]
