"""Outside round 9, area H: every TLS listener `pacsguard serve` starts, audited by sslyze as a
hospital's security engineer would (BCP 195, RFC 9325).

One `serve` runs the gateway's DICOM TLS listener (mutual TLS), the ATNA syslog TLS listener
(RFC 5425, mutual TLS), the ATNA RESTful endpoint on HTTPS and the witness service on HTTPS. sslyze
(the pip package `sslyze`) scans all four: only TLS 1.2 and 1.3 (3.1.1), TLS 1.2 suites with
ephemeral key exchange and an AEAD cipher only (4.1, 4.2), no compression (3.3), no
client-initiated renegotiation (3.5), no session tickets (3.4). The scan's hundreds of refused
handshakes must not stop or stall a listener, nor put a traceback in serve's output: the witness
service printed one per refused handshake. The gateway records each refusal with the part of the
policy the scanner's probe fell short of.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pacsguard.tls import client_context, make_ca, make_cert
from terminal import PACSGUARD

HOST = "127.0.108.41"  # this area's loopback range (outside round 9, area H)
TOKEN = "scan-test-token-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _config(home: Path, pki: dict[str, Path], ports: dict[str, int]) -> None:
    tls = f"cert_file: {pki['server']}, key_file: {pki['server_key']}"
    mutual = f"{tls}, ca_file: {pki['ca']}, require_client_cert: true"
    (home / "pacsguard.yaml").write_text(f"""\
store: {{url: var/pacsguard.db, signing_key: var/keys/store-signing.key, checkpoint_interval: 3600}}
gateway:
  routes:
    - name: scanned
      listen: {{host: {HOST}, port: {ports['dicom']}, ae_title: PACSGUARD, tls: {{{mutual}}}}}
      upstream: {{host: {HOST}, port: {ports['pacs']}, ae_title: DEMOPACS}}
      policy: {{hosts: [127.0.0.0/8], services: [C-ECHO]}}
demo_upstream: {{enabled: true, host: {HOST}, port: {ports['pacs']}, ae_title: DEMOPACS, storage: var/demo}}
atna:
  enabled: true
  tls: {{host: {HOST}, port: {ports['syslog']}, {mutual}}}
  http: {{host: {HOST}, port: {ports['https']}, token: {{env: SCAN_TOKEN}}, {tls}}}
witness:
  enabled: true
  host: {HOST}
  port: {ports['witness']}
  tls: {{{tls}}}
  logs:
    - {{name: site, public_key: var/keys/store-signing.key.pub, token: {{env: SCAN_TOKEN}}}}
