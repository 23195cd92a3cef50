"""A client certificate OpenSSL verifies but `cryptography` will not read: CN=CT_SCANNER_1 as a
PrintableString, whose character set has no "_" (older CA tools write such names). describe_peer
raised ValueError, which lost the audit message of an RFC 5425 sender and left a DICOM modality
hanging on the gateway (an outside tester's re-probe). Now OpenSSL's own reading names it."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tls_helpers import peer_as_described


def _der_length(n: int) -> bytes:
    return bytes([n]) if n < 128 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big")


def _pem(path: Path, cert: x509.Certificate | bytes) -> None:
    der = cert if isinstance(cert, bytes) else cert.public_bytes(serialization.Encoding.DER)
    path.write_text(ssl.DER_cert_to_PEM_cert(der))


def _key(path: Path) -> rsa.RSAPrivateKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return key


def _pki(tmp: Path) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = _key(tmp / "ca.key")
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Hospital CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(True, None), True).sign(ca_key, hashes.SHA256()))
    _pem(tmp / "ca.crt", ca)

    def leaf(cn: str, usage: x509.ObjectIdentifier, name: str) -> x509.Certificate:
        key = _key(tmp / f"{name}.key")
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                   .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.ExtendedKeyUsage([usage]), False))
        if name == "server":
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
        return builder.sign(ca_key, hashes.SHA256())

    _pem(tmp / "server.crt", leaf("localhost", ExtendedKeyUsageOID.SERVER_AUTH, "server"))
    client = leaf("QQQQQQQQQQQQ", ExtendedKeyUsageOID.CLIENT_AUTH, "client")
    # The CN re-encoded as a PrintableString holding "_", the certificate signed again by the CA.
    tbs = client.tbs_certificate_bytes.replace(b"\x0c\x0cQQQQQQQQQQQQ", b"\x13\x0cCT_SCANNER_1")
    der = client.public_bytes(serialization.Encoding.DER)
    rest = der[der.index(client.tbs_certificate_bytes) + len(client.tbs_certificate_bytes):]
    signature = ca_key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    body = tbs + rest[:2 + rest[1]] + b"\x03" + _der_length(len(signature) + 1) + b"\x00" + signature
    _pem(tmp / "client.crt", b"\x30" + _der_length(len(body)) + body)


def test_a_certificate_cryptography_will_not_read_is_named_by_openssl(tmp_path: Path) -> None:
    _pki(tmp_path)
    peer = peer_as_described(tmp_path / "ca.crt", tmp_path / "server.crt", tmp_path / "client.crt")
    assert peer["subject_cn"] == "CT_SCANNER_1" and peer["subject"] == "CN=CT_SCANNER_1", peer
    assert peer["issuer"] == "CN=Hospital CA" and peer["fingerprint_sha256"] and peer["not_after"], peer
