"""No traceback, ever (issue #16, section 3): 100,000 seeded PDU-level mutations of real associations
through the relay in memory (tests/gateway/fuzz_relay.py says what is mutated and what is checked of
every input), then a smaller run over real sockets against a running gateway whose log must hold no
"Traceback" and whose upstream must receive nothing malformed. bench/fuzz.py runs longer ones."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator

import pytest
from fuzz_relay import make_input, run, seeds, whole_pdus
from gateway_under_test import RunningGateway, route
from test_bad_input import RECORDER_AE, RecordingUpstream, start_gateway

from pacsguard.dicom import pdu as P
from pacsguard.dicom.conformance import associate_rq_faults
from peers.dcmtk import Dcmtk

SEED = 16  # the number: any fixed seed keeps the run reproducible
INPUTS = 100_000
LOCALHOST = "127.0.0.1"


@pytest.mark.timeout(600)
def test_100k_mutated_associations_end_in_a_recorded_refusal_or_a_normal_outcome(caplog) -> None:
    caplog.set_level(logging.ERROR, logger="pacsguard")  # each refusal logs a warning; 100,000 of them
    report = asyncio.run(run(SEED, INPUTS))
    assert report.findings == [], "\n".join(map(str, report.findings))
    assert report.ran == INPUTS
    # Not vacuous: the mutations reach every ending, and most inputs are refused.
    assert set(report.outcomes) == {"rejected", "aborted", "released", "open", "not-requested"}, report.outcomes
    assert report.outcomes["aborted"] + report.outcomes["rejected"] > INPUTS // 2, report.outcomes
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "the relay logged an error"


def test_inputs_are_a_function_of_seed_and_index() -> None:
    corpus = seeds()
    assert make_input(SEED, 12345, corpus) == make_input(SEED, 12345, corpus)
    assert make_input(SEED, 12345, corpus) != make_input(SEED + 1, 12345, corpus)


# --- over real sockets ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzzed(dcmtk: Dcmtk,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, RecordingUpstream]]:
    upstream = RecordingUpstream()
    gw = start_gateway(tmp_path_factory.mktemp("fuzz") / "home",
                       [route("rec", upstream.port, upstream_ae=RECORDER_AE,
                              policy={"calling_ae_titles": ["CT1", "MR1"]})])
    try:
        yield gw, upstream
    finally:
        gw.stop()
        upstream.close()


def _send(port: int, reads: list[tuple[bool, bytes]]) -> None:
    """The client's reads of one input over a fresh connection; the upstream's are the real upstream's."""
    with socket.create_connection((LOCALHOST, port), timeout=2) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for from_client, data in reads:
                if from_client and data:
                    sock.sendall(data)
                    time.sleep(0.0005)  # separate reads, as the in-memory run has them
        except OSError:
            pass  # the gateway ended the association: that is an outcome


@pytest.mark.peers
@pytest.mark.timeout(300)
def test_mutated_associations_over_real_sockets_leave_no_traceback(
        fuzzed: tuple[RunningGateway, RecordingUpstream], dcmtk: Dcmtk) -> None:
    gw, upstream = fuzzed
    corpus = seeds()
    for index in range(1500):
        reads, _ = make_input(SEED + 1, index, corpus)
        _send(gw.port("rec"), reads)
    time.sleep(1.0)
    log = gw.log.read_text()
    assert "Traceback" not in log and "internal error" not in log, log[-4000:]
    assert gw.proc.poll() is None, "the gateway exited"
    # Nothing malformed reached the upstream: whole PDUs the decoder accepts, conforming RQs.
    with upstream.lock:
        received = [bytes(c.received) for c in upstream.connections]
    for data in received:
        frames, _tail = whole_pdus(data)  # a cut-through PDU may end where the client's connection did
        for frame in frames:
            if frame[0] == P.PDU_P_DATA_TF:
                P.pdv_spans(frame)
                continue
            parsed = P.parse_pdu(frame)
            if isinstance(parsed, P.AssociateRQ):
                assert associate_rq_faults(parsed) == []
    # Still serving.
    echo = dcmtk.run("echoscu", "-aet", "CT1", "-aec", "PACSGUARD", LOCALHOST, str(gw.port("rec")), timeout=10)
    assert echo.returncode == 0, echo.stdout + echo.stderr
