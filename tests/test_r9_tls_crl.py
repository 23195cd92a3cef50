"""Outside round 9, area H: a certificate revocation list in a CA file (RFC 5280 5, 6.3).

A hospital revokes the certificate of a stolen modality by publishing its CA's CRL; the PEM that
`ca_file` names then holds the CA certificate and the CRL. OpenSSL loaded the CRL but consulted
none, so every pacsguard listener (mutual TLS) and client accepted the revoked certificate in
silence. With CRLs in the file, the peer's certificate is now checked against its issuer's CRL;
a CRL that is malformed, out of date or not signed by a CA of the file stops the start with the
file named, instead of turning into refused handshakes far from their cause.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from pacsguard.tls import TLSConfigError, client_context, make_ca, make_cert, server_context
from tls_helpers import s_server_connection

HOST = "127.0.108.31"  # this area's loopback range (outside round 9, area H)


def _crl(ca: Path, ca_key: Path, revoked: list[Path], *, next_update: timedelta = timedelta(days=7)) -> bytes:
    """The CA's CRL (PEM) revoking the certificates ``revoked``."""
    issuer = x509.load_pem_x509_certificate(ca.read_bytes())
    key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    now = datetime.now(timezone.utc)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer.subject)
               .last_update(now - timedelta(days=8)).next_update(now + next_update))
    for cert in revoked:
        serial = x509.load_pem_x509_certificate(cert.read_bytes()).serial_number
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now - timedelta(hours=1)).build())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "pki"
    ca, ca_key = make_ca(d, "Hospital CA", 30)
    out = {"ca": ca, "ca_key": ca_key}
    out["server"], out["server_key"] = make_cert(d, "gateway", ca, ca_key, hosts=[HOST], server=True, days=30)
    out["stolen"], out["stolen_key"] = make_cert(d, "ct-stolen", ca, ca_key, client=True, days=30)
    out["good"], out["good_key"] = make_cert(d, "ct-good", ca, ca_key, client=True, days=30)
    return out


def _bundle(pki: dict[str, Path], crl: bytes, name: str = "ca-with-crl.pem") -> Path:
    path = pki["ca"].parent / name
    path.write_bytes(pki["ca"].read_bytes() + crl)
    return path


def _serve_once(ctx: ssl.SSLContext) -> tuple[int, dict[str, str], threading.Thread]:
    """A listener on HOST taking one connection with ``ctx``; the outcome lands in the dict."""
    listener = socket.create_server((HOST, 0))
    listener.settimeout(15)
    outcome: dict[str, str] = {}

    def run() -> None:
        with listener:
            try:
                conn, _ = listener.accept()
            except OSError as exc:
                outcome["server"] = f"no client: {exc}"
                return
            conn.settimeout(15)
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"welcome\n")
                    outcome["server"] = "accepted"
            except (OSError, ssl.SSLError) as exc:
                outcome["server"] = getattr(exc, "verify_message", None) or str(exc)
                conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return listener.getsockname()[1], outcome, thread


def _s_client(port: int, pki: dict[str, Path], who: str) -> None:
    subprocess.run(["openssl", "s_client", "-connect", f"{HOST}:{port}", "-CAfile", str(pki["ca"]),
                    "-cert", str(pki[who]), "-key", str(pki[f"{who}_key"])],
                   stdin=subprocess.DEVNULL, capture_output=True, timeout=20, check=False)


def test_a_listener_refuses_a_revoked_client_certificate(pki: dict[str, Path]) -> None:
    bundle = _bundle(pki, _crl(pki["ca"], pki["ca_key"], [pki["stolen"]]))
    ctx = server_context(pki["server"], pki["server_key"], ca_file=bundle, require_client_cert=True)
    for who, expected in (("stolen", "certificate revoked"), ("good", "accepted")):
        port, outcome, thread = _serve_once(ctx)
        _s_client(port, pki, who)
        thread.join(20)
        assert outcome.get("server") == expected, (who, outcome)


def test_a_client_refuses_a_revoked_server_certificate(pki: dict[str, Path], tmp_path: Path) -> None:
    """openssl s_server presents a revoked certificate: the client (outbound ATNA, the syslog sink,
    the upstream leg, the witness client all use client_context) refuses it."""
    bundle = _bundle(pki, _crl(pki["ca"], pki["ca_key"], [pki["server"]]))
    with s_server_connection(HOST, pki["server"], pki["server_key"]) as raw, \
            pytest.raises(ssl.SSLCertVerificationError) as refused:
        client_context(ca_file=bundle).wrap_socket(raw, server_hostname=HOST)
    assert refused.value.verify_message == "certificate revoked"


def test_a_crl_that_cannot_serve_is_a_config_error(pki: dict[str, Path], tmp_path: Path) -> None:
    other, other_key = make_ca(tmp_path / "other", "Another CA", 30)
    cases = {
        "expired": (_crl(pki["ca"], pki["ca_key"], [], next_update=-timedelta(days=1)), "expired on"),
        "foreign": (_crl(other, other_key, []), "not signed by a CA certificate in this file"),
        "garbled": (b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", "malformed PEM CRL"),
    }
    for name, (crl, said) in cases.items():
        bundle = _bundle(pki, crl, f"{name}.pem")
        for side in ("server", "client"):
            with pytest.raises(TLSConfigError) as err:
                if side == "server":
                    server_context(pki["server"], pki["server_key"], ca_file=bundle, require_client_cert=True)
                else:
                    client_context(ca_file=bundle)
            assert str(err.value).startswith(f"CA file {bundle}: "), (name, str(err.value))
            assert said in str(err.value), (name, str(err.value))


def test_a_ca_file_without_crls_checks_no_revocation(pki: dict[str, Path]) -> None:
    """Without CRLs nothing changes: no CRL is looked for (a site without one keeps working)."""
    ctx = server_context(pki["server"], pki["server_key"], ca_file=pki["ca"], require_client_cert=True)
    assert not ctx.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    port, outcome, thread = _serve_once(ctx)
    _s_client(port, pki, "stolen")
    thread.join(20)
    assert outcome.get("server") == "accepted", outcome
