"""TLS: certificates via the CLI, real handshakes on 127.0.0.1, RFC 9325 policy, clear config errors."""

from __future__ import annotations

import ipaddress
import queue
import socket
import ssl
import stat
import subprocess
import threading
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from pacsguard.cli.tls import app
from pacsguard.tls import (
    TLSConfigError,
    client_context,
    describe_peer,
    explain_tls_error,
    make_ca,
    make_cert,
    server_context,
)

OPENSSL = "/usr/bin/openssl"
WAIT = 10.0  # every socket operation and queue wait in this file is bounded by this


# --------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------

def _cli(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    return result


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server cert for 127.0.0.1, a client cert, and an unrelated second CA, all made
    through the CLI the way an operator would."""
    out = tmp_path_factory.mktemp("pki")
    other = tmp_path_factory.mktemp("other-pki")
    for args in (
        ["make-ca", "--out", str(out), "--cn", "Test Hospital CA", "--days", "30"],
        ["make-cert", "server", "--ca-cert", str(out / "ca.crt"), "--ca-key", str(out / "ca.key"),
         "--out", str(out), "--host", "127.0.0.1", "--host", "localhost", "--server"],
        ["make-cert", "modality1", "--ca-cert", str(out / "ca.crt"), "--ca-key",
         str(out / "ca.key"), "--out", str(out), "--client"],
        ["make-ca", "--out", str(other), "--cn", "Other CA"],
    ):
        result = _cli(*args)
        assert result.exit_code == 0, result.output
    return {
        "ca": out / "ca.crt", "ca_key": out / "ca.key",
        "server": out / "server.crt", "server_key": out / "server.key",
        "client": out / "modality1.crt", "client_key": out / "modality1.key",
        "other_ca": other / "ca.crt", "dir": out,
    }


class TLSServer:
    """Accepts connections on 127.0.0.1 in a thread; per connection it handshakes, answers one
    'ping' and records {'peer': describe_peer(...)} or {'error': exception}."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.results: queue.Queue[dict[str, Any]] = queue.Queue()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            conn.settimeout(WAIT)
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    info = describe_peer(tls)
                    try:
                        data = tls.recv(64)
                        if data:
                            tls.sendall(b"pong:" + data)
                    except (OSError, ssl.SSLError):
                        pass  # s_client just hangs up
                    self.results.put({"peer": info})
            except (OSError, ssl.SSLError) as exc:
                conn.close()
                self.results.put({"error": exc})

    def result(self) -> dict[str, Any]:
        return self.results.get(timeout=WAIT)

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(WAIT)


@contextmanager
def serving(ctx: ssl.SSLContext) -> Iterator[TLSServer]:
    server = TLSServer(ctx)
    try:
        yield server
    finally:
        server.close()


def _talk(ctx: ssl.SSLContext, port: int, server_hostname: str = "127.0.0.1") -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
            info = describe_peer(tls)
            tls.sendall(b"ping")
            info["reply"] = tls.recv(64)
            return info


def _s_client(port: int, ca: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca),
         "-verify_return_error", "-verify_ip", "127.0.0.1", "-brief", *extra],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20,
    )


# --------------------------------------------------------------------------------------------
# certificates and the CLI
# --------------------------------------------------------------------------------------------

