"""Outside tester, round 4: what the gateway records when TLS fails, on either leg.

- A client of a TLS route that never completes its handshake (silent, or half a ClientHello) is
  cut off after limits.artim_timeout; `tls.handshake.failed` says the gateway timed it out, not that
  the client closed the connection (which sent an administrator chasing certificates). Both event
  loops: they report the timeout differently.
- A PACS that refuses the gateway's client certificate (dcmtk storescp +tls --require-peer-cert)
  does so in TLS 1.3 after the gateway's handshake has completed, as an alert on the first read
  (RFC 8446 4.4.2.4). The modality gets the transient A-ASSOCIATE-RJ of an unreachable upstream
  (docs/gateway.md, Refusals) and `gateway.upstream.unreachable` names the alert, as for an
  upstream certificate the gateway refuses; it used to be an A-ABORT.
- Under load the PACS's close (with the A-ASSOCIATE-RQ unread) sends a reset that overtakes its
  alert (1 run in ~150 on 2 busy cores): that, and any PACS that resets or closes its leg before
  an A-ASSOCIATE-AC, is also an unreachable upstream, not an A-ABORT of an association that never
  was; over TLS the reason points at the client certificate.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_under_test import RunningGateway, route

from pacsguard.tls import make_ca, make_cert
from peers.dcmtk import Dcmtk, free_port, run_storescp

pytestmark = [pytest.mark.peers, pytest.mark.timeout(120)]

ARTIM = 1.5
#: The first bytes of a TLS record holding a ClientHello of 512 bytes: the rest never comes.
HALF_A_CLIENT_HELLO = bytes.fromhex("1603010200")


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ours, theirs = tmp_path / "pki", tmp_path / "other"
    ca_cert, ca_key = make_ca(ours, "Test Hospital CA", 30)
    other_ca, _ = make_ca(theirs, "Some Other CA", 30)
    out = {"ca": ca_cert, "other_ca": other_ca}
    out["server_cert"], out["server_key"] = make_cert(ours, "server", ca_cert, ca_key, hosts=["127.0.0.1"],
                                                      days=30, server=True)
    out["client_cert"], out["client_key"] = make_cert(ours, "gateway", ca_cert, ca_key, hosts=["127.0.0.1"],
                                                      days=30, client=True)
    return out


@pytest.fixture(params=["uvloop", "asyncio"])
def slow_tls_gateway(gateway, pki, monkeypatch, request) -> RunningGateway:
    monkeypatch.setenv("PACSGUARD_EVENT_LOOP", request.param)
    tls = {"cert_file": str(pki["server_cert"]), "key_file": str(pki["server_key"])}
    return gateway(route("main", free_port(), listen_tls=tls, limits={"artim_timeout": ARTIM}))


def _closed_by_the_gateway(sock: socket.socket, since: float) -> float:
    """Seconds from *since* until the gateway closes *sock* (it never sends a byte to a silent client)."""
    sock.settimeout(ARTIM + 10)
    assert sock.recv(10) == b""
    return time.monotonic() - since


def test_a_handshake_the_gateway_times_out_is_recorded_as_a_timeout(slow_tls_gateway: RunningGateway) -> None:
    gw = slow_tls_gateway
    started = time.monotonic()
    silent = socket.create_connection(("127.0.0.1", gw.port()))
    half = socket.create_connection(("127.0.0.1", gw.port()))
    half.sendall(HALF_A_CLIENT_HELLO)
    with silent, half:
        ports = {silent.getsockname()[1], half.getsockname()[1]}
        for sock in (silent, half):
            assert ARTIM - 0.5 < _closed_by_the_gateway(sock, started) < ARTIM + 5
    failed = gw.wait_for("tls.handshake.failed", count=2, where=lambda e: e.actor.port in ports)
    for event in failed:
        assert f"the gateway timed the handshake out after {ARTIM:g} s" in event.details["error"], event.message
        assert "client closed" not in event.message and "may not trust" not in event.message


def test_a_client_that_closes_mid_handshake_is_still_recorded_as_such(slow_tls_gateway: RunningGateway) -> None:
    gw = slow_tls_gateway
    with socket.create_connection(("127.0.0.1", gw.port())) as sock:
        port = sock.getsockname()[1]
        sock.sendall(HALF_A_CLIENT_HELLO)
        time.sleep(0.2)
    (failed,) = gw.wait_for("tls.handshake.failed", where=lambda e: e.actor.port == port)
    assert "client closed the connection" in failed.message and "timed" not in failed.message


@pytest.fixture
def picky_pacs(dcmtk: Dcmtk, pki: dict[str, Path], tmp_path: Path) -> Iterator[int]:
    """dcmtk storescp over TLS that requires a client certificate from a CA the gateway's is not from."""
    tls = ["+tls", str(pki["server_key"]), str(pki["server_cert"]), "+cf", str(pki["other_ca"]),
           "--require-peer-cert"]
    with run_storescp(dcmtk, tmp_path, aet="ARCHIVE", extra_args=tls) as scp:
        yield scp.port


