"""TLS contexts for pacsguard, following BCP 195 (RFC 9325, "Recommendations for Secure Use of TLS").

What RFC 9325 asks for, and where it is done here:

* 3.1: TLS 1.2 is the floor, TLS 1.3 is allowed (and preferred by OpenSSL when both ends offer it).
* 3.3: TLS-level compression is disabled (CRIME).
* 3.4: session tickets are turned off on the server: OpenSSL never rotates the ticket key of a
  long-lived context, which would undo forward secrecy for TLS 1.2 resumption.
* 3.5: renegotiation is disabled altogether.
* 4.1 / 4.2: TLS 1.2 cipher suites are limited to ECDHE key exchange with an AEAD cipher
  (AES-GCM or ChaCha20-Poly1305), and the server enforces its own preference order. The
  finite-field DHE suites are left out on both sides: RFC 9325 4.2 no longer lists them
  (Raccoon), and RFC 10015 deprecates them in TLS 1.2.
* 4.5: a certificate of pacsguard's own needs an RSA key of 2048 bits or more (or an EC key of
  224 bits or more), a signature hash stronger than SHA-1 (RFC 9155), and the extended key usage of its
  side; each is checked when the file is read, so the error names the file.
  TLS 1.3 suites (RFC 8446) are all AEAD with ephemeral key exchange already (4.3).

Configuration errors never surface as raw `ssl` tracebacks: every file is checked first and
problems raise `TLSConfigError` whose message names the file and says what is wrong.
"""

from __future__ import annotations

import hashlib
import os
import re
import ssl
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pacsguard.tls.alerts import keep_alerts

StrPath = str | os.PathLike[str]

# RFC 9325 4.2: ECDHE key exchange + AEAD only. No TLS_DHE_* suite: a client offering them took
# one from a server that preferred it (RFC 10015 deprecates finite-field DHE in TLS 1.2). The
# exclusions make sure no anonymous, pre-shared-key or DSS variant slips in through the aliases.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!PSK:!SRP:!DSS:!SHA1"

_HARDENING_OPTIONS = (
    ssl.OP_NO_COMPRESSION  # RFC 9325 3.3
    | ssl.OP_NO_RENEGOTIATION  # RFC 9325 3.5
    | ssl.OP_CIPHER_SERVER_PREFERENCE  # RFC 9325 4.1: the server's order wins
    | ssl.OP_SINGLE_ECDH_USE
    | ssl.OP_SINGLE_DH_USE
)


class TLSConfigError(Exception):
    """A TLS configuration problem that the operator can fix: the message names the file and the
    problem, and is meant to be shown as-is (no traceback)."""


# --------------------------------------------------------------------------------------------
# File checks: done with `cryptography` before OpenSSL sees the files, so the errors are precise.
# --------------------------------------------------------------------------------------------

def read_pem(path: StrPath, role: str) -> bytes:
    """The bytes of a PEM file; a TLSConfigError naming the role, the file and what is wrong."""
    p = Path(path)
    if not p.exists():
        raise TLSConfigError(f"{role} {p}: file does not exist")
    if p.is_dir():
        raise TLSConfigError(f"{role} {p}: is a directory, expected a PEM file")
    try:
        return p.read_bytes()
    except PermissionError:
        raise TLSConfigError(f"{role} {p}: permission denied (cannot read the file)") from None
    except OSError as exc:
        raise TLSConfigError(f"{role} {p}: cannot read: {exc.strerror or exc}") from None


def _load_certs(path: StrPath, role: str) -> list[x509.Certificate]:
    data = read_pem(path, role)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TLSConfigError(f"{role} {path}: no PEM certificate found "
                             "(expected a '-----BEGIN CERTIFICATE-----' block)")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TLSConfigError(f"{role} {path}: malformed PEM certificate ({exc})") from None


def _clock(now: datetime) -> str:
    """What this host's clock reads, for a certificate judged by it: a clock stepped years ahead (a
    dead CMOS battery, a VM resumed without NTP) makes a good certificate "expired", and the clock
    is then what to fix."""
    return f"this host's clock reads {now:%Y-%m-%d %H:%M} UTC"


