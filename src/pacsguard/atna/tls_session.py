"""TLS (RFC 5425 for syslog, RFC 9110 for HTTPS) run by the connection itself over memory BIOs
instead of by the event loop.

The loop's own server-side TLS hides a failed handshake (a plain-text sender on the TLS port, a
client certificate that is missing or from another CA, a port scan): the connection's protocol is
never told, so nothing could be recorded or counted. Here every octet goes through the
connection, which sees the handshake fail and why, and counts a connection still in its
handshake against the listener's limits.
"""

from __future__ import annotations

import ssl
import weakref
from dataclasses import dataclass, field
from typing import Any

from pacsguard.runtime.peer import tls_alert
from pacsguard.tls.alerts import pending_alert

#: Plaintext taken out of the TLS records per call (OpenSSL returns at most one record, 16 KiB).
_READ = 65536


#: OpenSSL's message callback on a context (SSL_CTX_set_msg_callback) as the _ssl module sets it,
#: without the ssl module's wrapper, which makes enums of every record's numbers (the callback runs
#: for each record read, not only in the handshake). None where this Python has none.
_RAW_MESSAGE_CALLBACK: Any = getattr(getattr(ssl, "_SSLContext", None), "_msg_callback", None)
#: TLS content type handshake (RFC 8446 5.1) and handshake type certificate (4.4.2, RFC 5246 7.4.2).
_HANDSHAKE, _CERTIFICATE = 22, 11
_CLIENT_HELLO = 1  # handshake type client_hello (RFC 8446 4.1.2, RFC 5246 7.4.1.2)
_TLS13 = 0x0304
#: The Certificate message each session's client sent (with the TLS version), while it is needed:
#: OpenSSL forgets a certificate it refuses, so the one a failed handshake names is kept from the
#: handshake message itself.
_CERTIFICATES: weakref.WeakKeyDictionary[Any, tuple[int, bytes]] = weakref.WeakKeyDictionary()
#: The legacy_version of each session's ClientHello (RFC 8446 4.1.2): for a client too old to offer
#: supported_versions, the highest version it speaks, named when no version is in common.
_OFFERED: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
_VERSIONS = {0x0300: "SSL 3.0", 0x0301: "TLS 1.0", 0x0302: "TLS 1.1"}
#: Alerts (RFC 8446 6.2) with which a client refuses the server's certificate.
_CERTIFICATE_ALERTS = frozenset({"bad certificate", "unsupported certificate", "certificate revoked",
                                 "certificate expired", "certificate unknown", "unknown ca"})


class TlsFailure(Exception):
    """The handshake or a record failed; the text says why, in OpenSSL's words where it has them:
    its verify result for a refused client certificate ("certificate has expired", "unable to get
    local issuer certificate") and that certificate's subject, issuer and end of validity."""


@dataclass(slots=True)
class TlsSession:
    """One server-side TLS session: ``feed`` takes what the socket gave and returns the plaintext;
    ``outgoing`` what must be written back (handshake messages, alerts)."""

    context: ssl.SSLContext
    _incoming: ssl.MemoryBIO = field(default_factory=ssl.MemoryBIO)
    _outgoing: ssl.MemoryBIO = field(default_factory=ssl.MemoryBIO)
    _tls: ssl.SSLObject | None = None
    established: bool = False
    closed: bool = False  # the peer sent close_notify

    def __post_init__(self) -> None:
        _keep_client_certificates(self.context)
        self._tls = self.context.wrap_bio(self._incoming, self._outgoing, server_side=True)

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        return self._tls if self.established else None

    def feed(self, data: bytes) -> bytes:
        """The plaintext that ``data`` completes (b"" while the handshake goes on)."""
        assert self._tls is not None
        self._incoming.write(data)
        try:
            if not self.established:
                self._tls.do_handshake()
                self.established = True
                _CERTIFICATES.pop(self._tls, None)  # verified: getpeercert tells it now
                _OFFERED.pop(self._tls, None)  # a ClientHello from now on asks to renegotiate
            return self._read()
        except ssl.SSLWantReadError:
            return b""
        except ssl.SSLError as exc:
            if self.established:
                # RFC 9325 3.5: renegotiation is refused (OP_NO_RENEGOTIATION); a client that asked
                # for it and then gave up with an alert is told by its second ClientHello.
                asked = "the client asked to renegotiate, which is refused (RFC 9325 3.5); then " \
                    if _OFFERED.pop(self._tls, None) is not None else ""
                raise TlsFailure(f"TLS record refused: {asked}{_why(exc)}") from None
            # A server context's SSLObject (tls.alerts.keep_alerts) moves the alert OpenSSL wrote
            # (protocol_version, certificate_required, unknown_ca...) off the BIO onto the
            # exception: it goes back, so that `outgoing` gives it and the client learns why
            # (RFC 8446 6.2) instead of reading an unexpected EOF.
            self._outgoing.write(pending_alert(exc))
            raise TlsFailure(f"TLS handshake failed: {_why(exc, _OFFERED.pop(self._tls, None))}"
                             f"{_refused_certificate(self._tls)}") from None

    def outgoing(self) -> bytes:
        return self._outgoing.read()

    def goodbye(self) -> bytes:
        """Our close_notify, in answer to the peer's (RFC 8446 6.1), to be written before closing."""
        assert self._tls is not None
        try:
            self._tls.unwrap()
        except ssl.SSLError:
            pass  # want-read, or the peer's side already gone: what could be said is in outgoing
        return self.outgoing()

    def send(self, data: bytes) -> bytes:
        """``data`` as TLS records, to be written to the socket."""
        assert self._tls is not None and self.established
        try:
            self._tls.write(data)
        except ssl.SSLError as exc:
            raise TlsFailure(f"TLS record not written: {exc.reason or exc}") from None
        return self.outgoing()

    def _read(self) -> bytes:
        assert self._tls is not None
        chunks = []
        while True:
            try:
                chunk = self._tls.read(_READ)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.closed = True
                break
            if not chunk:  # SSLObject.read gives b"" at the peer's close_notify (RFC 8446 6.1)
                self.closed = True
                break
            chunks.append(chunk)
        return b"".join(chunks)