def test_cli_make_ca_and_make_cert(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    result = _cli("make-ca", "--out", str(out), "--cn", "Radiology CA", "--days", "100")
    assert result.exit_code == 0, result.output
    assert str(out / "ca.crt") in result.output and str(out / "ca.key") in result.output

    result = _cli("make-cert", "pacs1", "--ca-cert", str(out / "ca.crt"), "--ca-key",
                  str(out / "ca.key"), "--out", str(out), "--host", "pacs1.example.org",
                  "--host", "10.1.2.3", "--host", "::1", "--server", "--client", "--days", "10")
    assert result.exit_code == 0, result.output
    assert str(out / "pacs1.crt") in result.output

    for key in ("ca.key", "pacs1.key"):
        assert stat.S_IMODE((out / key).stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    leaf = x509.load_pem_x509_certificate((out / "pacs1.crt").read_bytes())

    assert ca.subject.rfc4514_string() == "CN=Radiology CA"
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign

    assert leaf.issuer == ca.subject
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    assert leaf.public_key().curve.name == "secp256r1"
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    leaf_ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert leaf_ku.critical and leaf_ku.value.digital_signature and not leaf_ku.value.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["pacs1.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3"),
                                                       ipaddress.ip_address("::1")]
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert timedelta(days=10) <= lifetime <= timedelta(days=10, minutes=10)
    # The real verifier agrees the chain is sound.
    verify = subprocess.run([OPENSSL, "verify", "-CAfile", str(out / "ca.crt"),
                             str(out / "pacs1.crt")], capture_output=True, text=True, timeout=20)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_cli_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    assert _cli("make-ca", "--out", str(tmp_path)).exit_code == 0
    before = (tmp_path / "ca.key").read_bytes()

    result = _cli("make-ca", "--out", str(tmp_path))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "already exists" in lines[0] and str(tmp_path / "ca") in lines[0]
    assert (tmp_path / "ca.key").read_bytes() == before

    result = _cli("make-ca", "--out", str(tmp_path), "--force")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ca.key").read_bytes() != before
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600


def test_cli_errors_are_one_line_exit_2(tmp_path: Path, pki: dict[str, Path]) -> None:
    base = ["--ca-cert", str(pki["ca"]), "--ca-key", str(pki["ca_key"]), "--out", str(tmp_path)]
    cases = [
        (["make-cert", "x", *base], "--server and/or --client"),
        (["make-cert", "x", "--ca-cert", str(pki["ca"]), "--ca-key", str(tmp_path / "nope.key"),
          "--out", str(tmp_path), "--server"], str(tmp_path / "nope.key")),
        (["make-cert", "x", "--ca-cert", str(pki["server"]), "--ca-key", str(pki["server_key"]),
          "--out", str(tmp_path), "--server"], "not a CA certificate"),
        (["make-cert", "x", "--ca-cert", str(pki["ca"]), "--ca-key", str(pki["client_key"]),
          "--out", str(tmp_path), "--server"], "does not match"),
        (["make-cert", "x", *base, "--server", "--host", "bad host!"], "bad host!"),
        (["make-cert", "../evil", *base, "--server"], "certificate name"),
    ]
    for args, expected in cases:
        result = _cli(*args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
        assert expected in lines[0], (expected, lines[0])
        assert "Traceback" not in result.output
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_make_cert_api_accepts_loaded_objects(tmp_path: Path) -> None:
    ca_cert_path, ca_key_path = make_ca(tmp_path, "API CA", 5)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    cert_path, key_path = make_cert(tmp_path, "ws-1", ca_cert, ca_key, hosts=[], client=True,
                                    server=False, days=1)
    leaf = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    with pytest.raises(TLSConfigError, match="already exists"):
        make_cert(tmp_path, "ws-1", ca_cert, ca_key, client=True, days=1)
    with pytest.raises(TLSConfigError, match="client and/or server"):
        make_cert(tmp_path, "ws-2", ca_cert, ca_key, days=1)


# --------------------------------------------------------------------------------------------
# RFC 9325 policy and real handshakes
# --------------------------------------------------------------------------------------------

def test_context_policy_follows_rfc9325(pki: dict[str, Path]) -> None:
    for ctx in (server_context(pki["server"], pki["server_key"]),
                client_context(ca_file=pki["ca"])):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert ctx.options & ssl.OP_NO_COMPRESSION
        assert ctx.options & ssl.OP_NO_RENEGOTIATION
        assert ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
        tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
        assert tls12
        for cipher in tls12:
            assert cipher["kea"] in ("kx-ecdhe", "kx-dhe"), cipher["name"]
            assert cipher["aead"], cipher["name"]
            assert cipher["symmetric"] in ("aes-128-gcm", "aes-256-gcm", "chacha20-poly1305")
    client = client_context(ca_file=pki["ca"])
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname


def test_handshake_tls13_and_tls12(pki: dict[str, Path]) -> None:
    with serving(server_context(pki["server"], pki["server_key"])) as server:
        info = _talk(client_context(ca_file=pki["ca"]), server.port)
        assert info["tls_version"] == "TLSv1.3"
        assert info["reply"] == b"pong:ping"
        assert info["subject_cn"] == "server" and info["subject"] == "CN=server"
        assert info["issuer"] == "CN=Test Hospital CA"
        assert int(info["serial"], 16) > 0 and info["not_after"].endswith("Z")
        assert len(info["fingerprint_sha256"]) == 64
        assert server.result()["peer"]["subject"] is None  # no client cert asked for

        # localhost is in the SAN as well: name checking stays on.
        assert _talk(client_context(ca_file=pki["ca"]), server.port, "localhost")["reply"]
        server.result()

        tls12 = client_context(ca_file=pki["ca"])
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        info = _talk(tls12, server.port)
        assert info["tls_version"] == "TLSv1.2"
        assert info["cipher"].startswith("ECDHE-ECDSA-")
        assert "GCM" in info["cipher"] or "CHACHA20" in info["cipher"]
        assert server.result()["peer"]["tls_version"] == "TLSv1.2"


def test_hostname_mismatch_is_refused(pki: dict[str, Path]) -> None:
    with serving(server_context(pki["server"], pki["server_key"])) as server:
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            _talk(client_context(ca_file=pki["ca"]), server.port, "pacs.example.org")
        assert "mismatch" in explain_tls_error(info.value).lower()
        server.result()
        # check_hostname=False still verifies the chain, only not the name.
        reply = _talk(client_context(ca_file=pki["ca"], check_hostname=False), server.port,
                      "pacs.example.org")
        assert reply["reply"] == b"pong:ping"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls11_client_is_refused(pki: dict[str, Path]) -> None:
    with serving(server_context(pki["server"], pki["server_key"])) as server:
        old = client_context(ca_file=pki["ca"])
        try:
            # Lower the client's own floor so it really offers TLS 1.1 and the server must say no.
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
            old.set_ciphers("DEFAULT:@SECLEVEL=0")
            built = True
        except (ValueError, ssl.SSLError):
            built = False  # this OpenSSL will not even build a TLS 1.1 client: refused either way
        with pytest.raises((ssl.SSLError, OSError)):
            _talk(old, server.port)
        if built:
            error = server.result()["error"]
            assert isinstance(error, ssl.SSLError)
            assert "protocol" in str(error).lower() or "version" in str(error).lower()


def test_mutual_tls(pki: dict[str, Path]) -> None:
    ctx = server_context(pki["server"], pki["server_key"], ca_file=pki["ca"],
                         require_client_cert=True)
    with serving(ctx) as server:
        # Without a certificate: in TLS 1.3 the client learns of the refusal on its first read.
        with pytest.raises((ssl.SSLError, ConnectionError, OSError, AssertionError)):
            reply = _talk(client_context(ca_file=pki["ca"]), server.port)
            assert reply["reply"], "server answered a client without certificate"
        error = server.result()["error"]
        assert "certificate" in str(error).lower()

        with_cert = client_context(ca_file=pki["ca"], cert_file=pki["client"],
                                   key_file=pki["client_key"])
        assert _talk(with_cert, server.port)["reply"] == b"pong:ping"
        peer = server.result()["peer"]
        assert peer["subject_cn"] == "modality1"
        assert peer["subject"] == "CN=modality1"
        assert peer["issuer"] == "CN=Test Hospital CA"


def test_client_cert_from_another_ca_is_refused(pki: dict[str, Path], tmp_path: Path) -> None:
    other_dir = pki["other_ca"].parent
    cert, key = make_cert(tmp_path, "intruder", pki["other_ca"], other_dir / "ca.key",
                          client=True, days=1)
    ctx = server_context(pki["server"], pki["server_key"], ca_file=pki["ca"],
                         require_client_cert=True)
    with serving(ctx) as server:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError, AssertionError)):
            reply = _talk(client_context(ca_file=pki["ca"], cert_file=cert, key_file=key),
                          server.port)
            assert reply["reply"], "server answered a client from a foreign CA"
        error = server.result()["error"]
        assert isinstance(error, ssl.SSLCertVerificationError)
        assert "unable to get local issuer certificate" in explain_tls_error(error)