def _check_validity(cert: x509.Certificate, path: StrPath, role: str) -> None:
    now = datetime.now(timezone.utc)
    clock = _clock(now)
    if cert.not_valid_after_utc < now:
        raise TLSConfigError(f"{role} {path}: certificate expired on "
                             f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC "
                             f"(subject {cert.subject.rfc4514_string()}; {clock})")
    if cert.not_valid_before_utc > now:
        raise TLSConfigError(f"{role} {path}: certificate is not valid before "
                             f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC "
                             f"({clock}: check it)")


def _load_key(path: StrPath) -> Any:
    data = read_pem(path, "key file")
    if b"-----BEGIN" not in data or b"PRIVATE KEY-----" not in data:
        raise TLSConfigError(f"key file {path}: no PEM private key found "
                             "(expected a '-----BEGIN ... PRIVATE KEY-----' block)")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        # An encrypted key would make OpenSSL prompt on the terminal of a service: refuse instead.
        raise TLSConfigError(f"key file {path}: the private key is encrypted; pacsguard needs an "
                             "unencrypted key protected by file permissions (mode 0600)") from None
    except ValueError as exc:
        raise TLSConfigError(f"key file {path}: malformed PEM private key ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - unsupported algorithms etc.: still the operator's file
        raise TLSConfigError(f"key file {path}: unusable private key ({exc})") from None


def _spki(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo))


def _check_pair(cert_file: StrPath, key_file: StrPath | None, usage: x509.ObjectIdentifier) -> None:
    """Certificate (leaf first, chain after it) and key must parse, be current, be strong enough,
    allow ``usage`` (serverAuth or clientAuth), and belong together."""
    certs = _load_certs(cert_file, "cert file")
    leaf = certs[0]
    _check_validity(leaf, cert_file, "cert file")
    _check_strength(leaf, cert_file)
    _check_usage(leaf, cert_file, usage)
    key = _load_key(key_file if key_file is not None else cert_file)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey,
                            ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        raise TLSConfigError(f"key file {key_file}: unsupported key type {type(key).__name__}")
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise TLSConfigError(f"key file {key_file}: does not match the certificate in {cert_file} "
                             f"(subject {leaf.subject.rfc4514_string()})")


#: RFC 9325 4.5: the smallest keys a certificate may carry (RSA modulus, EC curve size).
_MIN_RSA_BITS, _MIN_EC_BITS = 2048, 224
#: Signature hashes OpenSSL's security level refuses (and a peer would): collisions are practical.
_WEAK_HASHES = {"sha1": "SHA-1", "md5": "MD5"}
_USAGE_NAMES = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth", ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth"}


def _check_strength(cert: x509.Certificate, path: StrPath) -> None:
    """A key or signature BCP 195 rules out (RFC 9325 4.5), said in words: OpenSSL's own refusal
    came as EE_KEY_TOO_SMALL or CA_MD_TOO_WEAK (a name that blames a CA for the leaf's hash)."""
    key = cert.public_key()
    subject = cert.subject.rfc4514_string()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
        raise TLSConfigError(f"cert file {path}: its RSA key has {key.key_size} bits; BCP 195 (RFC 9325 4.5) "
                             f"needs at least {_MIN_RSA_BITS} (subject {subject})")
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size < _MIN_EC_BITS:
        raise TLSConfigError(f"cert file {path}: its EC key has {key.curve.key_size} bits; BCP 195 "
                             f"(RFC 9325 4.5) needs at least {_MIN_EC_BITS} (subject {subject})")
    try:
        digest = cert.signature_hash_algorithm
    except Exception:  # noqa: BLE001 - an algorithm `cryptography` does not know: OpenSSL judges it
        return
    if digest is not None and digest.name in _WEAK_HASHES:
        raise TLSConfigError(f"cert file {path}: it is signed with {_WEAK_HASHES[digest.name]}, which peers "
                             "refuse (collisions are practical, RFC 9155): have it reissued with SHA-256 "
                             f"(subject {subject})")


