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
from dataclasses import dataclass, field

#: Plaintext taken out of the TLS records per call (OpenSSL returns at most one record, 16 KiB).
_READ = 65536


class TlsFailure(Exception):
    """The handshake or a record failed; the text says why, in OpenSSL's words where it has them."""


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
            return self._read()
        except ssl.SSLWantReadError:
            return b""
        except ssl.SSLError as exc:
            what = "TLS handshake failed" if not self.established else "TLS record refused"
            raise TlsFailure(f"{what}: {exc.reason or exc}") from None

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
