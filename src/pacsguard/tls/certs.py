"""A small private CA for a PACS network: one CA, then server and client certificates issued by it.

Profile (RFC 5280 4.2.1): EC P-256 keys (RFC 9325 4.5 minimum strength), ECDSA with SHA-256.
The CA gets basicConstraints cA=TRUE pathLen=0 and keyUsage keyCertSign+cRLSign; leaf certificates
get cA=FALSE, keyUsage digitalSignature and extendedKeyUsage serverAuth and/or clientAuth, with
host names and IP addresses in subjectAltName (RFC 9525: the only place a TLS client looks).

Keys are written mode 0600 and nothing is overwritten unless `force=True`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pacsguard.tls.contexts import StrPath, TLSConfigError, read_pem

# Certificates are issued a little in the past so a peer whose clock is slightly behind accepts them.
_BACKDATE = timedelta(minutes=5)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def make_ca(out_dir: StrPath, common_name: str = "pacsguard CA", days: int = 3650, *,
            force: bool = False) -> tuple[Path, Path]:
    """Create a self-signed CA; returns (cert_path, key_path) = out_dir/ca.crt, out_dir/ca.key."""
    _check_days(days)
    if not common_name.strip():
        raise TLSConfigError("CA common name must not be empty")
    out = _out_dir(out_dir)
    cert_path, key_path = out / "ca.crt", out / "ca.key"
    _refuse_overwrite([cert_path, key_path], force)

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        # pathLen=0: this CA issues end-entity certificates only, never sub-CAs.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), 0o600, force)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, force)
    return cert_path, key_path


def make_cert(out_dir: StrPath, name: str, ca_cert: StrPath | x509.Certificate,
              ca_key: StrPath | ec.EllipticCurvePrivateKey, *, hosts: list[str] | None = None,
              client: bool = False, server: bool = False, days: int = 825,
              force: bool = False) -> tuple[Path, Path]:
    """Issue a leaf certificate signed by the CA; returns (out_dir/NAME.crt, out_dir/NAME.key).

    `name` becomes the subject CN (and the file name); `hosts` (DNS names and IP addresses) go into
    subjectAltName, which is what clients check. `server`/`client` choose the extendedKeyUsage.
    """
    _check_days(days)
    if not (client or server):
        raise TLSConfigError(f"certificate {name!r}: choose client and/or server usage")
    if not _SAFE_NAME.match(name):
        raise TLSConfigError(f"certificate name {name!r}: use 1-64 letters, digits, '.', '_' or "
                             "'-' (it is also the file name)")
    sans = [_general_name(h) for h in (hosts or [])]
    issuer_cert = ca_cert if isinstance(ca_cert, x509.Certificate) else _load_ca_cert(ca_cert)
    issuer_key = ca_key if not isinstance(ca_key, (str, os.PathLike)) else _load_ca_key(ca_key)
    _check_issuer(issuer_cert, issuer_key, ca_cert, ca_key)

    out = _out_dir(out_dir)
    cert_path, key_path = out / f"{name}.crt", out / f"{name}.key"
    _refuse_overwrite([cert_path, key_path], force)

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    not_after = min(now + timedelta(days=days), issuer_cert.not_valid_after_utc)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
             ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_aki(issuer_cert), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    _write(key_path, _key_pem(key), 0o600, force)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, force)
    return cert_path, key_path


# --------------------------------------------------------------------------------------------

def _check_days(days: int) -> None:
    """A validity whose end can be written: X.509 times end with the year 9999 (RFC 5280
    4.1.2.5), and a larger --days made an internal error (OverflowError) instead of a usage one."""
    if not isinstance(days, int) or days < 1:
        raise TLSConfigError(f"days must be a positive whole number, not {days!r}")
    try:
        datetime.now(timezone.utc) + timedelta(days=days)
    except OverflowError:
        raise TLSConfigError(f"days {days}: the certificate would end after the year 9999, the last "
                             "an X.509 certificate can name (RFC 5280 4.1.2.5)") from None


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]


def _general_name(host: str) -> x509.GeneralName:
    text = host.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    labels = text.rstrip(".").split(".")
    # A leading "*" label is the only wildcard RFC 9525 6.3 lets clients match.
    check = labels[1:] if labels and labels[0] == "*" and len(labels) > 2 else labels
    if not text or len(text) > 253 or not all(_DNS_LABEL.match(label) for label in check):
        raise TLSConfigError(f"host {host!r}: not an IP address or a valid DNS name")
    return x509.DNSName(text.rstrip(".").lower())


def _load_ca_cert(path: StrPath) -> x509.Certificate:
    p = Path(path)
    data = read_pem(p, "CA cert")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise TLSConfigError(f"CA cert {p}: no valid PEM certificate found") from None


def _load_ca_key(path: StrPath) -> Any:
    p = Path(path)
    data = read_pem(p, "CA key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSConfigError(f"CA key {p}: the key is encrypted (not supported)") from None
    except ValueError:
        raise TLSConfigError(f"CA key {p}: no valid PEM private key found") from None


def _check_issuer(cert: x509.Certificate, key: Any, cert_src: object, key_src: object) -> None:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = bc.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise TLSConfigError(f"CA cert {_label(cert_src)}: is not a CA certificate "
                             "(basicConstraints cA=TRUE missing)")
    if cert.not_valid_after_utc < datetime.now(timezone.utc):
        raise TLSConfigError(f"CA cert {_label(cert_src)}: expired on "
                             f"{cert.not_valid_after_utc:%Y-%m-%d}")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        raise TLSConfigError(f"CA key {_label(key_src)}: does not match CA cert {_label(cert_src)}")


def _label(src: object) -> str:
    return str(src) if isinstance(src, (str, os.PathLike)) else "(given object)"


def _out_dir(out_dir: StrPath) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():  # mkdir would say only "File exists"
        raise TLSConfigError(f"output directory {out}: is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TLSConfigError(f"output directory {out}: cannot create: {exc.strerror or exc}") from None
    if not out.is_dir():
        raise TLSConfigError(f"output directory {out}: is not a directory")
    return out


def _refuse_overwrite(paths: list[Path], force: bool) -> None:
    # Checked for both files before anything is written, so a refusal never leaves half a pair.
    if force:
        return
    for p in paths:
        if p.exists() or p.is_symlink():
            raise TLSConfigError(f"{p}: already exists; refusing to overwrite (use force / --force)")


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Write via a temporary file created with the final mode (a key is never readable by others,
    not even for an instant), then move it into place: link() refuses to replace an existing file
    (no check-then-write race), replace() is used when overwriting was asked for."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise TLSConfigError(f"{path}: already exists; refusing to overwrite "
                                     "(use force / --force)") from None
            os.unlink(tmp)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