def _check_usage(cert: x509.Certificate, path: StrPath, usage: x509.ObjectIdentifier) -> None:
    """The certificate's extendedKeyUsage, when it has one, must allow this side's use (RFC 5280
    4.2.1.12): a listener's certificate without serverAuth started, and every client then refused
    it ("unsupported certificate purpose") with nothing said at start-up."""
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return  # no restriction: any use
    if usage in usages or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages:
        return
    needed = _USAGE_NAMES[usage]
    has = ", ".join(_USAGE_NAMES.get(u, u.dotted_string) for u in usages) or "none"
    side = "a server (listener)" if usage == ExtendedKeyUsageOID.SERVER_AUTH else "a client"
    option = "--server" if usage == ExtendedKeyUsageOID.SERVER_AUTH else "--client"
    raise TLSConfigError(f"cert file {path}: its extendedKeyUsage ({has}) lacks {needed}, so peers refuse it "
                         f"as {side} certificate (RFC 5280 4.2.1.12); issue one with {needed} "
                         f"(pacsguard tls make-cert {option})")


def _check_ca(ca_file: StrPath) -> bool:
    """The CA file's certificates must parse and not all be expired; True when it also holds CRLs
    (each checked to parse, to be signed by a CA of the file, and to be current)."""
    certs = _load_certs(ca_file, "CA file")
    now = datetime.now(timezone.utc)
    # A bundle may carry some expired roots; only a bundle with nothing usable is an error.
    if all(c.not_valid_after_utc < now for c in certs):
        raise TLSConfigError(f"CA file {ca_file}: every certificate in it has expired ({_clock(now)})")
    crls = _CRL_BLOCK.findall(read_pem(ca_file, "CA file"))
    for block in crls:
        _check_crl(ca_file, block, certs, now)
    return bool(crls)


_CRL_BLOCK = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


def _check_crl(ca_file: StrPath, block: bytes, certs: list[x509.Certificate], now: datetime) -> None:
    """One CRL of the CA file (RFC 5280 5): it parses, a CA of the file signed it, and its
    nextUpdate has not passed; otherwise OpenSSL would refuse every peer that CA issued, with a
    reason ("unable to get certificate CRL", "CRL has expired") far from its cause."""
    try:
        crl = x509.load_pem_x509_crl(block)
    except ValueError as exc:
        raise TLSConfigError(f"CA file {ca_file}: malformed PEM CRL ({exc})") from None
    issuer = crl.issuer.rfc4514_string()
    if not any(c.subject == crl.issuer and _signed_by(crl, c) for c in certs):
        raise TLSConfigError(f"CA file {ca_file}: the CRL of {issuer} is not signed by a CA certificate "
                             "in this file (put the issuing CA's certificate beside its CRL)")
    if crl.next_update_utc is not None and crl.next_update_utc < now:
        raise TLSConfigError(f"CA file {ca_file}: the CRL of {issuer} expired on "
                             f"{crl.next_update_utc:%Y-%m-%d %H:%M:%S} UTC (nextUpdate); put the CA's "
                             "current CRL in the file")


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):  # a key type that cannot sign a CRL
        return False


def _no_password() -> bytes:
    # Never let OpenSSL fall back to prompting on a terminal (the key was checked to be clear).
    return b""


def _load_chain(ctx: ssl.SSLContext, cert_file: StrPath, key_file: StrPath | None,
                usage: x509.ObjectIdentifier) -> None:
    _check_pair(cert_file, key_file, usage)
    try:
        ctx.load_cert_chain(os.fspath(cert_file),
                            os.fspath(key_file) if key_file is not None else None,
                            password=_no_password)
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(f"cert file {cert_file} / key file {key_file}: OpenSSL rejected the "
                             f"pair: {_ssl_reason(exc)}") from None