def _keep_client_certificates(context: ssl.SSLContext) -> None:
    """Have ``context`` tell `_on_message` each handshake message, unless something else listens."""
    if _RAW_MESSAGE_CALLBACK is not None and _RAW_MESSAGE_CALLBACK.__get__(context) is None:
        _RAW_MESSAGE_CALLBACK.__set__(context, _on_message)


def _on_message(conn: Any, direction: str, version: int, content_type: int, kind: int, data: bytes) -> None:
    """OpenSSL's message callback ("read" or "write", then numbers): keeps the Certificate message a
    client sends (RFC 8446 4.4.2, RFC 5246 7.4.6). It must not raise: the _ssl module would raise
    it from the handshake."""
    if kind == _CERTIFICATE and content_type == _HANDSHAKE and direction == "read":
        _CERTIFICATES[conn] = (version, bytes(data))
    elif kind == _CLIENT_HELLO and content_type == _HANDSHAKE and direction == "read" and len(data) >= 6:
        _OFFERED[conn] = int.from_bytes(data[4:6], "big")  # after the 4-octet handshake header


def _why(exc: ssl.SSLError, offered: int | None = None) -> str:
    """OpenSSL's words: its verify result for a refused certificate, with the reason code after it
    (CERTIFICATE_VERIFY_FAILED alone does not tell an expired certificate from a foreign one). An
    alert the client sent (RFC 8446 6.2) is said to be the client's, with the likely cause when it
    refused this server's certificate; a client offering only versions below TLS 1.2 (``offered``,
    its ClientHello's version) is told apart from other failures: BCP 195 (RFC 9325 3.1.1) refuses
    those versions."""
    told = getattr(exc, "verify_message", None)
    reason = exc.reason or str(exc)
    if told:
        return f"{told} ({reason})"
    alert = tls_alert(exc)
    if alert is not None:
        cause = (": it does not accept this server's certificate (not of a CA it trusts, or not for the "
                 "name it connects to)") if alert in _CERTIFICATE_ALERTS else ""
        return f'the client sent the alert "{alert}" ({reason}){cause}'
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":  # RFC 8446 4.4.2.4, RFC 5246 7.4.6
        return f"the client sent no certificate, and this listener requires one (mutual TLS) ({reason})"
    if reason == "UNSUPPORTED_PROTOCOL":
        version = _VERSIONS.get(offered or 0)
        at_most = f"the client offers {version} at most" if version else "the client offers no version accepted"
        return f"{at_most}; TLS 1.2 or later is required (BCP 195, RFC 9325 3.1.1) ({reason})"
    return reason


def _refused_certificate(tls: ssl.SSLObject) -> str:
    """The client certificate of a failed handshake, in words ("; client certificate CN=...,
    issued by CN=..., valid ... until ..."), or "" when none was sent or it cannot be read."""
    kept = _CERTIFICATES.pop(tls, None)
    if kept is None:
        return ""
    version, message = kept
    try:
        from cryptography import x509

        der = _first_certificate(version, message)
        if der is None:
            return ""
        cert = x509.load_der_x509_certificate(der)
        valid = f"{cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} until {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
        return (f"; client certificate {cert.subject.rfc4514_string()}, issued by {cert.issuer.rfc4514_string()}, "
                f"valid from {valid}")
    except (ValueError, IndexError):  # not a certificate the library reads: the reason alone is told
        return ""


def _first_certificate(version: int, message: bytes) -> bytes | None:
    """The first (the client's own) certificate of a Certificate handshake message: its 4-octet
    header, in TLS 1.3 a certificate_request_context (RFC 8446 4.4.2), then the list's 3-octet
    length and the first entry's 3-octet length and DER (RFC 5246 7.4.2)."""
    at = 4
    if version == _TLS13:
        at += 1 + message[at]
    at += 3
    length = int.from_bytes(message[at:at + 3], "big")
    der = message[at + 3:at + 3 + length]
    return der if length and len(der) == length else None
