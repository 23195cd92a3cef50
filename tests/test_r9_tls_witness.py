"""Outside round 9, area H: the witness service's HTTPS listener under a TLS scan (BCP 195).

A TLS 1.1 client, a client certificate of another CA, plain HTTP on the HTTPS port, and a client
that hangs up in its handshake each made socketserver print a whole traceback on the witness's
stderr (a scan with sslyze left some 480 of them), and told nothing else. Each is now one warning
line naming the client and why (RFC 9325 3.1.1: TLS 1.2 at least; RFC 8446 4.4.2.4: a client
certificate the server cannot verify), and the listener goes on serving.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacsguard.config.schema import SecretRef
from pacsguard.store.keys import generate_key, public_path
from pacsguard.tls import client_context, make_ca, make_cert
from pacsguard.witness.build import witness_server
from pacsguard.witness.config import WitnessedLog, WitnessServiceConfig
from pacsguard.witness.server import WitnessServer

HOST = "127.0.108.21"  # this area's loopback range (outside round 9, area H)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca, ca_key = make_ca(tmp_path / "pki", "Hospital CA", 30)
    other, other_key = make_ca(tmp_path / "other", "Another CA", 30)
    out = {"ca": ca}
    out["server"], out["server_key"] = make_cert(tmp_path / "pki", "witness", ca, ca_key, hosts=[HOST],
                                                 server=True, days=30)
    out["client"], out["client_key"] = make_cert(tmp_path / "pki", "gw1", ca, ca_key, client=True, days=30)
    out["foreign"], out["foreign_key"] = make_cert(tmp_path / "other", "gw1", other, other_key, client=True,
                                                   days=30)
    return out


@pytest.fixture
def witness(tmp_path: Path, pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[WitnessServer]:
    """A witness service on HTTPS with mutual TLS, as docs/witness.md sets it up."""
    site = generate_key(tmp_path / "site.key")
    monkeypatch.setenv("SITE_TOKEN", "t0ken-of-the-site")
    cfg = WitnessServiceConfig.model_validate({
        "enabled": True, "host": HOST, "port": 0, "storage": Path("held"), "signing_key": Path("witness.key"),
        "timeout": 5,
        "logs": [WitnessedLog(name="site", public_key=public_path(site), token=SecretRef(env="SITE_TOKEN"))],
        "tls": {"cert_file": pki["server"], "key_file": pki["server_key"], "ca_file": pki["ca"],
                "require_client_cert": True}})
    server = witness_server(cfg, lambda p: tmp_path / "w" / p, lambda event: None)
    server.start()
    try:
        yield server
    finally:
        server.close()


def _s_client(port: int, pki: dict[str, Path], *extra: str) -> None:
    subprocess.run(["openssl", "s_client", "-connect", f"{HOST}:{port}", "-CAfile", str(pki["ca"]), *extra],
                   input=b"GET / HTTP/1.1\r\nHost: w\r\n\r\n", capture_output=True, timeout=15, check=False)


def _get(port: int, pki: dict[str, Path]) -> tuple[int, dict[str, object]]:
    """A well-behaved client's GET of an unknown path, with its certificate (RFC 9110 15.5.5: 404)."""
    ctx = client_context(ca_file=pki["ca"], cert_file=pki["client"], key_file=pki["client_key"])
    with socket.create_connection((HOST, port), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=HOST) as tls:
        tls.sendall(b"GET /nowhere HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_refused_tls_clients_are_one_line_each_and_the_service_goes_on(
        witness: WitnessServer, pki: dict[str, Path], capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    port = witness.address[1]
    caplog.set_level(logging.WARNING, logger="pacsguard.witness")
    _s_client(port, pki, "-tls1_1")  # RFC 9325 3.1.1: refused
    _s_client(port, pki, "-cert", str(pki["foreign"]), "-key", str(pki["foreign_key"]))  # another CA
    _s_client(port, pki)  # no client certificate, mutual TLS required
    with socket.create_connection((HOST, port), timeout=10) as plain:  # HTTP on the HTTPS port
        plain.sendall(b"GET / HTTP/1.1\r\nHost: w\r\n\r\n")
        plain.settimeout(10)
        try:
            plain.recv(100)
        except OSError:
            pass
    assert _get(port, pki)[0] == 404  # still serving, and it serves only what was verified
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err[:3000]
    lines = [r.getMessage() for r in caplog.records if r.name == "pacsguard.witness" and r.levelno == logging.WARNING]
    assert len(lines) >= 4, lines
    assert all(line.startswith("witness service: connection from 127.0.") for line in lines), lines
    said = "\n".join(lines)
    assert "unsupported protocol" in said or "version too low" in said, said
    assert "peer certificate rejected: unable to get local issuer certificate" in said, said
    assert "peer did not return a certificate" in said, said


def test_verify_asks_an_https_witness_only_within_bcp_195(tmp_path: Path, pki: dict[str, Path]) -> None:
    """`audit verify --witness https://...` without --witness-ca trusts the system's CAs, as documented,
    but took Python's default TLS context for it: a witness (or whatever answers in its place)
    offering only CBC suites was spoken to. It gets the BCP 195 context every other client has,
    and the refusal names the witness and the policy."""
    import os
    import sys
    import time

    from pacsguard.store import EventStore
    from store_helpers import make_events

    key = generate_key(tmp_path / "site.key")
    es = EventStore.open(str(tmp_path / "site.db"), key_path=key, create=True)
    es.append(make_events(3))
    es.checkpoint()
    es.close()
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    # A TLS 1.2 server with an ECDHE key exchange but a CBC cipher only (RFC 9325 4.2: AEAD only).
    server = subprocess.Popen(["openssl", "s_server", "-accept", f"{HOST}:{port}", "-cert", str(pki["server"]),
                               "-key", str(pki["server_key"]), "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256",
                               "-www"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while server.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        url = f"https://{HOST}:{port}"
        # The system's trust store is the test CA (OpenSSL's SSL_CERT_FILE), so only the suite can refuse.
        env = {**os.environ, "SSL_CERT_FILE": str(pki["ca"])}
        env.pop("PACSGUARD_CONFIG", None)
        done = subprocess.run([sys.executable, "-m", "pacsguard.cli", "audit", "verify", "--store",
                               str(tmp_path / "site.db"), "--key", str(key), "--witness", url],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    finally:
        server.kill()
        server.wait(10)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    # Said as the witness's refusal, in words (it was "unreachable ([SSL: ...] (_ssl.c:1006))").
    assert f'witness {url}: TLS handshake failed: the peer sent the alert "handshake failure"' in done.stderr, \
        done.stderr
