"""Outside round 17, area A: pacsguard's TLS probed from outside (BCP 195, RFC 9325).

What the probe found, each checked here against a real OpenSSL peer (`openssl s_server` /
`s_client`) on this area's loopback address:

* pacsguard's client side (upstream PACS, store-and-forward, outbound ATNA feed, syslog sink,
  witness client) offered the finite-field TLS_DHE_* suites in TLS 1.2 and took one from a server
  preferring it; RFC 9325 4.2 lists none and RFC 10015 deprecates them.
* A certificate of pacsguard's own with a 1024-bit RSA key or a SHA-1 signature was refused with
  OpenSSL's bare EE_KEY_TOO_SMALL / CA_MD_TOO_WEAK; one whose extended key usage lacked its side's
  purpose (a clientAuth-only certificate on a listener) was accepted, and every peer then refused
  it with nothing said at start-up.
* A refused peer certificate's advice was "is the right CA configured, and does the name
  match?" for a wrong purpose, a weak key, a path length violation or an IP mismatch.
* A TLS alert the peer sent was told as "sslv3 alert handshake failure", without saying who
  sent it or what it usually means.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from pacsguard.tls import TLSConfigError, client_context, explain_tls_error, make_ca, make_cert, server_context
from tls_helpers import s_server_connection

HOST = "127.0.71.1"  # this area's loopback address (round 17, area A)
OPENSSL = shutil.which("openssl") or "openssl"


def _openssl(*args: str, cwd: Path) -> None:
    """Run the openssl command line (a missing binary fails loudly, never skips)."""
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA and, issued by it with the openssl command line, the certificates pacsguard's own
    tools would never make: weak, SHA-1 signed, of one purpose only, and a sub-CA beyond pathLen 0."""
    ca, ca_key = make_ca(tmp_path, "R17A CA", 30)
    out = {"ca": ca, "ca_key": ca_key}
    out["good"], out["good_key"] = make_cert(tmp_path, "good", ca, ca_key, hosts=[HOST], server=True, client=True,
                                             days=30)
    ext = {"rsa1024": "extendedKeyUsage=serverAuth,clientAuth", "sha1": "extendedKeyUsage=serverAuth,clientAuth",
           "clientonly": "extendedKeyUsage=clientAuth", "serveronly": "extendedKeyUsage=serverAuth",
           "rsa2048": "extendedKeyUsage=serverAuth,clientAuth"}
    for name, usage in ext.items():
        key_spec = ["-newkey", "rsa:1024"] if name == "rsa1024" else (
            ["-newkey", "rsa:2048"] if name == "rsa2048" else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"])
        _openssl("req", "-new", *key_spec, "-nodes", "-keyout", f"{name}.key", "-subj", f"/CN={name}",
                 "-out", f"{name}.csr", cwd=tmp_path)
        (tmp_path / f"{name}.ext").write_text(f"basicConstraints=critical,CA:FALSE\n{usage}\n"
                                              f"subjectAltName=IP:{HOST}\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", str(ca), "-CAkey", str(ca_key), "-set_serial",
                 str(len(out) + 100), "-days", "30", "-sha1" if name == "sha1" else "-sha256",
                 "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=tmp_path)
        out[name], out[f"{name}_key"] = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    return out


# --- the client side's TLS 1.2 suites -------------------------------------------------------------

def test_client_takes_no_finite_field_dhe_suite(pki: dict[str, Path]) -> None:
    """RFC 9325 4.2, RFC 10015: a server that offers TLS 1.2 with DHE only finds no suite in common
    (it took DHE-RSA-AES256-GCM-SHA384); with ECDHE it connects, so the refusal is the suite's."""
    offered = [c["name"] for c in client_context(ca_file=pki["ca"]).get_ciphers()]
    assert not [n for n in offered if n.startswith("DHE-")], offered
    args = ("-tls1_2", "-cipher")
    with s_server_connection(HOST, pki["rsa2048"], pki["rsa2048_key"], *args, "DHE-RSA-AES256-GCM-SHA384") as raw:
        with pytest.raises(ssl.SSLError) as refused:
            client_context(ca_file=pki["ca"]).wrap_socket(raw, server_hostname=HOST).close()
    assert "handshake failure" in explain_tls_error(refused.value)
    with s_server_connection(HOST, pki["rsa2048"], pki["rsa2048_key"], *args, "ECDHE-RSA-AES256-GCM-SHA384") as raw:
        with client_context(ca_file=pki["ca"]).wrap_socket(raw, server_hostname=HOST) as tls:
            assert tls.cipher()[0] == "ECDHE-RSA-AES256-GCM-SHA384"


# --- pacsguard's own certificate: one line naming the file and the reason -------------------------

def test_own_weak_key_is_said_in_words(pki: dict[str, Path]) -> None:
    for make in (lambda: server_context(pki["rsa1024"], pki["rsa1024_key"]),
                 lambda: client_context(ca_file=pki["ca"], cert_file=pki["rsa1024"], key_file=pki["rsa1024_key"])):
        with pytest.raises(TLSConfigError) as err:
            make()
        text = str(err.value)
        assert text.startswith(f"cert file {pki['rsa1024']}: its RSA key has 1024 bits"), text
        assert "2048" in text and "EE_KEY_TOO_SMALL" not in text and "\n" not in text


def test_own_sha1_signature_is_said_in_words(pki: dict[str, Path]) -> None:
    with pytest.raises(TLSConfigError) as err:
        server_context(pki["sha1"], pki["sha1_key"])
    text = str(err.value)
    assert text.startswith(f"cert file {pki['sha1']}: it is signed with SHA-1"), text
    assert "CA_MD_TOO_WEAK" not in text


def test_listener_certificate_without_server_auth_is_refused(pki: dict[str, Path]) -> None:
    """It used to load, and every client then refused it ("unsupported certificate purpose")."""
    with pytest.raises(TLSConfigError) as err:
        server_context(pki["clientonly"], pki["clientonly_key"], ca_file=pki["ca"], require_client_cert=True)
    text = str(err.value)
    assert text.startswith(f"cert file {pki['clientonly']}: its extendedKeyUsage (clientAuth) lacks serverAuth")
    assert "make-cert --server" in text


def test_client_certificate_without_client_auth_is_refused(pki: dict[str, Path]) -> None:
    with pytest.raises(TLSConfigError) as err:
        client_context(ca_file=pki["ca"], cert_file=pki["serveronly"], key_file=pki["serveronly_key"])
    assert str(err.value).startswith(f"cert file {pki['serveronly']}: its extendedKeyUsage (serverAuth) lacks "
                                     "clientAuth")
    # The certificates of `pacsguard tls make-cert` and one without extendedKeyUsage still load.
    server_context(pki["good"], pki["good_key"])
    client_context(ca_file=pki["ca"], cert_file=pki["good"], key_file=pki["good_key"])
    server_context(pki["rsa2048"], pki["rsa2048_key"])


def test_config_check_names_the_certificate_without_server_auth(pki: dict[str, Path], tmp_path: Path) -> None:
    """What the administrator runs: one line, exit 2 (docs/cli.md), no traceback."""
    config = tmp_path / "pacsguard.yaml"
    config.write_text(f"store: {{url: {tmp_path / 'e.db'}, signing_key: {tmp_path / 'own.key'}}}\n"
                      "atna:\n  enabled: true\n  tls:\n"
                      f"    host: {HOST}\n    port: 6514\n    cert_file: {pki['clientonly']}\n"
                      f"    key_file: {pki['clientonly_key']}\n")
    exe = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "pacsguard"
    done = subprocess.run([str(exe), "config", "check", "-c", str(config)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "lacks serverAuth" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


# --- a refused peer certificate: advice that fits the reason --------------------------------------

GENERIC = "is the right CA configured, and does the name match?"


def _refusal(pki: dict[str, Path], cert: str, *extra: str) -> str:
    with s_server_connection(HOST, pki[cert], pki[f"{cert}_key"], *extra) as raw:
        with pytest.raises(ssl.SSLCertVerificationError) as refused:
            client_context(ca_file=pki["ca"]).wrap_socket(raw, server_hostname=HOST).close()
    return explain_tls_error(refused.value)


@pytest.mark.parametrize(("cert", "extra", "words"), [
    ("clientonly", (), "extended key usage does not allow this use"),
    ("rsa1024", ("-cipher", "DEFAULT@SECLEVEL=0"), "too weak"),
    ("sha1", ("-cipher", "DEFAULT@SECLEVEL=0"), "too weak"),
])
def test_refused_server_certificate_gets_its_own_advice(pki: dict[str, Path], cert: str, extra: tuple[str, ...],
                                                        words: str) -> None:
    why = _refusal(pki, cert, *extra)
    assert words in why and GENERIC not in why, why


def test_ip_mismatch_and_path_length_get_their_own_advice(pki: dict[str, Path], tmp_path: Path) -> None:
    # A certificate for another address: the IP check (X509_V_ERR_IP_ADDRESS_MISMATCH).
    other, other_key = make_cert(tmp_path / "o", "other", pki["ca"], pki["ca_key"], hosts=["127.0.71.2"],
                                 server=True, days=30)
    pki["other"], pki["other_key"] = other, other_key
    why = _refusal(pki, "other")
    assert "does not name the IP address" in why and GENERIC not in why, why
    # A sub-CA under make_ca's pathLen 0 CA, and a server certificate from it, sent with its chain.
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
             "sub.key", "-subj", "/CN=Sub CA", "-out", "sub.csr", cwd=tmp_path)
    (tmp_path / "sub.ext").write_text("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n")
    _openssl("x509", "-req", "-in", "sub.csr", "-CA", str(pki["ca"]), "-CAkey", str(pki["ca_key"]), "-set_serial",
             "7", "-days", "30", "-extfile", "sub.ext", "-out", "sub.crt", cwd=tmp_path)
    sub, sub_key = make_cert(tmp_path / "s", "viasub", tmp_path / "sub.crt", tmp_path / "sub.key", hosts=[HOST],
                             server=True, days=30)
    pki["viasub"], pki["viasub_key"] = sub, sub_key
    why = _refusal(pki, "viasub", "-cert_chain", str(tmp_path / "sub.crt"))
    assert "pathLenConstraint" in why and GENERIC not in why, why


def test_foreign_ca_is_told_as_not_issued_by_ca_file(pki: dict[str, Path], tmp_path: Path) -> None:
    ca2, ca2_key = make_ca(tmp_path / "ca2", "Other CA", 30)
    pki["foreign"], pki["foreign_key"] = make_cert(tmp_path / "f", "foreign", ca2, ca2_key, hosts=[HOST],
                                                   server=True, days=30)
    why = _refusal(pki, "foreign")
    assert "not issued by a CA of ca_file" in why, why


# --- an alert the peer sent: said as the peer's, with what it usually means -----------------------

def test_alert_from_the_peer_is_named_as_its(pki: dict[str, Path], tmp_path: Path) -> None:
    """A client that does not trust the listener's certificate ends the handshake with "unknown
    ca"; the listener's reason used to read "tlsv1 alert unknown ca"."""
    other_ca, _ = make_ca(tmp_path / "other", "Other CA", 30)
    why = _server_refusal(pki, [OPENSSL, "s_client", "-connect", f"{HOST}:{{port}}", "-CAfile", str(other_ca),
                                "-verify_return_error"])
    assert why.startswith('TLS handshake failed: the peer sent the alert "unknown ca"'), why
    assert "does not accept this side's certificate" in why


# --- `pacsguard tls`: a usage error is one line and exit 2, never an internal error ---------------

def _tls_cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "pacsguard"
    return subprocess.run([str(exe), "tls", *args], capture_output=True, text=True, timeout=60)


def test_days_beyond_the_year_9999_is_a_usage_error(tmp_path: Path) -> None:
    """It was exit 70, "internal error: OverflowError" (RFC 5280 4.1.2.5: 9999 is the last year)."""
    for days in ("99999999999999999999", "3000000"):
        done = _tls_cli("make-ca", "--out", str(tmp_path / "ca"), "--days", days)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "after the year 9999" in done.stderr and "internal error" not in done.stderr
        assert not (tmp_path / "ca" / "ca.key").exists()


def test_output_directory_that_is_a_file_is_said_so(pki: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("x")
    done = _tls_cli("make-cert", "x", "--ca-cert", str(pki["ca"]), "--ca-key", str(pki["ca_key"]),
                    "--out", str(target), "--server")
    assert done.returncode == 2
    assert f"output directory {target}: is a file, not a directory" in " ".join(done.stderr.split())


# --- no TLS at all on a TLS port ------------------------------------------------------------------

def _server_refusal(pki: dict[str, Path], client: list[str]) -> str:
    """What a listener with pacsguard's context says when ``client`` (a command run against
    {port}) connects to it."""
    context = server_context(pki["good"], pki["good_key"])
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen(1)
        listener.settimeout(10)
        port = listener.getsockname()[1]
        errors: list[BaseException] = []

        def serve() -> None:
            conn, _ = listener.accept()
            conn.settimeout(10)
            try:
                context.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError) as exc:
                errors.append(exc)
            finally:
                conn.close()

        thread = threading.Thread(target=serve)
        thread.start()
        subprocess.run([arg.format(port=port) for arg in client], capture_output=True, timeout=20)
        thread.join(10)
    assert errors, "the handshake did not fail"
    return explain_tls_error(errors[0])


def test_plain_dicom_on_a_tls_port_is_said_so(pki: dict[str, Path]) -> None:
    """dcmtk's echoscu without +tls: the reason was only "wrong version number"."""
    why = _server_refusal(pki, ["/usr/bin/echoscu", "-to", "5", "-aet", "ECHOSCU", "-aec", "PACS", HOST, "{port}"])
    assert why.startswith("TLS handshake failed: wrong version number (the peer did not speak TLS"), why


def test_plain_http_on_a_tls_port_is_said_so(pki: dict[str, Path]) -> None:
    curl = shutil.which("curl") or "curl"
    why = _server_refusal(pki, [curl, "-s", "-m", "5", f"http://{HOST}:{{port}}/"])
    assert "http:// instead of https://" in why, why