def test_wrong_ca_is_refused_with_a_clear_error(pki: dict[str, Path]) -> None:
    with serving(server_context(pki["server"], pki["server_key"])) as server:
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            _talk(client_context(ca_file=pki["other_ca"]), server.port)
        message = explain_tls_error(info.value)
        assert message.startswith("peer certificate rejected: unable to get local issuer")
        assert "CA" in message and "\n" not in message
        server.result()


def test_openssl_s_client_sees_rfc9325_policy(pki: dict[str, Path]) -> None:
    assert Path(OPENSSL).exists(), f"{OPENSSL} missing: apt-get install -y openssl"
    with serving(server_context(pki["server"], pki["server_key"])) as server:
        res = _s_client(server.port, pki["ca"])
        assert "Protocol version: TLSv1.3" in res.stderr, res.stderr
        assert "Verification: OK" in res.stderr, res.stderr
        server.result()

        res = _s_client(server.port, pki["ca"], "-tls1_2")
        assert "Protocol version: TLSv1.2" in res.stderr, res.stderr
        suite = next(line.split(":", 1)[1].strip() for line in res.stderr.splitlines()
                     if line.startswith("Ciphersuite:"))
        assert suite.startswith("ECDHE-ECDSA-") and ("GCM" in suite or "CHACHA20" in suite)
        server.result()

        refused = [
            ("-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"),  # old protocol
            ("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256"),  # CBC, not AEAD
            ("-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-SHA"),  # CBC + SHA-1
        ]
        for extra in refused:
            res = _s_client(server.port, pki["ca"], *extra)
            assert res.returncode != 0, (extra, res.stderr)
            assert "CONNECTION ESTABLISHED" not in res.stderr, (extra, res.stderr)
            if "-tls1_1" in extra:
                # This OpenSSL may refuse to send a TLS 1.1 hello at all; if it did send one,
                # the server must have said "unsupported protocol".
                try:
                    error = server.results.get(timeout=2)["error"]
                except queue.Empty:
                    continue
                assert "unsupported protocol" in str(error).lower(), error
            else:
                assert "no shared cipher" in str(server.result()["error"]).lower(), extra


