"""Outside round 12, helper F: SCP/SCU Role Selection (PS3.7 D.3.3.4) on a store-and-forward
route's own acceptor (pacsguard.gateway.store_forward.acceptor.negotiate).

The route's acceptor is only ever the SCP of Storage and Verification. A requestor proposing the
SCU role (alone or with the SCP role) is answered SCU 1, SCP 0; one proposing only the SCP role
(CTN's `dicom_echo -m SCP`) or neither has its context rejected (result 1), as pynetdicom's
acceptor does for an SOP class it takes in the SCP role only, and a request sent on that context
anyway is refused with an A-ABORT. Before the fix the acceptor answered SCU 0, SCP 0 (no role
left to anyone), accepted the context and then served the C-ECHO-RQ.

Peers: CTN's dicom_echo (Debian package ctn) and raw A-ASSOCIATE-RQs. Routes listen on
127.0.126.20; the destination is a port where nothing listens (nothing is forwarded here).
CTN's clients connect from 127.0.0.1 (the kernel's choice on loopback).
"""

from __future__ import annotations

import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from gateway_under_test import RunningGateway, serving

from pacsguard.dicom import dimse, uids
from pacsguard.dicom import pdu as P
from pacsguard.gateway.store_forward.acceptor import negotiate, storage_sop_classes
from peers.dcmtk import free_port

if TYPE_CHECKING:
    from peers.ctn import Ctn

pytestmark = [pytest.mark.peers, pytest.mark.timeout(60)]

GW = "127.0.126.20"
PROGRAM = [sys.executable, "-m", "pacsguard.cli"]
CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = uids.VERIFICATION
IMPLICIT_LE = "1.2.840.10008.1.2"
CALLING = "R12FMOD"

#: (SCU role, SCP role) the requestor proposes -> (context result, the AC's role item or None).
EXPECTED = {
    None: (P.PC_ACCEPTANCE, None),  # no item: default roles (requestor SCU), no item back
    (1, 0): (P.PC_ACCEPTANCE, (1, 0)),
    (1, 1): (P.PC_ACCEPTANCE, (1, 0)),  # the SCP role is refused, the SCU role kept
    (0, 1): (P.PC_USER_REJECTION, None),  # only a role this acceptor never takes: no role left
    (0, 0): (P.PC_USER_REJECTION, None),  # proposes no role at all
}


def rq_with(roles: dict[str, tuple[int, int]], *abstract_syntaxes: str) -> P.AssociateRQ:
    contexts = [P.PresentationContextRQ(2 * i + 1, uid, [IMPLICIT_LE]) for i, uid in enumerate(abstract_syntaxes)]
    return P.AssociateRQ("PACSGUARD", CALLING, contexts, P.UserInformation.build(
        max_length=16384, implementation_class_uid="1.2.3",
        role_selections=[P.RoleSelection(uid, scu, scp) for uid, (scu, scp) in roles.items()]))


@pytest.mark.parametrize("abstract", [CT, VERIFICATION])
@pytest.mark.parametrize("proposed", list(EXPECTED), ids=str)
def test_each_role_proposal_gets_the_answer_of_ps3_7_d_3_3_4(abstract: str, proposed: tuple[int, int] | None) -> None:
    rq = rq_with({} if proposed is None else {abstract: proposed}, abstract)
    ac = negotiate(rq, supported=storage_sop_classes(), refused=[], max_length=16384)
    result, role = EXPECTED[proposed]
    assert [pc.result for pc in ac.presentation_contexts] == [result]
    assert ac.user_information is not None
    got = [(r.sop_class_uid, r.scu_role, r.scp_role) for r in ac.user_information.role_selections]
    assert got == ([] if role is None else [(abstract, *role)])


def test_roles_of_two_classes_are_answered_apart() -> None:
    """Verification proposed SCP-only is rejected while CT proposed SCU/SCP on the same RQ is
    accepted as SCU; a role item for a class not proposed in a context gets no answer."""
    rq = rq_with({VERIFICATION: (0, 1), CT: (1, 1), uids.MR_IMAGE_STORAGE: (1, 0)}, VERIFICATION, CT)
    ac = negotiate(rq, supported=storage_sop_classes(), refused=[], max_length=16384)
    assert [(pc.context_id, pc.result) for pc in ac.presentation_contexts] == [
        (1, P.PC_USER_REJECTION), (3, P.PC_ACCEPTANCE)]
    assert ac.user_information is not None
    assert [(r.sop_class_uid, r.scu_role, r.scp_role) for r in ac.user_information.role_selections] == [(CT, 1, 0)]


