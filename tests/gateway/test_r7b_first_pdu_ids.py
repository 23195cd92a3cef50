"""Round 7b: a client's first PDU that is no A-ASSOCIATE-RQ, sent to a real `pacsguard serve`
route, gets the same IDS alert inline as the passive sensor gives the same bytes (PS3.8 9.2,
state Sta2: only an A-ASSOCIATE-RQ may open an association, anything else is AA-1).

Before, the relay and the store-and-forward acceptor recorded `dicom.protocol.violation` and
aborted without asking the IDS: a P-DATA-TF, A-RELEASE-RQ or A-ASSOCIATE-AC sent first raised no
`ids.alert.*` inline (passive: dicom-protocol-state-violation, dicom-malformed-pdu), and RDP's TPKT
header (03 00, read as an A-ASSOCIATE-RJ with a huge PDU-length) raised nothing at all (passive:
dicom-non-dicom-bytes, protocol_guess=rdp). Also here: `pacsguard gateway spool retry` on a read-only
spool names its route and what to do."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from gateway_under_test import RunningGateway, dead_end_routes, serving

from pacsguard.events import Event

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ids"))

from test_r7_first_pdu import passive  # noqa: E402

pytestmark = [pytest.mark.peers, pytest.mark.timeout(90)]

HOST = "127.0.71.1"  # this helper's own loopback address
PROGRAM = [sys.executable, "-m", "pacsguard.cli"]

AE_PAD = b"WS1".ljust(16) + b"PACSGUARD".ljust(16)
FIRST = {
    # P-DATA-TF with one command PDV (context 1, last fragment): PS3.8 9.3.5
    "p-data-tf": bytes([4, 0, 0, 0, 0, 8, 0, 0, 0, 4, 1, 3, 0, 0]),
    "a-release-rq": bytes([5, 0, 0, 0, 0, 4, 0, 0, 0, 0]),
    "a-associate-ac": bytes([2, 0, 0, 0, 0, 0x44, 0, 1, 0, 0]) + AE_PAD + bytes(32),
    # RDP connection request (nmap's probe): TPKT 03 00 + length, RFC 1006
    "rdp": bytes.fromhex("0300002a25e00000000000436f6f6b69653a206d737473686173683d6e6d61700d0a0100080003000000"),
    "a-associate-rj": bytes([3, 0, 0, 0, 0, 4, 0, 1, 1, 1]),
}
EXPECTED = {"p-data-tf": "ids.alert.dicom-protocol-state-violation",
            "a-release-rq": "ids.alert.dicom-protocol-state-violation",
            "a-associate-ac": "ids.alert.dicom-malformed-pdu",
            "rdp": "ids.alert.dicom-non-dicom-bytes",
            "a-associate-rj": "ids.alert.dicom-non-dicom-bytes"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with serving(tmp_path_factory.mktemp("r7b"), dead_end_routes(HOST), PROGRAM) as running:
        yield running


def _source(route: str, name: str) -> str:
    """A client address of its own per case: dicom-non-dicom-bytes writes one alert per client
    host in 10 minutes (its limit, docs/ids.md), and each case here asks for its alert."""
    return f"127.0.71.{10 + 2 * sorted([*FIRST, 'one-by-one']).index(name) + ('rl', 'sf').index(route)}"


def _send_first(port: int, first: bytes, source: str) -> int:
    """Connect from *source* to the route, send *first*, read until the gateway closes; the
    client's port."""
    with socket.create_connection((HOST, port), timeout=10, source_address=(source, 0)) as s:
        client_port = s.getsockname()[1]
        s.sendall(first)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if not s.recv(4096):
                    break
            except (ConnectionResetError, TimeoutError):
                break
    return client_port


def _guess(alert: Event) -> str | None:
    """What the alert's non-dicom observation says the bytes look like."""
    observation = (alert.details or {}).get("observation") or {}
    return observation.get("protocol_guess")


def _inline(gw: RunningGateway, route: str, first: bytes, source: str) -> tuple[list[str], list[Event]]:
    port = _send_first(gw.port(route), first, source)
    mine = (lambda e: e.actor is not None and e.actor.port == port)  # noqa: E731
    gw.wait_for("dicom.protocol.violation", where=mine)
    alerts = [e for e in gw.events() if e.kind.startswith("ids.alert.") and mine(e)]
    return sorted(e.kind for e in alerts), alerts


@pytest.mark.parametrize("route", ["rl", "sf"])
@pytest.mark.parametrize("name", sorted(FIRST))
def test_a_first_pdu_other_than_an_rq_gets_the_passive_sensors_alert_inline(gw: RunningGateway, route: str,
                                                                          name: str) -> None:
    first = FIRST[name]
    passive_kinds, passive_events = passive(first)
    assert passive_kinds == [EXPECTED[name]]
    inline_kinds, alerts = _inline(gw, route, first, _source(route, name))
    assert inline_kinds == passive_kinds, gw.log.read_text()[-3000:]
    if EXPECTED[name].endswith("non-dicom-bytes"):
        (alert,) = alerts
        (seen,) = [e for e in passive_events if e.kind == EXPECTED[name]]
        assert _guess(alert) == _guess(seen) == "rdp", alert.details