# --------------------------------------------------------------------------------------------
# configuration errors: TLSConfigError naming the file
# --------------------------------------------------------------------------------------------

def _expired_cert(tmp_path: Path, ca: Path, ca_key: Path) -> tuple[Path, Path]:
    ca_cert = x509.load_pem_x509_certificate(ca.read_bytes())
    signer = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=30)).not_valid_after(now - timedelta(days=1))
            .sign(signer, hashes.SHA256()))  # type: ignore[arg-type]
    cert_path, key_path = tmp_path / "old.crt", tmp_path / "old.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_config_errors_name_the_file(pki: dict[str, Path], tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not a certificate\n")
    half = tmp_path / "half.pem"
    half.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    missing = tmp_path / "missing.crt"
    expired, expired_key = _expired_cert(tmp_path, pki["ca"], pki["ca_key"])
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))

    cases = [
        (lambda: server_context(missing, pki["server_key"]), missing, "does not exist"),
        (lambda: server_context(pki["server"], pki["client_key"]), pki["client_key"],
         "does not match"),
        (lambda: server_context(garbage, pki["server_key"]), garbage, "no PEM certificate"),
        (lambda: server_context(half, pki["server_key"]), half, "malformed"),
        (lambda: server_context(pki["server"], garbage), garbage, "no PEM private key"),
        (lambda: server_context(pki["server"], encrypted), encrypted, "encrypted"),
        (lambda: server_context(expired, expired_key), expired, "expired"),
        (lambda: server_context(pki["server"], pki["server_key"], ca_file=garbage), garbage,
         "no PEM certificate"),
        (lambda: client_context(ca_file=missing), missing, "does not exist"),
        (lambda: client_context(ca_file=pki["ca"], cert_file=pki["client"],
                                key_file=pki["server_key"]), pki["server_key"], "does not match"),
        (lambda: client_context(ca_file=pki["ca"], cert_file=tmp_path), tmp_path, "directory"),
    ]
    for build, path, words in cases:
        with pytest.raises(TLSConfigError) as info:
            build()
        message = str(info.value)
        assert str(path) in message, message
        assert words in message, message
        assert "\n" not in message
        # No ssl traceback chained behind the message either.
        assert info.value.__cause__ is None
        assert info.value.__context__ is None or info.value.__suppress_context__

    with pytest.raises(TLSConfigError, match="needs ca_file"):
        server_context(pki["server"], pki["server_key"], require_client_cert=True)

