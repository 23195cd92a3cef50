"""A TLS route that refuses a handshake says why, as OpenSSL servers do (RFC 8446 6.2, RFC 5246
7.2.2): `openssl s_client` must see the alert (protocol_version, handshake_failure,
certificate_required, unknown_ca), not an unexpected EOF. The refusal is recorded as before. Both
event loops are tried: uvloop reads a connection's first TLS records before start_tls() takes it over."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from gateway_under_test import route

from pacsguard.tls import make_ca, make_cert
from peers.dcmtk import free_port

pytestmark = [pytest.mark.peers, pytest.mark.timeout(120)]


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ours, theirs = tmp_path / "pki", tmp_path / "other"
    ca_cert, ca_key = make_ca(ours, "Test Hospital CA", 30)
    other_ca, other_key = make_ca(theirs, "Some Other CA", 30)
    out = {"ca": ca_cert}
    out["gateway_cert"], out["gateway_key"] = make_cert(ours, "gateway", ca_cert, ca_key, hosts=["127.0.0.1"],
                                                        days=30, server=True)
    out["modality_cert"], out["modality_key"] = make_cert(ours, "modality", ca_cert, ca_key, hosts=["127.0.0.1"],
                                                          days=30, client=True)
    out["stranger_cert"], out["stranger_key"] = make_cert(theirs, "stranger", other_ca, other_key,
                                                          hosts=["127.0.0.1"], days=30, client=True)
    return out


def s_client(port: int, pki: dict[str, Path], *extra: str) -> str:
    result = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(pki["ca"]),
                             "-ign_eof", *extra], input="", capture_output=True, text=True, timeout=30)
    return result.stdout + result.stderr


@pytest.fixture(params=["uvloop", "asyncio"])
def tls_gateway(gateway, pki, monkeypatch, request):
    """The gateway on uvloop (what serve chooses, TLS routes included) and on asyncio's own loop."""
    monkeypatch.setenv("PACSGUARD_EVENT_LOOP", request.param)
    tls = {"cert_file": str(pki["gateway_cert"]), "key_file": str(pki["gateway_key"]), "ca_file": str(pki["ca"]),
           "require_client_cert": True}
    gw = gateway(route("main", free_port(), listen_tls=tls))
    expected = "uvloop" if request.param == "uvloop" else "asyncio"
    deadline = time.monotonic() + 10
    while f"event loop: {expected}" not in gw.log.read_text():
        assert time.monotonic() < deadline, gw.log.read_text()
        time.sleep(0.1)
    return gw


@pytest.mark.parametrize("case, args, alert", [
    ("tls-1.1", ("-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"), "alert protocol version"),
    ("no-shared-cipher", ("-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"),
     "alert handshake failure"),
    ("no-client-certificate", (), "alert certificate required"),
    ("certificate-from-another-ca", ("stranger",), "alert unknown ca"),
])
def test_a_refused_handshake_sends_the_alert(tls_gateway, pki, case: str, args: tuple[str, ...], alert: str) -> None:
    if args == ("stranger",):
        args = ("-cert", str(pki["stranger_cert"]), "-key", str(pki["stranger_key"]))
    out = s_client(tls_gateway.port(), pki, *args)
    assert alert in out, out
    # (The fixture's readiness probe, a bare connect and close, is recorded too: not this one.)
    failed, = tls_gateway.wait_for("tls.handshake.failed", where=lambda e: "closed the connection" not in e.message)
    assert failed.actor.host == "127.0.0.1" and failed.outcome == "serious-failure" and failed.details["error"]
