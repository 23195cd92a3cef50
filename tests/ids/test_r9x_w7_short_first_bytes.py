"""A client that sends fewer bytes than a PDU header (PS3.8 9.3.1: six), none of them a PDU type,
and closes: the same IDS alert inline as passively (outside round 9, W7; issue #15).

Passively, ``\\r\\n\\r\\n`` and a FIN on a DICOM port is ``dicom-non-dicom-bytes`` (the bytes look
like text). Inline, the gateway's PDU reader waited for a sixth byte that never came, so the close
was recorded only as a ``truncated-pdu`` violation and the IDS heard nothing. Here a real
``pacsguard serve`` with a relay and a store-and-forward route, and a plain TCP client.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "gateway"))

from gateway_under_test import RunningGateway, dead_end_routes, serving  # noqa: E402
from test_r7_first_pdu import passive  # noqa: E402

pytestmark = [pytest.mark.peers, pytest.mark.timeout(90)]

HOST = "127.0.117.1"
PROGRAM = [sys.executable, "-m", "pacsguard.cli"]
# (pieces the client sends, one write each) -> the passive sensor's alert for their bytes
CASES = {
    "crlf-crlf": [b"\r\n\r\n"],
    "crlf-in-two-writes": [b"\r", b"\n\r\n"],
    "get": [b"GET"],
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with serving(tmp_path_factory.mktemp("w7"), dead_end_routes(HOST), PROGRAM) as running:
        yield running


def _source(route: str, name: str) -> str:
    """A client address per case: dicom-non-dicom-bytes alerts once per client host in 10 minutes."""
    return f"127.0.117.{10 + 2 * sorted(CASES).index(name) + ('rl', 'sf').index(route)}"


def _send_and_close(port: int, pieces: list[bytes], source: str) -> int:
    """Send *pieces* (a write each, the gateway reading each on its own) and close; the client's port."""
    with socket.create_connection((HOST, port), timeout=10, source_address=(source, 0)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client_port = s.getsockname()[1]
        for piece in pieces:
            s.sendall(piece)
            time.sleep(0.2)
    return client_port


@pytest.mark.parametrize("route", ["rl", "sf"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_fewer_bytes_than_a_pdu_header_then_close_alert_as_passively(gw: RunningGateway, route: str,
                                                                      name: str) -> None:
    pieces = CASES[name]
    sent = b"".join(pieces)
    passive_kinds, passive_events = passive(sent)
    assert passive_kinds == ["ids.alert.dicom-non-dicom-bytes"]
    port = _send_and_close(gw.port(route), pieces, _source(route, name))
    mine = (lambda e: e.actor is not None and e.actor.port == port)  # noqa: E731
    (violation,) = gw.wait_for("dicom.protocol.violation", where=mine)
    assert "closed after" in violation.message, violation.message  # the close is said, not hidden
    alerts = [e for e in gw.events() if e.kind.startswith("ids.alert.") and mine(e)]
    assert sorted(e.kind for e in alerts) == passive_kinds, gw.log.read_text()[-3000:]
    (seen,) = passive_events
    observed = (alerts[0].details or {})["observation"]
    assert observed["first_bytes"] == seen.details["observation"]["first_bytes"] == sent.hex()
    assert observed["protocol_guess"] == seen.details["observation"]["protocol_guess"]


@pytest.mark.parametrize("route", ["rl", "sf"])
def test_a_pdu_type_byte_then_close_stays_a_truncated_pdu(gw: RunningGateway, route: str) -> None:
    """01 00 (the start of an A-ASSOCIATE-RQ) and a close: no alert either way, and the violation
    still says the connection ended inside a PDU."""
    first = b"\x01\x00"
    assert passive(first)[0] == []
    port = _send_and_close(gw.port(route), [first], HOST)
    mine = (lambda e: e.actor is not None and e.actor.port == port)  # noqa: E731
    if route == "rl":
        (violation,) = gw.wait_for("dicom.protocol.violation", where=mine)
        assert "truncated-pdu" in violation.message, violation.message
    else:
        time.sleep(1.0)  # the store-and-forward acceptor closes quietly before an RQ
    assert [e.kind for e in gw.events() if e.kind.startswith("ids.alert.") and mine(e)] == []