def _load_ca(ctx: ssl.SSLContext, ca_file: StrPath) -> None:
    has_crls = _check_ca(ca_file)
    try:
        ctx.load_verify_locations(cafile=os.fspath(ca_file))
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(f"CA file {ca_file}: OpenSSL could not load it: "
                             f"{_ssl_reason(exc)}") from None
    if has_crls:
        # OpenSSL loads the CRLs of the file but consults none unless asked: a revoked peer
        # certificate was accepted. With CRLs given, the peer's certificate is checked against its
        # issuer's CRL (RFC 5280 6.3), and refused when that CRL is missing or out of date.
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 9325 3.1
    ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    ctx.set_ciphers(TLS12_CIPHERS)  # only affects TLS 1.2; TLS 1.3 suites are all AEAD
    ctx.options |= _HARDENING_OPTIONS


def _ssl_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    text = getattr(exc, "verify_message", None) or reason or getattr(exc, "strerror", None)
    return str(text or exc)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

def server_context(cert_file: StrPath, key_file: StrPath, *, ca_file: StrPath | None = None,
                   require_client_cert: bool = False) -> ssl.SSLContext:
    """A server-side context per RFC 9325.

    With `ca_file`, client certificates issued by that CA are requested (and verified when sent);
    with `require_client_cert` they are mandatory (mutual TLS), which needs `ca_file`.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx)
    ctx.options |= ssl.OP_NO_TICKET  # RFC 9325 3.4, see module docstring
    _load_chain(ctx, cert_file, key_file, ExtendedKeyUsageOID.SERVER_AUTH)
    if require_client_cert and ca_file is None:
        raise TLSConfigError("require_client_cert needs ca_file: the CA that issues client "
                             "certificates must be named explicitly")
    if ca_file is not None:
        _load_ca(ctx, ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return keep_alerts(ctx)  # a refused client learns why (RFC 8446 6.2)


def client_context(*, ca_file: StrPath | None = None, cert_file: StrPath | None = None,
                   key_file: StrPath | None = None, check_hostname: bool = True) -> ssl.SSLContext:
    """A client-side context per RFC 9325. The server certificate is always verified (against
    `ca_file`, or the system trust store without it); `check_hostname=False` skips only the name
    check (RFC 9525) for peers addressed by a name not in their certificate. `cert_file` (and
    `key_file`, default: the same file) present a client certificate for mutual TLS."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(ctx)
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    if ca_file is not None:
        _load_ca(ctx, ca_file)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if key_file is not None and cert_file is None:
        raise TLSConfigError(f"key file {key_file}: given without a cert file")
    if cert_file is not None:
        _load_chain(ctx, cert_file, key_file, ExtendedKeyUsageOID.CLIENT_AUTH)
    return ctx


def describe_peer(ssl_object: ssl.SSLSocket | ssl.SSLObject) -> dict[str, Any]:
    """What an audit event (and a subject allow-list) needs to know about a TLS peer.

    Keys: subject_cn, subject (RFC 4514 string), issuer (RFC 4514), serial (upper-case hex),
    not_after (ISO 8601 UTC), fingerprint_sha256 (hex of the DER certificate), tls_version, cipher.
    Certificate fields are None when the peer sent no certificate. subject_cn is None unless the
    subject holds exactly one Common Name: with two (CN=ct1,CN=evil, or CN=ct1+CN=evil) which one
    names the peer depends on who reads it, so a bare-CN allow-list entry must not match either.
    """
    cipher = ssl_object.cipher()
    info: dict[str, Any] = {
        "subject_cn": None, "subject": None, "issuer": None, "serial": None,
        "not_after": None, "fingerprint_sha256": None,
        "tls_version": ssl_object.version(),
        "cipher": cipher[0] if cipher else None,
    }
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return info
    info["fingerprint_sha256"] = hashlib.sha256(der).hexdigest()
    try:
        cert = x509.load_der_x509_certificate(der)
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        info.update(
            subject_cn=str(cns[0].value) if len(cns) == 1 else None,
            subject=cert.subject.rfc4514_string(),
            issuer=cert.issuer.rfc4514_string(),
            serial=format(cert.serial_number, "X"),
            not_after=cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
    except ValueError:
        # A certificate OpenSSL verified but `cryptography` will not read (a PrintableString holding
        # "_", 8-bit bytes in an IA5String: older CA tools write them): OpenSSL's own reading.
        info.update(_openssl_fields(ssl_object.getpeercert()))
    return info


#: OpenSSL's long attribute names (getpeercert) and their RFC 4514 short forms.
_SHORT_NAMES = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
                "stateOrProvinceName": "ST", "localityName": "L", "domainComponent": "DC", "userId": "UID"}


