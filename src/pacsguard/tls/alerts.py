"""The TLS alert of a refused handshake, kept so that it reaches the client (RFC 8446 6.2,
RFC 5246 7.2.2: a fatal error is signalled with an alert before the connection closes).

When a server-side handshake fails, OpenSSL has already written the alert record
(protocol_version, handshake_failure, certificate_required, unknown_ca, ...) into the memory BIO
that asyncio's SSL transport reads from; the transport then closes at once and drops it, so the
client sees an unexpected EOF. A context whose `sslobject_class` is `AlertKeepingSSLObject` hands
those bytes to whoever awaits the handshake, on the exception (`pending_alert`), to send them on
the socket before closing it.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

_ALERT_ATTRIBUTE = "pacsguard_pending_alert"


class AlertKeepingSSLObject(ssl.SSLObject):
    """An SSLObject that, when the handshake fails, moves what OpenSSL wrote for the peer (the
    alert) onto the exception."""

    _outgoing_bio: ssl.MemoryBIO

    @classmethod
    def _create(cls, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, *args: Any,
                **kwargs: Any) -> "AlertKeepingSSLObject":
        # SSLContext.wrap_bio builds SSLObjects through this factory (Lib/ssl.py); the base keeps
        # no reference to the outgoing BIO, so this one does.
        obj: AlertKeepingSSLObject = super()._create(incoming, outgoing, *args, **kwargs)  # type: ignore[misc]
        obj._outgoing_bio = outgoing
        return obj

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise  # the handshake goes on
        except ssl.SSLError as exc:
            setattr(exc, _ALERT_ATTRIBUTE, self._outgoing_bio.read())
            raise


def keep_alerts(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """Make the server context *ctx* keep a refused handshake's alert (see `pending_alert`)."""
    ctx.sslobject_class = AlertKeepingSSLObject
    return ctx


def pending_alert(exc: BaseException) -> bytes:
    """The alert record(s) a failed handshake left unsent, or b"" (not a TLS error, or none)."""
    alert = getattr(exc, _ALERT_ATTRIBUTE, b"")
    return alert if isinstance(alert, bytes) else b""


def send_alert(sock: socket.socket, alert: bytes) -> None:
    """Send *alert* on *sock* (a duplicate of the connection's socket, which asyncio has closed
    by now) and close it. Unread input is drained first: closing a socket with unread data makes
    the kernel answer with a RST, which can destroy the alert before the client reads it."""
    try:
        sock.setblocking(False)
        if alert:
            sock.send(alert)
        sock.shutdown(socket.SHUT_WR)
        for _ in range(16):  # bounded: a hostile client must not keep this loop busy
            if not sock.recv(65536):
                break
    except OSError:
        pass  # BlockingIOError (nothing more to read) or the client is gone: nothing to add
    finally:
        sock.close()
