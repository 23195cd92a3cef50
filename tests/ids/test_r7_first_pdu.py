"""Round 7: a client's first PDU on a DICOM port that is a PDU but fails the A-ASSOCIATE-RQ
plausibility test (a PDU-length lie, a control character in an AE title, a P-DATA-TF before any
association) gets the verdict the gateway's decoder gives it inline (PS3.8 9.3.1 PDU types,
9.3.2 A-ASSOCIATE-RQ, 9.2 state machine), not "non-DICOM bytes": the passive sensor used to
report every such request as `dicom-non-dicom-bytes` (`protocol_guess=unknown`), so a length
attack and an HTTP request on port 104 looked alike and the two sensors disagreed."""

from __future__ import annotations

import os
import sys

import pytest
from capture_craft import Flow, eth_frames, pcap_bytes

from pacsguard.events import Event
from pacsguard.ids import IdsSettings
from pacsguard.ids.dicom import DicomAdapter
from pacsguard.ids.passive import build_engine, read

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gateway"))

from malformed_rq import build, undecodable  # noqa: E402

LENGTH = "ids.alert.dicom-length-overflow"
MALFORMED = "ids.alert.dicom-malformed-pdu"
STATE = "ids.alert.dicom-protocol-state-violation"
NON_DICOM = "ids.alert.dicom-non-dicom-bytes"


def _with_length(raw: bytes, length: int) -> bytes:
    return raw[:2] + length.to_bytes(4, "big") + raw[6:]


def _rq() -> bytes:
    return build("WS1", "PACSGUARD")


def _bad_ae() -> bytes:
    (raw,) = [r for name, r, _ in undecodable("R7") if name == "calling-ae-control-character"]
    return raw


def passive(first: bytes) -> tuple[list[str], list[Event]]:
    """The ids.* event kinds of one connection to port 104 whose client sends *first* and closes."""
    flow = Flow()
    frames = eth_frames(flow.handshake() + flow.send(True, first) + flow.fin())
    events: list[Event] = []
    read(pcap_bytes(frames), engine=build_engine([], IdsSettings()), publish=events.append)
    return sorted(e.kind for e in events if e.kind.startswith("ids.")), events


def inline(first: bytes) -> list[str]:
    """The ids.* event kinds the gateway's inline IDS records for the same first bytes."""
    from playbook import Playbook, play, route_config

    async def scenario(pb: Playbook) -> None:
        await pb.client(first)

    pb = play(route_config(), scenario, engine=DicomAdapter(build_engine([], IdsSettings())))
    return sorted(k for k in pb.kinds() if k.startswith("ids."))


HOSTILE = {
    "pdu-length-2-gib": (lambda: _with_length(_rq(), 0x7FFFFFFF), LENGTH),
    "pdu-length-below-fixed-part": (lambda: _with_length(_rq(), 40), LENGTH),
    "calling-ae-control-character": (_bad_ae, MALFORMED),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_request_gets_the_decoders_verdict_as_inline(name: str) -> None:
    make, kind = HOSTILE[name]
    raw = make()
    kinds, events = passive(raw)
    assert kinds == [kind]
    assert inline(raw) == [kind]
    (alert,) = [e for e in events if e.kind == kind]
    assert alert.actor is not None and alert.actor.host == "10.1.2.3"
    assert alert.target is not None and alert.target.port == 104


def test_a_data_pdu_before_any_association_is_a_state_violation() -> None:
    """PS3.8 9.2 (Table 9-10, Sta1/Sta2): only an A-ASSOCIATE-RQ may open an association."""
    pdata = bytes([4, 0, 0, 0, 0, 8, 0, 0, 0, 4, 1, 3, 0, 0])
    kinds, events = passive(pdata)
    assert kinds == [STATE]
    assert NON_DICOM not in kinds


@pytest.mark.parametrize("version", [0, 2])
def test_a_request_with_another_protocol_version_is_an_association_not_noise(version: int) -> None:
    """The decoder reads the request (the acceptor answers A-ASSOCIATE-RJ, PS3.8 9.3.4): it is
    recorded as requested, with its AE titles, and is not called non-DICOM."""
    raw = build("WS1", "PACSGUARD", version=version)
    kinds, events = passive(raw)
    assert NON_DICOM not in kinds
    (requested,) = [e for e in events if e.kind == "dicom.association.requested"]
    assert requested.actor is not None and requested.actor.ae_title == "WS1"


@pytest.mark.parametrize("first", [b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n" + b"x" * 40,
                                   bytes([9, 0, 0, 0, 0, 4, 0, 0, 0, 0]) + b"\0" * 40])
def test_bytes_that_are_no_pdu_stay_non_dicom(first: bytes) -> None:
    kinds, _ = passive(first)
    assert kinds == [NON_DICOM]
    assert inline(first) == [NON_DICOM]


def test_an_rdp_connection_request_stays_non_dicom_and_says_rdp() -> None:
    """RDP's TPKT header (RFC 1006: 03 00 and a length) starts like an A-ASSOCIATE-RJ: nmap's
    service probes send one to every port; it is reported as RDP, not decoded as DICOM."""
    tpkt = bytes.fromhex("0300002a25e00000000000436f6f6b69653a206d737473686173683d6e6d61700d0a0100080003000000")
    kinds, events = passive(tpkt)
    assert kinds == [NON_DICOM]
    (alert,) = [e for e in events if e.kind == NON_DICOM]
    assert "protocol_guess=rdp" in alert.message