@pytest.fixture
def saf_route(tmp_path: Path) -> Iterator[RunningGateway]:
    nowhere = free_port(GW)
    route = {"name": "sf", "mode": "store-and-forward",
             "listen": {"host": GW, "port": free_port(GW), "ae_title": "PACSGUARD"},
             "destinations": [{"name": "d0", "host": GW, "port": nowhere, "ae_title": "NOBODY", "connect_timeout": 3}],
             "spool": {"min_free_mib": 1}}
    home = tmp_path / "gw"
    home.mkdir()
    with serving(home, [route], PROGRAM) as gw:
        yield gw


def read_pdu(sock: socket.socket) -> bytes:
    head = b""
    while len(head) < 6:
        chunk = sock.recv(6 - len(head))
        if not chunk:
            raise AssertionError(f"connection closed after {head!r}")
        head += chunk
    (length,) = struct.unpack(">I", head[2:6])
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        assert chunk, "connection closed inside a PDU"
        body += chunk
    return head + body


def test_a_request_on_a_context_the_roles_left_to_no_one_is_refused(saf_route: RunningGateway) -> None:
    """Raw: Verification proposed with the SCP role only (context 1) and CT with both (context 3).
    The AC rejects context 1 and accepts 3 with SCU 1, SCP 0; a C-ECHO-RQ sent on context 1 all
    the same is answered with an A-ABORT, never a C-ECHO-RSP."""
    with socket.create_connection((GW, saf_route.port("sf")), timeout=10) as sock:
        sock.sendall(P.encode_associate_rq(rq_with({VERIFICATION: (0, 1), CT: (1, 1)}, VERIFICATION, CT)))
        raw = read_pdu(sock)
        assert raw[0] == P.PDU_ASSOCIATE_AC, raw[:1]
        ac = P.parse_associate_ac(raw)
        assert [(pc.context_id, pc.result) for pc in ac.presentation_contexts] == [
            (1, P.PC_USER_REJECTION), (3, P.PC_ACCEPTANCE)]
        assert ac.user_information is not None
        assert [(r.sop_class_uid, r.scu_role, r.scp_role) for r in ac.user_information.role_selections] == [(CT, 1, 0)]
        command = dimse.CommandSet(dimse.C_ECHO_RQ, message_id=1, affected_sop_class_uid=VERIFICATION,
                                   command_data_set_type=0x0101)
        sock.sendall(b"".join(P.encode_dimse_message(1, dimse.encode_command_set(command), None, 16384)))
        answer = read_pdu(sock)
    assert answer[0] == P.PDU_ABORT, answer[:16]
    (violation,) = saf_route.wait_for("dicom.protocol.violation")
    assert violation.details["code"] == "context-not-accepted"
    (accepted,) = saf_route.wait_for("dicom.association.accepted")
    assert accepted.details["accepted"] == [CT]
    saf_route.wait_for("dicom.association.aborted")
    assert saf_route.events("dicom.dimse.c-echo") == []


def test_ctn_dicom_echo_as_scu_is_answered_and_as_scp_only_is_not(ctn: Ctn, saf_route: RunningGateway) -> None:
    """CTN's dicom_echo proposing both roles (-m SCUSCP) gets its C-ECHO answered (status 0000);
    proposing only the SCP role (-m SCP) has Verification rejected and no C-ECHO is served."""
    port = str(saf_route.port("sf"))
    both = ctn.run("dicom_echo", "-m", "SCUSCP", "-a", CALLING, "-c", "PACSGUARD", GW, port, timeout=20)
    said = both.stdout + both.stderr
    assert both.returncode == 0 and "Verification Status:     0000" in said, said
    (echoed,) = saf_route.wait_for("dicom.dimse.c-echo")
    assert echoed.details["status"] == "0x0000"

    scp_only = ctn.run("dicom_echo", "-m", "SCP", "-a", CALLING, "-c", "PACSGUARD", GW, port, timeout=20)
    said = scp_only.stdout + scp_only.stderr
    # CTN finds no Verification context to send on and says so (it exits 0 all the same).
    assert "Verification Request unsuccessful" in said and "Verification Status:     0000" not in said, said
    saf_route.wait_for("dicom.association.accepted", count=2)
    assert len(saf_route.events("dicom.dimse.c-echo")) == 1, said  # the SCP-only one was not served