def _openssl_fields(decoded: dict[str, Any] | None) -> dict[str, Any]:
    """describe_peer's certificate fields from the ssl module's decoding (``getpeercert()``):
    subject and issuer in RFC 4514's order (last RDN first), as `cryptography` writes them."""
    if not decoded:
        return {}

    def name(rdns: Any) -> str:
        return ",".join("+".join(f"{_SHORT_NAMES.get(k, k)}={v}" for k, v in rdn) for rdn in reversed(rdns or ()))

    cns = [v for rdn in decoded.get("subject", ()) for k, v in rdn if k == "commonName"]
    after = decoded.get("notAfter")
    return {"subject_cn": cns[0] if len(cns) == 1 else None, "subject": name(decoded.get("subject")),
            "issuer": name(decoded.get("issuer")), "serial": decoded.get("serialNumber"),
            "not_after": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ssl.cert_time_to_seconds(after)))
            if after else None}


_OLD_VERSION = "the peer offers no TLS version accepted here: TLS 1.2 or later is required (BCP 195, RFC 9325 3.1.1)"
#: OpenSSL's reasons for a handshake that this policy refused, and the policy in words: "unsupported
#: protocol" alone does not tell an administrator that a device's TLS 1.0 is what was refused.
_REFUSED_BY_POLICY = {
    "UNSUPPORTED_PROTOCOL": _OLD_VERSION, "VERSION_TOO_LOW": _OLD_VERSION,
    "TLSV1_ALERT_PROTOCOL_VERSION": _OLD_VERSION,
    "NO_SHARED_CIPHER": "the peer offers no cipher suite accepted here: TLS 1.2 needs ECDHE with AES-GCM or "
                        "ChaCha20-Poly1305 (BCP 195, RFC 9325 4.1, 4.2)",
    "NO_SUITABLE_KEY_SHARE": "the peer offers no key-exchange group accepted here (RFC 9325 4.2.1)",
    "NO_SHARED_GROUPS": "the peer offers no key-exchange group accepted here (RFC 9325 4.2.1)",
}


_NOT_FROM_CA = ("it is not issued by a CA of ca_file (another CA's, a self-signed one, or a chain "
                "missing its intermediate CA)")
_TOO_WEAK = ("its key or signature is too weak (RSA keys need 2048 bits, RFC 9325 4.5; SHA-1 signatures "
             "are refused, RFC 9155): it needs a new certificate")

#: OpenSSL's reasons for a first record that is no TLS handshake (RFC 8446 5.1: a record starts
#: with its content type and version): "wrong version number" alone read as a TLS version problem.
_NOT_TLS = {
    "WRONG_VERSION_NUMBER": "the peer did not speak TLS: plain DICOM, syslog or HTTP where TLS is expected "
                            "(check that both ends use TLS on this port), or SSL 2.0/3.0",
    "HTTP_REQUEST": "the peer sent a plain HTTP request to a TLS port (http:// instead of https://)",
}