""")


def _handshake(port: int, pki: dict[str, Path]) -> str | None:
    ctx = client_context(ca_file=pki["ca"], cert_file=pki["client"], key_file=pki["client_key"])
    with socket.create_connection((HOST, port), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=HOST) as tls:
        return tls.version()


def _accepted(result: dict[str, object], key: str) -> list[str]:
    scan = result[key]
    assert isinstance(scan, dict) and scan["status"] == "COMPLETED", (key, scan)
    return [s["cipher_suite"]["name"] for s in scan["result"]["accepted_cipher_suites"]]


def test_sslyze_finds_every_listener_within_bcp_195_and_the_scan_harms_none(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    ca, ca_key = make_ca(d, "Hospital CA", 30)
    pki = {"ca": ca}
    pki["server"], pki["server_key"] = make_cert(d, "pacsguard", ca, ca_key, hosts=[HOST], server=True, days=30)
    pki["client"], pki["client_key"] = make_cert(d, "scanner", ca, ca_key, client=True, days=30)
    home = tmp_path / "site"
    home.mkdir()
    ports = {name: _free_port() for name in ("dicom", "pacs", "syslog", "https", "witness")}
    _config(home, pki, ports)
    env = {**os.environ, "SCAN_TOKEN": TOKEN}
    env.pop("PACSGUARD_CONFIG", None)
    assert subprocess.run([*PACSGUARD, "init"], cwd=home, env=env, capture_output=True, timeout=60).returncode == 0
    log = home / "serve.log"
    with log.open("w") as out:
        serve = subprocess.Popen([*PACSGUARD, "serve"], cwd=home, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "is running" not in log.read_text() or "witness service" not in log.read_text():
            assert serve.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        scanned = [ports[name] for name in ("dicom", "syslog", "https", "witness")]
        report = tmp_path / "sslyze.json"
        scan = subprocess.run(
            [sys.executable, "-m", "sslyze", "--quiet", f"--json_out={report}", "--mozilla_config=disable",
             "--sslv2", "--sslv3", "--tlsv1", "--tlsv1_1", "--tlsv1_2", "--tlsv1_3", "--compression", "--reneg",
             "--heartbleed", "--resum", "--cert", str(pki["client"]), "--key", str(pki["client_key"]),
             *(f"{HOST}:{port}" for port in scanned)],
            capture_output=True, text=True, timeout=120)
        assert report.exists(), scan.stdout + scan.stderr  # sslyze missing: `pip install sslyze`
        results = {r["server_location"]["port"]: r for r in json.loads(report.read_text())["server_scan_results"]}
        assert sorted(results) == sorted(scanned)
        for port, server in results.items():
            assert server["scan_status"] == "COMPLETED", (port, server.get("connectivity_error_trace"))
            r = server["scan_result"]
            for old in ("ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites", "tls_1_0_cipher_suites",
                        "tls_1_1_cipher_suites"):
                assert _accepted(r, old) == [], (port, old)  # RFC 9325 3.1.1
            tls12 = _accepted(r, "tls_1_2_cipher_suites")
            assert tls12 and all(s.startswith(("TLS_ECDHE_", "TLS_DHE_")) and ("_GCM_" in s or "CHACHA20" in s)
                                 for s in tls12), (port, tls12)  # RFC 9325 4.1, 4.2
            assert _accepted(r, "tls_1_3_cipher_suites"), port
            assert r["tls_compression"]["result"]["supports_compression"] is False, port  # 3.3
            reneg = r["session_renegotiation"]["result"]
            assert reneg["client_renegotiations_success_count"] == 0, (port, reneg)  # 3.5
            assert reneg["supports_secure_renegotiation"] is True, (port, reneg)
            assert r["heartbleed"]["result"]["is_vulnerable_to_heartbleed"] is False, port
            assert r["session_resumption"]["result"]["tls_ticket_successful_resumptions_count"] == 0, port  # 3.4
        # Every listener still serves a well-behaved client after the scan.
        for port in scanned:
            assert _handshake(port, pki) in ("TLSv1.3", "TLSv1.2"), port
        assert serve.poll() is None, log.read_text()[-3000:]
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(30)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait(10)
    text = log.read_text()
    assert serve.returncode == 0, text[-3000:]
    assert "Traceback" not in text and "Exception occurred" not in text, text[:4000]
    # The refused handshakes are on the record: the gateway's and the ATNA listeners' events.
    kinds = subprocess.run([*PACSGUARD, "events", "tail", "-n", "100000", "--format", "json"], cwd=home, env=env,
                           capture_output=True, text=True, timeout=60)
    events = [json.loads(line) for line in kinds.stdout.splitlines() if line.startswith("{")]
    recorded = {e["kind"] for e in events}
    assert "tls.handshake.failed" in recorded and "atna.frame.rejected" in recorded, sorted(recorded)
    # ... saying which part of BCP 195 the scanner's old versions and weak suites fell short of.
    gateway = " ".join(e["message"] for e in events if e["kind"] == "tls.handshake.failed")
    assert "TLS 1.2 or later is required (BCP 195, RFC 9325 3.1.1)" in gateway, gateway[:2000]
    assert "ECDHE with AES-GCM or ChaCha20-Poly1305" in gateway, gateway[:2000]