@pytest.mark.parametrize("client_certificate", [False, True], ids=["no-certificate", "certificate-of-another-ca"])
def test_a_pacs_refusing_the_gateway_s_certificate_is_an_unreachable_upstream(
        gateway, dcmtk: Dcmtk, pki: dict[str, Path], picky_pacs: int, client_certificate: bool) -> None:
    upstream_tls = {"ca_file": str(pki["ca"])}
    if client_certificate:
        upstream_tls |= {"cert_file": str(pki["client_cert"]), "key_file": str(pki["client_key"])}
    gw = gateway(route("main", picky_pacs, upstream_ae="ARCHIVE", upstream_tls=upstream_tls))
    started = time.monotonic()
    echo = dcmtk.run("echoscu", "-aet", "CT1", "-aec", "PACSGUARD", "127.0.0.1", str(gw.port()), timeout=30)
    out = echo.stdout + echo.stderr
    assert echo.returncode != 0 and "Rejected Transient" in out and "Temporary Congestion" in out, out
    assert time.monotonic() - started < 10
    (unreachable,) = gw.wait_for("gateway.upstream.unreachable")
    error = unreachable.details["error"]
    # The alert, or (when the PACS's reset overtook it) the reset after the handshake.
    assert ("TLS refused by the upstream" in error and "alert" in error) or "reset the connection" in error, error
    assert "client certificate" in error, error
    (rejected,) = gw.wait_for("dicom.association.rejected")
    assert rejected.details["rule"] == "upstream" and rejected.details["result"] == 2
    assert not gw.events("dicom.association.aborted")


class _HangingUpPacs:
    """A PACS that accepts the connection (and the TLS handshake, when given a context), reads the
    A-ASSOCIATE-RQ and ends the connection without answering: with a reset (SO_LINGER 0, what a
    close with data unread sends) or a plain close."""

    def __init__(self, context: ssl.SSLContext | None, reset: bool) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.context, self.reset, self.served = context, reset, threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        if self.context is not None:
            conn = self.context.wrap_socket(conn, server_side=True)
        conn.recv(1)
        if self.reset:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        else:  # all of the A-ASSOCIATE-RQ read first: a close with nothing unread is a FIN
            conn.settimeout(0.3)
            try:
                while conn.recv(65536):
                    pass
            except TimeoutError:
                pass
        conn.close()
        self.listener.close()
        self.served.set()


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize("reset", [True, False], ids=["reset", "close"])
def test_a_pacs_hanging_up_before_its_a_associate_ac_is_an_unreachable_upstream(
        gateway, dcmtk: Dcmtk, pki: dict[str, Path], tls: bool, reset: bool) -> None:
    context = None
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki["server_cert"], pki["server_key"])
    pacs = _HangingUpPacs(context, reset)
    gw = gateway(route("main", pacs.port, upstream_ae="ARCHIVE",
                       upstream_tls={"ca_file": str(pki["ca"])} if tls else None))
    echo = dcmtk.run("echoscu", "-aet", "CT1", "-aec", "PACSGUARD", "127.0.0.1", str(gw.port()), timeout=30)
    out = echo.stdout + echo.stderr
    assert pacs.served.wait(5)
    assert echo.returncode != 0 and "Rejected Transient" in out and "Temporary Congestion" in out, out
    (unreachable,) = gw.wait_for("gateway.upstream.unreachable")
    error = unreachable.details["error"]
    assert f"the upstream {'reset' if reset else 'closed'} the connection before answering the A-ASSOCIATE-RQ" \
        in error, error
    assert ("client certificate" in error) == tls, error
    (rejected,) = gw.wait_for("dicom.association.rejected")
    assert rejected.details["rule"] == "upstream" and rejected.details["result"] == 2
    assert not gw.events("dicom.association.aborted")