@pytest.mark.parametrize("route", ["rl", "sf"])
def test_rdp_bytes_arriving_one_by_one_are_told_apart_too(gw: RunningGateway, route: str) -> None:
    """The TPKT header in pieces (03, then 00 00, then the rest): the gateway waits for the four
    bytes that tell RDP from an A-ASSOCIATE-RJ, then alerts as the passive sensor does."""
    rdp = FIRST["rdp"]
    with socket.create_connection((HOST, gw.port(route)), timeout=10,
                                  source_address=(_source(route, "one-by-one"), 0)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        port = s.getsockname()[1]
        for piece in (rdp[:1], rdp[1:3], rdp[3:]):
            s.sendall(piece)
            time.sleep(0.2)  # separate segments: each is a read of its own at the gateway
        mine = (lambda e: e.actor is not None and e.actor.port == port)  # noqa: E731
        (violation,) = gw.wait_for("dicom.protocol.violation", where=mine)
    assert "rdp" in violation.message, violation.message
    (alert,) = [e for e in gw.events() if e.kind.startswith("ids.alert.") and mine(e)]
    assert alert.kind == "ids.alert.dicom-non-dicom-bytes" and _guess(alert) == "rdp", alert.details
    assert (alert.details or {})["observation"]["first_bytes"] == rdp[:16].hex()


def test_an_a_abort_first_is_no_alert_either_way(gw: RunningGateway) -> None:
    """An A-ABORT needs no association to be sent (PS3.8 9.2, Sta2: AA-2): no alert, passive or inline."""
    abort = bytes([7, 0, 0, 0, 0, 4, 0, 0, 0, 0])
    assert passive(abort)[0] == []
    for route in ("rl", "sf"):
        assert _inline(gw, route, abort, HOST)[0] == [], route


def test_spool_retry_on_a_read_only_spool_names_the_route(tmp_path: Path) -> None:
    """It printed "[Errno 30] Read-only file system: '.../retry.xxx.tmp'" without the route."""
    home = tmp_path / "gw"
    spool = home / "var" / "spool" / "sf"
    spool.mkdir(parents=True)
    config = {"store": {"url": "var/pacsguard.db"}, "gateway": {"routes": [dead_end_routes(HOST)[1]]}}
    (home / "pacsguard.yaml").write_text(yaml.safe_dump(config))
    subprocess.run(["mount", "--bind", str(spool), str(spool)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(spool)], check=True)
        done = subprocess.run([*PROGRAM, "gateway", "spool", "retry"], cwd=home, capture_output=True, text=True,
                              timeout=60, env={**os.environ, "COLUMNS": "300"})
    finally:
        subprocess.run(["umount", str(spool)], check=True)
    said = done.stdout + done.stderr
    assert done.returncode == 2 and "Traceback" not in said, said
    assert "route sf: retry not requested" in said and str(spool) in said, said
    assert "Read-only file system" in said and "writable" in said, said
    assert not list(spool.glob("retry*")), list(spool.iterdir())


def test_a_service_scan_gives_one_alert_per_host_and_every_connection_its_record(gw: RunningGateway) -> None:
    """nmap -sV sends dozens of probes (HTTP, RDP, SSL banners, ...) to one port: one alert per
    scanning host in 10 minutes (dicom-non-dicom-bytes' limit; the rest are counted in its
    aggregate), while every connection is still refused and recorded as a violation (outside
    round 9: one `nmap -sV` wrote 79 alerts). The limit never changes enforcement (docs/ids.md)."""
    source = "127.0.71.40"
    probes = [b"GET / HTTP/1.0\r\n\r\n", b"OPTIONS / RTSP/1.0\r\n\r\n", FIRST["rdp"], b"\r\n\r\n" + bytes(8),
              b"HELP\r\n", b"SSH-2.0-OpenSSH_9.2\r\n"] * 2
    ports = {_send_first(gw.port("rl"), probe, source) for probe in probes}
    # By address and port: another test's client, on another address of the same gateway, may
    # have had one of these port numbers (its alert was taken for this scan's second).
    mine = (lambda e: e.actor is not None and e.actor.host == source and e.actor.port in ports)  # noqa: E731
    violations = gw.wait_for("dicom.protocol.violation", count=len(ports), where=mine)
    assert {v.actor.port for v in violations} == ports  # every probe connection has its record
    alerts = [e for e in gw.events() if e.kind == "ids.alert.dicom-non-dicom-bytes" and mine(e)]
    assert len(alerts) == 1, [a.details for a in alerts]
    assert alerts[0].details["limit"]["within_seconds"] == 600