#: OpenSSL's X509_V_ERR codes (x509_vfy.h) whose cause the CA or the name cannot be: each its own
#: hint, since "is the right CA configured?" sends an administrator after a revoked or expired
#: certificate the wrong way (RFC 5280 6.1.3: validity, revocation status).
_VERIFY_HINTS = {
    9: "the certificate is not valid yet: check its start date and the clocks of both hosts",
    10: "the certificate has expired: the peer needs a renewed one from its CA",
    11: "the CRL in ca_file is not valid yet: check the clocks, or the CRL's issue date",
    12: "the CRL in ca_file has expired: fetch a current one from the CA",
    23: "the CA revoked this certificate (its CRL lists it): the peer needs a new one, and its "
        "use after revocation deserves a look",
    3: "ca_file holds no CRL of the certificate's issuer, and CRLs are checked",
    62: "the certificate does not name the host connected to: check server_name, or its SAN",
    64: "the certificate does not name the IP address connected to: check server_name, or its SAN",
    # Not the name, and a CA may well be right: the chain itself is what fails.
    2: _NOT_FROM_CA, 18: _NOT_FROM_CA, 19: _NOT_FROM_CA, 20: _NOT_FROM_CA, 21: _NOT_FROM_CA,
    25: "a CA of the chain may not issue CAs below it (basicConstraints pathLenConstraint, RFC 5280 "
        "4.2.1.9): have the certificate issued by a CA allowed to",
    26: "its extended key usage does not allow this use (serverAuth for a server, clientAuth for a "
        "client, RFC 5280 4.2.1.12): it needs a certificate issued for it",
    66: _TOO_WEAK, 67: _TOO_WEAK, 68: _TOO_WEAK,
}
_VERIFY_HINT = "is the right CA configured, and does the name match?"


#: A TLS alert received (RFC 8446 6.2), as OpenSSL's reason names it: SSLV3_ALERT_HANDSHAKE_FAILURE,
#: TLSV1_ALERT_UNKNOWN_CA, TLSV13_ALERT_CERTIFICATE_REQUIRED. Said as the peer's: "sslv3 alert
#: handshake failure" alone did not tell who refused what.
_ALERT = re.compile(r"(?:SSLV3|TLSV1|TLSV13)_ALERT_(\w+)")
_THEIR_CA = " (it does not accept this side's certificate: not of a CA it trusts, or not for its name)"
_ALERT_HINTS = {
    "HANDSHAKE_FAILURE": " (it found nothing in common with this side: TLS version, cipher suite or group)",
    "UNKNOWN_CA": _THEIR_CA, "BAD_CERTIFICATE": _THEIR_CA, "CERTIFICATE_UNKNOWN": _THEIR_CA,
    "UNSUPPORTED_CERTIFICATE": " (it does not accept this side's certificate for this use: its extended "
                               "key usage)",
    "CERTIFICATE_EXPIRED": " (this side's certificate has expired, or the peer's clock is wrong)",
    "CERTIFICATE_REVOKED": " (the peer holds this side's certificate revoked)",
    "CERTIFICATE_REQUIRED": " (the peer requires a client certificate: configure cert_file and key_file)",
}


def explain_tls_error(exc: BaseException) -> str:
    """One line for a failed handshake, for logs and audit events instead of a traceback."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        advice = _VERIFY_HINTS.get(exc.verify_code, _VERIFY_HINT)
        return f"peer certificate rejected: {exc.verify_message or exc.reason} ({advice})"
    if isinstance(exc, ssl.SSLError):
        hint = _REFUSED_BY_POLICY.get(exc.reason or "") or _NOT_TLS.get(exc.reason or "")
        alert = _ALERT.fullmatch(exc.reason or "")
        if alert:  # OpenSSL names an alert received after the protocol that defined it
            told = f" ({hint})" if hint else _ALERT_HINTS.get(alert.group(1), "")
            return f'TLS handshake failed: the peer sent the alert "{alert.group(1).lower().replace("_", " ")}"{told}'
        reason = (exc.reason or str(exc)).replace("_", " ").lower()
        return f"TLS handshake failed: {reason}" + (f" ({hint})" if hint else "")
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return f"connection failed during TLS handshake: {exc.strerror or exc}"
    return f"TLS error: {exc}"
