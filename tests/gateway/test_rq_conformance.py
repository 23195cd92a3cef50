"""Every A-ASSOCIATE-RQ field a PACS parser could trip on is refused before the upstream sees it
(issue #16, section 3): an A-ASSOCIATE-RJ (PS3.8 9.2 AE-6, Table 9-21) for a request the decoder
reads but the service provider cannot accept, an A-ABORT (AA-1) for one it cannot read; each
recorded with the field and its value. In memory (the playbook's upstream leg records every byte),
then against a running gateway whose upstream is a socket that records what it receives; real
peers (dcmtk echoscu, pynetdicom) still associate through it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from gateway_under_test import RunningGateway, route
from malformed_rq import Malformed, build, cases, undecodable
from playbook import Playbook, Seen, play, route_config, split
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from test_bad_input import (
    GATEWAY_ABORT,
    RECORDER_AE,
    RecordingUpstream,
    connect,
    start_gateway,
    until_closed,
)

from pacsguard.dicom import pdu as P
from pacsguard.events import Event
from peers.dcmtk import Dcmtk

LOCALHOST = "127.0.0.1"


# --- in memory --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", cases("M"), ids=lambda c: c.name)
def test_refused_with_its_rj_and_never_forwarded(case: Malformed) -> None:
    async def scenario(pb: Playbook) -> None:
        await pb.client(case.raw)

    pb = play(route_config(), scenario)
    assert pb.to_client() == [Seen("A-ASSOCIATE-RJ", case.rj)]
    assert bytes(pb.upstream_wire.out) == b""
    (rejected,) = [e for e in pb.events if e.kind == "dicom.association.rejected"]
    assert rejected.details["rule"] == f"conformance.{case.field}"
    assert case.value in rejected.details["reason"]
    assert (rejected.details["result"], rejected.details["source"], rejected.details["reason_code"]) == case.rj
    assert "secret" not in rejected.message and "secret" not in str(rejected.details)  # a passcode is never quoted


@pytest.mark.parametrize("name, raw, code", undecodable("M"), ids=lambda v: v if isinstance(v, str) else "")
def test_an_rq_the_decoder_refuses_is_aborted_and_never_forwarded(name: str, raw: bytes, code: str) -> None:
    async def scenario(pb: Playbook) -> None:
        await pb.client(raw)

    pb = play(route_config(), scenario)
    assert pb.to_client() == [Seen("A-ABORT", (P.ABORT_SOURCE_SERVICE_PROVIDER,))]
    assert bytes(pb.upstream_wire.out) == b""
    (violation,) = [e for e in pb.events if e.kind == "dicom.protocol.violation"]
    assert violation.details["code"] == code


def test_tolerated_fields_are_forwarded_as_the_standard_writes_them() -> None:
    """Protocol version 0x8001 passes (only bit 0 is tested, PS3.8 9.3.2) and a NUL-padded calling
    AE title passes: the upstream gets version 1 and space padding."""
    raw = build("WS1", version=0x8001)
    raw = raw[:P.CALLING_AE_OFFSET] + b"WS1".ljust(16, b"\0") + raw[P.CALLING_AE_OFFSET + 16:]

    async def scenario(pb: Playbook) -> None:
        await pb.client(raw)

    pb = play(route_config(), scenario)
    (forwarded,) = split(bytes(pb.upstream_wire.out))
    assert forwarded[6:8] == b"\x00\x01"
    assert forwarded[P.CALLING_AE_OFFSET:P.CALLING_AE_OFFSET + 16] == b"WS1".ljust(16)
    assert P.parse_associate_rq(forwarded).calling_ae_title == "WS1"


# --- against a running gateway ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rec(dcmtk: Dcmtk, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, RecordingUpstream]]:
    upstream = RecordingUpstream()
    gw = start_gateway(tmp_path_factory.mktemp("conformance") / "home",
                       [route("rec", upstream.port, upstream_ae=RECORDER_AE)])
    try:
        yield gw, upstream
    finally:
        gw.stop()
        upstream.close()


class _Setup:
    def __init__(self, gw: RunningGateway) -> None:
        self.gw = gw


def _send(gw: RunningGateway, raw: bytes) -> tuple[list[bytes], Callable[[Event], bool]]:
    sock, about = connect(_Setup(gw), "rec")  # type: ignore[arg-type]
    with sock:
        sock.sendall(raw)
        pdus, _ = until_closed(sock, timeout=5)
    return pdus, about


@pytest.mark.peers
@pytest.mark.timeout(60)
def test_each_field_is_refused_by_a_running_gateway(rec: tuple[RunningGateway, RecordingUpstream]) -> None:
    gw, upstream = rec
    before = upstream.count()
    for case in cases("S"):
        pdus, about = _send(gw, case.raw)
        assert pdus == [P.encode_associate_rj(*case.rj)], case.name
        (rejected,) = gw.wait_for("dicom.association.rejected", where=about)
        assert rejected.details["rule"] == f"conformance.{case.field}", case.name
        assert case.value in rejected.details["reason"], case.name
    for name, raw, code in undecodable("S"):
        pdus, about = _send(gw, raw)
        assert pdus == [GATEWAY_ABORT], name
        (violation,) = gw.wait_for("dicom.protocol.violation", where=about)
        assert violation.details["code"] == code, name
    # An RQ the decoder refuses followed, in the same read, by a PDU header of no known type: the
    # first fault is reported, the second raises nothing (it once was a traceback and no event).
    name, raw, code = undecodable("S")[0]
    pdus, about = _send(gw, raw + bytes((0x55, 0)) + (4).to_bytes(4, "big") + b"oops")
    assert pdus == [GATEWAY_ABORT]
    (violation,) = gw.wait_for("dicom.protocol.violation", where=about)
    assert violation.details["code"] == code
    gw.wait_for("dicom.association.aborted", where=about)
    gw.wait_for("ids.alert.dicom-malformed-pdu", where=lambda e: e.actor.port == violation.actor.port)
    time.sleep(0.2)
    assert upstream.count() == before, "a malformed A-ASSOCIATE-RQ reached the upstream"
    assert "Traceback" not in gw.log.read_text()


@pytest.mark.peers
@pytest.mark.timeout(60)
def test_real_peers_still_associate(rec: tuple[RunningGateway, RecordingUpstream], dcmtk: Dcmtk) -> None:
    gw, upstream = rec
    echo = dcmtk.run("echoscu", "-aet", "DCMTKECHO", "-aec", "PACSGUARD", LOCALHOST, str(gw.port("rec")), timeout=10)
    assert echo.returncode == 0, echo.stdout + echo.stderr
    assert upstream.by_calling_ae("DCMTKECHO").calling_ae == "DCMTKECHO"
    ae = AE(ae_title="PYNETECHO")
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOCALHOST, gw.port("rec"), ae_title="PACSGUARD")
    try:
        assert assoc.is_established
        status = assoc.send_c_echo()
        assert status and status.Status == 0
    finally:
        assoc.release()
        ae.shutdown()
    assert upstream.by_calling_ae("PYNETECHO").calling_ae == "PYNETECHO"


@pytest.mark.peers
@pytest.mark.timeout(60)
def test_pynetdicom_with_a_user_identity_still_associates(rec: tuple[RunningGateway, RecordingUpstream]) -> None:
    """A well-formed User Identity Negotiation (type 2, PS3.7 D.3.3.7.1) passes the checks that
    refuse the undefined values, and reaches the PACS."""
    from pynetdicom.pdu_primitives import UserIdentityNegotiation

    gw, upstream = rec
    ae = AE(ae_title="PYNETUSER")
    ae.add_requested_context(Verification)
    identity = UserIdentityNegotiation()
    identity.user_identity_type = 2
    identity.positive_response_requested = True
    identity.primary_field = b"alice"
    identity.secondary_field = b"s3cret"
    assoc = ae.associate("127.0.0.1", gw.port("rec"), ae_title="PACSGUARD", ext_neg=[identity])
    try:
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()
        ae.shutdown()
    assert upstream.by_calling_ae("PYNETUSER").calling_ae == "PYNETUSER"
